//! Tracking, as pure decisions: after each look at an instance's invocation and snapshots,
//! wait (with one more attempt) or finish with its outcome (`next_instance_step`); after each
//! look at a whole run, wait or write its summary (`next_run_step`, `run_outcomes`).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};

use crate::jobs::{InstanceJob, RunCommand, RunJob, Stage};
use crate::model::catalog::{ForeignSnapshot, ManifestEntry, SetRecord};
use crate::model::command::{FinalInvocation, Invocation, Look};
use crate::model::fleet::AttachedVolume;
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::{CommandStatus, SnapshotState};
use crate::model::tags::{TAG_DEVICE, TAG_INSTANCE_ID, TAG_NAME};
use crate::run::plan::outcome::{classify, Outcome, OutcomeKind};
use crate::run::plan::record::{outcome_of, verify_set, Verified};

fn count_pending(snapshots: &[SnapshotFacts]) -> usize {
    snapshots
        .iter()
        .filter(|s| s.state == SnapshotState::Pending)
        .count()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Look again later with this job.
    Wait {
        job: InstanceJob,
        why: String,
    },
    Finish(Outcome),
}

/// Decides what an instance job does after one look at its invocation and snapshots.
pub fn next_instance_step(
    job: &InstanceJob,
    look: &Look,
    snapshots: &[SnapshotFacts],
    now: DateTime<Utc>,
    completion_timeout: Duration,
) -> Next {
    let finish = |kind, reason: Option<String>| {
        Next::Finish(Outcome {
            instance_id: job.instance_id.clone(),
            name: job.name.clone(),
            kind,
            volumes: job.volumes.len(),
            snapshots: snapshots.iter().map(|s| s.snapshot_id.clone()).collect(),
            reason,
        })
    };
    let wait = |job: InstanceJob, why: String| Next::Wait {
        job: InstanceJob {
            attempt: job.attempt + 1,
            ..job
        },
        why,
    };
    match look {
        Look::NotYet { status } => {
            if now > job.stage_deadline {
                return finish(
                    OutcomeKind::TimedOut,
                    Some(format!(
                        "SSM invocation still {status} at the deadline {}",
                        job.stage_deadline.to_rfc3339()
                    )),
                );
            }
            wait(job.clone(), format!("invocation {status}"))
        }
        Look::Final(invocation) => {
            let pending = count_pending(snapshots);
            if pending > 0 {
                if job.stage == Stage::Command {
                    let next = InstanceJob {
                        stage: Stage::Snapshots,
                        stage_deadline: now + completion_timeout,
                        attempt: 0,
                        ..job.clone()
                    };
                    return wait(next, format!("{pending} snapshots pending"));
                }
                if now <= job.stage_deadline {
                    return wait(job.clone(), format!("{pending} snapshots pending"));
                }
            }
            let (kind, reason) = classify(&job.volumes, invocation, snapshots);
            finish(kind, reason)
        }
    }
}

