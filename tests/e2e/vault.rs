//! The vault account, end to end on two accounts (STS AssumeRole): each night's consistent sets
//! are shared with the vault account, copied there by the vault's role (the policy of
//! `vault.yaml`, enforced by the emulator's IAM), locked there and unshared; the catalog and the
//! fleet report record the coverage. A principal with every permission of the fleet account then
//! deletes every snapshot it can at home and, through the vault's role, tries to delete, unlock
//! and share the vault copies: every vault copy is still there, and still locked. Then the
//! vault's own deployment (`MODE=vault`, with its own catalog) lists a server's whole sets and
//! shares the chosen one with a recovery account, whose volumes come from exactly that set, even
//! after the attacker forged a copy into it; its retention deletes exactly the copies past their
//! days and locks, never a server's newest set; and a copy someone deletes in the vault is
//! reported, once, with the server it leaves without a whole set.

use std::collections::BTreeMap;

use chrono::Utc;
use harness::{Emulator, Metrics, ServerSpec, World};
use serde_json::json;

const HOME: &str = "us-east-1";
const VAULT_REGION: &str = "eu-west-1";
const VAULT: &str = "222222222222";
const ROLE: &str = "consistent-snapshot-vault-access";
const RECOVERY: &str = "333333333333";
const VAULT_CATALOG: &str = "vault-catalog";

/// The vault's role as `vault.yaml` makes it (`scripts/check_template.py` keeps the two equal).
fn vault_policy() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/vault-access-policy.json"
    ))
    .expect("tests/fixtures/vault-access-policy.json")
}

/// `source snapshot -> (copy id, state)` of the run's copies in the vault, as the vault's own
/// administrator lists them.
async fn vault_copies(
    ec2: &aws_sdk_ec2::Client,
    run_id: &str,
) -> BTreeMap<String, (String, String)> {
    harness::snapshots_where(ec2, ("tag:ConsistentSnapshot:RunId", run_id))
        .await
        .iter()
        .map(|s| {
            let source = harness::snapshot_tag(s, "ConsistentSnapshot:SourceSnapshotId")
                .unwrap_or_default()
                .to_string();
            (
                source,
                (
                    s.snapshot_id().unwrap_or_default().to_string(),
                    s.state()
                        .map(|x| x.as_str().to_string())
                        .unwrap_or_default(),
                ),
            )
        })
        .collect()
}

/// Every snapshot of these servers at home.
async fn at_home(emulator: &Emulator, ids: &[String]) -> Vec<String> {
    let mut all = Vec::new();
    for id in ids {
        for snapshots in harness::sets_of(emulator, HOME, id).await.into_values() {
            all.extend(snapshots);
        }
    }
    all.sort();
    all
}

/// The home snapshots under a lock in force.
async fn locked_at_home(emulator: &Emulator) -> Vec<String> {
    let locks = emulator.locks_in_force(HOME).await.expect("locks");
    locks.into_keys().collect()
}

/// A day passes at home (the sets and their locks age by a day): the next night comes.
async fn a_day_passes(emulator: &Emulator, ids: &[String]) {
    let all = at_home(emulator, ids).await;
    emulator.age_snapshots(HOME, &all, 24).await.expect("age");
}

/// Now, as a schedule's event carries it.
fn now_text() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The vault deployment invoked by its schedule, now.
async fn on_its_schedule(world: &World, keeper: &consistent_snapshot::App) -> serde_json::Value {
    world
        .invoke(keeper, harness::scheduled_event("vault", &now_text()))
        .await
        .expect("the vault's schedule")
}

/// What each test here starts from: two servers (sql01 with a data volume, on the default EBS
/// key when `sql_encrypted`; files01 with its boot volume only), the vault's role as
/// `vault.yaml` makes it, and the vault administrator's EC2 in the vault region.
struct Start {
    world: World,
    ids: Vec<String>,
    role_arn: String,
    admin: aws_sdk_ec2::Client,
}

