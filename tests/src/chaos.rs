//! The function under adverse delivery: every AWS call through the fault proxy, every SQS
//! message delivered twice at once, invocations stopped at a random AWS call, and each
//! invocation held to its timeout, as Lambda holds it.
//!
//! Everything random comes from one seed, so a failing run can be replayed with the same
//! faults (the interleaving of concurrent invocations still depends on timing).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use consistent_snapshot::MetricsOut;
use consistent_snapshot::{App, Config};
use serde_json::{json, Value};

use crate::faults::{Endpoint, FaultProxy, Stop};
use crate::{
    batch_failures, deadline_in, queue_arn, queue_is_empty, receive, sqs_records, Drained,
    Emulator, Metrics, Result, FUNCTION_TIMEOUT,
};

/// How hostile the world is.
#[derive(Debug, Clone, Copy)]
pub struct ChaosOptions {
    /// Share of AWS calls the proxy faults (0–1).
    pub fault_rate: f64,
    /// Deliver every SQS message to two invocations at once.
    pub duplicate_messages: bool,
    /// Share of invocations stopped at a random AWS call.
    pub stop_share: f64,
    /// The latest call (1-based) at which an invocation may be stopped.
    pub max_stop_call: u32,
    pub seed: u64,
}

impl ChaosOptions {
    /// No fault, no duplicate, no stop unless a test asks for one (`invoke_stopping`): the
    /// proxy only counts and steers, seeded with `seed`.
    pub fn calm(seed: u64) -> Self {
        ChaosOptions {
            fault_rate: 0.0,
            duplicate_messages: false,
            stop_share: 0.0,
            max_stop_call: 1,
            seed,
        }
    }
}

/// What happened to the invocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChaosLog {
    pub invocations: u32,
    /// Stopped at a chosen AWS call.
    pub stopped: u32,
    /// Stopped by their timeout.
    pub timed_out: u32,
    /// Finished with an error.
    pub errors: u32,
    /// Scheduled deliveries, retries included.
    pub schedule_deliveries: u32,
    /// Message deliveries (a message handed to two invocations counts twice).
    pub message_deliveries: u32,
}

/// How one invocation ended.
#[derive(Debug)]
pub enum Ended {
    Answered(Value),
    Failed(String),
    /// Stopped at the AWS call the test or the draw chose.
    Stopped,
    /// Stopped by the function's timeout, as Lambda stops it.
    TimedOut,
}

pub struct Chaos<'a> {
    emulator: &'a Emulator,
    pub proxy: FaultProxy,
    config: Config,
    queue_url: String,
    options: ChaosOptions,
    rng: Mutex<fastrand::Rng>,
    log: Mutex<ChaosLog>,
    metrics: Option<Metrics>,
    /// The function's timeout: each invocation is given this deadline and stopped there.
    timeout: Duration,
}

impl<'a> Chaos<'a> {
    pub fn new(
        emulator: &'a Emulator,
        queue_url: &str,
        overrides: &[(&str, &str)],
        options: ChaosOptions,
    ) -> Result<Self> {
        Ok(Chaos {
            emulator,
            proxy: FaultProxy::new(emulator.port, options.fault_rate, options.seed),
            config: emulator.config(queue_url, overrides)?,
            queue_url: queue_url.to_string(),
            options,
            // A stream of its own, so that the proxy's draws do not shift these.
            rng: Mutex::new(fastrand::Rng::with_seed(
                options.seed ^ 0x9e37_79b9_7f4a_7c15,
            )),
            log: Mutex::new(ChaosLog::default()),
            metrics: None,
            timeout: FUNCTION_TIMEOUT,
        })
    }