/// The per-instance contract tags the document cannot add (it takes one tag set per command):
/// `ConsistentSnapshot:InstanceId` and `Name` = `<instance name> <device>`. `None` when the
/// snapshot already carries them, so a repeated look writes nothing.
pub fn instance_tags(
    instance_id: &str,
    name: &str,
    volumes: &[AttachedVolume],
    snapshot: &SnapshotFacts,
) -> Option<Vec<(String, String)>> {
    let device = snapshot
        .tags
        .get(TAG_DEVICE)
        .map(String::as_str)
        .or_else(|| {
            volumes
                .iter()
                .find(|v| v.volume_id == snapshot.volume_id)
                .map(|v| v.device.as_str())
        })
        .unwrap_or("unknown-device");
    let wanted: BTreeMap<&str, String> = [
        (TAG_INSTANCE_ID, instance_id.to_string()),
        (TAG_NAME, format!("{name} {device}")),
    ]
    .into();
    if wanted.iter().all(|(k, v)| snapshot.tags.get(*k) == Some(v)) {
        return None;
    }
    Some(
        wanted
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// What SSM lists of a run's commands: each instance's invocation (its status, the final
/// result when there is one, and whether its command left the boot volume out), and the
/// commands that SSM does not list in full (yet), with how many instances are missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunInvocations {
    pub by_instance: BTreeMap<String, (CommandStatus, Option<FinalInvocation>, bool)>,
    pub unlisted: Vec<(String, usize)>,
}

impl RunInvocations {
    /// Gathers the invocations listed for each of the run's commands.
    pub fn gather(listed: &[(&RunCommand, Vec<Invocation>)]) -> Self {
        let mut run = RunInvocations::default();
        for (command, invocations) in listed {
            for inv in invocations {
                let fin = inv.status.is_final().then(|| FinalInvocation {
                    status: inv.status.clone(),
                    status_details: inv.status_details.clone(),
                    output: inv.output.clone(),
                });
                run.by_instance.insert(
                    inv.instance_id.clone(),
                    (inv.status.clone(), fin, command.exclude_boot_volume),
                );
            }
            if invocations.len() < command.instances {
                run.unlisted.push((
                    command.command_id.clone(),
                    command.instances - invocations.len(),
                ));
            }
        }
        run
    }

    /// Invocations not final yet, counting the ones SSM does not list yet.
    pub fn open(&self) -> usize {
        self.by_instance
            .values()
            .filter(|(_, fin, _)| fin.is_none())
            .count()
            + self.unlisted.iter().map(|(_, n)| n).sum::<usize>()
    }
}

/// What a run's message does after one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunNext {
    /// Look again later with this job; `why` says what is awaited.
    Wait { job: RunJob, why: RunWait },
    /// Every invocation is final: read the run's snapshots, then decide again.
    ReadSnapshots,
    /// Write the run's summary (at the run's deadline, with what is not final as timed out).
    Finish,
}

/// What a run waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunWait {
    Invocations { open: usize },
    Snapshots { pending: usize },
}

/// Decides whether a run waits or ends. `snapshots` is `None` until they have been read (they
/// are read only once every invocation is final). Past the run's deadline it always ends.
pub fn next_run_step(
    job: &RunJob,
    invocations: &RunInvocations,
    snapshots: Option<&[SnapshotFacts]>,
    now: DateTime<Utc>,
) -> RunNext {
    let past_deadline = now > job.deadline;
    let wait = |why| RunNext::Wait {
        job: RunJob {
            attempt: job.attempt + 1,
            ..job.clone()
        },
        why,
    };
    let open = invocations.open();
    if open > 0 && !past_deadline {
        return wait(RunWait::Invocations { open });
    }
    let Some(snapshots) = snapshots else {
        return RunNext::ReadSnapshots;
    };
    let pending = count_pending(snapshots);
    if pending > 0 && !past_deadline {
        return wait(RunWait::Snapshots { pending });
    }
    RunNext::Finish
}

/// One instance of a finished run: its outcome, and the set this look verified (to record
/// and tag), when the catalog did not hold it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceResult {
    pub outcome: Outcome,
    pub verified: Option<Verified>,
}

/// What the catalog holds of a run, by instance: what it dispatched and the sets recorded.
#[derive(Debug, Clone, Default)]
pub struct RunCatalog {
    pub manifest: HashMap<String, ManifestEntry>,
    pub sets: HashMap<String, SetRecord>,
}