async fn start(sql_encrypted: bool) -> Start {
    let world = World::start(1).await.expect("world");
    let sql = ServerSpec::windows("sql01", 1);
    let ids = world
        .seed(&[
            if sql_encrypted { sql.encrypted() } else { sql },
            ServerSpec::windows("files01", 0),
        ])
        .await
        .expect("seed");
    let role_arn = world
        .emulator
        .create_role_in(VAULT, ROLE, &vault_policy())
        .await
        .expect("the vault role");
    let admin = world
        .emulator
        .ec2_as(
            &format!("arn:aws:iam::{VAULT}:role/administrator"),
            VAULT_REGION,
        )
        .await;
    Start {
        world,
        ids,
        role_arn,
        admin,
    }
}

#[tokio::test]
async fn a_compromised_fleet_account_cannot_touch_the_vault_copies() {
    let Start {
        world,
        ids,
        role_arn,
        admin,
    } = start(false).await;
    let emulator = &world.emulator;
    // Three earlier nights, a day apart, as the function recorded them.
    emulator
        .seed_history(&harness::History::nightly(HOME, &ids, 3))
        .await
        .expect("history");
    emulator
        .recycle_bin_rule(HOME, 7, &[("ConsistentSnapshot:ManagedBy", "vss-test")])
        .expect("Recycle Bin rule");
    let metrics = Metrics::default();
    let app = metrics.attach(
        world
            .app(&[
                ("RETAIN_DAILY", "2"),
                ("LOCK_MODE", "compliance"),
                ("VAULT_ACCOUNT_ID", VAULT),
                ("VAULT_ROLE_ARN", &role_arn),
                ("VAULT_REGIONS", VAULT_REGION),
                ("VAULT_KMS_KEY_IDS", &format!("{VAULT_REGION}=alias/vault")),
                ("VAULT_LOCK_DAYS", "7"),
            ])
            .expect("app"),
    );
    let fleet = emulator.ec2_in(HOME);

    let mut nights = Vec::new();
    for n in 0..2 {
        if n > 0 {
            a_day_passes(emulator, &ids).await;
        }
        let time = now_text();
        let night = world.nightly(&app, &time).await.expect("night");
        assert!(world
            .logs
            .run_report(&night)
            .expect("summary")
            .all_consistent());
        // Every snapshot of every set has one completed copy in the vault, locked there, and
        // is no longer shared once the step is over.
        let mut sources = Vec::new();
        let mut of_server = BTreeMap::new();
        for id in &ids {
            let sets = harness::sets_of(emulator, HOME, id).await;
            sources.extend(sets[&night].iter().cloned());
            of_server.insert(id.clone(), sets[&night].clone());
        }
        assert_eq!(sources.len(), 3, "two volumes and one: {sources:?}");
        let copies = vault_copies(&admin, &night).await;
        assert_eq!(
            copies.keys().cloned().collect::<Vec<_>>(),
            {
                let mut s = sources.clone();
                s.sort();
                s
            },
            "one vault copy of each snapshot of the night's sets"
        );
        let locks = admin
            .describe_locked_snapshots()
            .send()
            .await
            .expect("vault locks");
        for (source, (copy, state)) in &copies {
            assert_eq!(state, "completed", "{copy}");
            assert!(
                locks
                    .snapshots()
                    .iter()
                    .any(|l| l.snapshot_id() == Some(copy.as_str())
                        && l.lock_state().map(|s| s.as_str()) == Some("governance")),
                "{copy} locked in the vault"
            );
            let shared = fleet
                .describe_snapshot_attribute()
                .snapshot_id(source)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .send()
                .await
                .expect("attribute");
            assert!(
                shared.create_volume_permissions().is_empty(),
                "{source} still shared: {shared:?}"
            );
        }
        let summary = world.logs.messages_starting("vault:");
        assert!(
            summary.iter().any(|l| l["run_id"] == night.as_str()),
            "the vault step's summary of {night}: {summary:#?}"
        );
        nights.push((night, copies, of_server));
    }

    // The fleet report shows each server's newest set in the vault.
    let report = world.report(&app).await.expect("report");
    for server in report["instances"].as_array().expect("instances") {
        assert_eq!(
            server["vault"]["newest_set_vaulted"],
            json!(true),
            "{server:#}"
        );
        assert_eq!(
            server["vault"]["newest_copy_run"],
            json!(nights[1].0),
            "{server:#}"
        );
    }
    assert_eq!(report["totals"].get("vault_missing"), None, "{report:#}");

    // The attacker holds every permission of the fleet account: it deletes every snapshot it
    // can at home, then assumes the vault's role (which the fleet account may) and tries to
    // delete, unlock and share every vault copy.
    let vault_role = emulator.ec2_as(&role_arn, VAULT_REGION).await;
    let all: Vec<&String> = nights
        .iter()
        .flat_map(|(_, copies, _)| copies.values().map(|(copy, _)| copy))
        .collect();
    for copy in &all {
        use aws_sdk_ec2::error::ProvideErrorMetadata;
        fn code<E: ProvideErrorMetadata, R>(
            answer: Result<
                R,
                aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
            >,
        ) -> Option<String> {
            answer.err().and_then(|e| {
                e.as_service_error()
                    .and_then(|s| s.code())
                    .map(str::to_string)
            })
        }
        let delete = code(vault_role.delete_snapshot().snapshot_id(*copy).send().await);
        let unlock = code(vault_role.unlock_snapshot().snapshot_id(*copy).send().await);
        let share = code(
            vault_role
                .modify_snapshot_attribute()
                .snapshot_id(*copy)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .operation_type(aws_sdk_ec2::types::OperationType::Add)
                .user_ids("333333333333")
                .send()
                .await,
        );
        for (what, refused) in [("delete", delete), ("unlock", unlock), ("share", share)] {
            assert_eq!(
                refused.as_deref(),
                Some("UnauthorizedOperation"),
                "{what} of vault copy {copy}"
            );
        }
    }
    // The fleet account's own deletions at home: every snapshot it sees. Exactly the locked
    // ones are left (tonight's set: two are kept, and the older goes tomorrow, unlocked).
    let locked = locked_at_home(emulator).await;
    let before = at_home(emulator, &ids).await;
    let mut deleted_at_home = 0;
    for snapshot in &before {
        if fleet
            .delete_snapshot()
            .snapshot_id(snapshot)
            .send()
            .await
            .is_ok()
        {
            deleted_at_home += 1;
        }
    }
    assert!(
        !locked.is_empty() && deleted_at_home > 0,
        "{locked:?} of {before:?}"
    );
    assert_eq!(
        at_home(emulator, &ids).await,
        locked,
        "exactly the locked sets are left"
    );
    assert_eq!(deleted_at_home, before.len() - locked.len());
    // Every vault copy is there, completed and still locked.
    let locks = admin
        .describe_locked_snapshots()
        .send()
        .await
        .expect("vault locks");
    for (night, copies, _) in &nights {
        let now = vault_copies(&admin, night).await;
        assert_eq!(&now, copies, "{night}: the vault copies are untouched");
        for (copy, _) in copies.values() {
            assert!(
                locks
                    .snapshots()
                    .iter()
                    .any(|l| l.snapshot_id() == Some(copy.as_str())),
                "{copy} still locked"
            );
        }
    }

    // The vault's own deployment, in its region, as the vault account.
    let vault_sdk = emulator
        .as_role(&format!("arn:aws:iam::{VAULT}:role/administrator"))
        .await
        .to_builder()
        .region(aws_config::Region::new(VAULT_REGION))
        .build();
    emulator
        .create_catalog_as(&vault_sdk, VAULT_CATALOG)
        .await
        .expect("the vault's catalog");
    let vault_metrics = Metrics::default();
    let keeper = vault_metrics.attach(
        emulator
            .app_as(
                &vault_sdk,
                &world.queue,
                &[
                    ("MODE", "vault"),
                    ("AWS_REGION", VAULT_REGION),
                    ("CATALOG_TABLE", VAULT_CATALOG),
                    ("FLEET_MANAGED_BY", "vss-test"),
                    ("VAULT_RETAIN_DAYS", "35"),
                    ("VAULT_KEEP_NEWEST", "1"),
                    ("RECOVERY_ACCOUNTS", RECOVERY),
                    ("RECOVERY_SHARE_DAYS", "1"),
                    ("RPO_HOURS", "26"),
                ],
            )
            .expect("vault app"),
    );
    let (newest, newest_copies, newest_sets) = &nights[1];
    let server = &ids[0];
    let refused = world
        .invoke(
            &keeper,
            json!({"action": "recover", "instance_id": server, "account": "444444444444"}),
        )
        .await;
    assert!(
        refused.is_err(),
        "a recovery into an account not named: {refused:?}"
    );
    // Without a run, the whole sets are listed, newest first, and nothing is shared; the
    // operator chooses one.
    let listed = world
        .invoke(
            &keeper,
            json!({"action": "recover", "instance_id": server, "account": RECOVERY}),
        )
        .await
        .expect("recover: the list");
    assert_eq!(listed["shared"], json!(false), "{listed:#}");
    let runs: Vec<&str> = listed["whole_runs"]
        .as_array()
        .expect("whole runs")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(runs, [newest.as_str(), nights[0].0.as_str()], "{listed:#}");
    assert!(
        listed["whole_runs"]
            .as_array()
            .expect("whole runs")
            .iter()
            .all(|r| r["intruders"] == json!(0)),
        "{listed:#}"
    );
    // The attacker forges a copy into that set: a snapshot of the fleet's, shared with the
    // vault, copied there by the vault's role and tagged as one of the server's newest set.
    let source = &locked[0];
    fleet
        .modify_snapshot_attribute()
        .snapshot_id(source)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .operation_type(aws_sdk_ec2::types::OperationType::Add)
        .user_ids(VAULT)
        .send()
        .await
        .expect("the fleet account shares its snapshot with the vault");
    let set_size = newest_sets[server].len().to_string();
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    let forged = vault_role
        .copy_snapshot()
        .source_region(HOME)
        .source_snapshot_id(source)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Snapshot)
                .tags(tag("ConsistentSnapshot:ManagedBy", "vss-test"))
                .tags(tag("ConsistentSnapshot:InstanceId", server))
                .tags(tag("ConsistentSnapshot:RunId", newest))
                .tags(tag("ConsistentSnapshot:SetSize", &set_size))
                .tags(tag("Device", "xvdz"))
                .build(),
        )
        .send()
        .await
        .expect("the vault role copies what it is given")
        .snapshot_id()
        .unwrap_or_default()
        .to_string();
    let shared = world
        .invoke(
            &keeper,
            json!({"action": "recover", "instance_id": server, "account": RECOVERY, "run_id": newest}),
        )
        .await
        .expect("recover");
    assert_eq!(shared["run_id"], json!(newest), "{shared:#}");
    assert!(shared["shared_until"].is_string(), "{shared:#}");
    let mut expected: Vec<String> = newest_sets[server]
        .iter()
        .map(|source| newest_copies[source].0.clone())
        .collect();
    expected.sort();
    let mut got: Vec<String> = shared["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .filter_map(|s| s["snapshot_id"].as_str().map(str::to_string))
        .collect();
    got.sort();
    assert_eq!(
        got, expected,
        "exactly the server's newest set, from the vault, without the forged copy {forged}"
    );
    let intake = vault_metrics.of("vault-intake", None);
    assert_eq!(
        intake.last().map(|m| &m["VaultIntruders"]),
        Some(&json!(1)),
        "{intake:#?}"
    );
    let relisted = world
        .invoke(
            &keeper,
            json!({"action": "recover", "instance_id": server, "account": RECOVERY}),
        )
        .await
        .expect("recover: the list");
    assert_eq!(relisted["whole_runs"][0]["run_id"], json!(newest));
    assert_eq!(
        relisted["whole_runs"][0]["intruders"],
        json!(1),
        "{relisted:#}"
    );
    // The recovery account makes its volumes from them; nothing else of the vault is shared.
    let recovery = emulator
        .ec2_as(
            &format!("arn:aws:iam::{RECOVERY}:role/administrator"),
            VAULT_REGION,
        )
        .await;
    for copy in &expected {
        let volume = recovery
            .create_volume()
            .snapshot_id(copy)
            .availability_zone(format!("{VAULT_REGION}a"))
            .send()
            .await
            .expect("a volume from the shared vault copy");
        assert_eq!(volume.snapshot_id(), Some(copy.as_str()));
    }
    let other: Vec<&String> = newest_sets[&ids[1]]
        .iter()
        .map(|source| &newest_copies[source].0)
        .collect();
    for copy in other {
        let volume = recovery
            .create_volume()
            .snapshot_id(copy)
            .availability_zone(format!("{VAULT_REGION}a"))
            .send()
            .await;
        assert!(volume.is_err(), "{copy} of another server was not shared");
    }
    // A day and an hour on (RECOVERY_SHARE_DAYS=1), the vault's schedule ends the share: the
    // recovery account can no longer make volumes from the set.
    emulator
        .age_vault_copies(&vault_sdk, (VAULT, VAULT_CATALOG), &expected, 25)
        .await
        .expect("a day on");
    let scheduled = on_its_schedule(&world, &keeper).await;
    let mut ended: Vec<String> = scheduled["shares_ended"]
        .as_array()
        .expect("shares ended")
        .iter()
        .filter_map(|s| s["snapshot_id"].as_str().map(str::to_string))
        .collect();
    ended.sort();
    assert_eq!(ended, expected, "{scheduled:#}");
    for copy in &expected {
        let volume = recovery
            .create_volume()
            .snapshot_id(copy)
            .availability_zone(format!("{VAULT_REGION}a"))
            .send()
            .await;
        assert!(volume.is_err(), "{copy}: the share is over");
    }

    // The vault's retention: nothing is old yet, and the copies are locked. Forty days on,
    // night one's copies are past their days and their locks, and not a server's newest:
    // exactly they go.
    let plan = world
        .invoke(&keeper, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("vault retention");
    assert_eq!(
        plan["held"],
        json!(7),
        "six copies and the forged one: {plan:#}"
    );
    assert!(
        plan["plan"]
            .as_array()
            .expect("plan")
            .iter()
            .all(|d| d["delete"] == json!(false)),
        "{plan:#}"
    );
    let (first, first_copies, _) = &nights[0];
    let old: Vec<String> = first_copies
        .values()
        .map(|(copy, _)| copy.clone())
        .collect();
    // Twenty days on, night one's locks (seven days) are over, but its copies are younger
    // than the vault's 35 days: kept, and said so.
    emulator
        .age_vault_copies(&vault_sdk, (VAULT, VAULT_CATALOG), &old, 24 * 20)
        .await
        .expect("twenty days");
    let kept = world
        .invoke(&keeper, json!({"action": "retention"}))
        .await
        .expect("vault retention");
    assert_eq!(kept["deleted"], json!([]), "{kept:#}");
    for decision in kept["plan"].as_array().expect("plan") {
        if old.iter().any(|id| decision["snapshot_id"] == json!(id)) {
            assert_eq!(
                decision["reason"],
                json!("younger than 35 days"),
                "{decision:#}"
            );
        }
    }
    emulator
        .age_vault_copies(&vault_sdk, (VAULT, VAULT_CATALOG), &old, 24 * 20)
        .await
        .expect("forty days");
    let done = world
        .invoke(&keeper, json!({"action": "retention"}))
        .await
        .expect("vault retention");
    let mut deleted: Vec<String> = done["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    deleted.sort();
    let mut old_sorted = old.clone();
    old_sorted.sort();
    assert_eq!(deleted, old_sorted, "{done:#}");
    assert!(vault_copies(&admin, first).await.is_empty());
    let mut still = newest_copies.clone();
    // (The forged copy names no source.)
    still.insert(String::new(), (forged.clone(), "completed".to_string()));
    assert_eq!(
        vault_copies(&admin, newest).await,
        still,
        "the newest sets, and the forged copy (younger than 35 days)"
    );

    // Someone in the vault account unlocks and deletes the other server's newest copy: the
    // vault's next look reports it, once, and its report shows the server without a whole set.
    let taken = &newest_copies[&newest_sets[&ids[1]][0]].0;
    admin
        .unlock_snapshot()
        .snapshot_id(taken)
        .send()
        .await
        .expect("unlock");
    admin
        .delete_snapshot()
        .snapshot_id(taken)
        .send()
        .await
        .expect("delete");
    let seen = world
        .invoke(&keeper, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("vault retention");
    assert_eq!(seen["deleted_outside"], json!([taken]), "{seen:#}");
    let scheduled = on_its_schedule(&world, &keeper).await;
    assert_eq!(
        scheduled["retention"]["deleted_outside"],
        json!([taken]),
        "a dry run writes nothing, so the schedule finds it: {scheduled:#}"
    );
    let report = world
        .invoke(&keeper, json!({"action": "report"}))
        .await
        .expect("vault report");
    assert_eq!(
        report["totals"],
        json!({"servers": 2, "stale": 1, "intruders": 1, "deleted_outside": 1}),
        "{report:#}"
    );
    for server in report["servers"].as_array().expect("servers") {
        let fresh = server["instance_id"] == json!(ids[0]);
        assert_eq!(server["within_rpo"], json!(fresh), "{server:#}");
        if fresh {
            assert_eq!(server["newest"]["run_id"], json!(newest), "{server:#}");
        } else {
            assert_eq!(server.get("newest"), None, "{server:#}");
        }
    }
    let again = world
        .invoke(&keeper, json!({"action": "retention"}))
        .await
        .expect("vault retention");
    assert_eq!(
        again["deleted_outside"],
        json!([]),
        "reported once: {again:#}"
    );
    let reported = vault_metrics.of("vault-report", None);
    assert_eq!(
        reported.last().map(|m| &m["VaultServersStale"]),
        Some(&json!(1)),
        "{reported:#?}"
    );

    // The next night reports every deletion at home it did not make.
    a_day_passes(emulator, &ids).await;
    let time = now_text();
    let third = world.nightly(&app, &time).await.expect("night three");
    let retention = metrics.of("retention", Some(&third));
    assert_eq!(
        retention[0]["SnapshotsDeletedOutside"], deleted_at_home,
        "{retention:#?}"
    );
}

/// Servers whose volumes use the default EBS key (`aws/ebs`, which cannot be shared): without
/// a transit key their sets are refused by EC2 and reported, while an unencrypted server's set
/// still reaches the vault; with the template's transit key (its key policy as
/// `template.yaml` makes it) each encrypted snapshot goes through a transit copy that the vault
/// role may decrypt (its `vault.yaml` policy), every set reaches the vault, and no transit copy
/// is left at home; night one's refused set is copied then too (the step's backlog).
#[tokio::test]
async fn encrypted_sets_reach_the_vault_through_transit_copies() {
    let Start {
        world,
        ids,
        role_arn,
        admin,
    } = start(true).await;
    let emulator = &world.emulator;
    let (sql, files) = (&ids[0], &ids[1]);
    let transit_policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/vault-transit-key-policy.json"
        ))
        .expect("tests/fixtures/vault-transit-key-policy.json"),
    )
    .expect("a key policy");
    let transit_key = emulator
        .kms_key("123456789012", HOME, &transit_policy)
        .expect("the transit key");
    let vault_settings = [
        ("VAULT_ACCOUNT_ID", VAULT),
        ("VAULT_ROLE_ARN", role_arn.as_str()),
        ("VAULT_REGIONS", VAULT_REGION),
        ("VAULT_KMS_KEY_IDS", "eu-west-1=alias/vault"),
    ];
    let metrics = Metrics::default();
    let as_is = metrics.attach(world.app(&vault_settings).expect("app"));
    let fleet = emulator.ec2_in(HOME);

    // As they are: the encrypted set cannot be shared; the other server's set is not held up.
    let first = world.nightly(&as_is, &now_text()).await.expect("night one");
    let sets = |id: &String| {
        let id = id.clone();
        let run = first.clone();
        async move { harness::sets_of(emulator, HOME, &id).await[&run].clone() }
    };
    let (sql_first, files_first) = (sets(sql).await, sets(files).await);
    let copies = vault_copies(&admin, &first).await;
    assert_eq!(
        copies.keys().cloned().collect::<Vec<_>>(),
        files_first,
        "only the unencrypted set is in the vault"
    );
    let vault = metrics.of("vault", Some(&first));
    assert_eq!(vault[0]["VaultCopiesFailed"], json!(2), "{vault:#?}");
    let said = world.logs.messages_starting("vault copies need attention");
    let line = said
        .iter()
        .find(|l| l["run_id"] == first.as_str())
        .expect("the vault step's summary");
    for snapshot in &sql_first {
        assert!(
            line["vault"].as_str().is_some_and(
                |v| v.contains(snapshot.as_str()) && v.contains("OperationNotPermitted")
            ),
            "{snapshot} named with EC2's code: {line:#}"
        );
    }

    // With the transit key: every snapshot of the night's sets reaches the vault.
    a_day_passes(emulator, &ids).await;
    let mut with_transit = vault_settings.to_vec();
    with_transit.push(("VAULT_TRANSIT_KMS_KEY_ID", &transit_key));
    let app = metrics.attach(world.app(&with_transit).expect("app"));
    let second = world.nightly(&app, &now_text()).await.expect("night two");
    assert!(world
        .logs
        .run_report(&second)
        .expect("summary")
        .all_consistent());
    let mut sources: Vec<String> = Vec::new();
    for id in &ids {
        sources.extend(harness::sets_of(emulator, HOME, id).await[&second].clone());
    }
    sources.sort();
    let copies = vault_copies(&admin, &second).await;
    assert_eq!(copies.keys().cloned().collect::<Vec<_>>(), sources);
    let described = admin
        .describe_snapshots()
        .set_snapshot_ids(Some(copies.values().map(|(c, _)| c.clone()).collect()))
        .send()
        .await
        .expect("the vault copies");
    for copy in described.snapshots() {
        assert_eq!(
            copy.state().map(|s| s.as_str()),
            Some("completed"),
            "{copy:?}"
        );
        assert_eq!(
            copy.kms_key_id(),
            Some("alias/vault"),
            "re-encrypted with the vault key: {copy:?}"
        );
    }
    let vault = metrics.of("vault", Some(&second));
    assert_eq!(vault[0]["VaultCopies"], json!(3), "{vault:#?}");
    assert_eq!(vault[0]["VaultCopiesFailed"], json!(0), "{vault:#?}");
    // The transit copies are gone, and were never counted as foreign by retention.
    assert_eq!(
        harness::snapshots_where(&fleet, ("tag-key", "ConsistentSnapshot:VaultTransit"))
            .await
            .len(),
        0,
        "no transit copy left at home"
    );
    let retention = metrics.of("retention", Some(&second));
    assert!(
        retention
            .iter()
            .all(|m| m.get("ForeignSnapshots").is_none_or(|n| n == 0)),
        "{retention:#?}"
    );
    // Night one's refused sets are the step's backlog: they reach the vault too, through
    // transit copies of their own.
    let mut first_sources: Vec<String> = files_first.iter().chain(&sql_first).cloned().collect();
    first_sources.sort();
    assert_eq!(
        vault_copies(&admin, &first)
            .await
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        first_sources
    );
    let started = world.logs.messages_starting("transit copy started");
    assert_eq!(
        started.len(),
        4,
        "one transit copy per encrypted snapshot of the two nights: {started:#?}"
    );
    assert_eq!(
        world.logs.messages_starting("transit copy deleted").len(),
        4
    );
    // The report shows both servers' newest sets in the vault.
    let report = world.report(&app).await.expect("report");
    for server in report["instances"].as_array().expect("instances") {
        assert_eq!(
            server["vault"]["newest_set_vaulted"],
            json!(true),
            "{server:#}"
        );
    }
}

