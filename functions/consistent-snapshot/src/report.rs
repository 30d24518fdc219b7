//! The run's summary: one outcome per instance, totals, a one-line verdict and a table.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::outcome::{Outcome, OutcomeKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcomes: Vec<Outcome>,
    pub totals: BTreeMap<OutcomeKind, usize>,
}

impl RunReport {
    pub fn new(
        run_id: &str,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        mut outcomes: Vec<Outcome>,
    ) -> Self {
        // What needs attention first, then by name.
        outcomes.sort_by(|a, b| {
            let rank = |k: OutcomeKind| match k {
                OutcomeKind::Failed | OutcomeKind::TimedOut | OutcomeKind::Incomplete => 0,
                OutcomeKind::CrashConsistent => 1,
                OutcomeKind::Skipped => 2,
                OutcomeKind::Consistent => 3,
            };
            (rank(a.kind), &a.name, &a.instance_id).cmp(&(rank(b.kind), &b.name, &b.instance_id))
        });
        let mut totals = BTreeMap::new();
        for o in &outcomes {
            *totals.entry(o.kind).or_insert(0) += 1;
        }
        RunReport {
            run_id: run_id.to_string(),
            started_at,
            finished_at,
            outcomes,
            totals,
        }
    }

    pub fn count(&self, kind: OutcomeKind) -> usize {
        self.totals.get(&kind).copied().unwrap_or(0)
    }

    /// True when every instance that was attempted ended with a consistent set.
    pub fn all_consistent(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| matches!(o.kind, OutcomeKind::Consistent | OutcomeKind::Skipped))
    }

    /// One line an operator reads at 3 a.m.
    pub fn summary_line(&self) -> String {
        let totals: Vec<String> = self
            .totals
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let snapshots: usize = self.outcomes.iter().map(|o| o.snapshots.len()).sum();
        let minutes = (self.finished_at - self.started_at).num_seconds() as f64 / 60.0;
        format!(
            "run {} {}: {} instances ({}), {snapshots} snapshots, {minutes:.1} min",
            self.run_id,
            if self.all_consistent() {
                "succeeded"
            } else {
                "needs attention"
            },
            self.outcomes.len(),
            totals.join(", "),
        )
    }

    /// A fixed-width table: instance, name, volumes, snapshots, outcome, reason.
    pub fn table(&self) -> String {
        let headers = [
            "INSTANCE",
            "NAME",
            "VOLUMES",
            "SNAPSHOTS",
            "OUTCOME",
            "REASON",
        ];
        let rows: Vec<[String; 6]> = self
            .outcomes
            .iter()
            .map(|o| {
                [
                    o.instance_id.clone(),
                    o.name.clone(),
                    o.volumes.to_string(),
                    o.snapshots.len().to_string(),
                    o.kind.to_string(),
                    o.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths[5] = widths[5].min(100);
        let line = |cells: [&str; 6]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let cell: String = cell.chars().take(widths[i]).collect();
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
            text.trim_end().to_string()
        };
        let mut out = vec![line(headers)];
        out.extend(
            rows.iter()
                .map(|r| line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]])),
        );
        out.push(String::new());
        out.push(self.summary_line());
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, kind: OutcomeKind, snaps: usize) -> Outcome {
        Outcome {
            instance_id: id.into(),
            name: format!("n-{id}"),
            kind,
            volumes: 2,
            snapshots: (0..snaps).map(|i| format!("snap-{id}-{i}")).collect(),
            reason: (kind != OutcomeKind::Consistent).then(|| "why".to_string()),
        }
    }

    #[test]
    fn totals_order_and_verdict() {
        let t = Utc::now();
        let report = RunReport::new(
            "r1",
            t,
            t,
            vec![
                outcome("i-1", OutcomeKind::Consistent, 2),
                outcome("i-2", OutcomeKind::Failed, 0),
                outcome("i-3", OutcomeKind::Skipped, 0),
            ],
        );
        assert_eq!(report.outcomes[0].kind, OutcomeKind::Failed);
        assert_eq!(report.count(OutcomeKind::Consistent), 1);
        assert!(!report.all_consistent());
        let line = report.summary_line();
        assert!(
            line.contains("needs attention")
                && line.contains("3 instances")
                && line.contains("2 snapshots"),
            "{line}"
        );
        let table = report.table();
        assert_eq!(table.lines().count(), 6);
        assert!(table
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("INSTANCE"));
    }

    #[test]
    fn skipped_instances_do_not_fail_a_run() {
        let t = Utc::now();
        let report = RunReport::new(
            "r",
            t,
            t,
            vec![
                outcome("i-1", OutcomeKind::Consistent, 2),
                outcome("i-2", OutcomeKind::Skipped, 0),
            ],
        );
        assert!(report.all_consistent());
        assert!(report.summary_line().contains("succeeded"));
    }
}
