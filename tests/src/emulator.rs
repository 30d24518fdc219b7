//! The local AWS emulator (tests/emulator/: moto plus the simulated Windows side) as a child
//! process on 127.0.0.1, its SDK clients, and its own `/_sim` control API.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::types::QueueAttributeName;
use consistent_snapshot::catalog::{Catalog, CopyRecord, RecordedSnapshot, SetRecord, Verdict};
use consistent_snapshot::{App, Config, MetricsOut, RunJob};
use serde_json::{json, Value};

use crate::faults::{Endpoint, FaultProxy, Stop};
use crate::sim::{Ebs, History, Windows};
use crate::source::queue_arn;
use crate::Result;

pub const REGION: &str = "us-east-1";
/// The catalog table of a test deployment (the template creates the deployment's own).
pub const CATALOG_TABLE: &str = "vss-test-catalog";
/// The test deployment's readiness probe document, created from the template's.
pub const PROBE_DOCUMENT: &str = "vss-test-readiness-probe";

/// The SDK configuration of a test client of the emulator on 127.0.0.1:`port`.
async fn sdk_config(port: u16) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "emulator",
        ))
        // moto answers unimplemented calls with HTTP 500: fail at once rather than retry.
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        // A call that hangs is a failed test, not a stuck CI run.
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// The workspace root (the harness crate lives in tests/).
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// A running emulator; stopped when dropped if this process started it.
pub struct Emulator {
    child: Option<Child>,
    pub port: u16,
    pub sdk: SdkConfig,
}

impl Emulator {
    pub async fn start() -> Result<Self> {
        let root = workspace_root();
        let python = std::env::var("EMULATOR_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join(".venv/bin/python"));
        if !python.exists() {
            return Err(format!(
                "{} not found: run `make setup` first (it installs the pinned emulator)",
                python.display()
            )
            .into());
        }
        let mut child = Command::new(&python)
            .arg(root.join("tests/emulator/server.py"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            // Two AMIs (one Windows, one Linux) instead of moto's ~1,300 built-in snapshots,
            // which every DescribeSnapshots would otherwise scan.
            .env("MOTO_AMIS_PATH", root.join("tests/emulator/amis.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("emulator has no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("emulator did not start: {line:?}"))?;
        let sdk = sdk_config(port).await;
        let emulator = Emulator {
            child: Some(child),
            port,
            sdk,
        };
        emulator.create_catalog(CATALOG_TABLE).await?;
        emulator.create_probe_document().await?;
        Ok(emulator)
    }

    /// The SDK configuration of a Lambda instance whose calls go through a proxy on
    /// 127.0.0.1:`port`: retrying as the function does in production (adaptive, 5 attempts),
    /// on short backoffs. Each App made from it keeps its own retry limiters (the function names
    /// its retry partitions per set of clients), as a Lambda instance is a process of its own.
    pub fn sdk_through(&self, port: u16) -> SdkConfig {
        self.sdk
            .to_builder()
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .retry_config(
                RetryConfig::adaptive()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(20))
                    .with_max_backoff(Duration::from_millis(200)),
            )
            .build()
    }

    /// The readiness probe document as the template creates it (its `Content`, verbatim).
    pub async fn create_probe_document(&self) -> Result<()> {
        use aws_sdk_ssm::types::{DocumentFormat, DocumentType};
        aws_sdk_ssm::Client::new(&self.sdk)
            .create_document()
            .name(PROBE_DOCUMENT)
            .document_type(DocumentType::Command)
            .document_format(DocumentFormat::Yaml)
            .content(probe_document_content()?)
            .send()
            .await?;
        Ok(())
    }

    /// The catalog table as the template makes it: `pk`/`sk` strings, on demand, TTL on
    /// `expires_at` (which moto stores but never acts on).
    pub async fn create_catalog(&self, table: &str) -> Result<()> {
        self.create_catalog_as(&self.sdk, table).await
    }

    /// `create_catalog` in the account and region `sdk` signs for (a vault deployment's).
    pub async fn create_catalog_as(&self, sdk: &SdkConfig, table: &str) -> Result<()> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
            TimeToLiveSpecification,
        };
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        dynamodb
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .send()
            .await?;
        dynamodb
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("expires_at")
                    .enabled(true)
                    .build()?,
            )
            .send()
            .await?;
        Ok(())
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    /// The retention tiers the catalog's set and copy records hold, as stored (the `tiers`
    /// attribute retention writes): `(pk, sk) -> tiers` of every item that has one.
    pub async fn catalog_tiers(&self) -> Result<BTreeMap<(String, String), String>> {
        let mut found = BTreeMap::new();
        let mut pages = self
            .dynamodb()
            .scan()
            .table_name(CATALOG_TABLE)
            .filter_expression("attribute_exists(tiers)")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page?.items() {
                let text = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                found.insert((text("pk"), text("sk")), text("tiers"));
            }
        }
        Ok(found)
    }

