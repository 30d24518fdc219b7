//! The crash-consistent fallback (`CRASH_CONSISTENT_FALLBACK`): a server on which VSS could
//! not run, or ran and left no snapshot, still gets a backup for the night: one
//! `CreateSnapshots` of the instance (all its volumes at one point in time), recorded and
//! labelled crash-consistent with the reason. Pure: which servers get one, what it records,
//! and which snapshots a lost answer left behind.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};

use crate::model::catalog::{RecordedSnapshot, SetRecord, Verdict};
use crate::model::cause::Cause;
use crate::model::fleet::{AttachedVolume, InstanceFacts};
use crate::model::ids::parse_bool;
use crate::model::snapshot::SnapshotFacts;
use crate::model::tags::{
    cut_chars, sanitize_tag_text, CONSISTENCY_CRASH_FALLBACK, TAG_CONSISTENCY, TAG_EXCLUDE_BOOT,
    TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_NAME, TAG_RUN_ID, TAG_VALUE_MAX_CHARS,
};
use crate::run::plan::outcome::{Outcome, OutcomeKind};
use crate::run::plan::record::WINDOW_SLACK_MINUTES;

/// How the fallback's set is verified (for an operator reading the record).
pub const FALLBACK_VERIFIED_BY: &str =
    "CreateSnapshots by the function itself: EC2's answer, or its own tags and the instance's volumes after a lost answer";

/// A server that gets a crash-consistent fallback set, and why VSS gave it none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackTarget {
    pub instance_id: String,
    pub name: String,
    pub why: String,
    pub cause: Option<Cause>,
}

/// The skips after which VSS could not run but a snapshot can still be taken: the agent, not
/// the instance, is what is missing.
fn skip_wants_fallback(cause: Option<Cause>) -> bool {
    matches!(
        cause,
        Some(Cause::AgentOffline | Cause::AgentUnmanaged | Cause::AgentTooOld)
    )
}

/// Which of a run's outcomes get a fallback: an instance of the run (`instances`: dispatched,
/// skipped or unsent) that ended failed or timed out without a snapshot (whatever the cause,
/// but no EBS volume), or was skipped because its agent cannot run the document. A crash-
/// consistent or incomplete set already is the night's fallback; a stopped server, a server
/// busy with another VSS command or not Windows gets none.
pub fn fallback_targets(outcomes: &[Outcome], instances: &HashSet<&str>) -> Vec<FallbackTarget> {
    outcomes
        .iter()
        .filter(|o| instances.contains(o.instance_id.as_str()) && o.snapshots.is_empty())
        .filter(|o| match o.kind {
            OutcomeKind::Failed | OutcomeKind::TimedOut => o.cause != Some(Cause::NoEbsVolumes),
            OutcomeKind::Skipped => skip_wants_fallback(o.cause),
            _ => false,
        })
        .map(|o| FallbackTarget {
            instance_id: o.instance_id.clone(),
            name: o.name.clone(),
            why: format!("{}: {}", o.kind, o.reason.clone().unwrap_or_default()),
            cause: o.cause,
        })
        .collect()
}

/// Whether the fallback leaves the boot volume out: the instance's own
/// `ConsistentSnapshot:ExcludeBootVolume` tag as it is now, else the deployment's setting (a
/// value that is not true or false keeps the boot volume: more is kept, never less).
pub fn excludes_boot(instance: &InstanceFacts, default: bool) -> bool {
    match instance.tags.get(TAG_EXCLUDE_BOOT) {
        None => default,
        Some(value) => parse_bool(value).unwrap_or(false),
    }
}

/// The description of a fallback's snapshots: what they are, of which run.
pub fn fallback_description(run_id: &str, managed_by: &str) -> String {
    sanitize_tag_text(&format!(
        "Crash-consistent fallback (VSS could not run), run {run_id}, by {managed_by}"
    ))
}

/// The tags a fallback's snapshots are created with: the contract tags, the label, and the
/// instance's cost tags as the run recorded them.
pub fn fallback_tags(
    run_id: &str,
    managed_by: &str,
    target: &FallbackTarget,
    cost_tags: &[(String, String)],
) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> = cost_tags.to_vec();
    tags.extend([
        (TAG_RUN_ID.to_string(), run_id.to_string()),
        (TAG_MANAGED_BY.to_string(), managed_by.to_string()),
        (TAG_INSTANCE_ID.to_string(), target.instance_id.clone()),
        (
            TAG_CONSISTENCY.to_string(),
            CONSISTENCY_CRASH_FALLBACK.to_string(),
        ),
        (
            TAG_NAME.to_string(),
            cut_chars(
                &format!("{} crash-consistent fallback", target.name),
                TAG_VALUE_MAX_CHARS,
            ),
        ),
    ]);
    tags
}

