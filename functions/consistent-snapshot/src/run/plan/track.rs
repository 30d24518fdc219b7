//! Tracking, as pure decisions: after each look at an instance's invocation, wait (with one
//! more attempt), report its final result, or time out (`next_instance_step`); after each
//! look at a whole run, wait or verify its sets and write its summary (`next_run_step`,
//! `run_outcomes`).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::jobs::{InstanceJob, RunCommand, RunJob};
use crate::model::catalog::{
    reported_snapshots, ForeignSnapshot, InstanceReport, ManifestEntry, SetRecord,
};
use crate::model::cause::{cause_of_deadline, cause_of_skip};
use crate::model::command::{FinalInvocation, Invocation, Look};
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::{CommandStatus, SnapshotState};
use crate::model::tags::{
    cut_chars, CONSISTENCY_FILE_SYSTEM, TAG_CONSISTENCY, TAG_INSTANCE_ID, TAG_NAME,
    TAG_VALUE_MAX_CHARS,
};
use crate::run::plan::outcome::{failure_reason, Outcome, OutcomeKind};
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
    Wait { job: InstanceJob, why: String },
    /// The invocation is final: its report, for the run's look to verify and record the set.
    Report(InstanceReport),
    /// Still not final at the command's deadline.
    TimedOut(Outcome),
}

/// Decides what an instance job does after one look at its invocation. An instance reads no
/// snapshot: the run's look reads all of the run's at once (a page of 1,000 where an
/// instance would spend a call on its few) and verifies every set from these reports.
pub fn next_instance_step(job: &InstanceJob, look: &Look, now: DateTime<Utc>) -> Next {
    match look {
        Look::NotYet { status } if now > job.stage_deadline => Next::TimedOut(Outcome {
            instance_id: job.instance_id.clone(),
            name: job.name.clone(),
            kind: OutcomeKind::TimedOut,
            volumes: job.volumes.len(),
            snapshots: vec![],
            reason: Some(format!(
                "SSM invocation still {status} at the deadline {}",
                job.stage_deadline.to_rfc3339()
            )),
            cause: Some(cause_of_deadline(status)),
            fallback: false,
        }),
        Look::NotYet { status } => Next::Wait {
            job: InstanceJob {
                attempt: job.attempt + 1,
                ..job.clone()
            },
            why: format!("invocation {status}"),
        },
        Look::Final(invocation) => Next::Report(InstanceReport {
            run_id: job.run_id.clone(),
            instance_id: job.instance_id.clone(),
            command_id: job.command_id.clone(),
            invocation: FinalInvocation {
                output: digest_output(&invocation.output),
                ..invocation.clone()
            },
        }),
    }
}

/// The lines of a document's output that verifying a set reads: the `Created snap-… from
/// vol-…` lines and the failure `failure_reason` picks, so that a report holds a few hundred
/// bytes, not the output's 24,000 characters, and reads the same.
pub fn digest_output(output: &str) -> String {
    let mut lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|line| !reported_snapshots(line).is_empty())
        .collect();
    let reason = failure_reason(output);
    lines.extend(reason.as_deref());
    lines.join("\n")
}

/// The per-instance tags the document cannot add (it takes one tag set per command):
/// `ConsistentSnapshot:InstanceId` and `Name` = `<instance name> <device>`, the device as
/// recorded at dispatch (the document's `Device` tag is one any fleet server may rewrite),
/// the instance's cost tags as read at dispatch (`COPY_INSTANCE_TAGS`), and on a set taken
/// with `NoWriters` `ConsistentSnapshot:Consistency=FileSystem` (its copies carry it too).
/// `None` when the snapshot already carries them, so a repeated look writes nothing.
pub fn instance_tags(
    (instance_id, name, device): (&str, &str, &str),
    cost_tags: &[(String, String)],
    file_system: bool,
    snapshot: &SnapshotFacts,
) -> Option<Vec<(String, String)>> {
    // The instance's cost tags first: the contract tags are written over any of the same key.
    let mut wanted: BTreeMap<&str, String> = cost_tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    wanted.insert(TAG_INSTANCE_ID, instance_id.to_string());
    wanted.insert(
        TAG_NAME,
        cut_chars(&format!("{name} {device}"), TAG_VALUE_MAX_CHARS),
    );
    if file_system {
        wanted.insert(TAG_CONSISTENCY, CONSISTENCY_FILE_SYSTEM.to_string());
    }
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
    /// Each command's `ExcludeBootVolume`, for the instances SSM does not list.
    pub boot_excluded: BTreeMap<String, bool>,
}

