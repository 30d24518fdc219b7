//! The run's summary: one outcome per instance, totals, a one-line verdict, a table, its
//! counts as metrics, and the text of the notification sent when a run needs attention.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::catalog::ForeignSnapshot;
use crate::model::cause::Cause;
use crate::run::plan::outcome::{Outcome, OutcomeKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcomes: Vec<Outcome>,
    pub totals: BTreeMap<OutcomeKind, usize>,
    /// How many servers ended with each named cause (all of them, as `totals`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub causes: BTreeMap<Cause, usize>,
    /// How many servers' sets are the function's crash-consistent fallback (all of them).
    #[serde(default, rename = "fallbacks", skip_serializing_if = "none_left_out")]
    pub totals_fallbacks: usize,
    /// Snapshots carrying the run's tags that no set of the run holds (forged, or tagged by
    /// hand): never copied, restored or deleted; the first `MAX_FOREIGN` of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<ForeignSnapshot>,
    #[serde(default)]
    pub foreign_count: usize,
    /// Outcomes not listed (the summary in the log lists the first `MAX_LOGGED_OUTCOMES`,
    /// those that need attention first; `totals` counts them all).
    #[serde(default, skip_serializing_if = "none_left_out")]
    pub outcomes_left_out: usize,
    /// The servers whose freeze timed out are tried again in this run, at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryNote>,
}

/// A run's retry of its timed-out freezes, as its summary names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryNote {
    pub run_id: String,
    pub instances: usize,
    pub at: DateTime<Utc>,
}

fn none_left_out(n: &usize) -> bool {
    *n == 0
}

/// How many foreign snapshots a summary names (it counts them all).
pub const MAX_FOREIGN: usize = 50;

/// How many outcomes the summary's log event lists: CloudWatch Logs keeps events of at most
/// 256 KB, and an outcome takes up to about 300 bytes. Each attempted instance also has its
/// own `instance finished` line, and the skipped ones are in the run's catalog record.
pub const MAX_LOGGED_OUTCOMES: usize = 500;

/// How many outcomes one page of a run's record holds: an outcome takes up to about 300
/// bytes, and a DynamoDB item at most 400 KB.
pub const RECORD_PAGE_OUTCOMES: usize = 500;

/// One page of a run's full record in the catalog, read back by
/// `{"action":"report","run_id":…,"page":n}`: the summary's line and totals on every page,
/// and the page's share of the outcomes (in the summary's order: what needs attention first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPage {
    pub run_id: String,
    pub summary_line: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub totals: BTreeMap<OutcomeKind, usize>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub causes: BTreeMap<Cause, usize>,
    pub instances: usize,
    pub foreign_count: usize,
    pub page: usize,
    pub pages: usize,
    pub outcomes: Vec<Outcome>,
}

