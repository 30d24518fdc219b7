//! `make bench`: what a full run should cost at least, and the BENCHMARKS.md it writes.
//!
//! The lower bounds are the calls no design of this tool can avoid for a fleet of `instances`
//! servers with `volumes` volumes each: discovery, the SSM preflight, the commands, one
//! tracking message per instance, the tags the contract asks for, one copy per snapshot and
//! region, the expired snapshots' deletions, and reading each region's snapshots once.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The fleet a run is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet {
    pub instances: u64,
    pub volumes: u64,
    pub copy_regions: u64,
    /// Consistent sets each instance already has in every region before the run.
    pub history_sets: u64,
    pub retain_count: u64,
}

impl Fleet {
    /// The snapshots one run takes.
    pub fn snapshots(&self) -> u64 {
        self.instances * self.volumes
    }

    /// The snapshots retention deletes in each region after the run.
    pub fn expired_per_region(&self) -> u64 {
        (self.history_sets + 1).saturating_sub(self.retain_count) * self.snapshots()
    }

    /// The snapshots each region holds when retention reads it.
    pub fn held_per_region(&self) -> u64 {
        (self.history_sets + 1) * self.snapshots()
    }
}

/// What kind of work a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Counted against the lower bound.
    Work,
    /// Looks at something not final yet, and the message that brings the next look.
    Polling,
    /// The catalog (claims, step markers, manifest, set records): what makes every step safe
    /// to repeat and every decision independent of tags.
    Coordination,
}

/// One action's floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub action: &'static str,
    pub floor: u64,
    pub kind: Kind,
    pub why: String,
}

fn ceil(n: u64, page: u64) -> u64 {
    n.div_ceil(page)
}

/// The lower bound of a full run (dispatch, tracking, copies, retention), action by action.
pub fn lower_bounds(f: &Fleet) -> Vec<Bound> {
    let n = f.instances;
    let s = f.snapshots();
    let regions = 1 + f.copy_regions;
    let bound = |action, floor, kind, why: String| Bound {
        action,
        floor,
        kind,
        why,
    };
    vec![
        bound(
            "ec2:DescribeInstances",
            ceil(n, 1000),
            Kind::Work,
            format!("⌈{n}/1000⌉: one discovery, 1,000 a page"),
        ),
        bound(
            "ssm:DescribeInstanceInformation",
            ceil(n, 50),
            Kind::Work,
            format!("⌈{n}/50⌉: the agents' preflight, 50 a page"),
        ),
        bound(
            "ssm:ListCommands",
            2,
            Kind::Work,
            "one page of the command history per VSS document, 2 (dispatch is check-then-act, and a server running either document must not be frozen twice)".into(),
        ),
        bound(
            "ssm:SendCommand",
            ceil(n, 50),
            Kind::Work,
            format!("⌈{n}/50⌉: 50 instances a command"),
        ),
        bound(
            "sqs:SendMessageBatch",
            ceil(n, 10),
            Kind::Work,
            format!("⌈{n}/10⌉: one tracking message per instance, 10 a batch"),
        ),
        bound(
            "ssm:GetCommandInvocation",
            n,
            Kind::Polling,
            format!("{n}: at least one look per instance"),
        ),
        bound(
            "ssm:ListCommandInvocations",
            ceil(n, 50),
            Kind::Polling,
            format!("⌈{n}/50⌉: the run's look at each command"),
        ),
        bound(
            "sqs:SendMessage",
            0,
            Kind::Polling,
            "0: a look that is not final sends the next one".into(),
        ),
        bound(
            "ec2:DescribeSnapshots",
            ceil(s, 1000) + regions * ceil(f.held_per_region(), 1000),
            Kind::Work,
            format!(
                "⌈{s}/1000⌉ for the run's set, ⌈{}/1000⌉ per region for retention",
                f.held_per_region()
            ),
        ),
        bound(
            "ec2:CreateTags",
            s,
            Kind::Work,
            format!("{s}: `Name` differs per snapshot, so one call per snapshot"),
        ),
        bound(
            "ec2:CopySnapshot",
            s * f.copy_regions,
            Kind::Work,
            format!("{s} × {} copy region(s)", f.copy_regions),
        ),
        bound(
            "ec2:DeleteSnapshot",
            f.expired_per_region() * regions,
            Kind::Work,
            format!(
                "{} expired per region × {regions} region(s)",
                f.expired_per_region()
            ),
        ),
        bound(
            "ec2:DescribeImages",
            regions,
            Kind::Work,
            format!("{regions}: the AMIs that use snapshots, per region"),
        ),
        bound(
            "ec2:DescribeLockedSnapshots",
            regions,
            Kind::Work,
            format!("{regions}: the locks read before deleting, per region (none here)"),
        ),
        bound(
            "ec2:ListSnapshotsInRecycleBin",
            regions * ceil(f.expired_per_region(), 100),
            Kind::Work,
            format!(
                "⌈{}/100⌉ per region: each deleted snapshot looked up in the Recycle Bin, 100 ids a call",
                f.expired_per_region()
            ),
        ),
    ]
}