/// After a lost CreateSnapshots answer: the snapshots the call left, found by the run's tag,
/// that are this instance's fallback — its own instance tag and label, of a volume the
/// instance has now, started since the run did. Anything else carrying the run's tag is not
/// adopted. (Only a claimed call whose set was never recorded is looked for: a server that
/// labelled a snapshot of its own volume in that window would have it adopted as what it is,
/// a crash-consistent snapshot of that volume taken during the run.)
pub fn left_by_lost_answer(
    listed: &[SnapshotFacts],
    instance: &InstanceFacts,
    run_started: DateTime<Utc>,
) -> Vec<SnapshotFacts> {
    let volumes: HashSet<&str> = instance
        .volumes
        .iter()
        .map(|v| v.volume_id.as_str())
        .collect();
    let opens = run_started - Duration::minutes(WINDOW_SLACK_MINUTES);
    listed
        .iter()
        .filter(|s| {
            s.tags.get(TAG_INSTANCE_ID).map(String::as_str) == Some(&instance.instance_id)
                && s.tags.get(TAG_CONSISTENCY).map(String::as_str)
                    == Some(CONSISTENCY_CRASH_FALLBACK)
                && volumes.contains(s.volume_id.as_str())
                && s.start_time.is_some_and(|t| t >= opens)
        })
        .cloned()
        .collect()
}