/// A night the vault refused (its role not deployed as `vault.yaml` makes it yet: it may not
/// even list the vault) is reported, and the next night's vault step copies that night's sets
/// too, once: a third night finds nothing left and copies nothing twice.
#[tokio::test]
async fn a_night_the_vault_refused_is_copied_by_the_next() {
    let Start {
        world,
        ids,
        role_arn,
        admin,
    } = start(false).await;
    let emulator = &world.emulator;
    let half_deployed = emulator
        .create_role_in(
            VAULT,
            "vault-access-before-its-policy",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:DescribeLockedSnapshots","Resource":"*"}]}"#,
        )
        .await
        .expect("a role without its policy");
    let settings = |role: &str| {
        world
            .app(&[
                ("VAULT_ACCOUNT_ID", VAULT),
                ("VAULT_ROLE_ARN", role),
                ("VAULT_REGIONS", VAULT_REGION),
                ("VAULT_KMS_KEY_IDS", "eu-west-1=alias/vault"),
            ])
            .expect("app")
    };
    let metrics = Metrics::default();
    let (world, ids) = (&world, &ids);
    let night = |app| async move {
        let time = now_text();
        world.nightly(app, &time).await.expect("a night")
    };
    let sources_of = |run: String| async move {
        let mut all = Vec::new();
        for id in ids {
            all.extend(harness::sets_of(emulator, HOME, id).await[&run].clone());
        }
        all.sort();
        all
    };

    let refused = metrics.attach(settings(&half_deployed));
    let first = night(&refused).await;
    assert!(vault_copies(&admin, &first).await.is_empty());
    let said = world.logs.messages_starting("vault copies need attention");
    assert!(
        said.iter().any(|l| l["run_id"] == first.as_str()
            && l["vault"]
                .as_str()
                .is_some_and(|v| v.contains("UnauthorizedOperation"))),
        "the refusal named with its code: {said:#?}"
    );

    a_day_passes(emulator, ids).await;
    let app = metrics.attach(settings(&role_arn));
    let second = night(&app).await;
    let backlog = world
        .logs
        .messages_starting("earlier runs have backups not in the vault");
    assert!(
        backlog.iter().any(|l| l["run_id"] == second.as_str()
            && l["backlog"]
                .as_str()
                .is_some_and(|b| b.contains(first.as_str()))),
        "{backlog:#?}"
    );
    let locks = admin
        .describe_locked_snapshots()
        .send()
        .await
        .expect("vault locks");
    let mut held = BTreeMap::new();
    for run in [&first, &second] {
        let copies = vault_copies(&admin, run).await;
        assert_eq!(
            copies.keys().cloned().collect::<Vec<_>>(),
            sources_of(run.clone()).await,
            "{run}: one vault copy of each snapshot"
        );
        for (copy, state) in copies.values() {
            assert_eq!(state, "completed", "{copy}");
            assert!(
                locks
                    .snapshots()
                    .iter()
                    .any(|l| l.snapshot_id() == Some(copy.as_str())),
                "{copy} locked"
            );
        }
        held.insert(run.clone(), copies);
    }
    let fleet = emulator.ec2_in(HOME);
    for source in sources_of(first.clone()).await {
        let shared = fleet
            .describe_snapshot_attribute()
            .snapshot_id(&source)
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .expect("attribute");
        assert!(
            shared.create_volume_permissions().is_empty(),
            "{source} still shared"
        );
    }

    // Nothing is left: the next night takes no earlier run, and copies nothing twice.
    a_day_passes(emulator, ids).await;
    let third = night(&app).await;
    let backlog = world
        .logs
        .messages_starting("earlier runs have backups not in the vault");
    assert!(
        !backlog.iter().any(|l| l["run_id"] == third.as_str()),
        "{backlog:#?}"
    );
    for (run, copies) in &held {
        assert_eq!(&vault_copies(&admin, run).await, copies, "{run}");
    }
}
