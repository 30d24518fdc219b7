//! Recording a set: which of the snapshots carrying the run's tags belong to an instance's set,
//! and what the set is. Pure: the manifest written at dispatch, SSM's final result, and what
//! EC2 lists (owner self) go in; the catalog's record and the foreign snapshots come out.
//!
//! A snapshot belongs to the set only if the document's output for this command and instance
//! reported it (`Created snap-… from vol-…`), of the volume EC2 reports for it, that volume is
//! one the instance had at dispatch, and it started inside the command's window. Tags decide
//! nothing: a fleet server may create snapshots of its own volumes with any tags, and flip
//! `AppConsistent` on any snapshot later. The verdict is read once, here, and recorded.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use crate::model::catalog::{
    reported_snapshots, ForeignSnapshot, ManifestEntry, RecordedSnapshot, SetRecord, Verdict,
};
use crate::model::command::FinalInvocation;
use crate::model::snapshot::SnapshotFacts;
use crate::model::tags::TAG_INSTANCE_ID;
use crate::run::plan::outcome::{classify, Outcome, OutcomeKind};

/// How far outside the command's window a snapshot's start time may be (clock skew between
/// EC2 and the function).
pub const WINDOW_SLACK_MINUTES: i64 = 5;

pub const VERIFIED_BY: &str =
    "document output matched to the volumes at dispatch; EC2 owner, volume id, start time";

/// A verified set: the record, the outcome for the summary, and the foreign snapshots met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub record: SetRecord,
    pub outcome: Outcome,
    /// The snapshots that belong to the set (for tagging).
    pub snapshots: Vec<SnapshotFacts>,
    pub foreign: Vec<ForeignSnapshot>,
}

/// Verifies one instance's set; `listed` are the account's own snapshots carrying the run's
/// tag (of the instance's volumes, or all of them), `now` the time of the final look.
pub fn verify_set(
    manifest: &ManifestEntry,
    invocation: &FinalInvocation,
    listed: &[SnapshotFacts],
    region: &str,
    now: DateTime<Utc>,
) -> Verified {
    let reported: BTreeMap<String, String> =
        reported_snapshots(&invocation.output).into_iter().collect();
    let device_of = |volume: &str| {
        manifest
            .volumes
            .iter()
            .find(|v| v.volume_id == volume)
            .map(|v| v.device.clone())
    };
    let opens = manifest.started_at - Duration::minutes(WINDOW_SLACK_MINUTES);
    let closes = now + Duration::minutes(WINDOW_SLACK_MINUTES);
    let mut mine = Vec::new();
    let mut foreign = Vec::new();
    // Volumes the document snapshotted that the instance did not have at dispatch.
    let mut unexpected: Vec<String> = reported
        .values()
        .filter(|v| device_of(v).is_none())
        .cloned()
        .collect();
    unexpected.sort();
    unexpected.dedup();
    for snapshot in listed {
        let at_dispatch = device_of(&snapshot.volume_id).is_some();
        let claims_me =
            snapshot.tags.get(TAG_INSTANCE_ID).map(String::as_str) == Some(&manifest.instance_id);
        if !at_dispatch && !claims_me && !reported.contains_key(&snapshot.snapshot_id) {
            // Another instance's snapshot of the same run: not this set's business.
            continue;
        }
        let why = match reported.get(&snapshot.snapshot_id) {
            None => Some(format!(
                "not reported by command {} on {}",
                manifest.command_id, manifest.instance_id
            )),
            Some(volume) if *volume != snapshot.volume_id => Some(format!(
                "the document reported it from {volume}, EC2 says from {}",
                snapshot.volume_id
            )),
            Some(_) if !at_dispatch => Some(format!(
                "{} was not attached to {} at dispatch",
                snapshot.volume_id, manifest.instance_id
            )),
            Some(_) => match snapshot.start_time {
                Some(start) if start >= opens && start <= closes => None,
                start => Some(format!(
                    "started at {:?}, outside the command's window ({} to {})",
                    start.map(|s| s.to_rfc3339()),
                    opens.to_rfc3339(),
                    closes.to_rfc3339()
                )),
            },
        };
        match why {
            None => mine.push(snapshot.clone()),
            Some(why) => foreign.push(ForeignSnapshot {
                snapshot_id: snapshot.snapshot_id.clone(),
                claims_instance: snapshot.tags.get(TAG_INSTANCE_ID).cloned(),
                why,
            }),
        }
    }
    // A snapshot of an unexpected volume is reported once, as the reason the set is
    // incomplete, not as foreign.
    foreign.retain(|f| !f.why.contains("was not attached"));
    let classified = classify(&manifest.volumes, invocation, &mine);
    let (mut kind, mut reason, cause) = (classified.kind, classified.reason, classified.cause);
    if !unexpected.is_empty() && matches!(kind, OutcomeKind::Consistent) {
        kind = OutcomeKind::Incomplete;
        reason = Some(format!(
            "the document also snapshotted {}, attached after dispatch: the set is not the one expected",
            unexpected.join(", ")
        ));
    }
    if kind == OutcomeKind::Consistent && manifest.no_writers {
        kind = OutcomeKind::FileSystemConsistent;
        reason = Some(
            "sent with NoWriters: the application writers were left out, so the set is file-system consistent, not application consistent"
                .into(),
        );
    }
    let verdict = match kind {
        OutcomeKind::Consistent => Verdict::Consistent,
        OutcomeKind::FileSystemConsistent => Verdict::FileSystemConsistent,
        OutcomeKind::CrashConsistent => Verdict::CrashConsistent,
        OutcomeKind::Incomplete => Verdict::Incomplete,
        OutcomeKind::Failed | OutcomeKind::TimedOut | OutcomeKind::Skipped => Verdict::Failed,
    };
    let snapshots = mine
        .iter()
        .filter_map(|s| {
            Some(RecordedSnapshot {
                snapshot_id: s.snapshot_id.clone(),
                volume_id: s.volume_id.clone(),
                device: device_of(&s.volume_id)?,
                start_time: s.start_time?,
            })
        })
        .collect();
    let record = SetRecord {
        run_id: manifest.run_id.clone(),
        instance_id: manifest.instance_id.clone(),
        name: manifest.name.clone(),
        region: region.to_string(),
        started_at: manifest.started_at,
        expected: manifest.volumes.clone(),
        snapshots,
        verdict,
        reason: reason.clone(),
        cause,
        verified_at: now,
        verified_by: VERIFIED_BY.to_string(),
        fallback: false,
    };
    let outcome = Outcome {
        instance_id: manifest.instance_id.clone(),
        name: manifest.name.clone(),
        kind,
        volumes: manifest.volumes.len(),
        snapshots: mine.iter().map(|s| s.snapshot_id.clone()).collect(),
        reason,
        cause,
        fallback: false,
    };
    Verified {
        record,
        outcome,
        snapshots: mine,
        foreign,
    }
}

