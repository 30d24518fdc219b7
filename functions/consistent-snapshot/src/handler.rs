//! The Lambda handler: one entry point for scheduled runs, tracking messages and on-demand calls.

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::error::{aws, Error};
use crate::event::{Action, Event, SnapshotRequest};
use crate::job::{Envelope, Job};
use crate::metrics::MetricsOut;
use crate::run_start::{RunRequest, LEASE_MARGIN_SECONDS};

/// The function's state between invocations: configuration and AWS clients, nothing else.
pub struct App {
    pub config: Config,
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    /// Where the EMF metric lines go (standard output in Lambda).
    pub metrics: MetricsOut,
}

/// The longest a Lambda invocation can run: the deadline assumed when none is given.
pub const MAX_INVOCATION_SECONDS: i64 = 900;
/// Time kept back at the end of an invocation to answer the batch.
const RESERVE_MILLIS: i64 = 500;
/// A message is not started with less time than this left.
const MIN_STEP_MILLIS: u64 = 1_000;

impl App {
    pub fn new(config: Config, sdk: &SdkConfig) -> Self {
        App {
            config,
            ec2: aws_sdk_ec2::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            sns: aws_sdk_sns::Client::new(sdk),
            metrics: MetricsOut::stdout(),
        }
    }

    /// Sends the EMF metric lines to `out` instead of standard output.
    pub fn with_metrics_out(mut self, out: MetricsOut) -> Self {
        self.metrics = out;
        self
    }

    /// Writes one EMF line of these counts, with `properties` (run id, event) alongside.
    pub(crate) fn emit_metrics(&self, counts: &[(&str, usize)], properties: &[(&str, &str)]) {
        self.metrics.write(&crate::metrics::emf_line(
            &self.config.metrics_namespace,
            &self.config.managed_by,
            counts,
            properties,
            Utc::now(),
        ));
    }

    /// Handles any of the accepted payloads, assuming Lambda's longest timeout.
    pub async fn handle(&self, payload: Value) -> Result<Value, Error> {
        let deadline = Utc::now() + Duration::seconds(MAX_INVOCATION_SECONDS);
        self.handle_until(payload, deadline).await
    }

    /// Handles any of the accepted payloads; answers JSON (an `SqsBatchResponse` for SQS).
    /// `deadline` is when the Lambda stops this invocation: a run it claims is held until then
    /// (plus a margin), and taken over by the run's watch after.
    pub async fn handle_until(
        &self,
        payload: Value,
        deadline: DateTime<Utc>,
    ) -> Result<Value, Error> {
        let lease_until = deadline + Duration::seconds(LEASE_MARGIN_SECONDS);
        match Event::parse(payload)? {
            Event::Scheduled(run) => {
                info!(schedule = %run.schedule, scheduled_time = %run.scheduled_time, "scheduled run");
                let start = self
                    .start_run(&RunRequest {
                        run_id: run.run_id(),
                        instance_ids: None,
                        dry_run: self.config.dry_run,
                        started_at: run.scheduled_time,
                        lease_until,
                    })
                    .await?;
                Ok(to_json(&start))
            }
            Event::Sqs(event) => Ok(to_json(&self.process_batch(event, deadline).await)),
            Event::OnDemand(Action::Snapshot(request)) => {
                self.on_demand_snapshot(request, lease_until).await
            }
            Event::OnDemand(Action::Retention(request)) => {
                self.on_demand_retention(request.dry_run.unwrap_or(self.config.dry_run), deadline)
                    .await
            }
            Event::OnDemand(Action::Report(_)) => self.on_demand_report().await,
            Event::OnDemand(Action::Restore(request)) => self.on_demand_restore(request).await,
            Event::OnDemand(Action::Verify(request)) => self.on_demand_verify(request).await,
        }
    }

