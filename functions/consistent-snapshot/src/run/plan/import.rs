//! Upgrading to the catalog: the sets a deployment made before it, read from their tags and
//! recorded as *imported*. Pure: the snapshots EC2 lists (owner self, tagged with the
//! deployment's `ManagedBy`) and what the catalog already holds go in; the records to write
//! come out.
//!
//! Nothing verified an imported set when it was taken, and its tags may have been written by
//! anyone: it is recorded as `imported`, never as consistent. Retention never deletes it, the
//! report lists it, a restore uses it only when asked to (`allow_crash_consistent`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::catalog::{CatalogIndex, CopyRecord, RecordedSnapshot, SetRecord, Verdict};
use crate::model::fleet::AttachedVolume;
use crate::model::snapshot::SnapshotFacts;
use crate::model::tags::{TAG_DEVICE, TAG_INSTANCE_ID, TAG_RUN_ID, TAG_SOURCE_SNAPSHOT};

pub const IMPORTED_BY: &str = "import: read from the snapshots' tags, not verified";

/// What an import records, and what it leaves out with why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportPlan {
    pub sets: Vec<SetRecord>,
    pub copies: Vec<CopyRecord>,
    /// Snapshots left out, with why (`snap-…: …`).
    pub left_out: Vec<String>,
}

/// Plans the import of the home region's tagged sets (`home`) and their copies (`copies`, by
/// region); what the catalog already vouches for is left as it is.
pub fn plan_import(
    home: (&str, &[SnapshotFacts]),
    copies: &[(String, Vec<SnapshotFacts>)],
    index: &CatalogIndex,
    now: DateTime<Utc>,
) -> ImportPlan {
    let (region, snapshots) = home;
    let mut plan = ImportPlan::default();
    let mut groups: BTreeMap<(String, String), Vec<&SnapshotFacts>> = BTreeMap::new();
    for s in snapshots {
        if index.get(region, &s.snapshot_id).is_some() {
            continue;
        }
        match (
            s.tags.get(TAG_INSTANCE_ID),
            s.tags.get(TAG_RUN_ID),
            s.start_time,
        ) {
            (Some(instance), Some(run), Some(_)) => groups
                .entry((instance.clone(), run.clone()))
                .or_default()
                .push(s),
            _ => plan.left_out.push(format!(
                "{}: no instance id, run id or start time to record it by",
                s.snapshot_id
            )),
        }
    }
    let mut imported: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for ((instance_id, run_id), members) in &groups {
        let recorded: Vec<RecordedSnapshot> = members
            .iter()
            .filter_map(|s| {
                Some(RecordedSnapshot {
                    snapshot_id: s.snapshot_id.clone(),
                    volume_id: s.volume_id.clone(),
                    device: s
                        .tags
                        .get(TAG_DEVICE)
                        .cloned()
                        .unwrap_or_else(|| "unknown".into()),
                    start_time: s.start_time?,
                })
            })
            .collect();
        let Some(started_at) = recorded.iter().map(|r| r.start_time).min() else {
            continue;
        };
        let consistent = members.iter().filter(|s| s.app_consistent()).count();
        for s in members {
            imported.insert(&s.snapshot_id, (instance_id, run_id));
        }
        plan.sets.push(SetRecord {
            run_id: run_id.clone(),
            instance_id: instance_id.clone(),
            name: instance_id.clone(),
            region: region.to_string(),
            started_at,
            expected: recorded
                .iter()
                .map(|r| AttachedVolume {
                    volume_id: r.volume_id.clone(),
                    device: r.device.clone(),
                })
                .collect(),
            snapshots: recorded,
            verdict: Verdict::Imported,
            cause: None,
            reason: Some(format!(
                "imported at {}: {consistent} of {} snapshots tagged AppConsistent=True then",
                now.to_rfc3339(),
                members.len()
            )),
            verified_at: now,
            verified_by: IMPORTED_BY.into(),
            fallback: false,
        });
    }
    for (copy_region, found) in copies {
        for s in found {
            if index.get(copy_region, &s.snapshot_id).is_some() {
                continue;
            }
            let source = s.tags.get(TAG_SOURCE_SNAPSHOT);
            match source.and_then(|id| imported.get(id.as_str()).map(|set| (id, set))) {
                Some((source, (instance_id, run_id))) => plan.copies.push(CopyRecord {
                    run_id: run_id.to_string(),
                    instance_id: instance_id.to_string(),
                    region: copy_region.clone(),
                    source_snapshot_id: source.clone(),
                    snapshot_id: s.snapshot_id.clone(),
                    started_at: s.start_time.unwrap_or(now),
                    consistent: false,
                    file_system: false,
                    imported: true,
                    set_size: 0,
                    seen_final: None,
                    device: None,
                }),
                None => plan.left_out.push(format!(
                    "{copy_region}/{}: not a copy of a set being imported",
                    s.snapshot_id
                )),
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::SnapshotState;
    use crate::model::tags::TAG_APP_CONSISTENT;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn snap(id: &str, tags: &[(&str, &str)]) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            volume_id: format!("vol-{id}"),
            state: SnapshotState::Completed,
            start_time: Some(t(0)),
            size_gib: Some(30),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state_message: None,
            archived: false,
            encrypted_with: None,
        }
    }

    #[test]
    fn tagged_sets_are_imported_as_imported_never_as_consistent() {
        let set = [
            (TAG_INSTANCE_ID, "i-1"),
            (TAG_RUN_ID, "r1"),
            (TAG_APP_CONSISTENT, "True"),
        ];
        let home = [
            snap("a", &set),
            snap("b", &set),
            snap("c", &[(TAG_RUN_ID, "r1")]),
        ];
        let copies = vec![(
            "eu-west-1".to_string(),
            vec![
                snap("ca", &[(TAG_SOURCE_SNAPSHOT, "a")]),
                snap("cx", &[(TAG_SOURCE_SNAPSHOT, "snap-elsewhere")]),
            ],
        )];
        let plan = plan_import(
            ("us-east-1", &home),
            &copies,
            &CatalogIndex::default(),
            t(9),
        );
        assert_eq!(plan.sets.len(), 1);
        assert_eq!(plan.sets[0].verdict, Verdict::Imported);
        assert!(!plan.sets[0].is_consistent());
        assert_eq!(plan.sets[0].snapshots.len(), 2);
        assert_eq!(plan.copies.len(), 1);
        assert!(plan.copies[0].imported && !plan.copies[0].consistent);
        assert_eq!(plan.left_out.len(), 2, "{:?}", plan.left_out);
    }

    #[test]
    fn what_the_catalog_holds_is_not_imported_again() {
        let set = [(TAG_INSTANCE_ID, "i-1"), (TAG_RUN_ID, "r1")];
        let home = [snap("a", &set)];
        let first = plan_import(("us-east-1", &home), &[], &CatalogIndex::default(), t(9));
        let index = CatalogIndex::new(&first.sets, []);
        let again = plan_import(("us-east-1", &home), &[], &index, t(10));
        assert!(again.sets.is_empty() && again.left_out.is_empty());
    }
}
