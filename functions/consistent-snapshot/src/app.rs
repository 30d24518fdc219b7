//! The function's state between invocations: its configuration, its AWS clients and where its
//! metrics go; and the few steps several concerns share (queueing jobs, refusing one, the
//! readiness probe). The use cases are free functions over `&App`, each in its concern's `step`
//! module, so that a call site names the file it goes to.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::aws::metrics::{Metrics, MetricsOut};
use crate::aws::{commands, queue, Clients, SdkConfig};
use crate::config::Config;
use crate::error::Error;
use crate::jobs::{Envelope, Job, RunJob};
use crate::model::probe::{probe_result, ProbeResult};

pub struct App {
    pub config: Config,
    pub aws: Clients,
    pub metrics: Metrics,
}

impl App {
    pub fn new(config: Config, sdk: &SdkConfig) -> Self {
        let metrics = Metrics {
            namespace: config.metrics_namespace.clone(),
            managed_by: config.managed_by.clone(),
            out: MetricsOut::stdout(),
        };
        App {
            aws: Clients::new(sdk, &config.region, &config.catalog_table),
            config,
            metrics,
        }
    }

    /// Sends the EMF metric lines to `out` instead of standard output.
    pub fn with_metrics_out(mut self, out: MetricsOut) -> Self {
        self.metrics.out = out;
        self
    }
}

/// Queues jobs on the tracking queue, each delayed as the job says.
pub async fn enqueue(app: &App, jobs: &[Envelope]) -> Result<(), Error> {
    queue::enqueue(&app.aws.sqs, &app.config, jobs, Utc::now()).await
}

/// As `enqueue`, each batch made only when it is sent.
pub async fn enqueue_each(
    app: &App,
    jobs: impl IntoIterator<Item = Envelope>,
) -> Result<(), Error> {
    queue::enqueue_each(&app.aws.sqs, &app.config, jobs, Utc::now()).await
}

/// Puts a job back on the queue, delayed as the job says.
pub async fn requeue(app: &App, job: Job) -> Result<(), Error> {
    queue::requeue(&app.aws.sqs, &app.config, job, Utc::now()).await
}

/// Writes one EMF line of these counts, with `properties` (run id, event) alongside.
pub fn emit_metrics(app: &App, counts: &[(&str, usize)], properties: &[(&str, &str)]) {
    app.metrics.emit(counts, properties, Utc::now());
}

/// What AWS throttled during the invocation, if anything: one line naming each code and how
/// often, and `ApiThrottled` (which an alarm watches). The SDK retried each of them; what
/// outlasted its retries was handed back to the queue or failed by name where it happened.
pub fn report_throttling(app: &App) {
    let throttled = app.aws.throttles.take();
    let total: u64 = throttled.values().sum();
    if total == 0 {
        return;
    }
    let codes = throttled
        .iter()
        .map(|(code, n)| format!("{code} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::warn!(throttled = total, codes = %codes, "AWS throttled {total} calls ({codes}): the SDK retried them");
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    emit_metrics(app, &[("ApiThrottled", total)], &[("Event", "aws")]);
}

/// Refuses a job or request the catalog does not vouch for: logged with the reason, counted
/// (`JobsRefused`), and answered as an error, so that a queued one ends in the dead-letter
/// queue and its alarm. Nothing of it is acted on.
pub fn refuse(app: &App, why: String) -> Error {
    tracing::warn!(refused = %why, "refused: the catalog does not vouch for it");
    emit_metrics(app, &[("JobsRefused", 1)], &[("Event", "refused")]);
    Error::Refused(why)
}

/// The run a `what` job names, as dispatched (the catalog's record); refused when the catalog
/// holds no such run, so that no job acts on a run this deployment did not start.
pub async fn dispatched_run(app: &App, run_id: &str, what: &str) -> Result<RunJob, Error> {
    match app.aws.catalog.run(run_id).await? {
        Some(run) => Ok(run),
        None => Err(refuse(
            app,
            format!("{what} job for run {run_id}: the catalog holds no such dispatched run"),
        )),
    }
}

/// A value as the JSON answer of an on-demand call.
pub fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// How often a probing readiness call reads the probe's invocations.
const PROBE_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the deployment's read-only probe on these servers: one SendCommand per 50, then the
/// commands' invocations read every `PROBE_LOOK_EVERY` until all are final or `until`. Every
/// server gets a result; a failure to send or read is that server's unknown, not an error of
/// the caller (readiness, a cluster's dispatch).
pub async fn probe_servers(
    app: &App,
    document: &str,
    targets: &[String],
    until: DateTime<Utc>,
) -> HashMap<String, ProbeResult> {
    let started = Utc::now();
    let mut results = HashMap::new();
    let mut open: Vec<(String, Vec<String>)> = Vec::new();
    for chunk in targets.chunks(50) {
        // SSM drops an undelivered probe after this long; the document bounds its run.
        let timeout = app.config.probe_wait_seconds.max(30);
        match commands::send_probe(&app.aws.ssm, document, chunk, timeout).await {
            Ok(command_id) => {
                info!(command_id = %command_id, instances = chunk.len(), document, "readiness probe sent");
                open.push((command_id, chunk.to_vec()));
            }
            Err(failure) => {
                let err = failure.into_error();
                warn!(code = err.aws_code().unwrap_or("Unknown"), error = %err, "readiness probe not sent");
                for id in chunk {
                    results.insert(
                        id.clone(),
                        ProbeResult::NotSent(format!(
                            "not sent: SendCommand answered {}",
                            err.aws_code().unwrap_or("an error")
                        )),
                    );
                }
            }
        }
    }
    // Bounded by `until`: each round sleeps (never past it), and the rounds stop there.
    loop {
        let left = (until - Utc::now()).to_std().unwrap_or_default();
        if open.is_empty() || left.is_zero() {
            break;
        }
        tokio::time::sleep(std::cmp::min(PROBE_LOOK_EVERY, left)).await;
        let mut still = Vec::new();
        for (command_id, ids) in open {
            let invocations = match commands::invocations(
                &app.aws.ssm,
                &command_id,
                true,
                "readiness probe",
            )
            .await
            {
                Ok(found) => found,
                Err(err) => {
                    warn!(command_id = %command_id, code = err.aws_code().unwrap_or("Unknown"), error = %err, "readiness probe not readable this round");
                    still.push((command_id, ids));
                    continue;
                }
            };
            let mut waiting = Vec::new();
            for id in ids {
                match invocations
                    .iter()
                    .find(|i| i.instance_id == id)
                    .and_then(probe_result)
                {
                    Some(result) => {
                        results.insert(id, result);
                    }
                    None => waiting.push(id),
                }
            }
            if !waiting.is_empty() {
                still.push((command_id, waiting));
            }
        }
        open = still;
    }
    let waited = (Utc::now() - started).num_seconds();
    for (_, ids) in open {
        for id in ids {
            results.insert(
                id,
                ProbeResult::NoAnswer(format!("no answer within {waited} s")),
            );
        }
    }
    let answered = results
        .values()
        .filter(|r| matches!(r, ProbeResult::Answered(_)))
        .count();
    info!(
        sent = targets.len(),
        answered,
        waited_seconds = waited,
        until = %until.to_rfc3339(),
        "readiness probe done"
    );
    results
}
