//! Tracking messages: each look at an instance's (or a whole run's) progress either queues
//! the next look or finishes, and a run finishes with exactly one summary.

use std::collections::{BTreeMap, HashMap};

use chrono::{Duration, Utc};
use tracing::{info, warn};

use crate::copy;
use crate::error::{aws, Error};
use crate::fleet::{self, AttachedVolume};
use crate::handler::App;
use crate::history;
use crate::job::{CopyJob, Envelope, InstanceJob, Job, RunJob};
use crate::metrics;
use crate::outcome::{classify, is_final_status, FinalInvocation, Outcome, OutcomeKind};
use crate::report::RunReport;
use crate::run_claim::{self, RunMarkerStore};
use crate::track::{self, Look, Next};

impl App {
    pub(crate) async fn track_instance(&self, job: InstanceJob) -> Result<(), Error> {
        let look = track::look(&self.ssm, &job.command_id, &job.instance_id).await?;
        let snapshots = match look {
            Look::Final(_) => {
                let volumes = job.volumes.iter().map(|v| v.volume_id.clone()).collect();
                track::run_snapshots(&self.ec2, &job.run_id, Some(volumes)).await?
            }
            Look::NotYet { .. } => Vec::new(),
        };
        let completion =
            Duration::seconds(i64::from(self.config.snapshot_completion_timeout_seconds));
        match track::next_instance_step(&job, &look, &snapshots, Utc::now(), completion) {
            Next::Wait { job, why } => {
                info!(run_id = %job.run_id, instance_id = %job.instance_id, attempt = job.attempt, waiting_for = %why, "not final yet");
                self.requeue(Job::Instance(job)).await
            }
            Next::Finish(outcome) => {
                let tagged = track::tag_instance_snapshots(
                    &self.ec2,
                    &job.instance_id,
                    &job.name,
                    &job.volumes,
                    &snapshots,
                )
                .await?;
                log_outcome(&job.run_id, &outcome, tagged);
                Ok(())
            }
        }
    }

