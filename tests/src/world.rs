//! One test's world: a fresh emulator, the tracking queue, a seeded fleet, and the function's
//! log lines captured; one method per thing an operator (or AWS) does to it, so that a test
//! reads as the operator's story: arrange the fleet, run the nights, look at what is left.

use std::time::Duration;

use consistent_snapshot::App;
use serde_json::{json, Value};
use tracing::subscriber::DefaultGuard;

use crate::capture::Logs;
use crate::emulator::Emulator;
use crate::fleet::{seed, ServerSpec};
use crate::source::{deliver_until, drain, invoke, nightly_run, Drained};
use crate::Result;

/// How long `drain` waits for the queue to empty unless a test says otherwise.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(120);

pub struct World {
    pub emulator: Emulator,
    /// The tracking queue's URL.
    pub queue: String,
    /// The function's log lines, as CloudWatch would receive them.
    pub logs: Logs,
    _logging: DefaultGuard,
}

impl World {
    /// A fresh emulator with the tracking queue (a DLQ after 5 receives, as the template
    /// has); `visibility` is the queue's visibility timeout in seconds (how soon a failed
    /// message comes back). The function's log lines of this test's thread are captured.
    /// With `E2E_LOG=<file>` set, the function's log lines are also written to that file (to
    /// read what a failing test saw).
    pub async fn start(visibility: u32) -> Result<World> {
        let file = std::env::var_os("E2E_LOG").map(std::path::PathBuf::from);
        Self::start_logging_to(visibility, file.as_deref()).await
    }

    /// The same, with a copy of the function's log lines written to `log_file`.
    pub async fn start_logging_to(
        visibility: u32,
        log_file: Option<&std::path::Path>,
    ) -> Result<World> {
        let (logs, guard) = Logs::capture(log_file)?;
        let emulator = Emulator::start().await?;
        let queue = emulator.create_queue("tracking", visibility).await?;
        Ok(World {
            emulator,
            queue,
            logs,
            _logging: guard,
        })
    }

    /// Launches these servers (and their simulated Windows side); answers their instance
    /// ids in the order of the specs.
    pub async fn seed(&self, servers: &[ServerSpec]) -> Result<Vec<String>> {
        seed(&self.emulator, servers).await
    }

    /// The function as a test deployment configures it (`MANAGED_BY=vss-test`, polling every
    /// second or two), plus `overrides`.
    pub fn app(&self, overrides: &[(&str, &str)]) -> Result<App> {
        self.emulator.app(&self.queue, overrides)
    }

    /// One invocation with this payload, as Lambda gives it (deadline included).
    pub async fn invoke(&self, app: &App, payload: Value) -> Result<Value> {
        invoke(app, payload).await
    }

    /// The event source mapping until the queue is empty (batches of 10), at most `limit`.
    pub async fn drain_within(&self, app: &App, limit: Duration) -> Result<Drained> {
        drain(&self.emulator, app, &self.queue, 10, limit).await
    }

    /// The event source mapping until the queue is empty (batches of 10).
    pub async fn drain(&self, app: &App) -> Result<Drained> {
        self.drain_within(app, DRAIN_LIMIT).await
    }

    /// The event source mapping for `limit` at most, or until `done`: answers what it
    /// delivered and whether `done` said so (delayed messages are not waited for).
    pub async fn deliver_until(
        &self,
        app: &App,
        limit: Duration,
        done: impl Fn() -> bool,
    ) -> Result<(Drained, bool)> {
        deliver_until(&self.emulator, app, &self.queue, limit, done).await
    }

    /// Puts `body` on the tracking queue as another principal would (one that got past the
    /// queue's policy): a forged job or event.
    pub async fn send_raw(&self, body: &str) -> Result<()> {
        self.emulator
            .sqs()
            .send_message()
            .queue_url(&self.queue)
            .message_body(body)
            .send()
            .await?;
        Ok(())
    }

    /// A night: the schedule's event at `time`, then every message to the end; answers the
    /// run id.
    pub async fn nightly(&self, app: &App, time: &str) -> Result<String> {
        nightly_run(&self.emulator, app, &self.queue, time).await
    }

    /// `{"action":"report"}`: the fleet against its RPO.
    pub async fn report(&self, app: &App) -> Result<Value> {
        invoke(app, json!({"action": "report"})).await
    }

    /// `{"action":"restore", …}` of one instance from `run_id` (`latest` or a run id).
    pub async fn restore(
        &self,
        app: &App,
        instance_id: &str,
        run_id: &str,
        mode: &str,
    ) -> Result<Value> {
        let payload = json!({
            "action": "restore",
            "instance_id": instance_id,
            "run_id": run_id,
            "mode": mode,
        });
        invoke(app, payload).await
    }
}