/// The most looks at one instance's command: one per backoff step while the command may still
/// run (`window` seconds), and the one after it that reports it timed out. Each look is one
/// GetCommandInvocation and, when not final, one SendMessage for the next.
pub fn looks_at_most(initial: u32, max: u32, window: u32) -> u32 {
    let mut at = 0i64;
    let mut looks = 0;
    for attempt in 0.. {
        at += i64::from(consistent_snapshot::backoff_seconds(attempt, initial, max));
        looks += 1;
        if at > i64::from(window) {
            break;
        }
    }
    looks
}

/// The least time `calls` of `action` take in one region at EC2's documented rate (the
/// bucket of a narrowed call: this project's describes all are).
pub fn seconds_at_rate(action: &str, calls: u64) -> Option<f64> {
    let bucket = crate::throttle::bucket_of(action, true)?;
    Some(crate::throttle::least_seconds(bucket, calls, 1.0))
}

/// The kind of an action that has no floor of its own (the polling actions all have one).
pub fn kind_of(action: &str) -> Kind {
    match action {
        a if a.starts_with("dynamodb:") => Kind::Coordination,
        _ => Kind::Work,
    }
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub action: String,
    pub measured: u64,
    pub floor: Option<u64>,
    pub kind: Kind,
    pub why: String,
}

/// The calls measured, set beside the floors.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// Work calls measured, and their floor.
    pub work: u64,
    pub work_floor: u64,
    pub polling: u64,
    pub coordination: u64,
}

impl Comparison {
    pub fn ratio(&self) -> f64 {
        if self.work_floor == 0 {
            return f64::INFINITY;
        }
        self.work as f64 / self.work_floor as f64
    }

    /// Polling calls per instance.
    pub fn polling_per_instance(&self, instances: u64) -> f64 {
        self.polling as f64 / instances.max(1) as f64
    }
}

pub fn compare(fleet: &Fleet, calls: &BTreeMap<String, u64>) -> Comparison {
    let bounds = lower_bounds(fleet);
    let mut rows: Vec<Row> = bounds
        .iter()
        .map(|b| Row {
            action: b.action.to_string(),
            measured: calls.get(b.action).copied().unwrap_or(0),
            floor: Some(b.floor),
            kind: b.kind,
            why: b.why.clone(),
        })
        .collect();
    for (action, n) in calls {
        if bounds.iter().all(|b| b.action != action) {
            rows.push(Row {
                action: action.clone(),
                measured: *n,
                floor: None,
                kind: kind_of(action),
                why: String::new(),
            });
        }
    }
    rows.sort_by(|a, b| (a.kind, &a.action).cmp(&(b.kind, &b.action)));
    let sum = |kind: Kind| -> u64 {
        rows.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.measured)
            .sum()
    };
    let work_floor = rows
        .iter()
        .filter(|r| r.kind == Kind::Work)
        .filter_map(|r| r.floor)
        .sum();
    Comparison {
        work: sum(Kind::Work),
        work_floor,
        polling: sum(Kind::Polling),
        coordination: sum(Kind::Coordination),
        rows,
    }
}

/// A measured budget beside its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub what: String,
    pub measured: f64,
    pub unit: &'static str,
    /// Met when `measured` is at most this (none: reported only).
    pub target: Option<f64>,
    pub note: String,
}

impl Budget {
    pub fn verdict(&self) -> &'static str {
        match self.target {
            Some(t) if self.measured <= t => "met",
            Some(_) => "missed",
            None => "reported",
        }
    }
}

