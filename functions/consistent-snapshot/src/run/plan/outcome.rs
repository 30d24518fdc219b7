//! What a snapshot set turned out to be: a pure classification from SSM's final status, the
//! document's output and the snapshots' own `AppConsistent` tags.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::cause::{cause_of_invocation, Cause};
use crate::model::command::FinalInvocation;
use crate::model::fleet::AttachedVolume;
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::{CommandStatus, SnapshotState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Every expected volume has a completed snapshot tagged `AppConsistent=True`.
    Consistent,
    /// As `Consistent`, but taken with `NoWriters`: the application writers were left out.
    FileSystemConsistent,
    /// Snapshots exist but VSS failed: crash-consistent, kept as a fallback.
    CrashConsistent,
    /// Some expected volume has no (completed) snapshot.
    Incomplete,
    /// No snapshot was made.
    Failed,
    TimedOut,
    Skipped,
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutcomeKind::Consistent => "consistent",
            OutcomeKind::FileSystemConsistent => "file-system consistent",
            OutcomeKind::CrashConsistent => "crash-consistent",
            OutcomeKind::Incomplete => "incomplete",
            OutcomeKind::Failed => "failed",
            OutcomeKind::TimedOut => "timed out",
            OutcomeKind::Skipped => "skipped",
        })
    }
}