impl RunInvocations {
    /// Gathers the invocations listed for each of the run's commands.
    pub fn gather(listed: &[(&RunCommand, Vec<Invocation>)]) -> Self {
        let mut run = RunInvocations::default();
        for (command, invocations) in listed {
            run.boot_excluded
                .insert(command.command_id.clone(), command.exclude_boot_volume);
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

    /// Takes each instance's own report, when the catalog holds one for the command the
    /// manifest sent it, in place of what SSM lists: the report has the whole output
    /// (`GetCommandInvocation` of that instance and command), the list only its first 2,500
    /// characters. A report of an instance SSM does not list (yet, or at all: the command
    /// history refused) stands for it, so the run does not wait on the list for it.
    pub fn with_reports(
        mut self,
        reports: &[InstanceReport],
        manifest: &HashMap<String, ManifestEntry>,
    ) -> Self {
        for report in reports {
            let sent = manifest
                .get(&report.instance_id)
                .is_some_and(|m| m.command_id == report.command_id);
            if !sent {
                continue;
            }
            if let Some((status, fin, _)) = self.by_instance.get_mut(&report.instance_id) {
                *status = report.invocation.status.clone();
                *fin = Some(report.invocation.clone());
                continue;
            }
            let Some(missing) = self
                .unlisted
                .iter_mut()
                .find(|(command, n)| *command == report.command_id && *n > 0)
            else {
                continue;
            };
            missing.1 -= 1;
            let boot = self
                .boot_excluded
                .get(&report.command_id)
                .copied()
                .unwrap_or(false);
            self.by_instance.insert(
                report.instance_id.clone(),
                (
                    report.invocation.status.clone(),
                    Some(report.invocation.clone()),
                    boot,
                ),
            );
        }
        self.unlisted.retain(|(_, n)| *n > 0);
        self
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
                    cause: None,
                    fallback: false,
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
                    cause: Some(cause_of_deadline(&status.to_string())),
                    fallback: false,
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
            cause: cause_of_skip(&s.reason),
            fallback: false,
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
                cause: None,
                fallback: false,
            }),
    );
    others.extend(job.unsent.iter().map(|u| Outcome {
        instance_id: u.instance_id.clone(),
        name: u.name.clone(),
        kind: OutcomeKind::Failed,
        volumes: 0,
        snapshots: vec![],
        reason: Some(format!("command not sent: {}", u.error)),
        cause: None,
        fallback: false,
    }));
    (results, others, foreign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fleet::AttachedVolume;
    use chrono::Duration;

    fn job(deadline_in: i64) -> InstanceJob {
        InstanceJob {
            run_id: "r".into(),
            instance_id: "i-1".into(),
            name: "sql01".into(),
            command_id: "c".into(),
            volumes: vec![AttachedVolume {
                volume_id: "vol-1".into(),
                device: "xvdf".into(),
            }],
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

    #[test]
    fn not_final_before_the_deadline_waits_with_one_more_attempt() {
        let next = next_instance_step(
            &job(60),
            &Look::NotYet {
                status: "InProgress".into(),
            },
            now(),
        );
        let Next::Wait { job, why } = next else {
            panic!("must wait: {next:?}")
        };
        assert_eq!(job.attempt, 3);
        assert!(why.contains("InProgress"));
    }

    #[test]
    fn every_non_final_status_waits_until_the_deadline_then_times_out() {
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
            assert!(matches!(
                next_instance_step(&job(1), &look, now()),
                Next::Wait { .. }
            ));
            let next = next_instance_step(&job(-1), &look, now());
            assert!(
                matches!(next, Next::TimedOut(ref o) if o.kind == OutcomeKind::TimedOut
                    && o.reason.as_deref().is_some_and(|r| r.contains(status))),
                "{status}: {next:?}"
            );
        }
    }

    /// A final look, even past the deadline, is reported with the lines that decide the set.
    #[test]
    fn a_final_invocation_is_reported_with_its_created_lines_and_its_failure() {
        let output = format!(
            "{}\nCreated snap-0a1 from vol-0b1 device: xvdf\n  Created snap-0a2 from vol-0b2 device: xvdg\nWriter 'SqlServerWriter' State: [1] Stable\nThaw pipe connection timed out\n{}",
            "VSS writers:\n".repeat(400),
            "Done.\n".repeat(50)
        );
        let look = Look::Final(FinalInvocation {
            status: "Failed".into(),
            status_details: "Failed".into(),
            output: output.clone(),
        });
        for deadline_in in [60, -1] {
            let Next::Report(report) = next_instance_step(&job(deadline_in), &look, now()) else {
                panic!("a final look is reported")
            };
            assert_eq!(
                (report.run_id.as_str(), report.instance_id.as_str()),
                ("r", "i-1")
            );
            assert_eq!(report.command_id, "c");
            assert_eq!(report.invocation.status, CommandStatus::Failed);
            assert_eq!(
                report.invocation.output,
                "Created snap-0a1 from vol-0b1 device: xvdf\nCreated snap-0a2 from vol-0b2 device: xvdg\nThaw pipe connection timed out"
            );
            // It reads as the whole output does.
            assert_eq!(
                reported_snapshots(&report.invocation.output),
                reported_snapshots(&output)
            );
            assert_eq!(
                failure_reason(&report.invocation.output),
                failure_reason(&output)
            );
        }
    }

    #[test]
    fn a_digest_keeps_the_last_line_when_no_known_failure_is_named() {
        let output = "Created snap-0a1 from vol-0b1\nsomething odd happened\n";
        assert_eq!(
            failure_reason(&digest_output(output)),
            Some("something odd happened".into())
        );
        assert_eq!(digest_output(""), "");
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
            early: false,
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
            cost_tags: vec![],
            no_writers: false,
        }
    }

    /// The list's output is cut at 2,500 characters; the instance's report has every line.
    #[test]
    fn an_instance_report_takes_the_place_of_what_ssm_lists_for_its_own_command_only() {
        let command = command("c1", 2);
        let mut cut = invocation("i-1", "Success");
        cut.output = "Created snap-1 from vol-1".into();
        let listed = vec![cut, invocation("i-2", "InProgress")];
        let gathered = RunInvocations::gather(&[(&command, listed)]);
        let manifest: HashMap<String, ManifestEntry> = [
            ("i-1".to_string(), manifest_entry()),
            (
                "i-2".to_string(),
                ManifestEntry {
                    instance_id: "i-2".into(),
                    ..manifest_entry()
                },
            ),
        ]
        .into();
        let report = |instance: &str, command_id: &str| InstanceReport {
            run_id: "r".into(),
            instance_id: instance.into(),
            command_id: command_id.into(),
            invocation: FinalInvocation {
                status: "Success".into(),
                status_details: "Success".into(),
                output: "Created snap-1 from vol-1\nCreated snap-2 from vol-2".into(),
            },
        };
        let with = gathered.with_reports(
            &[
                report("i-1", "c1"),
                report("i-2", "c-other"),
                report("i-7", "c1"),
            ],
            &manifest,
        );
        let (_, fin, _) = &with.by_instance["i-1"];
        assert_eq!(
            fin.as_ref().map(|f| reported_snapshots(&f.output).len()),
            Some(2)
        );
        // A report of another command is not this run's dispatch; one of an instance SSM
        // does not list adds nothing.
        assert_eq!(with.by_instance["i-2"].1, None);
        assert_eq!(with.open(), 1);
        assert!(!with.by_instance.contains_key("i-7"));
    }

    /// The command history refused for good: SSM lists nothing, and each instance's own
    /// report (of the command the manifest sent it) stands for it, one for one.
    #[test]
    fn instances_ssm_does_not_list_are_final_by_their_own_reports() {
        let mut command = command("c1", 2);
        command.exclude_boot_volume = true;
        let gathered = RunInvocations::gather(&[(&command, vec![])]);
        assert_eq!(gathered.open(), 2);
        let manifest: HashMap<String, ManifestEntry> = ["i-1", "i-2"]
            .map(|id| {
                (
                    id.to_string(),
                    ManifestEntry {
                        instance_id: id.into(),
                        ..manifest_entry()
                    },
                )
            })
            .into();
        let report = |instance: &str| InstanceReport {
            run_id: "r".into(),
            instance_id: instance.into(),
            command_id: "c1".into(),
            invocation: FinalInvocation {
                status: "Success".into(),
                status_details: "Success".into(),
                output: "Created snap-1 from vol-1".into(),
            },
        };
        let one = gathered.clone().with_reports(&[report("i-1")], &manifest);
        assert_eq!(one.open(), 1, "{one:?}");
        assert_eq!(one.unlisted, vec![("c1".to_string(), 1)]);
        assert!(one.by_instance["i-1"].2, "the command's ExcludeBootVolume");
        // A report given twice stands for one instance, not two.
        let both = gathered.with_reports(&[report("i-1"), report("i-1"), report("i-2")], &manifest);
        assert_eq!(both.open(), 0, "{both:?}");
        assert!(both.unlisted.is_empty());
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
    fn instance_tags_are_written_once_with_the_device_recorded_at_dispatch() {
        let untagged = snap("completed");
        let tags =
            instance_tags(("i-1", "sql01", "xvdf"), &[], false, &untagged).expect("tags to write");
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
        assert_eq!(
            instance_tags(("i-1", "sql01", "xvdf"), &[], false, &tagged),
            None
        );
        // A name EC2 would refuse is cut to its limit.
        let long = "s".repeat(300);
        let tags = instance_tags(("i-1", &long, "xvdf"), &[], false, &untagged).unwrap_or_default();
        assert_eq!(tags[1].1.chars().count(), 256);
        // A Device tag (which any fleet server may set) names nothing.
        let mut flipped = tagged;
        flipped.tags.insert("Device".into(), "/dev/evil".into());
        assert_eq!(
            instance_tags(("i-1", "sql01", "xvdf"), &[], false, &flipped),
            None
        );
        // Cost tags read at dispatch go on too; a cost tag can never stand in for a contract one.
        let costs = vec![
            ("CostCenter".to_string(), "finance".to_string()),
            ("Name".to_string(), "not this".to_string()),
        ];
        let tags =
            instance_tags(("i-1", "sql01", "xvdf"), &costs, false, &untagged).unwrap_or_default();
        assert!(tags.contains(&("CostCenter".to_string(), "finance".to_string())));
        assert!(tags.contains(&("Name".to_string(), "sql01 xvdf".to_string())));
        assert_eq!(tags.len(), 3);
    }
}
