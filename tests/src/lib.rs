//! Test harness: the local AWS emulator, a seeded Windows fleet, and a local SQS event source.
//!
//! The emulator (tests/emulator/server.py: moto plus the simulated Windows side) runs as a child
//! process on 127.0.0.1 at a free port. The function under test is the real `consistent_snapshot::handle`, fed
//! real event payloads; it only talks AWS APIs over HTTP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, InstanceType, ResourceType, Tag, TagSpecification,
};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use consistent_snapshot::MetricsOut;
use consistent_snapshot::RunSummary;
use consistent_snapshot::{App, Config};
use serde_json::{json, Value};

pub mod bench;
pub mod chaos;
pub mod faults;
pub mod runtime;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The function's timeout in the tests: `invoke` stops an invocation there, as Lambda does, and
/// a run it claimed is held until then (plus the function's margin).
pub const FUNCTION_TIMEOUT: Duration = Duration::from_secs(6);

/// Invokes the function as Lambda would: with its deadline, stopped when the deadline passes.
pub async fn invoke(app: &App, payload: Value) -> Result<Value> {
    let deadline = deadline_in(FUNCTION_TIMEOUT);
    match tokio::time::timeout(
        FUNCTION_TIMEOUT,
        consistent_snapshot::handle_until(app, payload, deadline),
    )
    .await
    {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(format!("the invocation timed out after {FUNCTION_TIMEOUT:?}").into()),
    }
}

pub fn deadline_in(timeout: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::milliseconds(timeout.as_millis() as i64)
}

pub const REGION: &str = "us-east-1";

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

/// The demo fleet: well-behaved Windows servers, one whose VSS freeze fails, one whose SSM
/// agent is offline, one untagged and one stopped.
pub fn demo_fleet() -> Vec<ServerSpec> {
    vec![
        ServerSpec::windows("sql-prod-01", 3),
        ServerSpec::windows("sql-prod-02", 2).sim(json!({"duration": 2.5})),
        ServerSpec::windows("exchange-01", 3),
        ServerSpec::windows("files-01", 2),
        ServerSpec::windows("files-02", 3),
        ServerSpec::windows("app-01", 2),
        ServerSpec::windows("sql-dev-01", 2).sim(json!({"outcome": "vss_failure"})),
        ServerSpec::windows("branch-01", 1).sim(json!({"ssm": "offline"})),
        ServerSpec::windows("print01", 1).untagged(),
        ServerSpec::windows("legacy01", 2).stopped(),
    ]
}
pub const TAG_KEY: &str = "ConsistentSnapshot";
pub const TAG_VALUE: &str = "WindowsVSS";

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
        Ok(Emulator {
            child: Some(child),
            port,
            sdk,
        })
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

    /// Sets how EBS behaves (see server.py: pending_seconds, copy_refusals).
    pub fn simulate_ebs(&self, spec: Value) -> Result<()> {
        self.http("POST", "/_sim/ebs", &spec).map(|_| ())
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

    /// A plain HTTP call to the emulator's own API (/_sim/..., /moto-api/...).
    pub fn http(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        // Half-close: the server (werkzeug) drains the socket after answering and must see EOF,
        // or both sides wait for each other.
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, payload) = response
            .split_once("\r\n\r\n")
            .ok_or("malformed HTTP answer")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("{method} {path}: {head}: {payload}").into());
        }
        Ok(serde_json::from_str(payload).unwrap_or(Value::Null))
    }

    /// Sets how simulated instances behave (see server.py for the fields).
    pub fn simulate(&self, spec: Value) -> Result<()> {
        self.http("POST", "/_sim/instances", &spec).map(|_| ())
    }

    /// Moves these snapshots' start time `hours` back, as if taken that much earlier.
    pub fn age_snapshots(&self, region: &str, snapshot_ids: &[String], hours: u32) -> Result<()> {
        let spec = json!({"region": region, "snapshot_ids": snapshot_ids, "hours": hours});
        self.http("POST", "/_sim/age", &spec).map(|_| ())
    }

    /// Earlier nightly runs' consistent sets of these instances (see server.py's
    /// `/_sim/history`); answers how many snapshots were made.
    pub fn seed_history(&self, spec: Value) -> Result<u64> {
        let made = self.http("POST", "/_sim/history", &spec)?;
        made["snapshots"]
            .as_u64()
            .ok_or_else(|| format!("/_sim/history answered {made}").into())
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
            ("AWS_REGION", REGION),
            ("MANAGED_BY", "vss-test"),
            ("TRACK_POLL_INITIAL_SECONDS", "1"),
            ("TRACK_POLL_MAX_SECONDS", "2"),
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

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One simulated server of the fleet.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    pub windows: bool,
    pub tagged: bool,
    pub data_volumes: usize,
    pub stopped: bool,
    pub extra_tags: Vec<(String, String)>,
    /// How the simulated Windows side behaves (server.py's fields).
    pub sim: Value,
}

