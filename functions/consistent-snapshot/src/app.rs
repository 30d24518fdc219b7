//! The function's state between invocations: its configuration, its AWS clients and where its
//! metrics go. Data only; the use cases are free functions over `&App`, each in its concern's
//! `step` module, so that a call site names the file it goes to.

use chrono::Utc;

use crate::aws::metrics::{Metrics, MetricsOut};
use crate::aws::{queue, Clients, SdkConfig};
use crate::config::Config;
use crate::error::Error;
use crate::jobs::{Envelope, Job, RunJob};

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
