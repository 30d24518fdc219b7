//! Tracking: each look at an instance's (or a run's) progress decides to wait or to finish.
//!
//! `next_instance_step` is the pure decision; the functions below it read SSM and EC2.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_ec2::types::{Filter, Snapshot, Tag};
use chrono::{DateTime, Duration, Utc};

use crate::dispatch::{TAG_INSTANCE_ID, TAG_RUN_ID};
use crate::error::{aws, Error};
use crate::fleet::AttachedVolume;
use crate::job::{InstanceJob, Stage};
use crate::outcome::{
    classify, is_final_status, FinalInvocation, Outcome, OutcomeKind, SnapshotFacts,
};

/// What SSM says of an invocation right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// Not final yet (`InvocationDoesNotExist` right after sending reads as `NotYet` too).
    NotYet {
        status: String,
    },
    Final(FinalInvocation),
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
            let pending = snapshots.iter().filter(|s| s.state == "pending").count();
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

/// One look at an invocation through GetCommandInvocation.
pub async fn look(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    instance_id: &str,
) -> Result<Look, Error> {
    match ssm
        .get_command_invocation()
        .command_id(command_id)
        .instance_id(instance_id)
        .send()
        .await
    {
        Ok(out) => {
            let status = out
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if !is_final_status(&status) {
                return Ok(Look::NotYet { status });
            }
            let stdout = out.standard_output_content().unwrap_or_default();
            let stderr = out.standard_error_content().unwrap_or_default();
            Ok(Look::Final(FinalInvocation {
                status,
                status_details: out.status_details().unwrap_or_default().to_string(),
                output: format!("{stdout}\n{stderr}"),
            }))
        }
        Err(err) => {
            let is_not_yet = err
                .as_service_error()
                .is_some_and(|e| e.is_invocation_does_not_exist());
            if is_not_yet {
                Ok(Look::NotYet {
                    status: "not yet registered".into(),
                })
            } else {
                Err(aws(
                    "GetCommandInvocation",
                    format!("{instance_id} (command {command_id})"),
                    err,
                ))
            }
        }
    }
}

pub fn snapshot_facts(snapshot: &Snapshot) -> Option<SnapshotFacts> {
    Some(SnapshotFacts {
        snapshot_id: snapshot.snapshot_id()?.to_string(),
        volume_id: snapshot.volume_id().unwrap_or_default().to_string(),
        state: snapshot
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        tags: crate::fleet::tag_map(snapshot.tags()),
    })
}

/// The account's own snapshots carrying tag `key` = `value`, every page of them, each made
/// into what the caller keeps by `keep` as its page arrives (so that only one page of SDK
/// snapshots is held at a time); `subject` names what they are in an error.
pub async fn own_snapshots_tagged<T>(
    ec2: &aws_sdk_ec2::Client,
    key: &str,
    value: &str,
    subject: &str,
    mut keep: impl FnMut(&Snapshot) -> Option<T>,
) -> Result<Vec<T>, Error> {
    let mut pages = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .max_results(1000)
        .into_paginator()
        .send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws("DescribeSnapshots", subject, e))?;
        found.extend(page.snapshots().iter().filter_map(&mut keep));
    }
    Ok(found)
}

/// This run's snapshots (of these volumes, when given), found by the run-id tag.
pub async fn run_snapshots(
    ec2: &aws_sdk_ec2::Client,
    run_id: &str,
    volume_ids: Option<Vec<String>>,
) -> Result<Vec<SnapshotFacts>, Error> {
    let mut request = ec2.describe_snapshots().owner_ids("self").filters(
        Filter::builder()
            .name(format!("tag:{TAG_RUN_ID}"))
            .values(run_id)
            .build(),
    );
    if let Some(ids) = volume_ids {
        request = request.filters(
            Filter::builder()
                .name("volume-id")
                .set_values(Some(ids))
                .build(),
        );
    }
    let mut pages = request.max_results(1000).into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws("DescribeSnapshots", format!("run {run_id}"), e))?;
        found.extend(page.snapshots().iter().filter_map(snapshot_facts));
    }
    found.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
    Ok(found)
}

/// Adds the per-instance contract tags the document cannot add (it takes one tag set per
/// command): `ConsistentSnapshot:InstanceId` and `Name` = `<instance name> <device>`.
/// Snapshots that already carry them are left alone, so a repeated look does nothing.
pub async fn tag_instance_snapshots(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    name: &str,
    volumes: &[AttachedVolume],
    snapshots: &[SnapshotFacts],
) -> Result<usize, Error> {
    let devices: HashMap<&str, &str> = volumes
        .iter()
        .map(|v| (v.volume_id.as_str(), v.device.as_str()))
        .collect();
    let mut tagged = 0;
    for snapshot in snapshots {
        let device = snapshot
            .tags
            .get("Device")
            .map(String::as_str)
            .or_else(|| devices.get(snapshot.volume_id.as_str()).copied())
            .unwrap_or("unknown-device");
        let wanted: BTreeMap<&str, String> = [
            (TAG_INSTANCE_ID, instance_id.to_string()),
            ("Name", format!("{name} {device}")),
        ]
        .into();
        if wanted.iter().all(|(k, v)| snapshot.tags.get(*k) == Some(v)) {
            continue;
        }
        let tags: Vec<Tag> = wanted
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(v).build())
            .collect();
        ec2.create_tags()
            .resources(&snapshot.snapshot_id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| {
                aws(
                    "CreateTags",
                    format!("{} of {instance_id}", snapshot.snapshot_id),
                    e,
                )
            })?;
        tagged += 1;
    }
    Ok(tagged)
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
}