impl ServerSpec {
    pub fn windows(name: &str, data_volumes: usize) -> Self {
        ServerSpec {
            name: name.into(),
            windows: true,
            tagged: true,
            data_volumes,
            stopped: false,
            extra_tags: vec![],
            sim: json!({}),
        }
    }

    pub fn sim(mut self, sim: Value) -> Self {
        self.sim = sim;
        self
    }

    /// Without the target tag: not part of the fleet.
    pub fn untagged(mut self) -> Self {
        self.tagged = false;
        self
    }

    pub fn stopped(mut self) -> Self {
        self.stopped = true;
        self
    }

    /// Launched from a Linux AMI.
    pub fn linux(mut self) -> Self {
        self.windows = false;
        self
    }

    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.extra_tags.push((key.into(), value.into()));
        self
    }
}

pub const DATA_DEVICES: [&str; 4] = ["xvdf", "xvdg", "xvdh", "xvdi"];

pub async fn image_ids(ec2: &aws_sdk_ec2::Client) -> Result<(String, String)> {
    let windows = ec2
        .describe_images()
        .filters(Filter::builder().name("platform").values("windows").build())
        .send()
        .await?;
    let windows = windows
        .images()
        .first()
        .and_then(|i| i.image_id())
        .ok_or("no Windows AMI in the emulator")?;
    let all = ec2.describe_images().send().await?;
    let linux = all
        .images()
        .iter()
        .find(|i| i.platform().is_none())
        .and_then(|i| i.image_id())
        .ok_or("no Linux AMI in the emulator")?;
    Ok((windows.to_string(), linux.to_string()))
}

fn mappings(data_volumes: usize) -> Vec<BlockDeviceMapping> {
    // moto creates no root volume when mappings are given: list the root device too.
    std::iter::once("/dev/sda1")
        .chain(DATA_DEVICES.iter().copied().take(data_volumes))
        .enumerate()
        .map(|(i, device)| {
            BlockDeviceMapping::builder()
                .device_name(device)
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(if i == 0 { 50 } else { 100 })
                        .build(),
                )
                .build()
        })
        .collect()
}

/// Launches the servers (one reservation each) and configures their simulated Windows side.
pub async fn seed(emulator: &Emulator, servers: &[ServerSpec]) -> Result<Vec<String>> {
    let ec2 = emulator.ec2();
    let (windows, linux) = image_ids(&ec2).await?;
    let mut ids = Vec::new();
    let mut sim = serde_json::Map::new();
    for server in servers {
        let mut tags = vec![Tag::builder().key("Name").value(&server.name).build()];
        if server.tagged {
            tags.push(Tag::builder().key(TAG_KEY).value(TAG_VALUE).build());
        }
        tags.extend(
            server
                .extra_tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build()),
        );
        let out = ec2
            .run_instances()
            .image_id(if server.windows { &windows } else { &linux })
            .instance_type(InstanceType::M5Large)
            .min_count(1)
            .max_count(1)
            .set_block_device_mappings(Some(mappings(server.data_volumes)))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            )
            .send()
            .await?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or("no instance launched")?
            .to_string();
        if server.stopped {
            ec2.stop_instances().instance_ids(&id).send().await?;
        }
        sim.insert(id.clone(), server.sim.clone());
        ids.push(id);
    }
    emulator.simulate(Value::Object(sim))?;
    Ok(ids)
}

