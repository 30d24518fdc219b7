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
