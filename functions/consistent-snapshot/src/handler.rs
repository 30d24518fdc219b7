//! The Lambda handler: one entry point for scheduled runs, tracking messages and on-demand calls.

use std::collections::{BTreeMap, HashMap};

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::dispatch::{self, plan_commands};
use crate::error::{aws, Error};
use crate::event::{Action, Event, SnapshotRequest};
use crate::fleet::{self, preflight, AttachedVolume, Target};
use crate::job::{
    backoff_seconds, Envelope, InstanceJob, Job, RunCommand, RunJob, Skipped, Stage, Unsent,
};
use crate::outcome::{classify, is_final_status, FinalInvocation, Outcome, OutcomeKind};
use crate::report::RunReport;
use crate::track::{self, Look, Next};

/// The function's state between invocations: configuration and AWS clients, nothing else.
pub struct App {
    pub config: Config,
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sqs: aws_sdk_sqs::Client,
}

/// What a run did when it started: the answer to an on-demand call, and the log of a schedule.
#[derive(Debug, Clone, Serialize)]
pub struct RunStart {
    pub run_id: String,
    pub dry_run: bool,
    pub dispatched: Vec<Dispatched>,
    pub skipped: Vec<Skipped>,
    pub unsent: Vec<Unsent>,
    pub commands: Vec<RunCommand>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dispatched {
    pub instance_id: String,
    pub name: String,
    pub volumes: Vec<AttachedVolume>,
    /// Absent in a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
}

impl App {
    pub fn new(config: Config, sdk: &SdkConfig) -> Self {
        App {
            config,
            ec2: aws_sdk_ec2::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
        }
    }

    /// Handles any of the accepted payloads; answers JSON (an `SqsBatchResponse` for SQS).
    pub async fn handle(&self, payload: Value) -> Result<Value, Error> {
        match Event::parse(payload)? {
            Event::Scheduled(run) => {
                info!(schedule = %run.schedule, scheduled_time = %run.scheduled_time, "scheduled run");
                let start = self
                    .start_run(run.run_id(), None, self.config.dry_run)
                    .await?;
                Ok(to_json(&start))
            }
            Event::Sqs(event) => Ok(to_json(&self.process_batch(event).await)),
            Event::OnDemand(Action::Snapshot(request)) => self.on_demand_snapshot(request).await,
            Event::OnDemand(other) => {
                let name = serde_json::to_value(&other)
                    .ok()
                    .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                Err(Error::Event(format!(
                    "field `action`: {name:?} is not available in this version (available: snapshot)"
                )))
            }
        }
    }