/// Launches `count` tagged Windows servers, `per_reservation` at a time, all behaving well.
pub async fn seed_bulk(
    emulator: &Emulator,
    count: usize,
    per_reservation: usize,
    data_volumes: usize,
) -> Result<Vec<String>> {
    let ec2 = emulator.ec2();
    let (windows, _) = image_ids(&ec2).await?;
    let mut ids = Vec::new();
    while ids.len() < count {
        let n = per_reservation.min(count - ids.len()) as i32;
        let out = ec2
            .run_instances()
            .image_id(&windows)
            .min_count(n)
            .max_count(n)
            .set_block_device_mappings(Some(mappings(data_volumes)))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key(TAG_KEY).value(TAG_VALUE).build())
                    .build(),
            )
            .send()
            .await?;
        ids.extend(
            out.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string)),
        );
    }
    let sim: serde_json::Map<String, Value> = ids
        .iter()
        .map(|id| (id.clone(), json!({"lag": 0.05, "duration": 0.1})))
        .collect();
    emulator.simulate(Value::Object(sim))?;
    Ok(ids)
}

/// What the local event source did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    pub invocations: usize,
    pub messages: usize,
    pub failures: usize,
}

/// Does what the Lambda event source mapping does: receives up to `batch_size` messages,
/// invokes the function with a real `SqsEvent`, deletes what succeeded and leaves the failures
/// to come back after their visibility timeout. Returns once the queue is empty.
pub async fn drain(
    emulator: &Emulator,
    app: &App,
    queue_url: &str,
    batch_size: i32,
    limit: Duration,
) -> Result<Drained> {
    drain_with(emulator, queue_url, batch_size, limit, |event| {
        invoke(app, event)
    })
    .await
}

/// `drain`, handing each batch's `SqsEvent` to `invoke` (the function in this process, or the
/// release binary behind a `runtime::LocalRuntime`).
pub async fn drain_with<F, Fut>(
    emulator: &Emulator,
    queue_url: &str,
    batch_size: i32,
    limit: Duration,
    mut invoke: F,
) -> Result<Drained>
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let sqs = emulator.sqs();
    let arn = queue_arn(queue_url);
    let started = Instant::now();
    let mut drained = Drained::default();
    loop {
        if started.elapsed() > limit {
            return Err(format!("queue not drained within {limit:?}: {drained:?}").into());
        }
        let messages = receive(&sqs, queue_url, batch_size, 1).await?;
        let messages = messages.as_slice();
        if messages.is_empty() {
            if queue_is_empty(&sqs, queue_url).await? {
                return Ok(drained);
            }
            continue;
        }
        let records = sqs_records(messages, &arn);
        let response = invoke(json!({ "Records": records })).await?;
        let failed = batch_failures(&response);
        drained.invocations += 1;
        drained.messages += messages.len();
        drained.failures += failed.len();
        for m in messages {
            if failed.iter().any(|f| Some(f.as_str()) == m.message_id()) {
                continue;
            }
            if let Some(handle) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await?;
            }
        }
    }
}

/// A nightly run end to end: the scheduled event for `time`, then the queue to the end;
/// answers the run id.
pub async fn nightly_run(
    emulator: &Emulator,
    app: &App,
    queue_url: &str,
    time: &str,
) -> Result<String> {
    let start = invoke(app, scheduled_event("nightly", time)).await?;
    let run_id = start["run_id"]
        .as_str()
        .ok_or_else(|| format!("no run id in {start}"))?
        .to_string();
    drain(emulator, app, queue_url, 10, Duration::from_secs(120)).await?;
    Ok(run_id)
}

/// Receives up to `batch_size` messages with every system attribute, as the event source
/// mapping does.
pub async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    batch_size: i32,
    wait_seconds: i32,
) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    let received = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(batch_size)
        .wait_time_seconds(wait_seconds)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await?;
    Ok(received.messages().to_vec())
}

/// The records of an `SqsEvent` as the Lambda event source mapping builds them.
pub fn sqs_records(messages: &[aws_sdk_sqs::types::Message], arn: &str) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            })
        })
        .collect()
}

/// The message ids an `SqsBatchResponse` reports as failed.
pub fn batch_failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The queue's ARN in the emulator's account.
pub fn queue_arn(queue_url: &str) -> String {
    format!(
        "arn:aws:sqs:{REGION}:123456789012:{}",
        queue_url.rsplit('/').next().unwrap_or("queue")
    )
}

pub async fn queue_is_empty(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<bool> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await?;
    let attributes = out.attributes().cloned().unwrap_or_default();
    Ok(attributes.values().all(|v| v == "0"))
}