/// Lambda's longest invocation, in seconds.
pub const LAMBDA_MAX_SECONDS: f64 = 900.0;

/// What one side of the comparison with the peer cost for the same night of the same fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    /// AWS calls by action, and by (action, region).
    pub calls: BTreeMap<String, u64>,
    pub calls_by_region: BTreeMap<(String, String), u64>,
    pub invocations: usize,
    /// Each invocation's duration, as Lambda bills it (rounded up to the millisecond).
    pub invocation_ms: Vec<u64>,
    /// From the first invocation's start to the last one's end.
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    /// Process start to ready (median).
    pub init_ms: f64,
}

impl Side {
    pub fn all_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Calls to the catalog (DynamoDB): the peer makes none.
    pub fn catalog_calls(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(a, _)| a.starts_with("dynamodb:"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn billed_seconds(&self) -> f64 {
        self.invocation_ms.iter().sum::<u64>() as f64 / 1000.0
    }

    /// Billed GB-s: every invocation's duration × the memory it is configured with.
    pub fn gb_seconds(&self, memory_mb: u64) -> f64 {
        self.billed_seconds() * memory_mb as f64 / 1024.0
    }

    /// The longest invocation, in seconds.
    pub fn longest_seconds(&self) -> f64 {
        self.invocation_ms.iter().max().copied().unwrap_or(0) as f64 / 1000.0
    }

    /// The least time the rate-limited calls take at EC2's documented rates, if one invocation
    /// made them one after another (as the peer does): each region's buckets drained in turn.
    pub fn serial_seconds_at_rates(&self) -> f64 {
        crate::throttle::per_bucket(&self.calls_by_region)
            .iter()
            .map(|((bucket, _), n)| crate::throttle::least_seconds(*bucket, *n, 1.0))
            .sum()
    }
}

/// The function and the peer on the same fleet, in the same bench run.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerComparison {
    pub instances: u64,
    /// The memory both are billed at (the template's `MemorySize`).
    pub memory_mb: u64,
    pub function: Side,
    pub peer: Side,
}

impl PeerComparison {
    /// The side-by-side rows: figure, the function's, the peer's, peer ÷ function.
    pub fn rows(&self) -> Vec<[String; 4]> {
        let per_1000 = 1000.0 / self.instances.max(1) as f64;
        let (f, p) = (&self.function, &self.peer);
        let ratio = |a: f64, b: f64| {
            if a > 0.0 {
                format!("{:.2}", b / a)
            } else {
                "-".into()
            }
        };
        let row = |what: &str, a: f64, b: f64, show: &dyn Fn(f64) -> String| {
            [what.to_string(), show(a), show(b), ratio(a, b)]
        };
        let count = |v: f64| thousands(v.round() as u64);
        let secs = |v: f64| format!("{v:.1} s");
        vec![
            row(
                "AWS calls in all",
                f.all_calls() as f64,
                p.all_calls() as f64,
                &count,
            ),
            row(
                "of which the catalog (DynamoDB)",
                f.catalog_calls() as f64,
                p.catalog_calls() as f64,
                &count,
            ),
            row(
                "AWS calls but the catalog's",
                (f.all_calls() - f.catalog_calls()) as f64,
                (p.all_calls() - p.catalog_calls()) as f64,
                &count,
            ),
            row(
                "invocations",
                f.invocations as f64,
                p.invocations as f64,
                &count,
            ),
            row(
                "wall, first invocation's start to last one's end",
                f.wall_seconds,
                p.wall_seconds,
                &secs,
            ),
            row(
                "time in invocations (billed duration)",
                f.billed_seconds(),
                p.billed_seconds(),
                &secs,
            ),
            row(
                "longest invocation",
                f.longest_seconds(),
                p.longest_seconds(),
                &secs,
            ),
            row("CPU (user + system)", f.cpu_seconds, p.cpu_seconds, &secs),
            row("peak RSS", f.peak_rss_mib, p.peak_rss_mib, &|v| {
                format!("{v:.1} MiB")
            }),
            row(
                "init, process start to ready (median)",
                f.init_ms,
                p.init_ms,
                &|v| format!("{v:.1} ms"),
            ),
            row(
                &format!("billed GB-s per 1,000 servers, at {} MB", self.memory_mb),
                f.gb_seconds(self.memory_mb) * per_1000,
                p.gb_seconds(self.memory_mb) * per_1000,
                &|v| format!("{v:.1}"),
            ),
        ]
    }