/// The outcomes of a finished run: one per invocation (the recorded set's verdict, else the
/// set verified now from its final result and the run's snapshots, else timed out), then every
/// instance that was skipped, never listed by SSM, or never sent the command; and the
/// snapshots carrying the run's tag that belong to no set (foreign).
pub fn run_outcomes(
    job: &RunJob,
    invocations: &RunInvocations,
    catalog: &RunCatalog,
    snapshots: &[SnapshotFacts],
    (region, now): (&str, DateTime<Utc>),
) -> (Vec<InstanceResult>, Vec<Outcome>, Vec<ForeignSnapshot>) {
    let mut results = Vec::new();
    let mut belong: HashSet<String> = HashSet::new();
    for (instance_id, (status, fin, _)) in &invocations.by_instance {
        let Some(entry) = catalog.manifest.get(instance_id) else {
            results.push(InstanceResult {
                outcome: Outcome {
                    instance_id: instance_id.clone(),
                    name: instance_id.clone(),
                    kind: OutcomeKind::Failed,
                    volumes: 0,
                    snapshots: vec![],
                    reason: Some("SSM lists an invocation the run's manifest does not hold".into()),
                },
                verified: None,
            });
            continue;
        };
        if let Some(record) = catalog.sets.get(instance_id) {
            belong.extend(record.snapshots.iter().map(|s| s.snapshot_id.clone()));
            results.push(InstanceResult {
                outcome: outcome_of(record),
                verified: None,
            });
            continue;
        }
        let Some(fin) = fin else {
            results.push(InstanceResult {
                outcome: Outcome {
                    instance_id: instance_id.clone(),
                    name: entry.name.clone(),
                    kind: OutcomeKind::TimedOut,
                    volumes: entry.volumes.len(),
                    snapshots: vec![],
                    reason: Some(format!("SSM invocation still {status} at the run deadline")),
                },
                verified: None,
            });
            continue;
        };
        let verified = verify_set(entry, fin, snapshots, region, now);
        belong.extend(verified.snapshots.iter().map(|s| s.snapshot_id.clone()));
        results.push(InstanceResult {
            outcome: verified.outcome.clone(),
            verified: Some(verified),
        });
    }
    let foreign = snapshots
        .iter()
        .filter(|s| !belong.contains(&s.snapshot_id))
        .map(|s| ForeignSnapshot {
            snapshot_id: s.snapshot_id.clone(),
            claims_instance: s.tags.get(TAG_INSTANCE_ID).cloned(),
            why: "carries the run's tag but no instance's document reported it".into(),
        })
        .collect();
    let mut others: Vec<Outcome> = job
        .skipped
        .iter()
        .map(|s| Outcome {
            instance_id: s.instance_id.clone(),
            name: s.name.clone(),
            kind: OutcomeKind::Skipped,
            volumes: 0,
            snapshots: vec![],
            reason: Some(s.reason.to_string()),
        })
        .collect();
    // Past the deadline, instances SSM never listed are still accounted for.
    others.extend(
        invocations
            .unlisted
            .iter()
            .map(|(command_id, missing)| Outcome {
                instance_id: format!("command {command_id}"),
                name: format!("{missing} instance(s)"),
                kind: OutcomeKind::TimedOut,
                volumes: 0,
                snapshots: vec![],
                reason: Some(format!(
                    "SSM never listed {missing} of this command's invocations by the run deadline"
                )),
            }),
    );
    others.extend(job.unsent.iter().map(|u| Outcome {
        instance_id: u.instance_id.clone(),
        name: u.name.clone(),
        kind: OutcomeKind::Failed,
        volumes: 0,
        snapshots: vec![],
        reason: Some(format!("command not sent: {}", u.error)),
    }));
    (results, others, foreign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(stage: Stage, deadline_in: i64) -> InstanceJob {
        InstanceJob {
            run_id: "r".into(),
            instance_id: "i-1".into(),
            name: "sql01".into(),
            command_id: "c".into(),
            volumes: vec![AttachedVolume {
                volume_id: "vol-1".into(),
                device: "xvdf".into(),
            }],
            stage,
            stage_deadline: now() + Duration::seconds(deadline_in),
            attempt: 2,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn snap(state: &str) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: "snap-1".into(),
            volume_id: "vol-1".into(),
            state: state.into(),
            tags: [("AppConsistent".to_string(), "True".to_string())].into(),
            ..Default::default()
        }
    }

    fn success() -> Look {
        Look::Final(FinalInvocation {
            status: "Success".into(),
            status_details: "Success".into(),
            output: String::new(),
        })
    }

    const DAY: Duration = Duration::days(1);

    #[test]
    fn not_final_before_the_deadline_waits_with_one_more_attempt() {
        let next = next_instance_step(
            &job(Stage::Command, 60),
            &Look::NotYet {
                status: "InProgress".into(),
            },
            &[],
            now(),
            DAY,
        );
        let Next::Wait { job, why } = next else {
            panic!("must wait: {next:?}")
        };
        assert_eq!(job.attempt, 3);
        assert!(why.contains("InProgress"));
    }

    #[test]
    fn not_final_after_the_deadline_times_out_with_the_reason() {
        let next = next_instance_step(
            &job(Stage::Command, -1),
            &Look::NotYet {
                status: "Pending".into(),
            },
            &[],
            now(),
            DAY,
        );
        let Next::Finish(outcome) = next else {
            panic!("must finish: {next:?}")
        };
        assert_eq!(outcome.kind, OutcomeKind::TimedOut);
        assert!(outcome.reason.unwrap_or_default().contains("still Pending"));
    }

    #[test]
    fn pending_snapshots_move_the_job_to_the_snapshot_stage_with_a_fresh_deadline() {
        let next = next_instance_step(
            &job(Stage::Command, -1),
            &success(),
            &[snap("pending")],
            now(),
            DAY,
        );
        let Next::Wait { job, .. } = next else {
            panic!("must wait: {next:?}")
        };
        assert_eq!(job.stage, Stage::Snapshots);
        assert_eq!(job.stage_deadline, now() + DAY);
        assert_eq!(job.attempt, 1);
    }

    #[test]
    fn snapshots_still_pending_at_their_deadline_are_incomplete() {
        let next = next_instance_step(
            &job(Stage::Snapshots, -1),
            &success(),
            &[snap("pending")],
            now(),
            DAY,
        );
        assert!(
            matches!(next, Next::Finish(ref o) if o.kind == OutcomeKind::Incomplete),
            "{next:?}"
        );
        let next = next_instance_step(
            &job(Stage::Snapshots, 60),
            &success(),
            &[snap("pending")],
            now(),
            DAY,
        );
        assert!(matches!(next, Next::Wait { .. }));
    }

    #[test]
    fn a_final_invocation_with_completed_snapshots_finishes_classified() {
        let next = next_instance_step(
            &job(Stage::Command, 60),
            &success(),
            &[snap("completed")],
            now(),
            DAY,
        );
        let Next::Finish(outcome) = next else {
            panic!("must finish")
        };
        assert_eq!(
            (outcome.kind, outcome.snapshots),
            (OutcomeKind::Consistent, vec!["snap-1".to_string()])
        );
    }

    fn final_look(status: &str, details: &str) -> Look {
        Look::Final(FinalInvocation {
            status: status.into(),
            status_details: details.into(),
            output: String::new(),
        })
    }

    fn snap_with(state: &str, app_consistent: &str) -> SnapshotFacts {
        SnapshotFacts {
            tags: [("AppConsistent".to_string(), app_consistent.to_string())].into(),
            ..snap(state)
        }
    }

    /// Every final SSM status SSM reports for an invocation, with what the snapshots say.
    #[test]
    fn every_final_status_ends_the_job_with_the_snapshots_deciding_consistency() {
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
        for (status, details) in finals {
            let look = final_look(status, details);
            let with = |snapshots: &[SnapshotFacts]| match next_instance_step(
                &job(Stage::Command, 60),
                &look,
                snapshots,
                now(),
                DAY,
            ) {
                Next::Finish(outcome) => outcome.kind,
                Next::Wait { .. } => panic!("{status}/{details} with {snapshots:?} must finish"),
            };
            let no_snapshot = if status == "TimedOut" {
                TimedOut
            } else {
                Failed
            };
            assert_eq!(with(&[]), no_snapshot, "{status}/{details}, no snapshot");
            // Consistency is read from the snapshots, never from the status alone.
            assert_eq!(
                with(&[snap_with("completed", "True")]),
                Consistent,
                "{status}/{details}"
            );
            assert_eq!(
                with(&[snap_with("completed", "False")]),
                CrashConsistent,
                "{status}/{details}"
            );
            assert_eq!(
                with(&[snap_with("error", "True")]),
                Incomplete,
                "{status}/{details}"
            );
            // Pending snapshots move the job to the snapshot stage, whatever the status.
            let next = next_instance_step(
                &job(Stage::Command, 60),
                &look,
                &[snap("pending")],
                now(),
                DAY,
            );
            assert!(
                matches!(next, Next::Wait { ref job, .. } if job.stage == Stage::Snapshots),
                "{status}/{details}: {next:?}"
            );
        }
    }

    #[test]
    fn every_non_final_status_waits_until_the_stage_deadline_then_times_out() {
        for status in [
            "Pending",
            "InProgress",
            "Delayed",
            "Cancelling",
            "not yet registered",
        ] {
            let look = Look::NotYet {
                status: status.into(),
            };
            for stage in [Stage::Command, Stage::Snapshots] {
                assert!(matches!(
                    next_instance_step(&job(stage, 1), &look, &[], now(), DAY),
                    Next::Wait { .. }
                ));
                let next = next_instance_step(&job(stage, -1), &look, &[], now(), DAY);
                assert!(
                    matches!(next, Next::Finish(ref o) if o.kind == OutcomeKind::TimedOut
                        && o.reason.as_deref().is_some_and(|r| r.contains(status))),
                    "{status}: {next:?}"
                );
            }
        }
    }

    fn command(id: &str, instances: usize) -> RunCommand {
        RunCommand {
            command_id: id.into(),
            exclude_boot_volume: false,
            instances,
        }
    }

    fn invocation(instance: &str, status: &str) -> Invocation {
        Invocation {
            instance_id: instance.into(),
            status: status.into(),
            status_details: status.into(),
            output: String::new(),
        }
    }

    fn run_job(deadline_in: i64) -> RunJob {
        RunJob {
            run_id: "r".into(),
            started_at: now() - Duration::minutes(5),
            deadline: now() + Duration::seconds(deadline_in),
            commands: vec![command("c1", 2)],
            skipped: vec![crate::jobs::Skipped {
                instance_id: "i-9".into(),
                name: "legacy01".into(),
                reason: crate::model::fleet::SkipReason::NotRunning {
                    state: "stopped".into(),
                },
            }],
            unsent: vec![crate::jobs::Unsent {
                instance_id: "i-8".into(),
                name: "branch01".into(),
                error: "AccessDenied".into(),
            }],
            attempt: 3,
        }
    }

    #[test]
    fn a_run_waits_for_every_invocation_then_for_its_snapshots_then_finishes() {
        let command = command("c1", 2);
        let job = run_job(60);
        // One of two invocations listed, and it is not final: wait, one more attempt.
        let partial = RunInvocations::gather(&[(&command, vec![invocation("i-1", "InProgress")])]);
        assert_eq!(partial.open(), 2, "the unlisted one counts as open");
        let next = next_run_step(&job, &partial, None, now());
        assert!(
            matches!(next, RunNext::Wait { ref job, why: RunWait::Invocations { open: 2 } } if job.attempt == 4),
            "{next:?}"
        );
        // Both final: the snapshots are read next, and pending ones are waited for.
        let done = RunInvocations::gather(&[(
            &command,
            vec![invocation("i-1", "Success"), invocation("i-2", "Failed")],
        )]);
        assert_eq!(done.open(), 0);
        assert_eq!(
            next_run_step(&job, &done, None, now()),
            RunNext::ReadSnapshots
        );
        let pending = [snap("pending")];
        assert!(matches!(
            next_run_step(&job, &done, Some(&pending), now()),
            RunNext::Wait {
                why: RunWait::Snapshots { pending: 1 },
                ..
            }
        ));
        let completed = [snap("completed")];
        assert_eq!(
            next_run_step(&job, &done, Some(&completed), now()),
            RunNext::Finish
        );
    }

    #[test]
    fn past_its_deadline_a_run_ends_with_what_it_has() {
        let command = command("c1", 2);
        let job = run_job(-1);
        let partial = RunInvocations::gather(&[(&command, vec![invocation("i-1", "InProgress")])]);
        assert_eq!(
            next_run_step(&job, &partial, None, now()),
            RunNext::ReadSnapshots
        );
        assert_eq!(
            next_run_step(&job, &partial, Some(&[snap("pending")]), now()),
            RunNext::Finish
        );
        let catalog = RunCatalog {
            manifest: [("i-1".to_string(), manifest_entry())].into(),
            sets: HashMap::new(),
        };
        let (results, others, _) =
            run_outcomes(&job, &partial, &catalog, &[], ("eu-west-1", now()));
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome.kind, OutcomeKind::TimedOut);
        assert!(results[0]
            .outcome
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("still InProgress")));
        // The unlisted instance, the skipped one and the unsent one are all accounted for.
        let kinds: Vec<(&str, OutcomeKind)> = others
            .iter()
            .map(|o| (o.instance_id.as_str(), o.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("i-9", OutcomeKind::Skipped),
                ("command c1", OutcomeKind::TimedOut),
                ("i-8", OutcomeKind::Failed)
            ]
        );
    }

    fn manifest_entry() -> ManifestEntry {
        ManifestEntry {
            run_id: "r".into(),
            instance_id: "i-1".into(),
            name: "sql01".into(),
            command_id: "c1".into(),
            volumes: vec![
                AttachedVolume {
                    volume_id: "vol-1".into(),
                    device: "xvdf".into(),
                },
                AttachedVolume {
                    volume_id: "vol-2".into(),
                    device: "xvdg".into(),
                },
            ],
            started_at: now() - Duration::minutes(5),
        }
    }

    #[test]
    fn a_finished_instance_is_verified_against_the_volumes_it_had_at_dispatch() {
        let command = command("c1", 1);
        let job = RunJob {
            commands: vec![command.clone()],
            skipped: vec![],
            unsent: vec![],
            ..run_job(60)
        };
        let mut reported = invocation("i-1", "Success");
        reported.output = "Created snap-1 from vol-1 device: xvdf\n".into();
        let done = RunInvocations::gather(&[(&command, vec![reported])]);
        let catalog = RunCatalog {
            manifest: [("i-1".to_string(), manifest_entry())].into(),
            sets: HashMap::new(),
        };
        let mut first = snap("completed");
        first.start_time = Some(now() - Duration::minutes(1));
        let forged = SnapshotFacts {
            snapshot_id: "snap-forged".into(),
            ..first.clone()
        };
        // vol-2 has no snapshot: the set is incomplete, whatever SSM says.
        let (results, others, foreign) = run_outcomes(
            &job,
            &done,
            &catalog,
            &[first, forged],
            ("eu-west-1", now()),
        );
        assert!(others.is_empty());
        assert_eq!(results[0].outcome.kind, OutcomeKind::Incomplete);
        assert_eq!(results[0].outcome.name, "sql01");
        let verified = results[0].verified.as_ref().expect("verified now");
        assert_eq!(verified.record.expected.len(), 2);
        assert_eq!(verified.snapshots.len(), 1);
        assert_eq!(foreign.len(), 1, "{foreign:?}");
        assert_eq!(foreign[0].snapshot_id, "snap-forged");
        // A set the catalog already holds keeps its recorded verdict.
        let recorded = RunCatalog {
            sets: [("i-1".to_string(), verified.record.clone())].into(),
            ..catalog
        };
        let (again, _, _) = run_outcomes(&job, &done, &recorded, &[], ("eu-west-1", now()));
        assert_eq!(again[0].outcome.kind, OutcomeKind::Incomplete);
        assert!(again[0].verified.is_none());
    }

    #[test]
    fn instance_tags_are_written_once() {
        let volumes = job(Stage::Command, 60).volumes;
        let untagged = snap("completed");
        let tags = instance_tags("i-1", "sql01", &volumes, &untagged).expect("tags to write");
        assert_eq!(
            tags,
            [
                (
                    "ConsistentSnapshot:InstanceId".to_string(),
                    "i-1".to_string()
                ),
                ("Name".to_string(), "sql01 xvdf".to_string())
            ]
        );
        let mut tagged = untagged.clone();
        tagged.tags.extend(tags);
        assert_eq!(instance_tags("i-1", "sql01", &volumes, &tagged), None);
        // The document's Device tag names the device when there is one.
        let mut with_device = untagged;
        with_device.tags.insert("Device".into(), "/dev/sda1".into());
        let tags = instance_tags("i-1", "sql01", &volumes, &with_device).unwrap_or_default();
        assert!(tags.contains(&("Name".to_string(), "sql01 /dev/sda1".to_string())));
    }
}
