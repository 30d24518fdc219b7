//! Vault transit copies: an encrypted snapshot whose key the vault account may not use (the
//! default `aws/ebs` key cannot be shared at all) reaches the vault through a copy made at home,
//! re-encrypted with `VAULT_TRANSIT_KMS_KEY_ID` (a key the vault account may use). That copy is
//! what is shared and copied into the vault; the vault step deletes it when it is over.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::model::catalog::TransitRecord;
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::SnapshotState;
use crate::model::tags::{
    cut_chars, DESCRIPTION_MAX_CHARS, TAG_NAME, TAG_SOURCE_SNAPSHOT, TAG_VAULT_TRANSIT,
};

/// Whether `source` goes to the vault through a transit copy: it is encrypted with a key that
/// is not the transit key, and a transit key is configured.
pub fn needs_transit(source: &SnapshotFacts, transit_key: Option<&str>) -> bool {
    match (transit_key, source.encrypted_with.as_deref()) {
        (Some(key), Some(used)) => used != key,
        _ => false,
    }
}

/// The description of a transit copy (set at creation: what finds a lost answer).
pub fn transit_description(source_snapshot_id: &str, run_id: &str) -> String {
    cut_chars(
        &format!(
            "Vault transit copy of {source_snapshot_id}, consistent-snapshot run {run_id}: deleted once copied into the vault"
        ),
        DESCRIPTION_MAX_CHARS,
    )
}

/// A transit copy's tags: the deployment that made it (`TAG_VAULT_TRANSIT`, which the
/// function's IAM lets it share and delete by), its source, and a name for the console.
pub fn transit_tags(source: &SnapshotFacts, managed_by: &str) -> Vec<(String, String)> {
    let name = source
        .tags
        .get(TAG_NAME)
        .cloned()
        .unwrap_or_else(|| source.snapshot_id.clone());
    vec![
        (TAG_VAULT_TRANSIT.to_string(), managed_by.to_string()),
        (TAG_SOURCE_SNAPSHOT.to_string(), source.snapshot_id.clone()),
        (
            TAG_NAME.to_string(),
            cut_chars(&format!("vault transit of {name}"), 256),
        ),
    ]
}

/// How a source's transit copy stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transit {
    /// Completed: share and copy this one.
    Ready(String),
    /// On its way (or recorded and not listed yet).
    Pending,
    /// Failed, with EC2's message: the source does not reach the vault in this run.
    Failed(String),
    /// None yet: start one.
    Start,
}

/// Each source's transit copy, as the catalog records it and EC2 lists this deployment's
/// transit copies at home (each with its description). A listed copy with no record whose
/// description is this run's for that source (a CopySnapshot whose answer was lost) is
/// adopted: answered to be recorded. Anything else listed is left alone.
pub fn transits(
    run_id: &str,
    sources: &BTreeSet<&str>,
    recorded: &[TransitRecord],
    listed: &[(SnapshotFacts, String)],
    now: DateTime<Utc>,
) -> (BTreeMap<String, Transit>, Vec<TransitRecord>) {
    let mut states = BTreeMap::new();
    let mut adopted = Vec::new();
    for source in sources {
        let record = recorded
            .iter()
            .find(|t| t.source_snapshot_id == *source)
            .cloned()
            .or_else(|| {
                let description = transit_description(source, run_id);
                let (lost, _) = listed.iter().find(|(f, d)| {
                    *d == description
                        && f.tags.get(TAG_SOURCE_SNAPSHOT).map(String::as_str) == Some(source)
                })?;
                let record = TransitRecord {
                    run_id: run_id.to_string(),
                    source_snapshot_id: source.to_string(),
                    snapshot_id: lost.snapshot_id.clone(),
                    started_at: lost.start_time.unwrap_or(now),
                    deleted: false,
                };
                adopted.push(record.clone());
                Some(record)
            });
        let state = match record {
            None => Transit::Start,
            Some(t) if t.deleted => {
                Transit::Failed(format!("transit copy {} deleted", t.snapshot_id))
            }
            Some(t) => match listed.iter().find(|(f, _)| f.snapshot_id == t.snapshot_id) {
                Some((f, _)) if f.state == SnapshotState::Completed => {
                    Transit::Ready(t.snapshot_id)
                }
                Some((f, _)) if f.state == SnapshotState::Error => Transit::Failed(format!(
                    "transit copy {}: {}",
                    t.snapshot_id,
                    f.state_message.as_deref().unwrap_or("error")
                )),
                _ => Transit::Pending,
            },
        };
        states.insert(source.to_string(), state);
    }
    (states, adopted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn snap(id: &str, state: &str, key: Option<&str>, source: &str) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            state: state.into(),
            encrypted_with: key.map(str::to_string),
            tags: [(TAG_SOURCE_SNAPSHOT.to_string(), source.to_string())].into(),
            start_time: Some(at(1)),
            ..Default::default()
        }
    }

    #[test]
    fn only_snapshots_encrypted_with_another_key_go_through_a_transit_copy() {
        let transit = Some("arn:aws:kms:us-east-1:111111111111:key/transit");
        let plain = snap("snap-a", "completed", None, "");
        let default_key = snap(
            "snap-b",
            "completed",
            Some("arn:aws:kms:us-east-1:111111111111:key/ebs"),
            "",
        );
        let already = snap("snap-c", "completed", transit, "");
        assert!(!needs_transit(&plain, transit));
        assert!(needs_transit(&default_key, transit));
        assert!(!needs_transit(&already, transit));
        // No transit key: shared as it is (and refused by EC2 if its key cannot be shared).
        assert!(!needs_transit(&default_key, None));
    }

    #[test]
    fn each_source_starts_waits_for_or_uses_its_one_transit_copy() {
        let sources: BTreeSet<&str> = ["snap-a", "snap-b", "snap-c", "snap-d", "snap-e"].into();
        let record = |source: &str, copy: &str| TransitRecord {
            run_id: "r1".into(),
            source_snapshot_id: source.into(),
            snapshot_id: copy.into(),
            started_at: at(0),
            deleted: false,
        };
        let recorded = [
            record("snap-a", "snap-ta"),
            record("snap-b", "snap-tb"),
            record("snap-c", "snap-tc"),
        ];
        let mut failed = snap("snap-tc", "error", None, "snap-c");
        failed.state_message = Some("Given key ID is not accessible".into());
        let listed = vec![
            (
                snap("snap-ta", "completed", None, "snap-a"),
                transit_description("snap-a", "r1"),
            ),
            (
                snap("snap-tb", "pending", None, "snap-b"),
                transit_description("snap-b", "r1"),
            ),
            (failed, transit_description("snap-c", "r1")),
            // A lost answer for snap-d: adopted by its description.
            (
                snap("snap-td", "pending", None, "snap-d"),
                transit_description("snap-d", "r1"),
            ),
            // Tagged as snap-e's by someone else, without this run's description: not adopted.
            (
                snap("snap-x", "completed", None, "snap-e"),
                "made by hand".to_string(),
            ),
        ];
        let (states, adopted) = transits("r1", &sources, &recorded, &listed, at(5));
        assert_eq!(states["snap-a"], Transit::Ready("snap-ta".into()));
        assert_eq!(states["snap-b"], Transit::Pending);
        assert!(
            matches!(&states["snap-c"], Transit::Failed(why) if why.contains("not accessible"))
        );
        assert_eq!(states["snap-d"], Transit::Pending);
        assert_eq!(states["snap-e"], Transit::Start);
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].snapshot_id, "snap-td");
    }
}