    async fn on_demand_snapshot(&self, request: SnapshotRequest) -> Result<Value, Error> {
        let run_id = request.run_id.clone().unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("{}-od-{}", Utc::now().format("%Y%m%dT%H%M%SZ"), &id[..8])
        });
        let dry_run = request.dry_run.unwrap_or(self.config.dry_run);
        let start = self
            .start_run(run_id, request.instance_ids.as_deref(), dry_run)
            .await?;
        Ok(to_json(&start))
    }

    /// Discovers, preflights and dispatches a run, then queues its tracking messages.
    pub async fn start_run(
        &self,
        run_id: String,
        ids: Option<&[String]>,
        dry_run: bool,
    ) -> Result<RunStart, Error> {
        let started_at = Utc::now();
        let instances = fleet::discover(&self.ec2, &self.config, ids).await?;
        let mut skipped: Vec<Skipped> = Vec::new();
        if let Some(ids) = ids {
            for id in ids
                .iter()
                .filter(|id| !instances.iter().any(|i| &i.instance_id == *id))
            {
                skipped.push(Skipped {
                    instance_id: id.clone(),
                    name: id.clone(),
                    reason: fleet::SkipReason::NotTargeted,
                });
            }
        }
        // Ask SSM only about running instances: no other state can pass preflight. Platform is
        // not filtered here, since SSM's PlatformType is one way Windows is recognised.
        let candidates: Vec<String> = instances
            .iter()
            .filter(|i| i.state == "running")
            .map(|i| i.instance_id.clone())
            .collect();
        let agents = fleet::agents(&self.ssm, &candidates).await?;
        let mut targets: Vec<Target> = Vec::new();
        for instance in &instances {
            match preflight(instance, agents.get(&instance.instance_id), &self.config) {
                Ok(target) => targets.push(target),
                Err(reason) => {
                    info!(run_id = %run_id, instance_id = %instance.instance_id, reason = %reason, "skipped");
                    skipped.push(Skipped {
                        instance_id: instance.instance_id.clone(),
                        name: instance.display_name().to_string(),
                        reason,
                    });
                }
            }
        }
        info!(run_id = %run_id, tagged = instances.len(), targets = targets.len(), skipped = skipped.len(), dry_run, "preflight done");

        let plans = plan_commands(&targets);
        let mut start = RunStart {
            run_id: run_id.clone(),
            dry_run,
            dispatched: vec![],
            skipped,
            unsent: vec![],
            commands: vec![],
        };
        if dry_run {
            start.dispatched = targets.iter().map(|t| dispatched(t, None)).collect();
            info!(run_id = %run_id, would_dispatch = targets.len(), commands = plans.len(), "dry run: nothing sent");
            return Ok(start);
        }

        let now = Utc::now();
        let command_deadline = now
            + Duration::seconds(i64::from(self.config.command_delivery_timeout_seconds))
            + Duration::seconds(i64::from(self.config.vss_execution_timeout_seconds))
            + Duration::minutes(5);
        let mut jobs = Vec::new();
        for plan in &plans {
            match dispatch::send(&self.ssm, &self.config, &run_id, plan).await {
                Ok(command_id) => {
                    info!(run_id = %run_id, command_id = %command_id, instances = plan.targets.len(), exclude_boot_volume = plan.exclude_boot_volume, "command sent");
                    start.commands.push(RunCommand {
                        command_id: command_id.clone(),
                        exclude_boot_volume: plan.exclude_boot_volume,
                        instances: plan.targets.len(),
                    });
                    for target in &plan.targets {
                        start.dispatched.push(dispatched(target, Some(&command_id)));
                        jobs.push(Envelope::new(Job::Instance(InstanceJob {
                            run_id: run_id.clone(),
                            instance_id: target.instance_id.clone(),
                            name: target.name.clone(),
                            command_id: command_id.clone(),
                            volumes: target.volumes.clone(),
                            stage: Stage::Command,
                            stage_deadline: command_deadline,
                            attempt: 0,
                        })));
                    }
                }
                Err(err) => {
                    error!(run_id = %run_id, error = %err, "command not sent");
                    start.unsent.extend(plan.targets.iter().map(|t| Unsent {
                        instance_id: t.instance_id.clone(),
                        name: t.name.clone(),
                        error: err.to_string(),
                    }));
                }
            }
        }
        let run_deadline = command_deadline
            + Duration::seconds(i64::from(self.config.snapshot_completion_timeout_seconds))
            + Duration::minutes(5);
        jobs.push(Envelope::new(Job::Run(RunJob {
            run_id: run_id.clone(),
            started_at,
            deadline: run_deadline,
            commands: start.commands.clone(),
            skipped: start.skipped.clone(),
            unsent: start.unsent.clone(),
            attempt: 0,
        })));
        self.enqueue(
            &jobs,
            backoff_seconds(
                0,
                self.config.poll_initial_seconds,
                self.config.poll_max_seconds,
            ),
        )
        .await?;
        info!(
            run_id = %run_id,
            dispatched = start.dispatched.len(),
            skipped = start.skipped.len(),
            unsent = start.unsent.len(),
            commands = start.commands.len(),
            "run dispatched"
        );
        Ok(start)
    }

    /// Queues jobs in batches of 10; any entry SQS refuses is an error naming its instance.
    async fn enqueue(&self, jobs: &[Envelope], delay: i32) -> Result<(), Error> {
        let mut refused = Vec::new();
        for chunk in jobs.chunks(10) {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, job)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(job.to_body())
                        .delay_seconds(delay)
                        .build()
                        .ok()
                })
                .collect();
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(&self.config.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| aws("SendMessageBatch", &self.config.queue_url, e))?;
            for failed in out.failed() {
                let job = failed.id().parse::<usize>().ok().and_then(|i| chunk.get(i));
                refused.push(match job.map(|j| &j.job) {
                    Some(Job::Instance(j)) => format!("{} ({})", j.instance_id, failed.code()),
                    Some(Job::Run(j)) => format!("run {} ({})", j.run_id, failed.code()),
                    None => failed.id().to_string(),
                });
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::Enqueue(refused.join(", ")))
        }
    }

    /// Handles an SQS batch; failed or poison messages are reported back for the queue to retry
    /// (and, past the redrive limit, to move to the dead-letter queue).
    pub async fn process_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let body = record.body.as_deref().unwrap_or_default();
            let result = match Envelope::from_body(body) {
                Err(why) => {
                    error!(message_id = %id, reason = %why, "poison message: left to the queue's redrive policy");
                    Err(())
                }
                Ok(envelope) => self.process_job(envelope.job).await.map_err(|err| {
                    warn!(message_id = %id, error = %err, "tracking step failed, the message comes back after its visibility timeout");
                }),
            };
            if result.is_err() {
                response.add_failure(id);
            }
        }
        response
    }

    async fn process_job(&self, job: Job) -> Result<(), Error> {
        match job {
            Job::Instance(job) => self.track_instance(job).await,
            Job::Run(job) => self.track_run(job).await,
        }
    }

    /// Puts a job back on the queue, delayed by its attempt's backoff.
    async fn requeue(&self, job: Job) -> Result<(), Error> {
        let attempt = match &job {
            Job::Instance(j) => j.attempt,
            Job::Run(j) => j.attempt,
        };
        let delay = backoff_seconds(
            attempt,
            self.config.poll_initial_seconds,
            self.config.poll_max_seconds,
        );
        self.sqs
            .send_message()
            .queue_url(&self.config.queue_url)
            .message_body(Envelope::new(job).to_body())
            .delay_seconds(delay)
            .send()
            .await
            .map_err(|e| aws("SendMessage", &self.config.queue_url, e))?;
        Ok(())
    }

    async fn track_instance(&self, job: InstanceJob) -> Result<(), Error> {
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
                let tagged = track::tag_instance_snapshots(&self.ec2, &job, &snapshots).await?;
                log_outcome(&job.run_id, &outcome, tagged);
                Ok(())
            }
        }
    }

    async fn track_run(&self, job: RunJob) -> Result<(), Error> {
        let now = Utc::now();
        let past_deadline = now > job.deadline;
        let mut invocations: BTreeMap<String, (String, Option<FinalInvocation>, bool)> =
            BTreeMap::new();
        // Commands whose invocations SSM does not list in full (yet).
        let mut unlisted: Vec<(&str, usize)> = Vec::new();
        for command in &job.commands {
            let mut listed = 0;
            let mut pages = self
                .ssm
                .list_command_invocations()
                .command_id(&command.command_id)
                .details(true)
                .max_results(50)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    aws(
                        "ListCommandInvocations",
                        format!("command {} of run {}", command.command_id, job.run_id),
                        e,
                    )
                })?;
                for inv in page.command_invocations() {
                    let Some(instance_id) = inv.instance_id() else {
                        continue;
                    };
                    let status = inv
                        .status()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default();
                    let fin = is_final_status(&status).then(|| FinalInvocation {
                        status: status.clone(),
                        status_details: inv.status_details().unwrap_or_default().to_string(),
                        output: inv
                            .command_plugins()
                            .iter()
                            .filter_map(|p| p.output())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    });
                    invocations.insert(
                        instance_id.to_string(),
                        (status, fin, command.exclude_boot_volume),
                    );
                    listed += 1;
                }
            }
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
        let summary = report.summary_line();
        let report_json = serde_json::to_string(&report).unwrap_or_default();
        if report.all_consistent() {
            info!(run_id = %job.run_id, report = %report_json, "{summary}");
        } else {
            warn!(run_id = %job.run_id, report = %report_json, "{summary}");
        }
        Ok(())
    }

    async fn describe_by_id(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, fleet::InstanceFacts>, Error> {
        let found =
            fleet::describe(&self.ec2, &[], Some(ids), self.config.describe_page_size).await?;
        Ok(found
            .into_iter()
            .map(|f| (f.instance_id.clone(), f))
            .collect())
    }
}

fn dispatched(target: &Target, command_id: Option<&str>) -> Dispatched {
    Dispatched {
        instance_id: target.instance_id.clone(),
        name: target.name.clone(),
        volumes: target.volumes.clone(),
        command_id: command_id.map(str::to_string),
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

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}