/// A recorded set as a run's outcome.
pub fn outcome_of(record: &SetRecord) -> Outcome {
    let kind = match record.verdict {
        Verdict::Consistent | Verdict::Imported => OutcomeKind::Consistent,
        Verdict::FileSystemConsistent => OutcomeKind::FileSystemConsistent,
        Verdict::CrashConsistent => OutcomeKind::CrashConsistent,
        Verdict::Incomplete => OutcomeKind::Incomplete,
        Verdict::Failed => OutcomeKind::Failed,
    };
    Outcome {
        instance_id: record.instance_id.clone(),
        name: record.name.clone(),
        kind,
        volumes: record.expected.len(),
        snapshots: record
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect(),
        reason: record.reason.clone(),
        cause: record.cause,
        fallback: record.fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fleet::AttachedVolume;
    use crate::model::state::{CommandStatus, SnapshotState};
    use crate::model::tags::TAG_APP_CONSISTENT;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn manifest() -> ManifestEntry {
        ManifestEntry {
            run_id: "r1".into(),
            instance_id: "i-1".into(),
            name: "sql01".into(),
            command_id: "c1".into(),
            volumes: vec![
                AttachedVolume {
                    volume_id: "vol-1".into(),
                    device: "/dev/sda1".into(),
                },
                AttachedVolume {
                    volume_id: "vol-2".into(),
                    device: "xvdf".into(),
                },
            ],
            started_at: t(0),
            cost_tags: vec![],
            no_writers: false,
        }
    }

    fn snap(id: &str, volume: &str, start: i64, consistent: bool, instance: &str) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            volume_id: volume.into(),
            state: SnapshotState::Completed,
            start_time: Some(t(start)),
            size_gib: Some(30),
            tags: [
                (
                    TAG_APP_CONSISTENT,
                    if consistent { "True" } else { "False" },
                ),
                (TAG_INSTANCE_ID, instance),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            state_message: None,
            archived: false,
            encrypted_with: None,
        }
    }

    fn success(lines: &[(&str, &str)]) -> FinalInvocation {
        FinalInvocation {
            status: CommandStatus::Success,
            status_details: "Success".into(),
            output: lines
                .iter()
                .map(|(s, v)| format!("Created {s} from {v} device: x\n"))
                .collect(),
        }
    }

    #[test]
    fn reported_snapshots_of_the_dispatched_volumes_make_a_consistent_set() {
        let listed = [
            snap("snap-1", "vol-1", 30, true, "i-1"),
            snap("snap-2", "vol-2", 31, true, "i-1"),
        ];
        let inv = success(&[("snap-1", "vol-1"), ("snap-2", "vol-2")]);
        let v = verify_set(&manifest(), &inv, &listed, "eu-west-1", t(120));
        assert_eq!(v.record.verdict, Verdict::Consistent);
        assert_eq!(v.record.snapshots.len(), 2);
        assert_eq!(v.record.snapshots[0].device, "/dev/sda1");
        assert!(v.foreign.is_empty());
    }

    #[test]
    fn forged_snapshots_claiming_the_instance_are_foreign_and_do_not_count() {
        // An attacker's own snapshots, tagged as this instance's set of this run.
        let listed = [
            snap("snap-1", "vol-1", 30, true, "i-1"),
            snap("snap-f1", "vol-evil", 30, true, "i-1"),
            snap("snap-f2", "vol-2", 30, true, "i-1"),
        ];
        // The real document reported only snap-1: vol-2 has no verified snapshot.
        let inv = success(&[("snap-1", "vol-1")]);
        let v = verify_set(&manifest(), &inv, &listed, "eu-west-1", t(120));
        assert_eq!(v.record.verdict, Verdict::Incomplete);
        let foreign: Vec<&str> = v.foreign.iter().map(|f| f.snapshot_id.as_str()).collect();
        assert_eq!(foreign, ["snap-f1", "snap-f2"]);
        assert!(v.foreign[0].why.contains("not reported by command c1"));
    }

    #[test]
    fn a_snapshot_from_before_the_run_or_of_another_volume_is_refused() {
        let listed = [
            snap("snap-1", "vol-1", -3600, true, "i-1"),
            snap("snap-2", "vol-9", 30, true, "i-1"),
        ];
        let inv = success(&[("snap-1", "vol-1"), ("snap-2", "vol-2")]);
        let v = verify_set(&manifest(), &inv, &listed, "eu-west-1", t(120));
        assert_eq!(v.record.verdict, Verdict::Failed);
        assert!(v.foreign[0].why.contains("outside the command's window"));
        assert!(v.foreign[1].why.contains("EC2 says from vol-9"));
    }

    #[test]
    fn a_volume_attached_after_dispatch_makes_the_set_incomplete() {
        let listed = [
            snap("snap-1", "vol-1", 30, true, "i-1"),
            snap("snap-2", "vol-2", 30, true, "i-1"),
            snap("snap-3", "vol-3", 30, true, "i-1"),
        ];
        let inv = success(&[
            ("snap-1", "vol-1"),
            ("snap-2", "vol-2"),
            ("snap-3", "vol-3"),
        ]);
        let v = verify_set(&manifest(), &inv, &listed, "eu-west-1", t(120));
        assert_eq!(v.record.verdict, Verdict::Incomplete);
        assert!(v.record.reason.as_deref().unwrap_or("").contains("vol-3"));
        assert!(v.foreign.is_empty(), "the reason, not a foreign snapshot");
    }

    #[test]
    fn the_verdict_is_read_from_the_snapshots_when_verified() {
        let listed = [
            snap("snap-1", "vol-1", 30, true, "i-1"),
            snap("snap-2", "vol-2", 30, false, "i-1"),
        ];
        let inv = success(&[("snap-1", "vol-1"), ("snap-2", "vol-2")]);
        let v = verify_set(&manifest(), &inv, &listed, "eu-west-1", t(120));
        assert_eq!(v.record.verdict, Verdict::CrashConsistent);
        // Another instance's snapshots of the same run are none of this set's business.
        let others = [snap("snap-7", "vol-7", 30, true, "i-2")];
        let v = verify_set(&manifest(), &inv, &others, "eu-west-1", t(120));
        assert!(v.foreign.is_empty());
    }
}
