//! The SQS batch loop: each message of a batch is one job (`jobs`), run within the time left
//! before the invocation's deadline; failed and poison messages are reported back to the queue.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Duration, Utc};
use tracing::{error, info, warn};

use crate::app::{refuse, App};
use crate::aws::queue;
use crate::error::Error;
use crate::jobs::{ended_event, Envelope, Job};
use crate::run::step::start::{self, LEASE_MARGIN_SECONDS};
use crate::run::step::tracking;
use crate::{copy, restore, retention};

/// Time kept back at the end of an invocation to answer the batch.
const RESERVE_MILLIS: i64 = 500;
/// A message is not started with less time than this left.
const MIN_STEP_MILLIS: u64 = 1_000;

/// Handles an SQS batch; failed or poison messages are reported back for the queue to retry
/// (and, past the redrive limit, to move to the dead-letter queue).
///
/// The batch never outlives the invocation: each message gets the time left before the
/// deadline, and once AWS throttles a step (after the SDK's own retries) or time runs
/// short, the rest of the batch is handed back at once: sent again, delayed by
/// `TRACK_POLL_INITIAL_SECONDS`, and acknowledged, so that it neither meets the same
/// throttling nor spends a receive of its redrive budget; messages already done are not
/// failed with it, as they would be if Lambda stopped the whole invocation.
pub async fn process_batch(
    app: &App,
    event: SqsEvent,
    deadline: DateTime<Utc>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut give_back: Option<&str> = None;
    // Steps end here, leaving the invocation time to answer.
    let step_deadline = deadline - Duration::milliseconds(RESERVE_MILLIS);
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        // Only the deployment's own queue, which only the function's role may send to (and
        // nothing from elsewhere is ever put on it, handed back or not).
        let source = record.event_source_arn.as_deref().unwrap_or_default();
        if source != app.config.queue_arn {
            let _ = refuse(
                app,
                format!(
                    "message {id} from {source:?}: only messages of the deployment's queue {} are accepted",
                    app.config.queue_arn
                ),
            );
            response.add_failure(id);
            continue;
        }
        let body = record.body.as_deref().unwrap_or_default();
        let left = (step_deadline - Utc::now()).to_std().unwrap_or_default();
        if give_back.is_none() && left < std::time::Duration::from_millis(MIN_STEP_MILLIS) {
            give_back = Some("too little time left in this invocation");
        }
        if let Some(why) = give_back {
            // Sent again and acknowledged, not failed: untried, it must not spend one of the
            // receives after which the queue gives a message up to the dead-letter queue.
            let delay = i32::try_from(app.config.poll_initial_seconds).unwrap_or(900);
            let again = Envelope::handed_back(body, &id);
            match queue::hand_back(&app.aws.sqs, &app.config, &again, delay).await {
                Ok(()) => {
                    info!(message_id = %id, reason = why, delay, "message handed back to the queue untried");
                }
                Err(err) => {
                    warn!(message_id = %id, reason = why, error = %err, "message not handed back: it comes back after its visibility timeout");
                    response.add_failure(id);
                }
            }
            continue;
        }
        // SSM's status-change events come as EventBridge puts them on the queue.
        let event = ended_event(body, app.config.account_of_queue(), &app.config.region);
        let envelope = match event.map(|e| e.map(|job| Envelope::new(Job::Ended(job)))) {
            Some(Ok(envelope)) => Ok(envelope),
            Some(Err(why)) => {
                let _ = refuse(app, format!("message {id}: {why}"));
                response.add_failure(id);
                continue;
            }
            None => Envelope::from_body(body),
        };
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(why) => {
                error!(message_id = %id, reason = %why, "poison message: left to the queue's redrive policy");
                response.add_failure(id);
                continue;
            }
        };
        let run_id = envelope.job.run_id().to_string();
        let kind = envelope.job.kind();
        let claim_id = envelope.claim_id(&id).to_string();
        let began = Utc::now();
        let step = tokio::time::timeout(
            left,
            process_job(app, envelope.job, step_deadline, &claim_id),
        );
        let ended = step.await;
        let elapsed_ms = (Utc::now() - began).num_milliseconds();
        let failed = match ended {
            Ok(Ok(())) => false,
            Ok(Err(err)) => {
                let throttled = err.is_throttling();
                if throttled {
                    give_back = Some("AWS throttled an earlier message of this batch");
                }
                warn!(message_id = %id, run_id = %run_id, job = kind, elapsed_ms, error = %err, throttled, "step failed, the message comes back after its visibility timeout");
                true
            }
            Err(_) => {
                give_back = Some("the invocation's time ran out");
                warn!(message_id = %id, run_id = %run_id, job = kind, elapsed_ms, "step not finished before the invocation's deadline, the message comes back after its visibility timeout");
                true
            }
        };
        if failed {
            response.add_failure(id);
        }
    }
    response
}

/// `message_id` names the delivery's message (the one a handed-back job first came in): a
/// redelivery of the same message is the same step, a different message for the same step is
/// a duplicate.
async fn process_job(
    app: &App,
    job: Job,
    deadline: DateTime<Utc>,
    message_id: &str,
) -> Result<(), Error> {
    // A claim taken here is held until the invocation's end, plus a margin.
    let lease_until = deadline + Duration::seconds(LEASE_MARGIN_SECONDS);
    match job {
        Job::Instance(job) => tracking::track_instance(app, job).await,
        Job::Run(job) => tracking::track_run(app, job, deadline, message_id).await,
        Job::Watch(job) => start::watch_run(app, job, lease_until).await,
        Job::Copy(job) => copy::step::copy_job(app, job, (deadline, lease_until), message_id).await,
        Job::Retention(job) => retention::step::retention_job(app, job, deadline, message_id).await,
        Job::Vault(job) => {
            crate::vault::step::vault_job(app, job, (deadline, lease_until), message_id).await
        }
        Job::Restore(job) => restore::step::restore::restore_job(app, job, deadline).await,
        Job::Verify(job) => restore::step::verify::verify_job(app, job).await,
        Job::Retry(job) => crate::run::step::retry::retry_job(app, job, lease_until).await,
        Job::Ended(job) => tracking::track_ended(app, job).await,
    }
}