    /// Every action either side called: (action, the function's calls, the peer's).
    pub fn actions(&self) -> Vec<(String, u64, u64)> {
        let mut names: Vec<&String> = self.function.calls.keys().collect();
        names.extend(self.peer.calls.keys());
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|a| {
                let of = |s: &Side| s.calls.get(a).copied().unwrap_or(0);
                (a.clone(), of(&self.function), of(&self.peer))
            })
            .collect()
    }
}

/// Everything BENCHMARKS.md shows.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub date: String,
    /// How long the whole bench took, from its first phase to this report.
    pub took: std::time::Duration,
    pub machine: Vec<(String, String)>,
    pub fleet: Option<Fleet>,
    pub calls: BTreeMap<String, u64>,
    pub calls_by_region: BTreeMap<(String, String), u64>,
    /// The full run's EC2 describes by (action, what they ask by).
    pub describes: BTreeMap<(String, String), u64>,
    pub budgets: Vec<Budget>,
    /// Criterion's medians: (benchmark, nanoseconds).
    pub criterion: Vec<(String, f64)>,
    pub peer: Option<PeerComparison>,
    pub notes: Vec<String>,
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

/// `ec2:DescribeSnapshots by ids: 9, by tag:ManagedBy: 110; ec2:DescribeImages …`: each
/// action's calls by what they ask, most first.
pub fn describes_line(describes: &BTreeMap<(String, String), u64>) -> String {
    let mut by_action: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for ((action, asked), n) in describes {
        by_action.entry(action).or_default().push((asked, *n));
    }
    by_action
        .into_iter()
        .map(|(action, mut asks)| {
            asks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let asks: Vec<String> = asks
                .iter()
                .map(|(asked, n)| format!("by {asked}: {}", thousands(*n)))
                .collect();
            format!("{action} {}", asks.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// BENCHMARKS.md.
pub fn render(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `make bench` on {}; its phases against the emulator took the {:.0} minutes \
         before (after a warm release build and criterion's benchmarks). Re-run with `make bench` \
         (`BENCH_INSTANCES`, `BENCH_THROTTLED_INSTANCES`, \
         `BENCH_DISPATCH_INSTANCES`, `BENCH_COMPLETION_INSTANCES` and `BENCH_PLAN_SNAPSHOTS` \
         scale the five fleets, `BENCH_RATE_SCALE` multiplies AWS's request rates). Every \
         number comes from the release binary, started as Lambda starts it (a local runtime \
         API on loopback) against the emulator, its AWS calls counted by a proxy on loopback.\n",
        report.date,
        report.took.as_secs_f64() / 60.0
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in &report.machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "\n## Budgets\n");
    let _ = writeln!(md, "| what | measured | target | verdict | note |");
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    for b in &report.budgets {
        let target = b
            .target
            .map(|t| format!("≤ {t} {}", b.unit).trim_end().to_string())
            .unwrap_or_else(|| "-".into());
        // A count per server (no unit) reads to two places: 1.02 is not 1.0.
        let measured = if b.unit.is_empty() {
            format!("{:.2}", b.measured)
        } else {
            format!("{:.1} {}", b.measured, b.unit)
        };
        let _ = writeln!(
            md,
            "| {} | {measured} | {target} | {} | {} |",
            b.what,
            b.verdict(),
            b.note
        );
    }
    if let Some(fleet) = &report.fleet {
        let c = compare(fleet, &report.calls);
        let _ = writeln!(
            md,
            "\n## AWS calls of one full run\n\n{} instances × {} volumes, copies to {} region(s), \
             {} earlier sets per instance in every region, RETAIN_COUNT {}: dispatch, tracking, \
             copies and retention, until the queue is empty.\n",
            thousands(fleet.instances),
            fleet.volumes,
            fleet.copy_regions,
            fleet.history_sets,
            fleet.retain_count
        );
        let _ = writeln!(
            md,
            "Work calls: **{}** against a floor of {} (**{:.3}×**, target ≤ 1.25×). Polling: {} \
             calls, **{:.2} per instance**. Coordination (the catalog: claims, markers, manifest, set records): {} calls.\n",
            thousands(c.work),
            thousands(c.work_floor),
            c.ratio(),
            thousands(c.polling),
            c.polling_per_instance(fleet.instances),
            thousands(c.coordination)
        );
        let _ = writeln!(
            md,
            "| action | kind | measured | floor | × floor | floor is |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
        for r in &c.rows {
            let (floor, ratio) = match r.floor {
                Some(0) => ("0".to_string(), "-".to_string()),
                Some(f) => (thousands(f), format!("{:.2}", r.measured as f64 / f as f64)),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {:?} | {} | {floor} | {ratio} | {} |",
                r.action,
                r.kind,
                thousands(r.measured),
                r.why
            );
        }
        let paced: Vec<String> = report
            .calls_by_region
            .iter()
            .filter_map(|((action, region), n)| {
                let seconds = seconds_at_rate(action, *n)?;
                (seconds >= 1.0).then(|| {
                    format!(
                        "{action} in {region}: {} calls, at least {seconds:.0} s",
                        thousands(*n)
                    )
                })
            })
            .collect();
        if !paced.is_empty() {
            let _ = writeln!(
                md,
                "\nAt EC2's documented request rates (per account and region), the \
                 mutating steps take at least: {}. The copy step and retention go on in passes \
                 through the queue, each within the function's timeout, so this is wall time, \
                 not an error.",
                paced.join("; ")
            );
        }
        let regional: Vec<String> = report
            .calls_by_region
            .iter()
            .filter(|((_, region), _)| region != "us-east-1")
            .map(|((action, region), n)| format!("{action} in {region}: {}", thousands(*n)))
            .collect();
        if !regional.is_empty() {
            let _ = writeln!(
                md,
                "\nOf these, outside the home region: {}.",
                regional.join(", ")
            );
        }
        if !report.describes.is_empty() {
            let _ = writeln!(
                md,
                "\nEC2's describes by what they ask (every region): {}.",
                describes_line(&report.describes)
            );
        }
    }
    if let Some(peer) = &report.peer {
        render_peer(&mut md, peer);
    }
    if !report.criterion.is_empty() {
        let _ = writeln!(md, "\n## criterion (median)\n");
        let _ = writeln!(md, "| benchmark | median |");
        let _ = writeln!(md, "| --- | --- |");
        for (name, ns) in &report.criterion {
            let _ = writeln!(md, "| {name} | {} |", duration(*ns));
        }
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &report.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

fn render_peer(md: &mut String, c: &PeerComparison) {
    let _ = writeln!(
        md,
        "\n## The peer: the same night as an operator would script it\n\n\
         `tests/peer/nightly_vss.py`: one Python Lambda with boto3, after AWS's samples for \
         AWSEC2-CreateVssSnapshot (SendCommand per 50, GetCommandInvocation every 5 s inside \
         the invocation until final, DescribeSnapshots per instance, CopySnapshot per snapshot, \
         DeleteSnapshot by age from a full scan of each region). Same emulator, same fleet of \
         {} servers with the same history, same counting proxy, started as Lambda starts it, in \
         this same bench run; both end states checked before any number was written. Both are \
         billed at the template's {} MB. The peer checks nothing: it records no set, verifies \
         no snapshot, trusts every tag, and deletes by age whatever carries the tag.\n",
        thousands(c.instances),
        c.memory_mb
    );
    let _ = writeln!(
        md,
        "| figure | this function | the peer | peer ÷ function |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    for [what, f, p, r] in c.rows() {
        let _ = writeln!(md, "| {what} | {f} | {p} | {r} |");
    }
    let serial = c.peer.serial_seconds_at_rates();
    let _ = writeln!(
        md,
        "\nAt EC2's documented request rates the peer's one invocation needs at least {serial:.0} s \
         for its rate-limited calls, one after another{}. The function does the same work in \
         passes through its queue, each within its own timeout.\n",
        if serial > LAMBDA_MAX_SECONDS {
            format!(
                ": past Lambda's {LAMBDA_MAX_SECONDS:.0} s limit, so at this size it is cut off \
                 before its deletions end, every night"
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(md, "| action | this function | the peer |");
    let _ = writeln!(md, "| --- | --- | --- |");
    for (action, f, p) in c.actions() {
        let _ = writeln!(md, "| {action} | {} | {} |", thousands(f), thousands(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet {
            instances: 1000,
            volumes: 3,
            copy_regions: 1,
            history_sets: 7,
            retain_count: 7,
        }
    }

    fn floor(action: &str) -> u64 {
        lower_bounds(&fleet())
            .into_iter()
            .find(|b| b.action == action)
            .map(|b| b.floor)
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn the_floors_follow_the_page_sizes_and_the_fleet() {
        assert_eq!(floor("ec2:DescribeInstances"), 1);
        assert_eq!(floor("ssm:DescribeInstanceInformation"), 20);
        assert_eq!(floor("ssm:SendCommand"), 20);
        assert_eq!(floor("sqs:SendMessageBatch"), 100);
        assert_eq!(floor("ec2:CreateTags"), 3000);
        assert_eq!(floor("ec2:CopySnapshot"), 3000);
        // 8 sets held, 7 kept: one set of 3,000 snapshots expires in each of two regions.
        assert_eq!(floor("ec2:DeleteSnapshot"), 6000);
        // 3 pages for the run's set, 24 for each region's 24,000 snapshots.
        assert_eq!(floor("ec2:DescribeSnapshots"), 3 + 2 * 24);
        // 3,000 deleted in each region, looked up in the bin 100 a call.
        assert_eq!(floor("ec2:ListSnapshotsInRecycleBin"), 2 * 30);
        assert_eq!(floor("ec2:DescribeLockedSnapshots"), 2);
        let odd = Fleet {
            instances: 1001,
            ..fleet()
        };
        let bounds = lower_bounds(&odd);
        let of = |a: &str| bounds.iter().find(|b| b.action == a).map(|b| b.floor);
        assert_eq!(of("ec2:DescribeInstances"), Some(2));
        assert_eq!(of("ssm:SendCommand"), Some(21));
        assert_eq!(of("sqs:SendMessageBatch"), Some(101));
    }

    #[test]
    fn the_comparison_splits_work_polling_and_coordination() {
        let calls: BTreeMap<String, u64> = [
            ("ec2:DescribeInstances", 3),
            ("ssm:GetCommandInvocation", 1500),
            ("sqs:SendMessage", 500),
            ("dynamodb:PutItem", 7),
            ("ec2:CreateTags", 3000),
            ("ec2:DescribeVolumes", 2),
        ]
        .into_iter()
        .map(|(a, n)| (a.to_string(), n))
        .collect();
        let c = compare(&fleet(), &calls);
        assert_eq!(c.work, 3 + 3000 + 2);
        assert_eq!(c.polling, 2000);
        assert_eq!(c.coordination, 7);
        let work_floor: u64 = lower_bounds(&fleet())
            .iter()
            .filter(|b| b.kind == Kind::Work)
            .map(|b| b.floor)
            .sum();
        assert_eq!(c.work_floor, work_floor);
        assert!((c.polling_per_instance(1000) - 2.0).abs() < 1e-9);
        // An action without a floor is listed, and counted as work.
        assert!(c
            .rows
            .iter()
            .any(|r| r.action == "ec2:DescribeVolumes" && r.floor.is_none()));
    }

    #[test]
    fn looks_follow_the_backoff_until_the_command_deadline() {
        // 30 s doubling to 900 s: looks at 30, 90, 210, 450, 930, 1830 s.
        assert_eq!(looks_at_most(30, 900, 1500), 6);
        assert_eq!(looks_at_most(30, 900, 29), 1);
        assert_eq!(looks_at_most(30, 900, 30), 2);
        assert_eq!(looks_at_most(1, 5, 20), 6);
    }

    #[test]
    fn ec2_rates_set_the_least_time_of_the_mutating_steps() {
        assert_eq!(seconds_at_rate("ec2:DeleteSnapshot", 3100), Some(600.0));
        assert_eq!(seconds_at_rate("ec2:CreateTags", 50), Some(0.0));
        assert_eq!(seconds_at_rate("ssm:SendCommand", 20), None);
    }

    #[test]
    fn budgets_say_met_or_missed() {
        let b = |measured, target| Budget {
            what: "x".into(),
            measured,
            unit: "MB",
            target,
            note: String::new(),
        };
        assert_eq!(b(63.9, Some(64.0)).verdict(), "met");
        assert_eq!(b(64.1, Some(64.0)).verdict(), "missed");
        assert_eq!(b(1.0, None).verdict(), "reported");
    }

    #[test]
    fn the_report_shows_each_action_and_budget() {
        let report = Report {
            date: "2026-11-23".into(),
            fleet: Some(fleet()),
            calls: [("ec2:CreateTags".to_string(), 3000)].into(),
            budgets: vec![Budget {
                what: "init".into(),
                measured: 12.0,
                unit: "ms",
                target: Some(50.0),
                note: String::new(),
            }],
            criterion: vec![("retention/plan".into(), 2.5e8)],
            describes: [
                (("ec2:DescribeSnapshots", "ids"), 9),
                (("ec2:DescribeSnapshots", "tag:ManagedBy"), 110),
                (("ec2:DescribeImages", "everything"), 2),
            ]
            .into_iter()
            .map(|((a, by), n)| ((a.to_string(), by.to_string()), n))
            .collect(),
            ..Report::default()
        };
        let md = render(&report);
        assert!(
            md.contains(
                "EC2's describes by what they ask (every region): ec2:DescribeImages by \
                 everything: 2; ec2:DescribeSnapshots by tag:ManagedBy: 110, by ids: 9."
            ),
            "{md}"
        );
        assert!(
            md.contains("| ec2:CreateTags | Work | 3,000 | 3,000 | 1.00 |"),
            "{md}"
        );
        assert!(md.contains("| init | 12.0 ms | ≤ 50 ms | met |"), "{md}");
        assert!(md.contains("| retention/plan | 250.00 ms |"), "{md}");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_peer_is_set_beside_the_function_per_1000_servers() {
        let side = |calls: &[(&str, &str, u64)], ms: Vec<u64>| Side {
            calls: calls.iter().fold(BTreeMap::new(), |mut m, (a, _, n)| {
                *m.entry(a.to_string()).or_default() += n;
                m
            }),
            calls_by_region: calls
                .iter()
                .map(|(a, r, n)| ((a.to_string(), r.to_string()), *n))
                .collect(),
            invocations: ms.len(),
            invocation_ms: ms,
            ..Side::default()
        };
        let function = side(
            &[
                ("ec2:DeleteSnapshot", "us-east-1", 3000),
                ("dynamodb:PutItem", "us-east-1", 500),
            ],
            vec![1500, 500, 2000],
        );
        let peer = side(
            &[
                ("ec2:DeleteSnapshot", "us-east-1", 3100),
                ("ec2:DeleteSnapshot", "eu-west-1", 3100),
                ("ec2:DescribeSnapshots", "us-east-1", 2000),
            ],
            vec![16_000],
        );
        let c = PeerComparison {
            instances: 500,
            memory_mb: 256,
            function,
            peer,
        };
        let rows = c.rows();
        let row = |what: &str| rows.iter().find(|r| r[0].starts_with(what)).cloned();
        assert_eq!(
            row("AWS calls in all"),
            Some([
                "AWS calls in all".into(),
                "3,500".into(),
                "8,200".into(),
                "2.34".into()
            ])
        );
        assert_eq!(
            row("of which the catalog").map(|r| r[2].clone()),
            Some("0".into())
        );
        // 4 s and 16 s at 256 MB, doubled for 1,000 servers.
        assert_eq!(
            row("billed GB-s").map(|r| (r[1].clone(), r[2].clone(), r[3].clone())),
            Some(("2.0".into(), "8.0".into(), "4.00".into()))
        );
        assert_eq!(
            row("longest invocation").map(|r| r[1].clone()),
            Some("2.0 s".into())
        );
        // 3,000 after the burst of 100 at 5 a second, twice, and 1,900 at 20 a second.
        assert_eq!(c.peer.serial_seconds_at_rates(), 600.0 + 600.0 + 95.0);
        assert!(c
            .actions()
            .contains(&("ec2:DescribeSnapshots".into(), 0, 2000)));
        let md = render(&Report {
            peer: Some(c),
            ..Report::default()
        });
        assert!(md.contains("at least 1295 s"), "{md}");
        assert!(md.contains("past Lambda's 900 s limit"), "{md}");
        assert!(
            md.contains("| ec2:DeleteSnapshot | 3,000 | 6,200 |"),
            "{md}"
        );
    }
}