    pub(crate) async fn track_run(&self, job: RunJob) -> Result<(), Error> {
        let now = Utc::now();
        let past_deadline = now > job.deadline;
        let mut invocations: BTreeMap<String, (String, Option<FinalInvocation>, bool)> =
            BTreeMap::new();
        // Commands whose invocations SSM does not list in full (yet).
        let mut unlisted: Vec<(&str, usize)> = Vec::new();
        for command in &job.commands {
            let why = format!("run {}", job.run_id);
            let listed = history::invocations(&self.ssm, &command.command_id, true, &why).await?;
            for inv in &listed {
                let fin = is_final_status(&inv.status).then(|| FinalInvocation {
                    status: inv.status.clone(),
                    status_details: inv.status_details.clone(),
                    output: inv.output.clone(),
                });
                invocations.insert(
                    inv.instance_id.clone(),
                    (inv.status.clone(), fin, command.exclude_boot_volume),
                );
            }
            let listed = listed.len();
            if listed < command.instances {
                unlisted.push((&command.command_id, command.instances - listed));
            }
        }
        let open = invocations
            .values()
            .filter(|(_, fin, _)| fin.is_none())
            .count()
            + unlisted.iter().map(|(_, n)| n).sum::<usize>();
        if open > 0 && !past_deadline {
            info!(run_id = %job.run_id, open, "run not final yet");
            let attempt = job.attempt + 1;
            return self.requeue(Job::Run(RunJob { attempt, ..job })).await;
        }
        let snapshots = track::run_snapshots(&self.ec2, &job.run_id, None).await?;
        let pending = snapshots.iter().filter(|s| s.state == "pending").count();
        if pending > 0 && !past_deadline {
            info!(run_id = %job.run_id, pending, "run waiting for snapshots to complete");
            let attempt = job.attempt + 1;
            return self.requeue(Job::Run(RunJob { attempt, ..job })).await;
        }
        let ids: Vec<String> = invocations.keys().cloned().collect();
        let instances = self.describe_by_id(&ids).await?;
        let mut outcomes = Vec::new();
        for (instance_id, (status, fin, exclude_boot)) in &invocations {
            let facts = instances.get(instance_id);
            let name = facts
                .map(|f| f.display_name().to_string())
                .unwrap_or_else(|| instance_id.clone());
            let expected: Vec<AttachedVolume> = facts
                .map(|f| f.expected_volumes(*exclude_boot))
                .unwrap_or_default();
            let mine: Vec<_> = snapshots
                .iter()
                .filter(|s| {
                    expected.iter().any(|v| v.volume_id == s.volume_id)
                        || s.tags.get(crate::dispatch::TAG_INSTANCE_ID) == Some(instance_id)
                })
                .cloned()
                .collect();
            // The instance's own message tags its set as soon as it is final; should that
            // message be lost (dead-lettered), the run's tags it here. Tagged snapshots cost
            // no call.
            track::tag_instance_snapshots(&self.ec2, instance_id, &name, &expected, &mine).await?;
            let (kind, reason) = match fin {
                Some(fin) => classify(&expected, fin, &mine),
                None => (
                    OutcomeKind::TimedOut,
                    Some(format!("SSM invocation still {status} at the run deadline")),
                ),
            };
            outcomes.push(Outcome {
                instance_id: instance_id.clone(),
                name,
                kind,
                volumes: expected.len(),
                snapshots: mine.iter().map(|s| s.snapshot_id.clone()).collect(),
                reason,
            });
        }
        outcomes.extend(job.skipped.iter().map(|s| Outcome {
            instance_id: s.instance_id.clone(),
            name: s.name.clone(),
            kind: OutcomeKind::Skipped,
            volumes: 0,
            snapshots: vec![],
            reason: Some(s.reason.to_string()),
        }));
        // Past the deadline, instances SSM never listed are still accounted for.
        outcomes.extend(unlisted.iter().map(|(command_id, missing)| Outcome {
            instance_id: format!("command {command_id}"),
            name: format!("{missing} instance(s)"),
            kind: OutcomeKind::TimedOut,
            volumes: 0,
            snapshots: vec![],
            reason: Some(format!(
                "SSM never listed {missing} of this command's invocations by the run deadline"
            )),
        }));
        outcomes.extend(job.unsent.iter().map(|u| Outcome {
            instance_id: u.instance_id.clone(),
            name: u.name.clone(),
            kind: OutcomeKind::Failed,
            volumes: 0,
            snapshots: vec![],
            reason: Some(format!("command not sent: {}", u.error)),
        }));
        let report = RunReport::new(&job.run_id, job.started_at, now, outcomes);
        // The copy step is queued before the summary's marker: should this invocation stop
        // between the two, a redelivery queues it again (the step runs under its own lease).
        self.enqueue(&[Envelope::new(Job::Copy(CopyJob {
            run_id: job.run_id.clone(),
            deadline: copy::copy_deadline(self.config.snapshot_completion_timeout_seconds),
            attempt: 0,
        }))])
        .await?;
        // One summary per run, however often this message is delivered.
        let store = RunMarkerStore::new(&self.ssm, &self.config.managed_by, &job.run_id);
        if !store.mark_reported().await? {
            info!(run_id = %job.run_id, "the run's summary is already written (a duplicate delivery)");
            return Ok(());
        }
        let summary = report.summary_line();
        let report_json = serde_json::to_string(&report).unwrap_or_default();
        self.emit_metrics(
            &metrics::run_counts(&report),
            &[("RunId", &job.run_id), ("Event", "run")],
        );
        if report.all_consistent() {
            info!(run_id = %job.run_id, report = %report_json, "{summary}");
        } else {
            warn!(run_id = %job.run_id, report = %report_json, "{summary}");
            self.notify(&report).await;
        }
        Ok(())
    }

    /// Sends the summary of a run that needs attention to `NOTIFY_TOPIC_ARN`, if set. The
    /// summary is already logged and counted: a failure here is logged, not retried.
    async fn notify(&self, report: &RunReport) {
        let Some(topic) = &self.config.notify_topic_arn else {
            return;
        };
        let subject = notification_subject(&self.config.managed_by, report);
        let message = notification_text(report, NOTIFICATION_MAX_BYTES);
        match self
            .sns
            .publish()
            .topic_arn(topic)
            .subject(subject)
            .message(message)
            .send()
            .await
        {
            Ok(_) => info!(run_id = %report.run_id, topic = %topic, "run summary sent"),
            Err(err) => {
                let err = aws("Publish", format!("{topic} (run {})", report.run_id), err);
                warn!(run_id = %report.run_id, error = %err, "run summary not sent");
            }
        }
    }