/// The fallback's record and the instance's outcome: a crash-consistent set of the
/// snapshots EC2 answered, each of a volume the instance has (its device from the instance),
/// with the reason VSS gave none.
pub fn fallback_set(
    run_id: &str,
    target: &FallbackTarget,
    instance: &InstanceFacts,
    snapshots: &[SnapshotFacts],
    (region, now): (&str, DateTime<Utc>),
) -> (SetRecord, Outcome) {
    let devices: HashMap<&str, &AttachedVolume> = instance
        .volumes
        .iter()
        .map(|v| (v.volume_id.as_str(), v))
        .collect();
    let recorded: Vec<RecordedSnapshot> = snapshots
        .iter()
        .filter_map(|s| {
            let volume = devices.get(s.volume_id.as_str())?;
            Some(RecordedSnapshot {
                snapshot_id: s.snapshot_id.clone(),
                volume_id: s.volume_id.clone(),
                device: volume.device.clone(),
                start_time: s.start_time.unwrap_or(now),
            })
        })
        .collect();
    let taken = recorded.iter().map(|s| s.start_time).min().unwrap_or(now);
    let reason = format!(
        "crash-consistent fallback (CreateSnapshots at {}): VSS gave no set ({})",
        taken.to_rfc3339(),
        target.why
    );
    let record = SetRecord {
        run_id: run_id.to_string(),
        instance_id: target.instance_id.clone(),
        name: target.name.clone(),
        region: region.to_string(),
        started_at: taken,
        expected: recorded
            .iter()
            .map(|s| AttachedVolume {
                volume_id: s.volume_id.clone(),
                device: s.device.clone(),
            })
            .collect(),
        snapshots: recorded,
        verdict: Verdict::CrashConsistent,
        reason: Some(reason.clone()),
        cause: target.cause,
        fallback: true,
        verified_at: now,
        verified_by: FALLBACK_VERIFIED_BY.to_string(),
    };
    let outcome = Outcome {
        instance_id: target.instance_id.clone(),
        name: target.name.clone(),
        kind: OutcomeKind::CrashConsistent,
        volumes: record.snapshots.len(),
        snapshots: record
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect(),
        reason: Some(reason),
        cause: target.cause,
        fallback: true,
    };
    (record, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn outcome(id: &str, kind: OutcomeKind, cause: Option<Cause>, snapshots: usize) -> Outcome {
        Outcome {
            instance_id: id.into(),
            name: format!("n-{id}"),
            kind,
            volumes: 2,
            snapshots: (0..snapshots).map(|i| format!("snap-{i}")).collect(),
            reason: Some("why".into()),
            cause,
            fallback: false,
        }
    }

    #[test]
    fn servers_vss_left_without_a_set_get_a_fallback_the_others_none() {
        use OutcomeKind::*;
        let outcomes = [
            outcome("i-lang", Failed, Some(Cause::LanguageMode), 0),
            outcome("i-lost", TimedOut, Some(Cause::Undeliverable), 0),
            outcome("i-unknown", Failed, None, 0),
            outcome("i-offline", Skipped, Some(Cause::AgentOffline), 0),
            outcome("i-old", Skipped, Some(Cause::AgentTooOld), 0),
            // None of these:
            outcome("i-noebs", Failed, Some(Cause::NoEbsVolumes), 0),
            outcome("i-stopped", Skipped, None, 0),
            outcome("i-linux", Skipped, Some(Cause::InvalidPlatform), 0),
            outcome("i-crash", CrashConsistent, Some(Cause::FreezeTimeout), 2),
            outcome("i-part", Incomplete, None, 1),
            outcome("i-ok", Consistent, None, 2),
            outcome("command c-1", TimedOut, None, 0),
        ];
        let instances: HashSet<&str> = outcomes
            .iter()
            .map(|o| o.instance_id.as_str())
            .filter(|id| id.starts_with("i-"))
            .collect();
        let ids: Vec<String> = fallback_targets(&outcomes, &instances)
            .into_iter()
            .map(|t| t.instance_id)
            .collect();
        assert_eq!(ids, ["i-lang", "i-lost", "i-unknown", "i-offline", "i-old"]);
    }

    fn instance() -> InstanceFacts {
        InstanceFacts {
            instance_id: "i-1".into(),
            name: Some("sql01".into()),
            state: "running".into(),
            platform: Some("windows".into()),
            platform_details: None,
            root_device: Some("/dev/sda1".into()),
            volumes: vec![
                AttachedVolume {
                    volume_id: "vol-boot".into(),
                    device: "/dev/sda1".into(),
                },
                AttachedVolume {
                    volume_id: "vol-data".into(),
                    device: "xvdf".into(),
                },
            ],
            tags: BTreeMap::new(),
            host: Default::default(),
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn snap(id: &str, volume: &str, tags: &[(&str, &str)], start: i64) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            volume_id: volume.into(),
            state: "pending".into(),
            start_time: Some(t(start)),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_fallback_is_recorded_crash_consistent_with_why_vss_gave_none() {
        let target = FallbackTarget {
            instance_id: "i-1".into(),
            name: "sql01".into(),
            why: "skipped: SSM agent is ConnectionLost, not Online".into(),
            cause: Some(Cause::AgentOffline),
        };
        let made = [
            snap("snap-b", "vol-boot", &[], 10),
            snap("snap-d", "vol-data", &[], 10),
        ];
        let (record, outcome) =
            fallback_set("r1", &target, &instance(), &made, ("us-east-1", t(20)));
        assert_eq!(record.verdict, Verdict::CrashConsistent);
        assert_eq!(record.started_at, t(10));
        assert_eq!(
            record
                .snapshots
                .iter()
                .map(|s| (s.snapshot_id.as_str(), s.device.as_str()))
                .collect::<Vec<_>>(),
            [("snap-b", "/dev/sda1"), ("snap-d", "xvdf")]
        );
        assert_eq!(outcome.kind, OutcomeKind::CrashConsistent);
        assert_eq!(outcome.cause, Some(Cause::AgentOffline));
        let reason = outcome.reason.unwrap_or_default();
        assert!(
            reason.starts_with("crash-consistent fallback (CreateSnapshots at")
                && reason.contains("ConnectionLost"),
            "{reason}"
        );
    }

    #[test]
    fn a_lost_answer_adopts_only_the_instance_s_own_fallback_snapshots() {
        let mine = [
            (TAG_INSTANCE_ID, "i-1"),
            (TAG_CONSISTENCY, CONSISTENCY_CRASH_FALLBACK),
        ];
        let listed = [
            snap("snap-ok", "vol-data", &mine, 100),
            // Another volume (not the instance's), too early, not labelled, another instance.
            snap("snap-vol", "vol-other", &mine, 100),
            snap("snap-old", "vol-data", &mine, -3_600),
            snap("snap-vss", "vol-data", &[(TAG_INSTANCE_ID, "i-1")], 100),
            snap(
                "snap-i2",
                "vol-data",
                &[
                    (TAG_INSTANCE_ID, "i-2"),
                    (TAG_CONSISTENCY, CONSISTENCY_CRASH_FALLBACK),
                ],
                100,
            ),
        ];
        let found = left_by_lost_answer(&listed, &instance(), t(0));
        assert_eq!(
            found
                .iter()
                .map(|s| s.snapshot_id.as_str())
                .collect::<Vec<_>>(),
            ["snap-ok"]
        );
    }

    #[test]
    fn the_boot_volume_follows_the_instance_tag_else_the_deployment() {
        let mut i = instance();
        assert!(excludes_boot(&i, true));
        i.tags.insert(TAG_EXCLUDE_BOOT.into(), "false".into());
        assert!(!excludes_boot(&i, true));
        i.tags.insert(TAG_EXCLUDE_BOOT.into(), "perhaps".into());
        assert!(
            !excludes_boot(&i, true),
            "an unreadable tag keeps more, never less"
        );
    }
}