    /// Every invocation's EMF lines go to `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// A function configured with this timeout instead of the tests' `FUNCTION_TIMEOUT`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn log(&self) -> ChaosLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn count(&self, update: impl FnOnce(&mut ChaosLog)) {
        if let Ok(mut log) = self.log.lock() {
            update(&mut log);
        }
    }

    fn draw<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> Option<T> {
        self.rng.lock().ok().map(|mut rng| f(&mut rng))
    }

    /// A fresh Lambda instance whose AWS calls go through its own proxy endpoint, with the
    /// SDK retrying as in production.
    fn app(&self, endpoint: &Endpoint) -> App {
        let sdk = self.emulator.sdk_through(endpoint.port);
        let app = App::new(self.config.clone(), &sdk);
        match &self.metrics {
            Some(metrics) => metrics.attach(app),
            None => app.with_metrics_out(MetricsOut::to(|_| {})),
        }
    }

    /// One invocation: maybe stopped at a random AWS call, always stopped at its timeout.
    pub async fn invoke(&self, payload: Value) -> Result<Ended> {
        let stop = self
            .draw(|rng| {
                (rng.f64() < self.options.stop_share)
                    .then(|| Stop::AtCall(rng.u32(1..=self.options.max_stop_call.max(1))))
            })
            .flatten()
            .unwrap_or(Stop::Never);
        self.invoke_stopping(payload, stop).await
    }

    /// One invocation, stopped as `stop` says, and at its timeout.
    pub async fn invoke_stopping(&self, payload: Value, stop: Stop) -> Result<Ended> {
        let endpoint = self.proxy.endpoint(stop).await?;
        let app = self.app(&endpoint);
        self.count(|l| l.invocations += 1);
        let deadline = deadline_in(self.timeout);
        let run = tokio::time::timeout(
            self.timeout,
            // On the heap: the handler's future is large, and a test awaits many of them.
            Box::pin(consistent_snapshot::handle_until(&app, payload, deadline)),
        );
        let ended = tokio::select! {
            answer = run => match answer {
                Ok(Ok(value)) => Ended::Answered(value),
                Ok(Err(err)) => {
                    self.count(|l| l.errors += 1);
                    Ended::Failed(err.to_string())
                }
                Err(_) => {
                    self.count(|l| l.timed_out += 1);
                    Ended::TimedOut
                }
            },
            () = endpoint.stopped() => {
                self.count(|l| l.stopped += 1);
                Ended::Stopped
            }
        };
        Ok(ended)
    }

    /// A night: the schedule's event at `time` (delivered twice at once), then every message
    /// to the end, within `limit`; answers the run id and what the drain did.
    pub async fn night(&self, time: &str, limit: Duration) -> Result<(String, Drained)> {
        let answers = self
            .schedule(&crate::scheduled_event("nightly", time))
            .await?;
        let run_id = answers[0]["run_id"]
            .as_str()
            .ok_or("the schedule's answer names no run id")?
            .to_string();
        Ok((run_id, self.drain(10, limit).await?))
    }

    /// Delivers a scheduled event twice at once; each delivery is retried, as the scheduler
    /// retries a failed target, until an invocation answers (at most 10 times).
    pub async fn schedule(&self, event: &Value) -> Result<Vec<Value>> {
        let (a, b) = tokio::join!(self.deliver(event), self.deliver(event));
        Ok(vec![a?, b?])
    }

    async fn deliver(&self, event: &Value) -> Result<Value> {
        for _ in 0..10 {
            self.count(|l| l.schedule_deliveries += 1);
            if let Ended::Answered(answer) = self.invoke(event.clone()).await? {
                return Ok(answer);
            }
        }
        Err("the scheduled event was never answered in 10 deliveries".into())
    }

    /// Receives one batch and hands it to one invocation; deletes what it did not list as
    /// failed. Answers the batch's message ids and the failed ones.
    pub async fn deliver_batch(&self, batch_size: i32) -> Result<(Vec<String>, Vec<String>)> {
        let sqs = self.emulator.sqs();
        let messages = receive(&sqs, &self.queue_url, batch_size, 2).await?;
        let messages = messages.as_slice();
        let ids: Vec<String> = messages
            .iter()
            .filter_map(|m| m.message_id().map(str::to_string))
            .collect();
        let event = json!({ "Records": sqs_records(messages, &queue_arn(&self.queue_url)) });
        let failed = match self.invoke(event).await? {
            Ended::Answered(answer) => batch_failures(&answer),
            _ => ids.clone(),
        };
        for m in messages {
            if failed.iter().any(|f| Some(f.as_str()) == m.message_id()) {
                continue;
            }
            if let Some(handle) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await?;
            }
        }
        Ok((ids, failed))
    }

    /// The event source: receives batches, hands each to one invocation (or two at once), and
    /// deletes a message once an invocation answered without listing it as failed. Returns when
    /// the queue is empty, delayed messages included.
    pub async fn drain(&self, batch_size: i32, limit: Duration) -> Result<Drained> {
        let sqs = self.emulator.sqs();
        let arn = queue_arn(&self.queue_url);
        let started = Instant::now();
        let mut drained = Drained::default();
        loop {
            if started.elapsed() > limit {
                return Err(format!("queue not drained within {limit:?}: {drained:?}").into());
            }
            let messages = receive(&sqs, &self.queue_url, batch_size, 1).await?;
            let messages = messages.as_slice();
            if messages.is_empty() {
                if queue_is_empty(&sqs, &self.queue_url).await? {
                    return Ok(drained);
                }
                continue;
            }
            let event = json!({ "Records": sqs_records(messages, &arn) });
            let copies = if self.options.duplicate_messages {
                2
            } else {
                1
            };
            self.count(|l| l.message_deliveries += copies * messages.len() as u32);
            let ended = if copies == 2 {
                let (a, b) = tokio::join!(self.invoke(event.clone()), self.invoke(event));
                vec![a?, b?]
            } else {
                vec![self.invoke(event).await?]
            };
            let answers: Vec<Vec<String>> = ended
                .iter()
                .filter_map(|e| match e {
                    Ended::Answered(response) => Some(batch_failures(response)),
                    _ => None,
                })
                .collect();
            drained.invocations += ended.len();
            drained.messages += messages.len();
            for m in messages {
                let id = m.message_id().unwrap_or_default();
                let done = answers.iter().any(|failed| !failed.iter().any(|f| f == id));
                if !done {
                    drained.failures += 1;
                    continue;
                }
                if let Some(handle) = m.receipt_handle() {
                    sqs.delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await?;
                }
            }
        }
    }
}
