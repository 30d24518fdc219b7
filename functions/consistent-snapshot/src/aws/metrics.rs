//! CloudWatch metrics as Embedded Metric Format (EMF) log lines. CloudWatch Logs turns each
//! line into metric data points: no `PutMetricData` call, no extra permission, no latency.
//!
//! Every metric is a count, dimensioned by the deployment (`ManagedBy`) only: per-instance
//! dimensions would make one custom metric per server. The run id and the event are
//! properties of the line, searchable in Logs Insights without costing a metric.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

pub const DIMENSION: &str = "ManagedBy";

/// Where the EMF lines go: standard output in Lambda (each line one log event).
#[derive(Clone)]
pub struct MetricsOut(Arc<dyn Fn(&str) + Send + Sync>);

impl MetricsOut {
    pub fn stdout() -> Self {
        MetricsOut(Arc::new(|line| {
            use std::io::Write;
            // One write per line, so a line is never interleaved with a log event.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(format!("{line}\n").as_bytes());
            let _ = out.flush();
        }))
    }

    /// Lines go to `sink` instead (a local tool, a test).
    pub fn to(sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        MetricsOut(Arc::new(sink))
    }

    pub fn write(&self, line: &Value) {
        (self.0)(&line.to_string())
    }
}

/// The function's metrics: every line in its namespace, dimensioned by its deployment.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub namespace: String,
    pub managed_by: String,
    pub out: MetricsOut,
}

impl Metrics {
    /// Writes one EMF line of these counts, with `properties` (run id, event) alongside.
    pub fn emit(&self, counts: &[(&str, usize)], properties: &[(&str, &str)], at: DateTime<Utc>) {
        self.out.write(&emf_line(
            &self.namespace,
            &self.managed_by,
            counts,
            properties,
            at,
        ));
    }
}

impl std::fmt::Debug for MetricsOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsOut")
    }
}

/// One EMF line: the counts under `namespace`, dimensioned by `ManagedBy`, with `properties`
/// alongside (not metrics). Metric names are the keys of `counts`.
pub fn emf_line(
    namespace: &str,
    managed_by: &str,
    counts: &[(&str, usize)],
    properties: &[(&str, &str)],
    at: DateTime<Utc>,
) -> Value {
    let definitions: Vec<Value> = counts
        .iter()
        .map(|(name, _)| json!({ "Name": name, "Unit": "Count" }))
        .collect();
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [[DIMENSION]],
                "Metrics": definitions,
            }],
        }),
    );
    line.insert(DIMENSION.into(), json!(managed_by));
    for (key, value) in properties {
        line.insert((*key).into(), json!(value));
    }
    for (name, count) in counts {
        line.insert((*name).into(), json!(count));
    }
    Value::Object(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_declares_every_count_it_carries() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let line = emf_line(
            "ConsistentSnapshot",
            "prod",
            &[("Consistent", 3), ("Failed", 0)],
            &[("RunId", "r1")],
            at,
        );
        assert_eq!(line["_aws"]["Timestamp"], json!(1_800_000_000_000_i64));
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], json!("ConsistentSnapshot"));
        assert_eq!(directive["Dimensions"], json!([["ManagedBy"]]));
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "Consistent", "Unit": "Count"}, {"Name": "Failed", "Unit": "Count"}])
        );
        assert_eq!(line["ManagedBy"], json!("prod"));
        assert_eq!(line["RunId"], json!("r1"));
        assert_eq!(
            (line["Consistent"].clone(), line["Failed"].clone()),
            (json!(3), json!(0))
        );
    }
}
