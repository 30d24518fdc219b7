//! What CloudWatch would receive from the function: its JSON log lines and its EMF metrics.

use std::io::Write;
use std::sync::{Arc, Mutex};

use consistent_snapshot::{App, MetricsOut, RunSummary};
use serde_json::Value;

use crate::Result;

/// Captures the function's JSON log lines, as CloudWatch would receive them.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>, Option<Arc<Mutex<std::fs::File>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut all) = self.0.lock() {
            all.extend_from_slice(buf);
        }
        if let Some(file) = &self.1 {
            if let Ok(mut file) = file.lock() {
                file.write_all(buf)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs JSON logging for the current thread (tests run the function on their own
    /// current-thread runtime); a copy is appended to `file` when given (appended: a test
    /// with several worlds, each capturing its own thread, keeps every world's lines).
    pub fn capture(
        file: Option<&std::path::Path>,
    ) -> Result<(Self, tracing::subscriber::DefaultGuard)> {
        let logs = Logs::default();
        let buf = logs.0.clone();
        let file = match file {
            Some(path) => Some(Arc::new(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ))),
            None => None,
        };
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(buf.clone(), file.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        Ok((logs, guard))
    }

    pub fn records(&self) -> Vec<Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The run's summary as the function logged it, if it did.
    pub fn run_report(&self, run_id: &str) -> Option<RunSummary> {
        self.run_reports(run_id).into_iter().next()
    }

    /// Every summary the function logged for the run (exactly one is right).
    pub fn run_reports(&self, run_id: &str) -> Vec<RunSummary> {
        self.records()
            .iter()
            .filter(|r| r["run_id"] == run_id)
            .filter_map(|r| {
                r["report"]
                    .as_str()
                    .and_then(|s| serde_json::from_str(s).ok())
            })
            .collect()
    }

    /// Log records whose message starts with `text`.
    pub fn messages_starting(&self, text: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with(text)))
            .collect()
    }
}

/// The function's EMF metric lines, captured instead of written to standard output.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Vec<String>>>);

impl Metrics {
    /// An app whose metric lines go here.
    pub fn attach(&self, app: App) -> App {
        let lines = self.0.clone();
        app.with_metrics_out(MetricsOut::to(move |line| {
            if let Ok(mut lines) = lines.lock() {
                lines.push(line.to_string());
            }
        }))
    }

    /// Every line, parsed.
    pub fn lines(&self) -> Vec<Value> {
        let lines = self.0.lock().map(|l| l.clone()).unwrap_or_default();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    /// The lines of one event (`run`, `copies`, `retention`, `report`), of one run if given.
    pub fn of(&self, event: &str, run_id: Option<&str>) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["Event"] == event)
            .filter(|l| run_id.is_none_or(|r| l["RunId"] == r))
            .collect()
    }
}