    /// What a snapshot holds in the emulator's model of its volume: each written block's
    /// version (`/_sim/blocks`), for a test to compare snapshots apart from the EBS direct APIs.
    pub fn block_versions(&self, region: &str, snapshot_id: &str) -> Result<Vec<i64>> {
        let answer = self.http(
            "POST",
            "/_sim/blocks",
            &json!({"region": region, "snapshot_id": snapshot_id}),
        )?;
        Ok(serde_json::from_value(answer["versions"].clone())?)
    }

    /// The catalog of the test deployment, through the function's own store.
    pub fn catalog(&self) -> Catalog {
        Catalog::new(&self.sdk, CATALOG_TABLE)
    }

    /// An emulator already listening on 127.0.0.1:`port` (started by `make emulator`); left
    /// running when dropped.
    pub async fn connect(port: u16) -> Result<Self> {
        let sdk = sdk_config(port).await;
        Ok(Emulator {
            child: None,
            port,
            sdk,
        })
    }

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk)
    }

    /// EC2 in another region of the emulator.
    pub fn ec2_in(&self, region: &str) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::config::Builder::from(&self.sdk)
            .region(Region::new(region.to_string()))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// A client configuration signed by `role_arn` (another account's role, through STS
    /// AssumeRole with the emulator's own keys).
    pub async fn as_role(&self, role_arn: &str) -> SdkConfig {
        let role = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name("harness")
            .configure(&self.sdk)
            .build()
            .await;
        self.sdk
            .to_builder()
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(role))
            .build()
    }

    /// The locks in force in `region` (this account): `snapshot -> (state, ends)`.
    pub async fn locks_in_force(
        &self,
        region: &str,
    ) -> Result<BTreeMap<String, (String, chrono::DateTime<chrono::Utc>)>> {
        let out = self
            .ec2_in(region)
            .describe_locked_snapshots()
            .send()
            .await?;
        Ok(out
            .snapshots()
            .iter()
            .filter(|s| s.lock_state().is_some_and(|st| st.as_str() != "expired"))
            .filter_map(|s| {
                let ends = chrono::DateTime::from_timestamp(s.lock_expires_on()?.secs(), 0)?;
                let state = s.lock_state()?.as_str().to_string();
                Some((s.snapshot_id()?.to_string(), (state, ends)))
            })
            .collect())
    }

    /// EC2 in `region` as `role_arn`.
    pub async fn ec2_as(&self, role_arn: &str, region: &str) -> aws_sdk_ec2::Client {
        let sdk = self.as_role(role_arn).await;
        aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&sdk)
                .region(Region::new(region.to_string()))
                .build(),
        )
    }

    /// Creates role `name` in `account` with this inline policy (JSON), as that account's
    /// administrator would deploy it; answers its ARN.
    pub async fn create_role_in(&self, account: &str, name: &str, policy: &str) -> Result<String> {
        let admin = self
            .as_role(&format!("arn:aws:iam::{account}:role/administrator"))
            .await;
        let iam = aws_sdk_iam::Client::new(&admin);
        // Trusting the fleet account (the emulator's own), as vault.yaml's role does.
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}"#;
        let role = iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust)
            .send()
            .await?;
        iam.put_role_policy()
            .role_name(name)
            .policy_name("inline")
            .policy_document(policy)
            .send()
            .await?;
        Ok(role.role().map(|r| r.arn().to_string()).unwrap_or_default())
    }

    /// A customer-managed KMS key in `account` and `region` with this key policy (as the
    /// templates' `AWS::KMS::Key` resources make them): its ARN.
    pub fn kms_key(&self, account: &str, region: &str, policy: &Value) -> Result<String> {
        let spec = json!({"account": account, "region": region, "policy": policy});
        let answer = self.http("POST", "/_sim/kms-key", &spec)?;
        Ok(answer["arn"].as_str().unwrap_or_default().to_string())
    }

    /// The template's `CompletionEventsRule` (its pattern as `check_template.py` keeps it in
    /// tests/fixtures/), delivering SSM's events to the queue at `queue_url`.
    pub fn completion_events(&self, queue_url: &str) -> Result<()> {
        let path = workspace_root().join("tests/fixtures/completion-events-pattern.json");
        let pattern: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let spec = json!({
            "region": REGION,
            "name": "CompletionEventsRule",
            "pattern": pattern,
            "target": queue_arn(queue_url),
        });
        self.http("POST", "/_sim/events-rule", &spec).map(|_| ())
    }

    /// The function with its AWS calls counted: it signs through a proxy that faults nothing
    /// and counts each action (`FaultProxy::stats`); the endpoint lives as long as it is kept.
    pub async fn counted_app(
        &self,
        queue_url: &str,
        overrides: &[(&str, &str)],
    ) -> Result<(FaultProxy, Endpoint, App)> {
        let proxy = FaultProxy::new(self.port, 0.0, 1);
        let endpoint = proxy.endpoint(Stop::Never).await?;
        let sdk = sdk_config(endpoint.port).await;
        let app = self.app_as(&sdk, queue_url, overrides)?;
        Ok((proxy, endpoint, app))
    }

    /// Sets how EBS behaves from now on.
    pub fn simulate_ebs(&self, ebs: &Ebs) -> Result<()> {
        self.http("POST", "/_sim/ebs", &serde_json::to_value(ebs)?)
            .map(|_| ())
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    /// An SNS topic with a queue subscribed to it, as an operator's inbox: answers the topic's
    /// ARN and the queue's URL.
    pub async fn topic_with_inbox(&self, name: &str) -> Result<(String, String)> {
        let sns = aws_sdk_sns::Client::new(&self.sdk);
        let topic = sns.create_topic().name(name).send().await?;
        let topic_arn = topic.topic_arn().ok_or("no topic arn")?.to_string();
        let inbox = self
            .sqs()
            .create_queue()
            .queue_name(format!("{name}-inbox"))
            .send()
            .await?;
        let inbox_url = inbox.queue_url().ok_or("no inbox url")?.to_string();
        sns.subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn(&inbox_url))
            .send()
            .await?;
        Ok((topic_arn, inbox_url))
    }

    /// A plain HTTP call to the emulator's own API (/_sim/..., /moto-api/...), answered within
    /// 30 s.
    pub fn http(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        self.http_within(method, path, body, Duration::from_secs(30))
    }

    /// `http`, answered within `wait` (a bulk seeding of tens of thousands of snapshots takes
    /// longer than an ordinary call); a call not answered in time is named with its wait.
    pub fn http_within(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        wait: Duration,
    ) -> Result<Value> {
        let named = |err: std::io::Error| -> Box<dyn std::error::Error + Send + Sync> {
            match err.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                    "{method} {path}: the emulator did not answer within {} s",
                    wait.as_secs()
                )
                .into(),
                _ => format!("{method} {path}: {err}").into(),
            }
        };
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(named)?;
        stream.set_read_timeout(Some(wait)).map_err(named)?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(named)?;
        // Half-close: the server (werkzeug) drains the socket after answering and must see EOF,
        // or both sides wait for each other.
        stream.shutdown(std::net::Shutdown::Write).map_err(named)?;
        let mut response = String::new();
        stream.read_to_string(&mut response).map_err(named)?;
        let (head, payload) = response
            .split_once("\r\n\r\n")
            .ok_or("malformed HTTP answer")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("{method} {path}: {head}: {payload}").into());
        }
        Ok(serde_json::from_str(payload).unwrap_or(Value::Null))
    }

    /// Sets how these servers' Windows side behaves, by instance id.
    pub fn simulate(&self, servers: &BTreeMap<String, Windows>) -> Result<()> {
        self.http("POST", "/_sim/instances", &serde_json::to_value(servers)?)
            .map(|_| ())
    }

    /// Records these existing snapshots (of `instance_id`) in the catalog as one set of
    /// `run_id` in the home region, as the function records a verified set: a fixture of an
    /// earlier night whose snapshots a test made itself.
    pub async fn record_set(
        &self,
        instance_id: &str,
        run_id: &str,
        snapshot_ids: &[String],
        verdict: Verdict,
    ) -> Result<()> {
        let out = self
            .ec2()
            .describe_snapshots()
            .set_snapshot_ids(Some(snapshot_ids.to_vec()))
            .send()
            .await?;
        let mut snapshots = Vec::new();
        for (i, s) in out.snapshots().iter().enumerate() {
            let start = s
                .start_time()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), 0))
                .ok_or("a snapshot without a start time")?;
            snapshots.push(RecordedSnapshot {
                snapshot_id: s.snapshot_id().unwrap_or_default().to_string(),
                volume_id: s.volume_id().unwrap_or_default().to_string(),
                device: format!("xvd{}", (b'f' + i as u8) as char),
                start_time: start,
            });
        }
        let started_at = snapshots
            .iter()
            .map(|s| s.start_time)
            .min()
            .ok_or("no snapshot to record")?;
        let record = SetRecord {
            run_id: run_id.to_string(),
            instance_id: instance_id.to_string(),
            name: instance_id.to_string(),
            region: REGION.to_string(),
            started_at,
            expected: snapshots
                .iter()
                .map(|s| consistent_snapshot::AttachedVolume {
                    volume_id: s.volume_id.clone(),
                    device: s.device.clone(),
                })
                .collect(),
            snapshots,
            verdict,
            reason: None,
            cause: None,
            verified_at: started_at,
            verified_by: "an earlier night (test fixture)".into(),
            fallback: false,
        };
        self.catalog().put_sets(&[record], &[]).await?;
        Ok(())
    }

    /// Ages copies in a vault deployment's account, as `age_snapshots` does at home: EC2's
    /// start times (`/_sim/age`) and, as time would have, the vault catalog's records of them
    /// (`sdk` signs as the vault account, in its region).
    pub async fn age_vault_copies(
        &self,
        sdk: &SdkConfig,
        (account, table): (&str, &str),
        snapshot_ids: &[String],
        hours: u32,
    ) -> Result<()> {
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
        let spec = json!({"account": account, "region": region, "snapshot_ids": snapshot_ids, "hours": hours});
        self.http("POST", "/_sim/age", &spec)?;
        let catalog = Catalog::new(sdk, table);
        let back = chrono::Duration::hours(i64::from(hours));
        let aged: Vec<_> = catalog
            .held_records()
            .await?
            .into_iter()
            .filter(|r| snapshot_ids.contains(&r.snapshot_id))
            .map(|mut r| {
                r.started -= back;
                r.first_seen -= back;
                for until in r.shared_with.values_mut() {
                    *until -= back;
                }
                r
            })
            .collect();
        catalog.put_held(&aged).await?;
        Ok(())
    }

    /// The function as another account deploys it: `sdk` signs as that account.
    pub fn app_as(
        &self,
        sdk: &SdkConfig,
        queue_url: &str,
        overrides: &[(&str, &str)],
    ) -> Result<App> {
        let app = App::new(self.config(queue_url, overrides)?, sdk);
        Ok(app.with_metrics_out(MetricsOut::to(|_| {})))
    }

    pub async fn age_snapshots(
        &self,
        region: &str,
        snapshot_ids: &[String],
        hours: u32,
    ) -> Result<()> {
        let spec = json!({"region": region, "snapshot_ids": snapshot_ids, "hours": hours});
        self.http("POST", "/_sim/age", &spec)?;
        let catalog = self.catalog();
        let (sets, _) = catalog.all_sets().await?;
        let back = chrono::Duration::hours(i64::from(hours));
        let aged: Vec<SetRecord> = sets
            .into_iter()
            .filter(|s| {
                s.snapshots
                    .iter()
                    .any(|r| snapshot_ids.contains(&r.snapshot_id))
            })
            .map(|mut s| {
                for r in &mut s.snapshots {
                    if snapshot_ids.contains(&r.snapshot_id) {
                        r.start_time -= back;
                    }
                }
                s.started_at -= back;
                s
            })
            .collect();
        catalog.put_sets(&aged, &[]).await?;
        // And the runs' own views of them, for the runs the function dispatched (seeded
        // history has none).
        let mut viewed = Vec::new();
        for set in aged {
            if catalog.run(&set.run_id).await?.is_some() {
                viewed.push(set);
            }
        }
        catalog.put_run_views(&viewed).await?;
        Ok(())
    }

    /// An operator's EBS Snapshot Lock on one home-region snapshot: compliance mode for
    /// `days` (EC2 refuses to delete it until then).
    pub async fn lock_snapshot(&self, snapshot_id: &str, days: i32) -> Result<()> {
        self.ec2()
            .lock_snapshot()
            .snapshot_id(snapshot_id)
            .lock_mode(aws_sdk_ec2::types::LockMode::Compliance)
            .lock_duration(days)
            .send()
            .await?;
        Ok(())
    }

    /// A Recycle Bin retention rule for snapshots of `region` (rbin's `CreateRule`, which the
    /// emulator takes at `/_sim/recycle-bin`): snapshots deleted while it matches them (every
    /// one, or those with one of `tags`) stay in the bin for `days`.
    pub fn recycle_bin_rule(&self, region: &str, days: u32, tags: &[(&str, &str)]) -> Result<()> {
        let tags: Vec<Value> = tags
            .iter()
            .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
            .collect();
        let body =
            serde_json::json!({"region": region, "retention_days": days, "resource_tags": tags});
        self.http("POST", "/_sim/recycle-bin", &body)?;
        Ok(())
    }

    /// Earlier nightly runs' consistent sets of these instances (see server.py's
    /// `/_sim/history`), recorded in the catalog as the function recorded them on those
    /// nights; answers how many snapshots were made.
    pub async fn seed_history(&self, history: &History) -> Result<u64> {
        // Tens of thousands of snapshots at once: minutes on a busy 2-core machine.
        let made = self.http_within(
            "POST",
            "/_sim/history",
            &serde_json::to_value(history)?,
            Duration::from_secs(600),
        )?;
        let count = made["snapshots"]
            .as_u64()
            .ok_or_else(|| format!("/_sim/history answered {made}"))?;
        let sets: Vec<MadeSet> = serde_json::from_value(made["sets"].clone())?;
        let mut records = Vec::with_capacity(sets.len());
        let mut copies = Vec::new();
        for set in sets {
            records.push(SetRecord {
                run_id: set.run_id.clone(),
                instance_id: set.instance_id.clone(),
                name: set.instance_id.clone(),
                region: history.region.clone(),
                started_at: set.taken,
                expected: set
                    .snapshots
                    .iter()
                    .map(|s| consistent_snapshot::AttachedVolume {
                        volume_id: s.volume_id.clone(),
                        device: s.device.clone(),
                    })
                    .collect(),
                snapshots: set
                    .snapshots
                    .iter()
                    .map(|s| RecordedSnapshot {
                        snapshot_id: s.snapshot_id.clone(),
                        volume_id: s.volume_id.clone(),
                        device: s.device.clone(),
                        start_time: set.taken,
                    })
                    .collect(),
                verdict: if set.consistent {
                    Verdict::Consistent
                } else {
                    Verdict::CrashConsistent
                },
                reason: None,
                cause: None,
                verified_at: set.taken,
                verified_by: "an earlier night (test fixture)".into(),
                fallback: false,
            });
            let devices: BTreeMap<String, String> = set
                .snapshots
                .iter()
                .map(|s| (s.snapshot_id.clone(), s.device.clone()))
                .collect();
            copies.extend(set.copies.into_iter().map(|c| CopyRecord {
                run_id: set.run_id.clone(),
                instance_id: set.instance_id.clone(),
                region: c.region,
                device: devices.get(&c.source_snapshot_id).cloned(),
                source_snapshot_id: c.source_snapshot_id,
                snapshot_id: c.snapshot_id,
                started_at: set.taken,
                consistent: set.consistent,
                file_system: false,
                imported: false,
                set_size: 0,
                seen_final: None,
            }));
        }
        let catalog = self.catalog();
        catalog.put_sets(&records, &copies).await?;
        // And the runs themselves, as those nights dispatched them.
        let mut runs: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        for r in &records {
            runs.insert(r.run_id.clone(), r.started_at);
        }
        for (run_id, started_at) in runs {
            let run = RunJob {
                run_id,
                started_at,
                deadline: started_at + chrono::Duration::hours(1),
                commands: vec![],
                skipped: vec![],
                unsent: vec![],
                attempt: 0,
                early: false,
            };
            catalog.put_run(&run, chrono::Utc::now()).await?;
        }
        Ok(count)
    }

    /// What each destination region saw of copies: started, refused with
    /// `ResourceLimitExceeded`, and the most in flight at once.
    pub fn copy_stats(&self) -> Result<BTreeMap<String, crate::CopyStats>> {
        Ok(serde_json::from_value(self.http(
            "GET",
            "/_sim/copies",
            &json!({}),
        )?)?)
    }

    /// Every simulated SSM invocation so far.
    pub fn invocations(&self) -> Result<Vec<Value>> {
        Ok(self
            .http("GET", "/_sim/invocations", &json!({}))?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Creates the tracking queue (standard, with a DLQ as the template has); answers its URL.
    pub async fn create_queue(&self, name: &str, visibility_seconds: u32) -> Result<String> {
        let sqs = self.sqs();
        let dlq = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await?;
        let dlq_url = dlq.queue_url().ok_or("no DLQ url")?;
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or("no DLQ arn")?;
        let queue = sqs
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_seconds.to_string(),
            )
            .attributes(
                QueueAttributeName::RedrivePolicy,
                json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}).to_string(),
            )
            .send()
            .await?;
        Ok(queue.queue_url().ok_or("no queue url")?.to_string())
    }

    /// The function, configured as a deployment would be, plus `overrides`.
    /// Its EMF metric lines are dropped (a test reads them through `Metrics::attach`).
    pub fn app(&self, queue_url: &str, overrides: &[(&str, &str)]) -> Result<App> {
        let app = App::new(self.config(queue_url, overrides)?, &self.sdk);
        Ok(app.with_metrics_out(MetricsOut::to(|_| {})))
    }

    /// The function's configuration as a deployment would set it, plus `overrides`.
    pub fn config(&self, queue_url: &str, overrides: &[(&str, &str)]) -> Result<Config> {
        let mut env: HashMap<String, String> = [
            ("QUEUE_URL", queue_url),
            ("QUEUE_ARN", &queue_arn(queue_url)),
            ("CATALOG_TABLE", CATALOG_TABLE),
            ("AWS_REGION", REGION),
            ("MANAGED_BY", "vss-test"),
            ("PROBE_DOCUMENT", PROBE_DOCUMENT),
            ("TRACK_POLL_INITIAL_SECONDS", "1"),
            ("TRACK_POLL_MAX_SECONDS", "2"),
            // On by default in a deployment; here a test sees VSS's own outcome of each server
            // unless it is about the fallback, and turns it on (run_outcomes::…fallback…).
            ("CRASH_CONSISTENT_FALLBACK", "false"),
            // One retry by default in a deployment; off here but where a test is about it.
            ("VSS_RETRIES", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Ok(Config::from_lookup(|name| env.get(name).cloned())?)
    }
}

/// The `Content` of the template's `ReadinessProbeDocument`, as a document of its own: the
/// lines under `Content:` (indented 8), unindented.
pub fn probe_document_content() -> Result<String> {
    let template = std::fs::read_to_string(workspace_root().join("template.yaml"))?;
    let content: Vec<&str> = template
        .lines()
        .skip_while(|l| l.trim_end() != "  ReadinessProbeDocument:")
        .skip_while(|l| l.trim_end() != "      Content:")
        .skip(1)
        .take_while(|l| l.trim().is_empty() || l.starts_with("        "))
        .map(|l| l.get(8..).unwrap_or(""))
        .collect();
    if content.is_empty() {
        return Err("template.yaml has no ReadinessProbeDocument Content".into());
    }
    Ok(content.join("\n"))
}

/// One set `/_sim/history` made.
#[derive(serde::Deserialize)]
struct MadeSet {
    run_id: String,
    instance_id: String,
    taken: chrono::DateTime<chrono::Utc>,
    consistent: bool,
    snapshots: Vec<MadeSnapshot>,
    copies: Vec<MadeCopy>,
}

#[derive(serde::Deserialize)]
struct MadeSnapshot {
    snapshot_id: String,
    volume_id: String,
    device: String,
}

#[derive(serde::Deserialize)]
struct MadeCopy {
    snapshot_id: String,
    source_snapshot_id: String,
    region: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