/// How many messages wait in the queue called `name` (visible, in flight or delayed).
pub async fn queue_depth(emulator: &Emulator, name: &str) -> Result<usize> {
    let sqs = emulator.sqs();
    let url = sqs.get_queue_url().queue_name(name).send().await?;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url.queue_url().unwrap_or_default())
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await?;
    Ok(out
        .attributes()
        .map(|a| a.values().filter_map(|v| v.parse::<usize>().ok()).sum())
        .unwrap_or(0))
}

/// The snapshots carrying this run id, as an operator would list them.
pub async fn run_snapshots(
    emulator: &Emulator,
    run_id: &str,
) -> Result<Vec<aws_sdk_ec2::types::Snapshot>> {
    let out = emulator
        .ec2()
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:ConsistentSnapshot:RunId")
                .values(run_id)
                .build(),
        )
        .send()
        .await?;
    Ok(out.snapshots().to_vec())
}

/// A snapshot's tag value.
pub fn snapshot_tag<'a>(snapshot: &'a aws_sdk_ec2::types::Snapshot, key: &str) -> Option<&'a str> {
    snapshot
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// A scheduled event as an EventBridge rule delivers it.
pub fn scheduled_event(rule: &str, time: &str) -> Value {
    json!({
        "version": "0",
        "id": "89d1a02d-5ec7-412e-82f5-13505f849b41",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time,
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:123456789012:rule/{rule}")],
        "detail": {}
    })
}

/// Captures the function's JSON log lines, as CloudWatch would receive them.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>, Option<Arc<Mutex<std::fs::File>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut all) = self.0.lock() {
            all.extend_from_slice(buf);
        }
        if let Some(file) = &self.1 {
            if let Ok(mut file) = file.lock() {
                file.write_all(buf)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs JSON logging for the current thread (tests run the function on their own
    /// current-thread runtime); a copy goes to `file` when given.
    pub fn capture(
        file: Option<&std::path::Path>,
    ) -> Result<(Self, tracing::subscriber::DefaultGuard)> {
        let logs = Logs::default();
        let buf = logs.0.clone();
        let file = match file {
            Some(path) => Some(Arc::new(Mutex::new(std::fs::File::create(path)?))),
            None => None,
        };
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(buf.clone(), file.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        Ok((logs, guard))
    }

    pub fn records(&self) -> Vec<Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The run's summary as the function logged it, if it did.
    pub fn run_report(&self, run_id: &str) -> Option<RunSummary> {
        self.run_reports(run_id).into_iter().next()
    }

    /// Every summary the function logged for the run (exactly one is right).
    pub fn run_reports(&self, run_id: &str) -> Vec<RunSummary> {
        self.records()
            .iter()
            .filter(|r| r["run_id"] == run_id)
            .filter_map(|r| {
                r["report"]
                    .as_str()
                    .and_then(|s| serde_json::from_str(s).ok())
            })
            .collect()
    }

    /// Log records whose message starts with `text`.
    pub fn messages_starting(&self, text: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with(text)))
            .collect()
    }
}

/// The function's EMF metric lines, captured instead of written to standard output.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Vec<String>>>);

impl Metrics {
    /// An app whose metric lines go here.
    pub fn attach(&self, app: App) -> App {
        let lines = self.0.clone();
        app.with_metrics_out(MetricsOut::to(move |line| {
            if let Ok(mut lines) = lines.lock() {
                lines.push(line.to_string());
            }
        }))
    }

    /// Every line, parsed.
    pub fn lines(&self) -> Vec<Value> {
        let lines = self.0.lock().map(|l| l.clone()).unwrap_or_default();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    /// The lines of one event (`run`, `copies`, `retention`, `report`), of one run if given.
    pub fn of(&self, event: &str, run_id: Option<&str>) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["Event"] == event)
            .filter(|l| run_id.is_none_or(|r| l["RunId"] == r))
            .collect()
    }
}

/// SSM commands per instance for a run, as the simulated Windows side received them.
pub fn commands_per_instance(
    invocations: &[Value],
    run_id: &str,
) -> std::collections::BTreeMap<String, usize> {
    let comment = consistent_snapshot::comment(run_id);
    let mut per = std::collections::BTreeMap::new();
    for inv in invocations
        .iter()
        .filter(|i| i["comment"] == comment.as_str())
    {
        if let Some(id) = inv["instance_id"].as_str() {
            *per.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    per
}