    async fn on_demand_snapshot(
        &self,
        request: SnapshotRequest,
        lease_until: DateTime<Utc>,
    ) -> Result<Value, Error> {
        let now = Utc::now();
        let run_id = request.run_id.clone().unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("{}-od-{}", now.format("%Y%m%dT%H%M%SZ"), &id[..8])
        });
        let start = self
            .start_run(&RunRequest {
                run_id,
                instance_ids: request.instance_ids,
                dry_run: request.dry_run.unwrap_or(self.config.dry_run),
                started_at: now,
                lease_until,
            })
            .await?;
        Ok(to_json(&start))
    }

    /// Queues jobs in batches of 10, each with its own delay; any entry SQS refuses is an error
    /// naming its instance or run.
    pub(crate) async fn enqueue(&self, jobs: &[Envelope]) -> Result<(), Error> {
        let now = Utc::now();
        let (initial, max) = (
            self.config.poll_initial_seconds,
            self.config.poll_max_seconds,
        );
        let mut refused = Vec::new();
        for chunk in jobs.chunks(10) {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, job)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(job.to_body())
                        .delay_seconds(job.job.delay_seconds(now, initial, max))
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
                    Some(job) => format!("run {} ({})", job.run_id(), failed.code()),
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

    /// Puts a job back on the queue, delayed as the job says.
    pub(crate) async fn requeue(&self, job: Job) -> Result<(), Error> {
        let delay = job.delay_seconds(
            Utc::now(),
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

    /// Handles an SQS batch; failed or poison messages are reported back for the queue to retry
    /// (and, past the redrive limit, to move to the dead-letter queue).
    ///
    /// The batch never outlives the invocation: each message gets the time left before the
    /// deadline, and once AWS throttles a step (after the SDK's own retries) or time runs
    /// short, the rest of the batch is handed back at once. It comes back after the visibility
    /// timeout instead of meeting the same throttling, and messages already done are not
    /// failed with it, as they would be if Lambda stopped the whole invocation.
    pub async fn process_batch(
        &self,
        event: SqsEvent,
        deadline: DateTime<Utc>,
    ) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let mut give_back: Option<&str> = None;
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let left = (deadline - Utc::now() - Duration::milliseconds(RESERVE_MILLIS))
                .to_std()
                .unwrap_or_default();
            if give_back.is_none() && left < std::time::Duration::from_millis(MIN_STEP_MILLIS) {
                give_back = Some("too little time left in this invocation");
            }
            if let Some(why) = give_back {
                info!(message_id = %id, reason = why, "message handed back to the queue untried");
                response.add_failure(id);
                continue;
            }
            let body = record.body.as_deref().unwrap_or_default();
            let envelope = match Envelope::from_body(body) {
                Ok(envelope) => envelope,
                Err(why) => {
                    error!(message_id = %id, reason = %why, "poison message: left to the queue's redrive policy");
                    response.add_failure(id);
                    continue;
                }
            };
            let run_id = envelope.job.run_id().to_string();
            let step = tokio::time::timeout(left, self.process_job(envelope.job, deadline, &id));
            let failed = match step.await {
                Ok(Ok(())) => false,
                Ok(Err(err)) => {
                    let throttled = err.is_throttling();
                    if throttled {
                        give_back = Some("AWS throttled an earlier message of this batch");
                    }
                    warn!(message_id = %id, run_id = %run_id, error = %err, throttled, "step failed, the message comes back after its visibility timeout");
                    true
                }
                Err(_) => {
                    give_back = Some("the invocation's time ran out");
                    warn!(message_id = %id, run_id = %run_id, "step not finished before the invocation's deadline, the message comes back after its visibility timeout");
                    true
                }
            };
            if failed {
                response.add_failure(id);
            }
        }
        response
    }

    /// `message_id` names the delivery's message: a redelivery of the same message is the
    /// same step, a different message for the same step is a duplicate.
    async fn process_job(
        &self,
        job: Job,
        deadline: DateTime<Utc>,
        message_id: &str,
    ) -> Result<(), Error> {
        // A claim taken here is held until the invocation's end, plus a margin.
        let lease_until = deadline + Duration::seconds(LEASE_MARGIN_SECONDS);
        match job {
            Job::Instance(job) => self.track_instance(job).await,
            Job::Run(job) => self.track_run(job).await,
            Job::Watch(job) => self.watch_run(job, lease_until).await,
            Job::Copy(job) => self.copy_job(job, lease_until, message_id).await,
            Job::Retention(job) => self.retention_job(job, deadline).await,
            Job::Restore(job) => self.restore_job(job).await,
            Job::Verify(job) => self.verify_job(job).await,
        }
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}
