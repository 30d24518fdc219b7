//! What an operator would look at afterwards: the snapshots of a run and their tags, and the
//! commands each instance received.

use aws_sdk_ec2::types::Filter;
use serde_json::Value;

use crate::emulator::Emulator;
use crate::Result;

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

/// A snapshot of `volume` made by someone other than the function (an operator, an earlier
/// version of it, an attacker), tagged at creation with `tags`; answers its id.
pub async fn plant_snapshot(
    emulator: &Emulator,
    volume: &str,
    tags: &[(&str, &str)],
) -> Result<String> {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect();
    let made = emulator
        .ec2()
        .create_snapshot()
        .volume_id(volume)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .set_tags(Some(tags))
                .build(),
        )
        .send()
        .await?;
    Ok(made.snapshot_id().ok_or("no snapshot id")?.to_string())
}

/// The volumes attached to an instance, with their devices.
pub async fn attached_volumes(
    emulator: &Emulator,
    instance: &str,
) -> Result<Vec<(String, String)>> {
    let out = emulator
        .ec2()
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(instance)
                .build(),
        )
        .send()
        .await?;
    Ok(out
        .volumes()
        .iter()
        .filter_map(|v| {
            let device = v.attachments().first()?.device()?.to_string();
            Some((v.volume_id()?.to_string(), device))
        })
        .collect())
}

/// The account's own snapshots in `region`, as an operator would list them.
pub async fn own_snapshots(
    emulator: &Emulator,
    region: &str,
) -> Result<Vec<aws_sdk_ec2::types::Snapshot>> {
    let out = emulator
        .ec2_in(region)
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await?;
    Ok(out.snapshots().to_vec())
}

/// The caller's own snapshots (as `ec2` signs: the fleet, or another account's role) that
/// match one DescribeSnapshots filter, e.g. `("tag:ConsistentSnapshot:RunId", run)` or
/// `("tag-key", key)`.
pub async fn snapshots_where(
    ec2: &aws_sdk_ec2::Client,
    (filter, value): (&str, &str),
) -> Vec<aws_sdk_ec2::types::Snapshot> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(filter)
                .values(value)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeSnapshots where {filter}={value}: {e}"));
    out.snapshots().to_vec()
}

/// How many items the catalog holds under a run's partition (its record, markers, manifest,
/// reports, sets and copies).
pub async fn run_items(emulator: &Emulator, run_id: &str) -> Result<usize> {
    let mut items = 0;
    let mut start = None;
    loop {
        let out = emulator
            .dynamodb()
            .query()
            .table_name(crate::CATALOG_TABLE)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("run#{run_id}")),
            )
            .set_exclusive_start_key(start)
            .send()
            .await?;
        items += out.items().len();
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// The sets (run id → snapshot ids) of `instance` that the `vss-test` deployment holds in
/// `region`, by the tags it gives them, oldest first (run ids sort by time).
pub async fn sets_of(
    emulator: &Emulator,
    region: &str,
    instance: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut sets: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let snapshots = own_snapshots(emulator, region)
        .await
        .unwrap_or_else(|e| panic!("DescribeSnapshots in {region}: {e}"));
    for s in snapshots {
        if snapshot_tag(&s, "ConsistentSnapshot:InstanceId") != Some(instance)
            || snapshot_tag(&s, "ConsistentSnapshot:ManagedBy") != Some("vss-test")
        {
            continue;
        }
        if let (Some(run), Some(id)) = (
            snapshot_tag(&s, "ConsistentSnapshot:RunId"),
            s.snapshot_id(),
        ) {
            sets.entry(run.to_string())
                .or_default()
                .push(id.to_string());
        }
    }
    sets
}

/// One server's entry in a fleet report (`{"action":"report"}`), by instance id; `Null` when
/// the report does not list it.
pub fn report_entry(report: &Value, instance_id: &str) -> Value {
    report["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|s| s["instance_id"] == instance_id))
        .cloned()
        .unwrap_or_default()
}

/// A fleet report as two reports of the same fleet at different moments compare: without
/// when it was made and how old each set was then.
pub fn report_without_clock(report: &Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(fields) => {
                fields.remove("generated_at");
                fields.remove("age_hours");
                fields.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut report = report.clone();
    strip(&mut report);
    report
}

/// One server's checks of a readiness answer with this `result` (`fail`, `warn`, …), each as
/// `check:cause`, or `check` where none is named.
pub fn readiness_checks(server: &Value, result: &str) -> Vec<String> {
    server["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["result"] == result)
        .map(|c| match c["cause"].as_str() {
            Some(cause) => format!("{}:{cause}", c["check"].as_str().unwrap_or("")),
            None => c["check"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}