/// A snapshot as the classification needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub instance_id: String,
    pub name: String,
    pub kind: OutcomeKind,
    /// Volumes the set had to contain.
    pub volumes: usize,
    pub snapshots: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it is not consistent, named (the fix is `Cause::remediation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// The set is the function's crash-consistent fallback (CreateSnapshots): VSS gave none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// Failure texts of the VSS documents and of Windows, most telling first.
const KNOWN_FAILURES: [&str; 8] = [
    "thaw pipe connection timed out",
    "error on thaw",
    "timeout waiting for vss freeze",
    "language mode",
    "no ebs volume",
    "access denied",
    "exception",
    "error",
];

/// The line of the document's output that says why it failed.
pub fn failure_reason(output: &str) -> Option<String> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    let found = KNOWN_FAILURES
        .iter()
        .find_map(|needle| {
            lines
                .iter()
                .find(|l| l.to_ascii_lowercase().contains(needle))
        })
        .or_else(|| lines.last())?;
    let mut line = found.to_string();
    if line.len() > 240 {
        let mut cut = 240;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    Some(line)
}

/// What a finished set is, why, and the named cause when it is not consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub kind: OutcomeKind,
    pub reason: Option<String>,
    pub cause: Option<Cause>,
}

/// Classifies a finished snapshot set. `snapshots` are this run's snapshots of the instance's
/// volumes; consistency is read from their `AppConsistent` tags, never from the status alone.
pub fn classify(
    expected: &[AttachedVolume],
    invocation: &FinalInvocation,
    snapshots: &[SnapshotFacts],
) -> Classified {
    let (kind, reason) = classify_kind(expected, invocation, snapshots);
    let cause = (kind != OutcomeKind::Consistent)
        .then(|| cause_of_invocation(&invocation.status_details, &invocation.output))
        .flatten();
    Classified {
        kind,
        reason,
        cause,
    }
}

fn classify_kind(
    expected: &[AttachedVolume],
    invocation: &FinalInvocation,
    snapshots: &[SnapshotFacts],
) -> (OutcomeKind, Option<String>) {
    let ssm_reason = || {
        failure_reason(&invocation.output)
            .map(|r| format!("{}: {r}", invocation.status))
            .unwrap_or_else(|| format!("{} ({})", invocation.status, invocation.status_details))
    };
    if snapshots.is_empty() {
        let kind = if invocation.status == CommandStatus::TimedOut {
            OutcomeKind::TimedOut
        } else {
            OutcomeKind::Failed
        };
        let reason = if invocation.status == CommandStatus::Success {
            "Success, but no snapshot carries this run's tag".to_string()
        } else {
            ssm_reason()
        };
        return (kind, Some(reason));
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|v| {
            !snapshots
                .iter()
                .any(|s| s.volume_id == v.volume_id && s.state == SnapshotState::Completed)
        })
        .map(|v| format!("{} ({})", v.volume_id, v.device))
        .collect();
    if !missing.is_empty() {
        return (
            OutcomeKind::Incomplete,
            Some(format!(
                "no completed snapshot of {}; {}",
                missing.join(", "),
                ssm_reason()
            )),
        );
    }
    let crash: Vec<&str> = snapshots
        .iter()
        .filter(|s| !s.app_consistent())
        .map(|s| s.snapshot_id.as_str())
        .collect();
    if !crash.is_empty() {
        return (
            OutcomeKind::CrashConsistent,
            Some(format!(
                "{}; {} of {} snapshots without AppConsistent=True ({})",
                ssm_reason(),
                crash.len(),
                snapshots.len(),
                crash.join(", ")
            )),
        );
    }
    let reason = (invocation.status != CommandStatus::Success)
        .then(|| format!("all snapshots AppConsistent=True, yet {}", ssm_reason()));
    (OutcomeKind::Consistent, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn volumes() -> Vec<AttachedVolume> {
        ["vol-1", "vol-2"]
            .iter()
            .enumerate()
            .map(|(i, v)| AttachedVolume {
                volume_id: v.to_string(),
                device: format!("xvd{}", i),
            })
            .collect()
    }

    fn snap(volume: &str, consistent: &str) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: format!("snap-{volume}"),
            volume_id: volume.into(),
            state: "completed".into(),
            tags: [("AppConsistent".to_string(), consistent.to_string())].into(),
            ..Default::default()
        }
    }

    fn inv(status: &str, output: &str) -> FinalInvocation {
        FinalInvocation {
            status: status.into(),
            status_details: status.into(),
            output: output.into(),
        }
    }

    /// Every final status SSM reports for an invocation: the snapshots decide consistency,
    /// never the status alone.
    #[test]
    fn every_final_status_is_classified_by_its_snapshots() {
        use OutcomeKind::*;
        let finals = [
            ("Success", "Success"),
            ("Failed", "Failed"),
            ("Cancelled", "Cancelled"),
            ("TimedOut", "ExecutionTimedOut"),
            ("TimedOut", "DeliveryTimedOut"),
            ("Failed", "Undeliverable"),
            ("Failed", "InvalidPlatform"),
            ("Failed", "AccessDenied"),
            ("Cancelled", "Terminated"),
        ];
        let one = &volumes()[..1];
        let with_state = |state: &str, consistent: &str| SnapshotFacts {
            state: state.into(),
            ..snap("vol-1", consistent)
        };
        for (status, details) in finals {
            let invocation = FinalInvocation {
                status: status.into(),
                status_details: details.into(),
                output: String::new(),
            };
            let kind = |snapshots: &[SnapshotFacts]| classify_kind(one, &invocation, snapshots).0;
            let none = if status == "TimedOut" {
                TimedOut
            } else {
                Failed
            };
            assert_eq!(kind(&[]), none, "{status}/{details}, no snapshot");
            let cases = [
                (with_state("completed", "True"), Consistent),
                (with_state("completed", "False"), CrashConsistent),
                (with_state("error", "True"), Incomplete),
                (with_state("pending", "True"), Incomplete),
            ];
            for (snapshot, expected) in cases {
                assert_eq!(
                    kind(std::slice::from_ref(&snapshot)),
                    expected,
                    "{status}/{details}: {snapshot:?}"
                );
            }
        }
    }

    #[test]
    fn a_set_that_is_not_consistent_has_its_cause_and_a_consistent_one_none() {
        let failed = classify(
            &volumes(),
            &inv("Failed", "Created snap-1\nTimeout waiting for VSS Freeze"),
            &[snap("vol-1", "False"), snap("vol-2", "False")],
        );
        assert_eq!(
            (failed.kind, failed.cause),
            (OutcomeKind::CrashConsistent, Some(Cause::FreezeTimeout))
        );
        // All snapshots AppConsistent=True though the status is not Success: consistent, and
        // nothing to fix.
        let fine = classify(
            &volumes(),
            &inv("Failed", "Timeout waiting for VSS Freeze"),
            &[snap("vol-1", "True"), snap("vol-2", "True")],
        );
        assert_eq!((fine.kind, fine.cause), (OutcomeKind::Consistent, None));
    }

    #[test]
    fn all_volumes_app_consistent_is_consistent() {
        let (kind, reason) = classify_kind(
            &volumes(),
            &inv("Success", ""),
            &[snap("vol-1", "True"), snap("vol-2", "True")],
        );
        assert_eq!((kind, reason), (OutcomeKind::Consistent, None));
    }

    #[test]
    fn a_vss_failure_is_crash_consistent_with_the_document_reason() {
        let (kind, reason) = classify_kind(
            &volumes(),
            &inv("Failed", "Created snap-1\n----------ERROR-------\nThaw pipe connection timed out. error on thaw"),
            &[snap("vol-1", "False"), snap("vol-2", "False")],
        );
        assert_eq!(kind, OutcomeKind::CrashConsistent);
        assert!(reason
            .unwrap_or_default()
            .contains("Thaw pipe connection timed out"));
    }

    #[test]
    fn success_status_does_not_make_a_set_consistent() {
        let (kind, _) = classify_kind(
            &volumes(),
            &inv("Success", ""),
            &[snap("vol-1", "True"), snap("vol-2", "False")],
        );
        assert_eq!(kind, OutcomeKind::CrashConsistent);
        let untagged = SnapshotFacts {
            tags: BTreeMap::new(),
            ..snap("vol-2", "True")
        };
        let (kind, _) = classify_kind(
            &volumes(),
            &inv("Success", ""),
            &[snap("vol-1", "True"), untagged],
        );
        assert_eq!(kind, OutcomeKind::CrashConsistent);
    }

    #[test]
    fn a_missing_or_failed_volume_is_incomplete() {
        let (kind, reason) =
            classify_kind(&volumes(), &inv("Success", ""), &[snap("vol-1", "True")]);
        assert_eq!(kind, OutcomeKind::Incomplete);
        assert!(reason.unwrap_or_default().contains("vol-2 (xvd1)"));
        let errored = SnapshotFacts {
            state: "error".into(),
            ..snap("vol-2", "True")
        };
        assert_eq!(
            classify_kind(
                &volumes(),
                &inv("Success", ""),
                &[snap("vol-1", "True"), errored]
            )
            .0,
            OutcomeKind::Incomplete
        );
    }

    #[test]
    fn no_snapshot_is_failed_or_timed_out() {
        let (kind, reason) = classify_kind(
            &volumes(),
            &inv("Failed", "Exception: No EBS volumes are attached"),
            &[],
        );
        assert_eq!(kind, OutcomeKind::Failed);
        assert!(reason.unwrap_or_default().contains("No EBS volumes"));
        let timed_out = FinalInvocation {
            status_details: "DeliveryTimedOut".into(),
            ..inv("TimedOut", "")
        };
        let (kind, reason) = classify_kind(&volumes(), &timed_out, &[]);
        assert_eq!(kind, OutcomeKind::TimedOut);
        assert!(reason.unwrap_or_default().contains("DeliveryTimedOut"));
        assert_eq!(
            classify_kind(&volumes(), &inv("Cancelled", ""), &[]).0,
            OutcomeKind::Failed
        );
        assert!(classify_kind(&volumes(), &inv("Success", ""), &[])
            .1
            .unwrap_or_default()
            .contains("no snapshot"));
    }

    #[test]
    fn the_reason_is_the_telling_line_and_bounded() {
        assert_eq!(
            failure_reason("ok\nTimeout waiting for VSS Freeze\nmore"),
            Some("Timeout waiting for VSS Freeze".into())
        );
        assert_eq!(failure_reason("   \n"), None);
        assert!(
            failure_reason(&"é".repeat(400))
                .unwrap_or_default()
                .chars()
                .count()
                <= 241
        );
    }
}