    /// Drops the finished run's lease and dispatch markers and any marker past its keep time.
    /// A failure here leaves parameters behind, not a wrong backup: it is logged, not retried.
    pub(crate) async fn release_markers(&self, store: &RunMarkerStore<'_>) {
        let released = match store.read().await {
            Ok(markers) => store.release(&markers).await,
            Err(err) => Err(err),
        };
        let cutoff = Utc::now() - Duration::days(run_claim::KEEP_REPORTED_DAYS);
        let swept = run_claim::sweep(&self.ssm, &self.config.managed_by, cutoff).await;
        match (released, swept) {
            (Ok(()), Ok(swept)) => {
                info!(run_id = %store.run_id, swept, "run markers released")
            }
            (Err(err), _) | (_, Err(err)) => {
                warn!(run_id = %store.run_id, error = %err, "run markers not released")
            }
        }
    }

    /// The instances with these ids that still exist (none asked: no call).
    pub(crate) async fn describe_by_id(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, fleet::InstanceFacts>, Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let found =
            fleet::describe(&self.ec2, &[], Some(ids), self.config.describe_page_size).await?;
        Ok(found
            .into_iter()
            .map(|f| (f.instance_id.clone(), f))
            .collect())
    }

    /// These instances (each described once), by id: the ones snapshots name in their
    /// `ConsistentSnapshot:InstanceId` tags.
    pub(crate) async fn instances_named_on<'a>(
        &self,
        instance_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, fleet::InstanceFacts>, Error> {
        let ids: Vec<String> = instance_ids
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(str::to_string)
            .collect();
        self.describe_by_id(&ids).await
    }
}

fn log_outcome(run_id: &str, outcome: &Outcome, tagged: usize) {
    let reason = outcome.reason.as_deref().unwrap_or("");
    let snapshots = outcome.snapshots.join(",");
    if outcome.kind == OutcomeKind::Consistent {
        info!(run_id, instance_id = %outcome.instance_id, name = %outcome.name, outcome = %outcome.kind, snapshots = %snapshots, tagged, reason, "instance finished");
    } else {
        warn!(run_id, instance_id = %outcome.instance_id, name = %outcome.name, outcome = %outcome.kind, snapshots = %snapshots, tagged, reason, "instance finished");
    }
}

/// SNS takes messages up to 256 KB; the table is cut well before.
const NOTIFICATION_MAX_BYTES: usize = 200_000;

/// An SNS subject: at most 100 printable ASCII characters.
pub fn notification_subject(managed_by: &str, report: &RunReport) -> String {
    let not_consistent = report.outcomes.len()
        - report.count(OutcomeKind::Consistent)
        - report.count(OutcomeKind::Skipped);
    let text = format!(
        "{managed_by}: {not_consistent} instance(s) not consistent in run {}",
        report.run_id
    );
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(100)
        .collect()
}

/// The summary line, then the table (which lists what needs attention first), cut to
/// `max_bytes` with a line saying how many rows were left out.
pub fn notification_text(report: &RunReport, max_bytes: usize) -> String {
    let table = report.table();
    let mut text = format!("{}\n\n", report.summary_line());
    let lines: Vec<&str> = table.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if text.len() + line.len() + 80 > max_bytes {
            text.push_str(&format!(
                "… {} more line(s): see the function's log for the full report\n",
                lines.len() - i
            ));
            break;
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: usize) -> RunReport {
        let t = Utc::now();
        let outcomes = (0..n)
            .map(|i| Outcome {
                instance_id: format!("i-{i:017x}"),
                name: format!("sql{i}"),
                kind: if i % 2 == 0 {
                    OutcomeKind::Failed
                } else {
                    OutcomeKind::Consistent
                },
                volumes: 3,
                snapshots: vec![],
                reason: (i % 2 == 0).then(|| "Failed: Thaw pipe connection timed out".into()),
            })
            .collect();
        RunReport::new("20261123T020000Z-1a2b3c4d", t, t, outcomes)
    }

    #[test]
    fn a_notification_fits_sns_and_says_what_was_cut() {
        let big = report(5_000);
        let text = notification_text(&big, NOTIFICATION_MAX_BYTES);
        assert!(text.len() <= NOTIFICATION_MAX_BYTES, "{}", text.len());
        assert!(text.contains("more line(s)"));
        assert!(text.starts_with("run 20261123T020000Z-1a2b3c4d needs attention"));
        let small = notification_text(&report(4), NOTIFICATION_MAX_BYTES);
        assert!(!small.contains("more line(s)") && small.contains("Thaw pipe"));
        let subject = notification_subject("prod", &big);
        assert!(subject.len() <= 100 && subject.starts_with("prod: 2500 instance(s)"));
    }
}