impl RunSummary {
    /// The whole summary as pages of at most `per_page` outcomes (one page when it has none).
    pub fn record_pages(&self, per_page: usize) -> Vec<RecordPage> {
        let chunks: Vec<&[Outcome]> = if self.outcomes.is_empty() {
            vec![&[]]
        } else {
            self.outcomes.chunks(per_page.max(1)).collect()
        };
        let line = self.summary_line();
        let pages = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(page, outcomes)| RecordPage {
                run_id: self.run_id.clone(),
                summary_line: line.clone(),
                started_at: self.started_at,
                finished_at: self.finished_at,
                totals: self.totals.clone(),
                causes: self.causes.clone(),
                instances: self.outcomes.len(),
                foreign_count: self.foreign_count,
                page,
                pages,
                outcomes: outcomes.to_vec(),
            })
            .collect()
    }

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
                OutcomeKind::FileSystemConsistent => 3,
                OutcomeKind::Consistent => 4,
            };
            (rank(a.kind), &a.name, &a.instance_id).cmp(&(rank(b.kind), &b.name, &b.instance_id))
        });
        let mut totals = BTreeMap::new();
        let mut causes = BTreeMap::new();
        for o in &outcomes {
            *totals.entry(o.kind).or_insert(0) += 1;
            if let Some(cause) = o.cause {
                *causes.entry(cause).or_insert(0) += 1;
            }
        }
        let totals_fallbacks = outcomes.iter().filter(|o| o.fallback).count();
        RunSummary {
            run_id: run_id.to_string(),
            started_at,
            finished_at,
            outcomes,
            totals,
            causes,
            totals_fallbacks,
            foreign: Vec::new(),
            foreign_count: 0,
            outcomes_left_out: 0,
            retry: None,
        }
    }

    /// Names the run that tries the servers whose freeze timed out again.
    pub fn with_retry(mut self, retry: Option<RetryNote>) -> Self {
        self.retry = retry;
        self
    }

    /// The summary as its log event holds it: the first `max` outcomes (those that need
    /// attention come first), with how many were left out; the totals stay whole.
    pub fn for_log(&self, max: usize) -> RunSummary {
        let mut cut = self.clone();
        cut.outcomes_left_out = cut.outcomes.len().saturating_sub(max);
        cut.outcomes.truncate(max);
        cut
    }

    /// Names the foreign snapshots met (the first `MAX_FOREIGN`) and counts them all.
    pub fn with_foreign(mut self, mut foreign: Vec<ForeignSnapshot>) -> Self {
        self.foreign_count = foreign.len();
        foreign.truncate(MAX_FOREIGN);
        self.foreign = foreign;
        self
    }

    /// How many servers got the function's crash-consistent fallback.
    pub fn fallbacks(&self) -> usize {
        self.totals_fallbacks
    }

    pub fn count(&self, kind: OutcomeKind) -> usize {
        self.totals.get(&kind).copied().unwrap_or(0)
    }

    /// True when every instance that was attempted ended with a consistent set (file-system
    /// consistent where the instance asked for `NoWriters`).
    pub fn all_consistent(&self) -> bool {
        self.foreign_count == 0
            && self.outcomes.iter().all(|o| {
                matches!(
                    o.kind,
                    OutcomeKind::Consistent
                        | OutcomeKind::FileSystemConsistent
                        | OutcomeKind::Skipped
                )
            })
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
        let foreign = match self.foreign_count {
            0 => String::new(),
            n => format!(", {n} foreign snapshot(s) carrying the run's tags (ignored)"),
        };
        let fallbacks = match self.fallbacks() {
            0 => String::new(),
            n => format!(", {n} of them a crash-consistent fallback (VSS gave no set)"),
        };
        let retry = match &self.retry {
            None => String::new(),
            Some(r) => format!(
                "; {} whose VSS freeze timed out tried again in run {} at {}",
                r.instances,
                r.run_id,
                r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        };
        format!(
            "run {} {}: {} instances ({}{fallbacks}), {snapshots} snapshots, {minutes:.1} min{foreign}{retry}",
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

    /// Each named cause met, with how many servers and its fix, most frequent first.
    pub fn fixes(&self) -> Vec<String> {
        let mut causes: Vec<(&Cause, &usize)> = self.causes.iter().collect();
        causes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        causes
            .into_iter()
            .map(|(cause, n)| format!("{cause} ({n}): {}", cause.remediation()))
            .collect()
    }

    /// A fixed-width table: instance, name, volumes, snapshots, outcome, cause, reason.
    fn rows(&self) -> Vec<String> {
        let headers = [
            "INSTANCE",
            "NAME",
            "VOLUMES",
            "SNAPSHOTS",
            "OUTCOME",
            "CAUSE",
            "REASON",
        ];
        let rows: Vec<[String; 7]> = self
            .outcomes
            .iter()
            .map(|o| {
                [
                    o.instance_id.clone(),
                    o.name.clone(),
                    o.volumes.to_string(),
                    o.snapshots.len().to_string(),
                    o.kind.to_string(),
                    o.cause.map(|c| c.to_string()).unwrap_or_default(),
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
        widths[6] = widths[6].min(100);
        let line = |cells: [&str; 7]| {
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
                .map(|r| line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]])),
        );
        out
    }

    /// The table, the causes with their fixes, and the summary line.
    pub fn table(&self) -> String {
        let mut out = self.rows();
        let fixes = self.fixes();
        if !fixes.is_empty() {
            out.push(String::new());
            out.push("Causes and fixes:".into());
            out.extend(fixes.into_iter().map(|f| format!("  {f}")));
        }
        out.push(String::new());
        out.push(self.summary_line());
        out.join("\n")
    }
}

/// A finished run's counts: `Dispatched` (instances a command was sent to) and one per outcome,
/// plus `NotConsistent`, the instances that were attempted and did not end consistent (the
/// "failures in a run" alarm).
///
/// Then one count per named cause met in the run (`CauseFreezeTimeout`, …): a cause that did
/// not occur is not written, so it costs no custom metric.
pub fn run_counts(report: &RunSummary) -> Vec<(&'static str, usize)> {
    let n = |kind| report.count(kind);
    let skipped = n(OutcomeKind::Skipped);
    let not_consistent = n(OutcomeKind::CrashConsistent)
        + n(OutcomeKind::Incomplete)
        + n(OutcomeKind::Failed)
        + n(OutcomeKind::TimedOut);
    let mut counts = vec![
        ("Dispatched", report.outcomes.len() - skipped),
        ("Consistent", n(OutcomeKind::Consistent)),
        ("FileSystemConsistent", n(OutcomeKind::FileSystemConsistent)),
        ("CrashConsistent", n(OutcomeKind::CrashConsistent)),
        ("Incomplete", n(OutcomeKind::Incomplete)),
        ("Failed", n(OutcomeKind::Failed)),
        ("TimedOut", n(OutcomeKind::TimedOut)),
        ("Skipped", skipped),
        ("NotConsistent", not_consistent),
        ("ForeignSnapshots", report.foreign_count),
        ("CrashConsistentFallbacks", report.fallbacks()),
    ];
    counts.extend(report.causes.iter().map(|(c, n)| (c.metric(), *n)));
    // Written only when a retry was queued, as the causes: no idle custom metric.
    if let Some(retry) = &report.retry {
        counts.push(("VssRetried", retry.instances));
    }
    counts
}

/// SNS takes messages up to 256 KB; the table is cut well before.
pub const NOTIFICATION_MAX_BYTES: usize = 200_000;

/// An SNS subject: at most 100 printable ASCII characters.
pub fn notification_subject(managed_by: &str, report: &RunSummary) -> String {
    let not_consistent = report.outcomes.len()
        - report.count(OutcomeKind::Consistent)
        - report.count(OutcomeKind::FileSystemConsistent)
        - report.count(OutcomeKind::Skipped);
    // What matters first: a long deployment name is what gets cut, never the count.
    let text = format!(
        "{not_consistent} instance(s) not consistent in run {} ({managed_by})",
        report.run_id
    );
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(SUBJECT_MAX_CHARS)
        .collect()
}

/// SNS takes a subject of fewer than 100 characters, printable, on one line.
pub const SUBJECT_MAX_CHARS: usize = 99;

/// The summary line, the causes met with their fixes, then the table (which lists what needs
/// attention first), cut to `max_bytes` with a line saying how many rows were left out.
pub fn notification_text(report: &RunSummary, max_bytes: usize) -> String {
    let mut text = format!("{}\n\n", report.summary_line());
    let fixes = report.fixes();
    if !fixes.is_empty() {
        text.push_str("Causes and fixes:\n");
        for fix in fixes {
            text.push_str(&format!("  {fix}\n"));
        }
        text.push('\n');
    }
    let rows = report.rows();
    let lines: Vec<&str> = rows.iter().map(String::as_str).collect();
    for (i, line) in lines.iter().enumerate() {
        if text.len() + line.len() + 80 > max_bytes {
            text.push_str(&format!(
                "… {} more line(s): see the function's log for the full report\n",
                lines.len() - i
            ));
            break;
        }
        text.push_str(line);
        text.push('\n');
    }
    text
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
            cause: None,
            fallback: false,
        }
    }

    #[test]
    fn totals_order_and_verdict() {
        let t = Utc::now();
        let report = RunSummary::new(
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
        let report = RunSummary::new(
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

    #[test]
    fn run_counts_follow_the_outcomes() {
        let t = Utc::now();
        let kinds = [
            OutcomeKind::Consistent,
            OutcomeKind::Consistent,
            OutcomeKind::CrashConsistent,
            OutcomeKind::TimedOut,
            OutcomeKind::Skipped,
        ];
        let report = RunSummary::new("r", t, t, kinds.map(|k| outcome("i-1", k, 0)).to_vec());
        let counts: std::collections::BTreeMap<_, _> = run_counts(&report).into_iter().collect();
        assert_eq!(counts["Dispatched"], 4);
        assert_eq!(counts["Consistent"], 2);
        assert_eq!(counts["CrashConsistent"], 1);
        assert_eq!(counts["TimedOut"], 1);
        assert_eq!(counts["Skipped"], 1);
        assert_eq!(counts["Failed"], 0);
        assert_eq!(counts["NotConsistent"], 2);
    }

    #[test]
    fn each_cause_is_counted_named_with_its_fix_and_a_metric() {
        let t = Utc::now();
        let with = |id: &str, kind, cause| Outcome {
            cause,
            ..outcome(id, kind, 0)
        };
        let report = RunSummary::new(
            "r",
            t,
            t,
            vec![
                with(
                    "i-1",
                    OutcomeKind::CrashConsistent,
                    Some(Cause::FreezeTimeout),
                ),
                with(
                    "i-2",
                    OutcomeKind::CrashConsistent,
                    Some(Cause::FreezeTimeout),
                ),
                with("i-3", OutcomeKind::Skipped, Some(Cause::AgentOffline)),
                with("i-4", OutcomeKind::Failed, None),
                with("i-5", OutcomeKind::Consistent, None),
            ],
        );
        assert_eq!(
            report.causes,
            BTreeMap::from([(Cause::FreezeTimeout, 2), (Cause::AgentOffline, 1)])
        );
        let fixes = report.fixes();
        assert_eq!(fixes.len(), 2);
        assert!(
            fixes[0].starts_with("VSS freeze timed out (2): VSS holds writes"),
            "{fixes:?}"
        );
        let table = report.table();
        assert!(table.contains("Causes and fixes:") && table.contains("SSM agent offline (1)"));
        let text = notification_text(&report, NOTIFICATION_MAX_BYTES);
        let fixes_at = text.find("Causes and fixes:").unwrap_or(usize::MAX);
        assert!(fixes_at < text.find("INSTANCE").unwrap_or(0), "{text}");
        let counts: BTreeMap<_, _> = run_counts(&report).into_iter().collect();
        assert_eq!(
            (
                counts.get("CauseFreezeTimeout"),
                counts.get("CauseAgentOffline")
            ),
            (Some(&2), Some(&1))
        );
        assert!(
            !counts.contains_key("CauseLanguageMode"),
            "causes not met cost no metric"
        );
        // The log's cut summary still counts every cause.
        assert_eq!(report.for_log(1).causes, report.causes);
    }

    #[test]
    fn the_logged_summary_lists_what_needs_attention_first_and_counts_the_rest() {
        let big = report(3_001);
        let logged = big.for_log(MAX_LOGGED_OUTCOMES);
        assert_eq!(logged.outcomes.len(), MAX_LOGGED_OUTCOMES);
        assert_eq!(logged.outcomes_left_out, 3_001 - MAX_LOGGED_OUTCOMES);
        assert_eq!(logged.totals, big.totals, "the totals count every instance");
        assert!(logged
            .outcomes
            .iter()
            .all(|o| o.kind == OutcomeKind::Failed));
        assert!(!logged.all_consistent());
        let text = serde_json::to_string(&logged).unwrap_or_default();
        assert!(text.len() < 200_000, "{} bytes", text.len());
        let small = report(4);
        assert_eq!(small.for_log(MAX_LOGGED_OUTCOMES), small);
        assert!(!serde_json::to_string(&small)
            .unwrap_or_default()
            .contains("outcomes_left_out"));
    }

    fn report(n: usize) -> RunSummary {
        let t = Utc::now();
        let outcomes = (0..n)
            .map(|i| Outcome {
                instance_id: format!("i-{i:017x}"),
                name: format!("sql{i}"),
                kind: if i % 2 == 0 {
                    OutcomeKind::Failed
                } else {
                    OutcomeKind::Consistent
                },
                volumes: 3,
                snapshots: vec![],
                reason: (i % 2 == 0).then(|| "Failed: Thaw pipe connection timed out".into()),
                cause: (i % 2 == 0).then_some(Cause::FreezeTimeout),
                fallback: false,
            })
            .collect();
        RunSummary::new("20261123T020000Z-1a2b3c4d", t, t, outcomes)
    }

    #[test]
    fn a_notification_fits_sns_and_says_what_was_cut() {
        let big = report(5_000);
        let text = notification_text(&big, NOTIFICATION_MAX_BYTES);
        assert!(text.len() <= NOTIFICATION_MAX_BYTES, "{}", text.len());
        assert!(text.contains("more line(s)"));
        assert!(text.starts_with("run 20261123T020000Z-1a2b3c4d needs attention"));
        let small = notification_text(&report(4), NOTIFICATION_MAX_BYTES);
        assert!(!small.contains("more line(s)") && small.contains("Thaw pipe"));
        let subject = notification_subject("prod", &big);
        assert!(subject.starts_with(
            "2500 instance(s) not consistent in run 20261123T020000Z-1a2b3c4d (prod)"
        ));
        // The default deployment name (stack, region, account) is long: it is cut, the count
        // and the run are not, and SNS's limit holds.
        let long = format!(
            "{}-eu-central-1-123456789012",
            "consistent-snapshot-prod".repeat(2)
        );
        let subject = notification_subject(&long, &big);
        assert!(subject.chars().count() < 100, "{}", subject.chars().count());
        assert!(subject
            .starts_with("2500 instance(s) not consistent in run 20261123T020000Z-1a2b3c4d ("));
    }
}
