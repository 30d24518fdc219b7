//! `make bench`: the release binary, run as Lambda runs it, against the emulator; writes
//! BENCHMARKS.md.
//!
//! 1. Init: the binary started ten times behind a local runtime API; process start to its
//!    first request for an event.
//! 2. A full run of `BENCH_INSTANCES` (1,000) servers × 3 volumes with 7 earlier nightly sets
//!    in the home region and in the copy region: dispatch, tracking, copies, retention, until
//!    the queue is empty. Every AWS call goes through a counting proxy on loopback. The end
//!    state is checked (every server consistent, every snapshot copied, exactly the expired
//!    sets deleted) before any number is written: a run that did not do its job measures
//!    nothing.
//! 3. The dispatch of `BENCH_DISPATCH_INSTANCES` (20,000) servers and the first tracking
//!    batches: peak RSS and time of the invocation whose work grows with the fleet.
//! 4. Completion: `BENCH_COMPLETION_INSTANCES` (200) servers whose commands take 2 to 12 s,
//!    one night with SSM's events on the queue and one polling only, each with the
//!    deployment's backoff: from each command's end to its set's record, and the polling calls.
//! 5. A retention plan (dry run) over `BENCH_PLAN_SNAPSHOTS` (100,000) snapshots.
//! 6. The peer (`tests/peer/nightly_vss.py`): the same night of the same fleet as step 2, as an
//!    operator would script it in one Python Lambda with boto3, started and counted the same
//!    way, its end state checked too; set beside step 2's run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use harness::bench::{self, Budget, Fleet, PeerComparison, Report, Side};
use harness::faults::{Endpoint, FaultProxy, ProxyStats, Stop};
use harness::runtime::LocalRuntime;
use harness::throttle;
use harness::{
    drain_with, scheduled_event, seed_bulk, workspace_root, Emulator, History, Result, Windows,
};
use serde_json::{json, Value};

const HOME: &str = "us-east-1";
const COPY_REGION: &str = "eu-west-1";
const MANAGED_BY: &str = "consistent-snapshot-bench";
/// The function's timeout in template.yaml.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(120);
const VOLUMES: u64 = 3;
const RETAIN_COUNT: u64 = 7;
/// The function's memory in template.yaml: what both it and the peer are billed at.
const MEMORY_MB: u64 = 256;

fn setting(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a whole number").into()),
        Err(_) => Ok(default),
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace) or `target/`.
fn target_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    }
}

/// The release binary `cargo build --release -p consistent-snapshot` made.
fn release_binary() -> Result<PathBuf> {
    let binary = target_dir().join("release/consistent-snapshot");
    if !binary.exists() {
        return Err(format!(
            "{} not found: `make bench` builds it (cargo build --release -p consistent-snapshot)",
            binary.display()
        )
        .into());
    }
    Ok(binary)
}

/// One Lambda execution environment: the release binary behind its own runtime API.
struct Function {
    child: Child,
    runtime: LocalRuntime,
    started: Instant,
}

impl Function {
    async fn start(binary: &Path, env: &[(&str, String)], log: &Path) -> Result<Self> {
        Self::start_program(binary, &[], env, log).await
    }

    /// `program args…` as Lambda starts a function: its own environment, a runtime API.
    async fn start_program(
        program: &Path,
        args: &[&Path],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Self> {
        let runtime = LocalRuntime::start().await?;
        let log = std::fs::File::create(log)?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", runtime.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "consistent-snapshot")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("AWS_REGION", HOME)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let started = Instant::now();
        let child = command.spawn()?;
        let function = Function {
            child,
            runtime,
            started,
        };
        // A Python interpreter importing boto3 takes longer to be ready than the binary.
        function.runtime.wait_ready(Duration::from_secs(30)).await?;
        Ok(function)
    }

    /// Process start to the first request for an event.
    fn init(&self) -> Option<Duration> {
        self.runtime
            .ready_at()
            .map(|ready| ready.duration_since(self.started))
    }

    fn proc(&self, file: &str) -> Result<String> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/{file}",
            self.child.id()
        ))?)
    }

    /// Peak resident set (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> Result<f64> {
        let status = self.proc("status")?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or("no VmHWM in /proc/<pid>/status")?;
        Ok(kib / 1024.0)
    }

    /// CPU time used so far (user + system), in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        // schedstat: nanoseconds on a CPU, first field.
        let ns: f64 = self
            .proc("schedstat")?
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or("unreadable /proc/<pid>/schedstat")?;
        Ok(ns / 1e9)
    }

    async fn invoke(&self, payload: Value, timeout: Duration) -> Result<Value> {
        self.runtime.invoke(payload, timeout).await
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The function's environment against `endpoint_port` (the counting proxy).
fn function_env(endpoint_port: u16, queue_url: &str, copy: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{endpoint_port}"),
        ),
        ("QUEUE_URL", queue_url.to_string()),
        ("QUEUE_ARN", harness::queue_arn(queue_url)),
        ("CATALOG_TABLE", harness::CATALOG_TABLE.to_string()),
        ("MANAGED_BY", MANAGED_BY.to_string()),
        ("RETAIN_COUNT", RETAIN_COUNT.to_string()),
        ("TRACK_POLL_INITIAL_SECONDS", "1".into()),
        ("TRACK_POLL_MAX_SECONDS", "5".into()),
    ];
    if copy {
        env.push(("COPY_REGIONS", COPY_REGION.into()));
    }
    env
}

/// The function started with every AWS call through a counting proxy (no fault), its log in
/// .emulator/bench/`log_name`; `settings` replace or add to `function_env`'s. The endpoint
/// must outlive the function's calls.
async fn counted(
    emulator: &Emulator,
    binary: &Path,
    (queue, copy): (&str, bool),
    settings: &[(&'static str, String)],
    log_name: &str,
) -> Result<(FaultProxy, Endpoint, Function, PathBuf)> {
    let proxy = FaultProxy::new(emulator.port, 0.0, 1);
    let endpoint = proxy.endpoint(Stop::Never).await?;
    let log = log_dir()?.join(log_name);
    let mut env = function_env(endpoint.port, queue, copy);
    env.retain(|(k, _)| !settings.iter().any(|(s, _)| s == k));
    env.extend(settings.iter().cloned());
    let function = Function::start(binary, &env, &log).await?;
    Ok((proxy, endpoint, function, log))
}

/// The function's EMF lines of one event (`run`, `copies`, `retention`) in its log.
fn emf(log: &Path, event: &str) -> Result<Vec<Value>> {
    Ok(std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("_aws").is_some() && l["Event"] == event)
        .collect())
}

fn metric_sum(lines: &[Value], name: &str) -> u64 {
    lines.iter().filter_map(|l| l[name].as_u64()).sum()
}

fn log_dir() -> Result<PathBuf> {
    let dir = workspace_root().join(".emulator/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn nightly_event() -> Value {
    let now = Utc::now()
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or_else(Utc::now);
    scheduled_event("consistent-snapshot-nightly", &now.to_rfc3339())
}

/// This deployment's snapshots in a region.
async fn managed_snapshots(emulator: &Emulator, region: &str) -> Result<usize> {
    let mut pages = emulator
        .ec2_in(region)
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:ConsistentSnapshot:ManagedBy")
                .values(MANAGED_BY)
                .build(),
        )
        .max_results(1000)
        .into_paginator()
        .send();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        n += page?.snapshots().len();
    }
    Ok(n)
}

async fn measure_init(binary: &Path, times: usize) -> Result<Vec<f64>> {
    let log = log_dir()?.join("init.log");
    let env = function_env(9, "http://127.0.0.1:9/000000000000/none", false);
    let mut samples = Vec::new();
    for _ in 0..times {
        let function = Function::start(binary, &env, &log).await?;
        let init = function.init().ok_or("no init time")?;
        samples.push(init.as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

struct FullRun {
    fleet: Fleet,
    calls: BTreeMap<String, u64>,
    regional: BTreeMap<(String, String), u64>,
    describes: BTreeMap<(String, String), u64>,
    dispatch: Duration,
    total: Duration,
    invocations: usize,
    /// Each invocation's duration, rounded up to the millisecond as Lambda bills it.
    invocation_ms: Vec<u64>,
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

/// A duration as Lambda bills it: whole milliseconds, rounded up.
fn billed_ms(d: Duration) -> u64 {
    d.as_micros().div_ceil(1000) as u64
}

/// The full run's fleet: `instances` servers with their earlier nightly sets, home and copy.
async fn seed_night(emulator: &Emulator, instances: u64) -> Result<()> {
    let ids = seed_bulk(emulator, instances as usize, 250, (VOLUMES - 1) as usize).await?;
    let history = History {
        region: HOME.into(),
        managed_by: MANAGED_BY.into(),
        instance_ids: ids,
        sets: RETAIN_COUNT,
        hours_apart: 24.0,
        newest_hours: 24.0,
        copy_region: Some(COPY_REGION.into()),
        crash_consistent: vec![],
    };
    let made = emulator.seed_history(&history).await?;
    println!("    seeded; history: {made} snapshots");
    Ok(())
}

/// The fleet of the full run: `instances` servers, their volumes, one copy region, the
/// earlier sets.
fn night_fleet(instances: u64) -> Fleet {
    Fleet {
        instances,
        volumes: VOLUMES,
        copy_regions: 1,
        history_sets: RETAIN_COUNT,
        retain_count: RETAIN_COUNT,
    }
}

/// The function's night on `fleet` checked by what it logged and what EC2 holds: every server
/// consistent, every snapshot copied, exactly the expired sets deleted in both regions.
async fn night_done(emulator: &Emulator, log: &Path, fleet: &Fleet) -> Result<()> {
    let run = emf(log, "run")?;
    let copies = emf(log, "copies")?;
    let retention = emf(log, "retention")?;
    let s = fleet.snapshots();
    let checks = [
        (
            "servers consistent",
            metric_sum(&run, "Consistent"),
            fleet.instances,
        ),
        (
            "snapshots copied",
            metric_sum(&copies, "SnapshotsCopied"),
            s,
        ),
        (
            "snapshots deleted",
            metric_sum(&retention, "SnapshotsDeleted"),
            2 * fleet.expired_per_region(),
        ),
        (
            "snapshots kept in the home region",
            managed_snapshots(emulator, HOME).await? as u64,
            RETAIN_COUNT * s,
        ),
        (
            "snapshots kept in the copy region",
            managed_snapshots(emulator, COPY_REGION).await? as u64,
            RETAIN_COUNT * s,
        ),
    ];
    check(log, &checks)
}

/// The run checked against what it must have left: `(what, got, expected)` each.
fn check(log: &Path, checks: &[(&str, u64, u64)]) -> Result<()> {
    for (what, got, want) in checks {
        if got != want {
            return Err(format!(
                "the run did not do its job: {what} {got}, expected {want} (log: {})",
                log.display()
            )
            .into());
        }
        println!("    {what}: {got} ✓");
    }
    Ok(())
}

/// The function's night on the full run's fleet of `instances` servers: started as Lambda
/// starts it behind a counting proxy (playing EC2's buckets at `throttle` × AWS's rates, when
/// given), the nightly event, the queue drained (for `limit` at most), the end state checked.
struct Night {
    fleet: Fleet,
    proxy: FaultProxy,
    function: Function,
    started: Instant,
    dispatch: Duration,
    total: Duration,
    /// Each invocation's duration, rounded up to the millisecond as Lambda bills it.
    invocation_ms: Vec<u64>,
}

async fn night(
    binary: &Path,
    instances: u64,
    throttle: Option<f64>,
    (log_name, limit): (&str, Duration),
) -> Result<Night> {
    let fleet = night_fleet(instances);
    let emulator = Emulator::start().await?;
    let queue = emulator.create_queue("bench-tracking", 60).await?;
    seed_night(&emulator, instances).await?;
    let (proxy, _endpoint, function, log) =
        counted(&emulator, binary, (&queue, true), &[], log_name).await?;
    if let Some(scale) = throttle {
        proxy.throttle(scale);
    }
    let started = Instant::now();
    let answer = function.invoke(nightly_event(), FUNCTION_TIMEOUT).await?;
    let dispatch = started.elapsed();
    let invocation_ms = std::sync::Mutex::new(vec![billed_ms(dispatch)]);
    // The answer lists at most 1,000 servers and counts the rest in `left_out`.
    let dispatched = answer["dispatched"].as_array().map_or(0, Vec::len) as u64
        + answer["left_out"]["dispatched"].as_u64().unwrap_or(0);
    println!(
        "    dispatched {dispatched} in {:.1} s; tracking…",
        dispatch.as_secs_f64()
    );
    drain_with(&emulator, &queue, 10, limit, |event| {
        let (function, invocation_ms) = (&function, &invocation_ms);
        async move {
            let began = Instant::now();
            let answer = function.invoke(event, FUNCTION_TIMEOUT).await;
            if let Ok(mut ms) = invocation_ms.lock() {
                ms.push(billed_ms(began.elapsed()));
            }
            answer
        }
    })
    .await?;
    let total = started.elapsed();
    let invocation_ms = invocation_ms.into_inner().map_err(|_| "poisoned")?;
    // The run did its job, or nothing here means anything.
    night_done(&emulator, &log, &fleet).await?;
    Ok(Night {
        fleet,
        proxy,
        function,
        started,
        dispatch,
        total,
        invocation_ms,
    })
}

async fn full_run(binary: &Path, instances: u64) -> Result<FullRun> {
    println!("==> full run: {instances} servers × {VOLUMES} volumes, {RETAIN_COUNT} earlier sets in {HOME} and {COPY_REGION}");
    let night = night(
        binary,
        instances,
        None,
        ("full-run.log", Duration::from_secs(3600)),
    )
    .await?;
    let stats = night.proxy.stats();
    Ok(FullRun {
        fleet: night.fleet,
        calls: stats.calls,
        regional: stats.regional,
        describes: stats.describes,
        dispatch: night.dispatch,
        total: night.total,
        invocations: night.invocation_ms.len(),
        cpu_seconds: night.function.cpu_seconds()?,
        peak_rss_mib: night.function.peak_rss_mib()?,
        invocation_ms: night.invocation_ms,
    })
}

/// A full run under EC2's request throttling, set against its rate floor.
struct Throttled {
    /// From the dispatch's start to the last EC2 call that went through.
    wall: f64,
    /// The slowest bucket's least time, and which bucket and region that is.
    floor: f64,
    slowest: String,
    /// Every bucket's least time, one after another.
    serial_floor: f64,
    /// Refused attempts by action.
    throttled: BTreeMap<String, u64>,
    /// Each bucket that cost time, busy from when to when (`throttle::busy_windows`).
    busy: String,
    invocations: usize,
}

/// The full run's night on `instances` servers with the proxy playing EC2's request buckets
/// at `scale` × AWS's documented rates, its end state checked: how long it took against the
/// least time its calls could take at those rates.
async fn throttled_run(binary: &Path, instances: u64, scale: f64) -> Result<Throttled> {
    println!("==> throttled: {instances} servers, EC2's request buckets at {scale} × AWS's rates");
    let night = night(
        binary,
        instances,
        Some(scale),
        ("throttled.log", Duration::from_secs(3 * 3600)),
    )
    .await?;
    let (proxy, started) = (&night.proxy, night.started);
    let stats = proxy.stats();
    let wall = stats
        .through
        .iter()
        .filter(|((action, _), _)| action.starts_with("ec2:"))
        .map(|(_, (_, last))| last.saturating_duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    // The calls each bucket let through, per region.
    let per_bucket = throttle::per_bucket(&stats.admitted());
    let least = |((bucket, _), n): (&(throttle::Bucket, String), &u64)| {
        throttle::least_seconds(*bucket, *n, scale)
    };
    let serial_floor: f64 = per_bucket.iter().map(least).sum();
    let (floor, slowest) = per_bucket
        .iter()
        .map(|entry| {
            let ((bucket, region), n) = entry;
            (
                least(entry),
                format!(
                    "{} in {region}, {} calls",
                    bucket.name,
                    bench::thousands(*n)
                ),
            )
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or((0.0, "none".into()));
    let mut throttled: BTreeMap<String, u64> = BTreeMap::new();
    for ((action, _), n) in &stats.throttled {
        *throttled.entry(action.clone()).or_default() += n;
    }
    let busy = throttle::busy_windows(&stats.through, &per_bucket, started)
        .iter()
        .map(|w| {
            format!(
                "{} in {} {:.0}–{:.0} s ({} calls)",
                w.bucket.name,
                w.region,
                w.from,
                w.to,
                bench::thousands(w.calls)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "    {wall:.0} s to the last EC2 call; rate floor {floor:.0} s ({slowest}); {} attempts throttled; busy: {busy}",
        throttled.values().sum::<u64>()
    );
    Ok(Throttled {
        wall,
        floor,
        slowest,
        serial_floor,
        throttled,
        busy,
        invocations: night.invocation_ms.len(),
    })
}

/// The peer's night: its answer (or what it failed with), how long it took, what it called,
/// and the emulator it ran against, to be checked.
struct PeerNight {
    answer: Result<Value>,
    took: Duration,
    stats: ProxyStats,
    emulator: Emulator,
    peer: Function,
    log: PathBuf,
    init_ms: f64,
}

/// The peer (`tests/peer/nightly_vss.py`) on the full run's fleet, in the venv's Python,
/// behind a counting proxy (playing EC2's buckets at `throttle` × AWS's rates, when given);
/// its init is the median of `inits` starts besides the one measured.
async fn peer_night(
    instances: u64,
    throttle: Option<f64>,
    inits: usize,
    log_name: &str,
) -> Result<PeerNight> {
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    let script = root.join("tests/peer/nightly_vss.py");
    let emulator = Emulator::start().await?;
    seed_night(&emulator, instances).await?;
    let proxy = FaultProxy::new(emulator.port, 0.0, 1);
    let endpoint = proxy.endpoint(Stop::Never).await?;
    let env = [
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", endpoint.port),
        ),
        ("COPY_REGIONS", COPY_REGION.to_string()),
        ("MANAGED_BY", MANAGED_BY.to_string()),
        // Sets a day apart: the newest RETAIN_COUNT are the ones younger than RETAIN_COUNT days.
        ("RETAIN_DAYS", RETAIN_COUNT.to_string()),
    ];
    let log = log_dir()?.join(log_name);
    let mut samples = Vec::new();
    for _ in 0..inits {
        let started = Function::start_program(&python, &[&script], &env, &log).await?;
        samples.push(started.init().ok_or("no init time")?.as_secs_f64() * 1000.0);
    }
    let peer = Function::start_program(&python, &[&script], &env, &log).await?;
    samples.push(peer.init().ok_or("no init time")?.as_secs_f64() * 1000.0);
    samples.sort_by(f64::total_cmp);
    if let Some(scale) = throttle {
        proxy.throttle(scale);
    }
    let started = Instant::now();
    let answer = peer.invoke(nightly_event(), Duration::from_secs(900)).await;
    let took = started.elapsed();
    match &answer {
        Ok(answer) => println!("    {answer} in {:.1} s", took.as_secs_f64()),
        Err(err) => println!("    failed after {:.1} s: {err}", took.as_secs_f64()),
    }
    Ok(PeerNight {
        answer,
        took,
        stats: proxy.stats(),
        emulator,
        peer,
        log,
        init_ms: samples[samples.len() / 2],
    })
}

/// What the peer's night must have left, as `check` takes it: every server snapshotted, every
/// snapshot copied, exactly the expired ones deleted.
async fn peer_checks(
    night: &PeerNight,
    answer: &Value,
    instances: u64,
) -> Result<Vec<(&'static str, u64, u64)>> {
    let fleet = night_fleet(instances);
    let s = fleet.snapshots();
    let of = |k: &str| answer[k].as_u64().unwrap_or(u64::MAX);
    Ok(vec![
        ("servers succeeded", of("succeeded"), instances),
        ("servers not final", of("not_final"), 0),
        ("snapshots copied", of("copied"), s),
        (
            "snapshots deleted",
            of("deleted"),
            2 * fleet.expired_per_region(),
        ),
        (
            "snapshots kept in the home region",
            managed_snapshots(&night.emulator, HOME).await? as u64,
            RETAIN_COUNT * s,
        ),
        (
            "snapshots kept in the copy region",
            managed_snapshots(&night.emulator, COPY_REGION).await? as u64,
            RETAIN_COUNT * s,
        ),
    ])
}

/// The peer's night on the full run's fleet, its end state checked: its side of the comparison.
async fn peer_run(instances: u64, inits: usize) -> Result<Side> {
    println!("==> the peer: the same night in one Python Lambda with boto3");
    let night = peer_night(instances, None, inits, "peer.log").await?;
    let answer = night.answer.as_ref().map_err(|e| e.to_string())?;
    check(&night.log, &peer_checks(&night, answer, instances).await?)?;
    Ok(Side {
        calls: night.stats.calls.clone(),
        calls_by_region: night.stats.regional.clone(),
        invocations: 1,
        invocation_ms: vec![billed_ms(night.took)],
        wall_seconds: night.took.as_secs_f64(),
        cpu_seconds: night.peer.cpu_seconds()?,
        peak_rss_mib: night.peer.peak_rss_mib()?,
        init_ms: night.init_ms,
    })
}

/// The peer's night under EC2's buckets: how long it took, and whether it did its job (an
/// operator's script is not expected to; what it did is reported, not refused).
async fn peer_throttled(instances: u64, scale: f64) -> Result<(f64, String)> {
    println!("==> the peer under EC2's request buckets at {scale} × AWS's rates");
    let night = peer_night(instances, Some(scale), 0, "peer-throttled.log").await?;
    let refused: u64 = night.stats.throttled.values().sum();
    let outcome = match &night.answer {
        Ok(answer) => {
            let wrong: Vec<String> = peer_checks(&night, answer, instances)
                .await?
                .into_iter()
                .filter(|(_, got, want)| got != want)
                .map(|(what, got, want)| format!("{what} {got}, expected {want}"))
                .collect();
            if wrong.is_empty() {
                "it did its job".to_string()
            } else {
                format!("it ended without doing its job: {}", wrong.join(", "))
            }
        }
        Err(err) => format!("it failed: {err}"),
    };
    Ok((
        night.took.as_secs_f64(),
        format!(
            "{outcome}; {} attempts throttled",
            bench::thousands(refused)
        ),
    ))
}

/// How soon a run's sets are recorded after its commands end, and what watching them costs.
struct Completion {
    /// Seconds from each server's command end (SSM's) to its set's record (the catalog's).
    latencies: Vec<f64>,
    /// Looks at SSM and the polling messages between them (GetCommandInvocation,
    /// ListCommandInvocations, SendMessage).
    polling: u64,
    looks: u64,
    /// From the dispatch's start to the last set recorded.
    recorded_after: f64,
}

/// Percentile `p` (0–1) of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One night of `instances` servers whose VSS commands take 2 to 12 s, with the deployment's
/// own backoff (30 s doubling to 900 s), with SSM's events on the queue (the template's rule)
/// or without them: when each server's set is recorded, against when its command ended.
async fn completion(binary: &Path, instances: u64, events: bool) -> Result<Completion> {
    let how = if events {
        "with SSM's events"
    } else {
        "polling only"
    };
    println!("==> completion, {how}: {instances} servers, commands of 2 to 12 s");
    let emulator = Emulator::start().await?;
    let queue = emulator.create_queue("bench-completion", 60).await?;
    let ids = seed_bulk(&emulator, instances as usize, 250, 1).await?;
    let timing: BTreeMap<String, Windows> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), Windows::timing(0.5, 1.5 + (i % 11) as f64)))
        .collect();
    emulator.simulate(&timing)?;
    if events {
        emulator.completion_events(&queue)?;
    }
    // The deployment's backoff, not the other phases' 1 s.
    let settings = [
        ("TRACK_POLL_INITIAL_SECONDS", "30".to_string()),
        ("TRACK_POLL_MAX_SECONDS", "900".to_string()),
        ("COMPLETION_EVENTS", events.to_string()),
    ];
    let log_name = format!(
        "completion-{}.log",
        if events { "events" } else { "polling" }
    );
    let (proxy, _endpoint, function, log) =
        counted(&emulator, binary, (&queue, false), &settings, &log_name).await?;
    let started = chrono::Utc::now();
    let answer = function.invoke(nightly_event(), FUNCTION_TIMEOUT).await?;
    let run_id = answer["run_id"].as_str().ok_or("no run id")?.to_string();
    drain_with(&emulator, &queue, 10, Duration::from_secs(1800), |event| {
        function.invoke(event, FUNCTION_TIMEOUT)
    })
    .await?;
    let ended: BTreeMap<String, chrono::DateTime<Utc>> = emulator
        .invocations()?
        .iter()
        .filter_map(|i| {
            let at = chrono::DateTime::parse_from_rfc3339(i["ended"].as_str()?).ok()?;
            Some((
                i["instance_id"].as_str()?.to_string(),
                at.with_timezone(&Utc),
            ))
        })
        .collect();
    let catalog = emulator.catalog();
    let mut latencies = Vec::new();
    let mut last = started;
    for id in &ids {
        let (sets, _) = catalog.sets_of(id).await?;
        let set = sets
            .iter()
            .find(|s| s.run_id == run_id && s.is_consistent())
            .ok_or_else(|| format!("{id}: no consistent set recorded (log: {})", log.display()))?;
        let end = ended
            .get(id)
            .ok_or_else(|| format!("{id}: no command ended"))?;
        latencies.push((set.verified_at - *end).num_milliseconds() as f64 / 1000.0);
        last = last.max(set.verified_at);
    }
    latencies.sort_by(f64::total_cmp);
    let stats = proxy.stats();
    let looks = stats.calls_of("ssm:GetCommandInvocation");
    let polling =
        looks + stats.calls_of("ssm:ListCommandInvocations") + stats.calls_of("sqs:SendMessage");
    println!(
        "    every set consistent ✓; median {:.1} s from a command's end to its set recorded; {:.2} polling calls per server",
        percentile(&latencies, 0.5),
        polling as f64 / instances as f64
    );
    Ok(Completion {
        latencies,
        polling,
        looks,
        recorded_after: (last - started).num_milliseconds() as f64 / 1000.0,
    })
}

struct Measured {
    seconds: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    detail: String,
}

impl Measured {
    /// What `function` used in all, after `seconds` of the measured invocation; printed.
    fn of(function: &Function, seconds: f64, detail: String) -> Result<Self> {
        let peak_rss_mib = function.peak_rss_mib()?;
        println!("    {detail}, {seconds:.1} s, peak RSS {peak_rss_mib:.1} MiB");
        Ok(Measured {
            seconds,
            peak_rss_mib,
            cpu_seconds: function.cpu_seconds()?,
            detail,
        })
    }
}

/// The dispatch of a large fleet and the first tracking batches after it; every call waits
/// `round_trip` at the proxy before it goes on to the emulator (AWS's own time to answer,
/// which the emulator on loopback does not have).
async fn large_dispatch(binary: &Path, instances: u64, round_trip: Duration) -> Result<Measured> {
    println!(
        "==> dispatch of {instances} servers × {VOLUMES} volumes, {} ms added to every call",
        round_trip.as_millis()
    );
    let emulator = Emulator::start().await?;
    let queue = emulator.create_queue("bench-dispatch", 60).await?;
    // 250 instances a call: a call of 500 took 15 s of the SDK's 30 at 20,000 instances.
    let ids = seed_bulk(&emulator, instances as usize, 250, (VOLUMES - 1) as usize).await?;
    // The servers' VSS commands stay in progress: the dispatch is what is measured, and 30,000
    // simulated snapshots would only slow the emulator down.
    let busy: BTreeMap<String, Windows> = ids
        .iter()
        .map(|id| {
            let busy = Windows {
                lag: Some(3600.0),
                ..Windows::default()
            };
            (id.clone(), busy)
        })
        .collect();
    emulator.simulate(&busy)?;
    let (proxy, _endpoint, function, _) = counted(
        &emulator,
        binary,
        (&queue, false),
        &[],
        "large-dispatch.log",
    )
    .await?;
    proxy.set_latency(round_trip);
    let started = Instant::now();
    // Measured with Lambda's longest timeout, so that its time is known even past the template's.
    let answer = function
        .invoke(nightly_event(), Duration::from_secs(900))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let waited = emulator_time(&proxy.stats(), 4);
    let dispatched = answer["dispatched"].as_array().map_or(0, Vec::len) as u64
        + answer["left_out"]["dispatched"].as_u64().unwrap_or(0);
    if dispatched != instances {
        return Err(format!("dispatched {dispatched} of {instances}: {answer}").into());
    }
    // Ten batches of tracking messages (each a look at a command still in progress): the
    // memory of message handling at this scale.
    let sqs = emulator.sqs();
    let arn = harness::queue_arn(&queue);
    for _ in 0..10 {
        let messages = harness::receive(&sqs, &queue, 10, 1).await?;
        let event = json!({ "Records": harness::sqs_records(&messages, &arn) });
        function.invoke(event, FUNCTION_TIMEOUT).await?;
    }
    let calls = proxy.stats().calls;
    let detail = [
        "ssm:DescribeInstanceInformation",
        "ssm:SendCommand",
        "sqs:SendMessageBatch",
    ]
    .iter()
    .map(|a| format!("{a} {}", calls.get(*a).copied().unwrap_or(0)))
    .collect::<Vec<_>>()
    .join(", ");
    let detail = format!("{detail}; {waited}");
    let peak_rss_mib = function.peak_rss_mib()?;
    println!(
        "    dispatched {dispatched} in {seconds:.1} s ({detail}), peak RSS {peak_rss_mib:.1} MiB"
    );
    Ok(Measured {
        seconds,
        peak_rss_mib,
        cpu_seconds: function.cpu_seconds()?,
        detail,
    })
}

/// How long the emulator had at least one call (its share of a wall time), and its answers'
/// time summed over the calls, in all and for the `top` slowest actions (calls in flight
/// together overlap: their sum can pass the wall time).
fn emulator_time(stats: &ProxyStats, top: usize) -> String {
    let busy = stats.upstream_busy.as_secs_f64();
    let upstream = &stats.upstream;
    let total: f64 = upstream.values().map(Duration::as_secs_f64).sum();
    let mut slowest: Vec<(&String, &Duration)> = upstream.iter().collect();
    slowest.sort_by(|a, b| b.1.cmp(a.1));
    let named = slowest
        .iter()
        .take(top)
        .map(|(action, d)| format!("{action} {:.1} s", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "the emulator had calls {busy:.1} s of it; its answers took {total:.1} s summed over \
         calls ({named})"
    )
}

/// A retention dry run over at least `snapshots` snapshots of 2,000 servers, then the fleet
/// report over them.
async fn large_plan(binary: &Path, snapshots: u64) -> Result<(Measured, Measured)> {
    let servers = 2_000u64;
    let sets = snapshots.div_ceil(servers * VOLUMES);
    println!(
        "==> retention plan over {} snapshots ({servers} servers × {sets} sets × {VOLUMES})",
        servers * sets * VOLUMES
    );
    let emulator = Emulator::start().await?;
    let queue = emulator.create_queue("bench-plan", 60).await?;
    let ids = seed_bulk(&emulator, servers as usize, 500, (VOLUMES - 1) as usize).await?;
    let history = History {
        region: HOME.into(),
        managed_by: MANAGED_BY.into(),
        instance_ids: ids.clone(),
        sets,
        hours_apart: 24.0,
        newest_hours: 24.0,
        copy_region: None,
        crash_consistent: vec![],
    };
    let made = emulator.seed_history(&history).await?;
    let (proxy, _endpoint, function, _) =
        counted(&emulator, binary, (&queue, false), &[], "large-plan.log").await?;
    let started = Instant::now();
    let answer = function
        .invoke(
            json!({"action": "retention", "dry_run": true}),
            Duration::from_secs(900),
        )
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    // Above 2,000 sets the answer carries each region's counts, not every set.
    let planned: u64 = answer["plan_summary"]
        .as_array()
        .map(|regions| regions.iter().filter_map(|r| r["sets"].as_u64()).sum())
        .unwrap_or(0);
    let expected_sets = servers * sets;
    if planned != expected_sets {
        return Err(format!("the plan covers {planned} sets, expected {expected_sets}").into());
    }
    let describes = proxy.stats().calls_of("ec2:DescribeSnapshots");
    let answer_bytes = answer.to_string().len();
    let detail = format!(
        "{made} snapshots, {planned} sets planned, {describes} DescribeSnapshots pages, answer {:.1} MB",
        answer_bytes as f64 / 1e6
    );
    let plan = Measured::of(&function, seconds, detail)?;
    drop(function);
    // The fleet report over the same catalog, in a process of its own (its peak is its own).
    println!("==> fleet report over the same {made} snapshots");
    let (proxy, _endpoint, function, log) =
        counted(&emulator, binary, (&queue, false), &[], "large-report.log").await?;
    let started = Instant::now();
    let answer = function
        .invoke(json!({"action": "report"}), Duration::from_secs(900))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    // Every server's newest set is a day old: all within the RPO, all counted.
    let totals = &answer["totals"];
    if totals["instances"] != json!(servers) || totals["within_rpo"] != json!(servers) {
        return Err(format!(
            "the report does not count {servers} servers within the RPO: {totals}"
        )
        .into());
    }
    let parts = std::fs::read_to_string(&log)?
        .lines()
        .filter(|l| l.contains("fleet report: part read"))
        .count();
    let describes = proxy.stats().calls_of("ec2:DescribeSnapshots");
    let detail = format!(
        "{servers} servers, {parts} parts, {} listed, {describes} DescribeSnapshots pages, answer {:.1} MB",
        answer["instances"].as_array().map_or(0, Vec::len),
        answer.to_string().len() as f64 / 1e6
    );
    let report = Measured::of(&function, seconds, detail)?;
    Ok((plan, report))
}

/// What `cargo bench --bench plan_million` measured (`<target>/plan-million.json`).
fn plan_million() -> Option<Value> {
    let text = std::fs::read_to_string(target_dir().join("plan-million.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Criterion's median estimates under `<target>/criterion`.
fn criterion_medians() -> Vec<(String, f64)> {
    let mut found = Vec::new();
    let Ok(groups) = std::fs::read_dir(target_dir().join("criterion")) else {
        return found;
    };
    for group in groups.flatten() {
        let Ok(benches) = std::fs::read_dir(group.path()) else {
            continue;
        };
        for b in benches.flatten() {
            let estimates = b.path().join("new/estimates.json");
            let Ok(text) = std::fs::read_to_string(&estimates) else {
                continue;
            };
            let median = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["median"]["point_estimate"].as_f64());
            if let Some(ns) = median {
                found.push((
                    format!(
                        "{}/{}",
                        group.file_name().to_string_lossy(),
                        b.file_name().to_string_lossy()
                    ),
                    ns,
                ));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn first_line(command: &str, args: &[&str]) -> String {
    Command::new(command)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let moto = std::fs::read_to_string(workspace_root().join("requirements-dev.txt"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("moto"))
        .unwrap_or("moto")
        .to_string();
    vec![
        ("CPU".into(), format!("{cpu}, {cores} cores available")),
        ("memory".into(), memory),
        (
            "kernel".into(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        ("rustc".into(), first_line("rustc", &["--version"])),
        ("emulator".into(), moto),
        (
            "commit".into(),
            first_line(
                "git",
                &[
                    "-C",
                    &workspace_root().to_string_lossy(),
                    "rev-parse",
                    "--short",
                    "HEAD",
                ],
            ),
        ),
    ]
}

/// What the numbers do and do not say.
fn notes() -> Vec<String> {
    let (initial, max) = (30, 900);
    let window = 600 + 900;
    vec![
        format!(
            "Polling is bounded by the backoff: with the defaults (TRACK_POLL_INITIAL_SECONDS \
             {initial}, doubling to TRACK_POLL_MAX_SECONDS {max}) a server is looked at after \
             30, 90, 210, 450 and 930 s, so a VSS command that ends within 30 s costs one look, \
             within 90 s two, and one that never ends at most {} before it is reported timed \
             out (delivery 600 s + execution 900 s). A look is one GetCommandInvocation, plus \
             one SendMessage when it is not final; the run's own look is one \
             ListCommandInvocations per command of 50. Once every command is final, the run's look \
             reads the run's snapshots (1,000 a page) and, while any is pending, looks again \
             on the same backoff, up to SNAPSHOT_COMPLETION_TIMEOUT_SECONDS. In \
             this bench the simulated servers finish in 0.15 s, so each needs one look: that \
             is the floor, not the typical case.",
            bench::looks_at_most(initial, max, window)
        ),
        "Wall times are against the emulator (moto, single-threaded in effect) with one \
         invocation at a time, as if the function's concurrency were 1; the full run's time \
         also includes the dispatch's watch message, delayed until the claim's lease ends \
         (the function timeout plus 10 s). They are not what AWS takes; the CPU time is the \
         function's own (from /proc/<pid>/schedstat)."
            .into(),
        "Peak RSS is VmHWM of the process, for everything it did since it started: a fresh \
         process for each measurement (the peer's is the Python interpreter's)."
            .into(),
        "Under EC2's request buckets the proxy refuses a call whose bucket (per region) is \
         empty with RequestLimitExceeded, as EC2 does; the function's SDK retries it (adaptive \
         mode) and a copy pass that is throttled leaves the rest to the next pass. The rate \
         floor is the slowest bucket's (calls it let through − its burst) ÷ its refill: the \
         least time any design takes if every bucket ran at its rate at once. SSM's, SQS's \
         and DynamoDB's rates are not published as buckets and are not played."
            .into(),
    ]
}

#[tokio::main]
async fn main() -> Result<()> {
    let began = Instant::now();
    let instances = setting("BENCH_INSTANCES", 1_000)?;
    let dispatch_instances = setting("BENCH_DISPATCH_INSTANCES", 20_000)?;
    let plan_snapshots = setting("BENCH_PLAN_SNAPSHOTS", 100_000)?;
    let completion_instances = setting("BENCH_COMPLETION_INSTANCES", 200)?;
    let throttled_instances = setting("BENCH_THROTTLED_INSTANCES", 200)?;
    // What the dispatch's second measurement adds to every call, in milliseconds.
    let round_trip_ms = setting("BENCH_ROUND_TRIP_MS", 25)?;
    // 1: AWS's documented rates; more only to try a larger fleet in less time.
    let rate_scale = setting("BENCH_RATE_SCALE", 1)? as f64;
    // A comma list of phases to run (init, run, peer, throttled, completion, dispatch, plan); all by
    // default; the peer is set beside the run, so runs only with it. BENCHMARKS.md
    // is written only when all ran.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |phase: &str| only.is_empty() || only.split(',').any(|p| p.trim() == phase);
    let binary = release_binary()?;
    let size_mib = std::fs::metadata(&binary)?.len() as f64 / 1024.0 / 1024.0;
    let mut budgets = Vec::new();
    let mut report = Report {
        machine: machine(),
        ..Report::default()
    };

    let mut init_median = None;
    if wanted("init") {
        println!("==> init time of {}", binary.display());
        let inits = measure_init(&binary, 10).await?;
        let (min, median, max) = (inits[0], inits[inits.len() / 2], inits[inits.len() - 1]);
        init_median = Some(median);
        println!("    median {median:.1} ms (min {min:.1}, max {max:.1})");
        budgets.push(Budget {
            what: "init: process start to ready (median of 10)".into(),
            measured: median,
            unit: "ms",
            target: Some(50.0),
            note: format!("min {min:.1} ms, max {max:.1} ms"),
        });
    }
    if wanted("run") {
        let run = full_run(&binary, instances).await?;
        let comparison = bench::compare(&run.fleet, &run.calls);
        println!(
            "    {} work calls, floor {} ({:.3}×); {:.2} polling calls per server; {:.1} s in all",
            comparison.work,
            comparison.work_floor,
            comparison.ratio(),
            comparison.polling_per_instance(instances),
            run.total.as_secs_f64()
        );
        budgets.push(Budget {
            what: format!(
                "peak RSS, full run of {instances} servers (one process for every invocation)"
            ),
            measured: run.peak_rss_mib,
            unit: "MiB",
            target: Some(64.0),
            note: format!("{} invocations", run.invocations),
        });
        budgets.push(Budget {
            what: "handler CPU per 1,000 servers (dispatch, tracking, copies, retention)".into(),
            measured: run.cpu_seconds * 1000.0 / instances.max(1) as f64,
            unit: "s",
            target: None,
            note: format!(
                "{:.1} s wall in all against the emulator, of which dispatch {:.1} s",
                run.total.as_secs_f64(),
                run.dispatch.as_secs_f64()
            ),
        });
        let init_ms = match init_median {
            Some(ms) => ms,
            None => {
                let inits = measure_init(&binary, 5).await?;
                inits[inits.len() / 2]
            }
        };
        let function = Side {
            calls: run.calls.clone(),
            calls_by_region: run.regional.clone(),
            invocations: run.invocations,
            invocation_ms: run.invocation_ms,
            wall_seconds: run.total.as_secs_f64(),
            cpu_seconds: run.cpu_seconds,
            peak_rss_mib: run.peak_rss_mib,
            init_ms,
        };
        budgets.push(Budget {
            what: format!("billed GB-s per 1,000 servers, full run (at {MEMORY_MB} MB)"),
            measured: function.gb_seconds(MEMORY_MB) * 1000.0 / instances.max(1) as f64,
            unit: "GB-s",
            target: None,
            note: format!(
                "{} invocations, {:.1} s in them{}",
                function.invocations,
                function.billed_seconds(),
                if wanted("peer") {
                    "; the peer's beside it below"
                } else {
                    ""
                }
            ),
        });
        if wanted("peer") {
            let peer = peer_run(instances, 5).await?;
            report.peer = Some(PeerComparison {
                instances,
                memory_mb: MEMORY_MB,
                function,
                peer,
            });
        }
        report.fleet = Some(run.fleet);
        report.calls = run.calls;
        report.calls_by_region = run.regional;
        report.describes = run.describes;
    }
    if wanted("throttled") {
        let t = throttled_run(&binary, throttled_instances, rate_scale).await?;
        let refused = t
            .throttled
            .iter()
            .map(|(a, n)| format!("{a} {}", bench::thousands(*n)))
            .collect::<Vec<_>>()
            .join(", ");
        budgets.push(Budget {
            what: format!(
                "wall of a {throttled_instances}-server run under EC2's request buckets (at {rate_scale} × AWS's rates), × its rate floor"
            ),
            measured: t.wall / t.floor.max(f64::MIN_POSITIVE),
            unit: "",
            target: Some(1.25),
            note: format!(
                "{:.0} s to the last EC2 call; floor {:.0} s, the slowest bucket ({}); {:.0} s if every bucket went one after another; {} invocations; throttled attempts: {}; each bucket busy (first to last call, after the dispatch began): {}",
                t.wall,
                t.floor,
                t.slowest,
                t.serial_floor,
                t.invocations,
                if refused.is_empty() { "none".to_string() } else { refused },
                if t.busy.is_empty() { "none".to_string() } else { t.busy.clone() }
            ),
        });
        if wanted("peer") {
            let (seconds, outcome) = peer_throttled(throttled_instances, rate_scale).await?;
            budgets.push(Budget {
                what: format!(
                    "the peer's same night under the same buckets ({throttled_instances} servers), × the function's rate floor"
                ),
                measured: seconds / t.floor.max(f64::MIN_POSITIVE),
                unit: "",
                target: None,
                note: format!("{seconds:.0} s in its one invocation; {outcome}"),
            });
        }
    }
    if wanted("completion") {
        let per = |c: &Completion| c.polling as f64 / completion_instances.max(1) as f64;
        let events = completion(&binary, completion_instances, true).await?;
        let polling = completion(&binary, completion_instances, false).await?;
        let line = |c: &Completion| {
            format!(
                "median {:.1} s, p90 {:.1} s, max {:.1} s; all recorded {:.1} s after the dispatch began",
                percentile(&c.latencies, 0.5),
                percentile(&c.latencies, 0.9),
                percentile(&c.latencies, 1.0),
                c.recorded_after
            )
        };
        budgets.push(Budget {
            what: format!(
                "time from a command's end to its set recorded, with SSM's events ({completion_instances} servers, commands of 2–12 s, median)"
            ),
            measured: percentile(&events.latencies, 0.5),
            unit: "s",
            target: Some(10.0),
            note: line(&events),
        });
        budgets.push(Budget {
            what: "the same, polling only (TRACK_POLL_INITIAL_SECONDS 30, median)".into(),
            measured: percentile(&polling.latencies, 0.5),
            unit: "s",
            target: None,
            note: line(&polling),
        });
        budgets.push(Budget {
            what: "polling calls per server, with SSM's events".into(),
            measured: per(&events),
            unit: "",
            target: Some(1.1),
            note: format!(
                "{} looks at SSM for {completion_instances} servers (GetCommandInvocation), {} polling calls in all",
                events.looks, events.polling
            ),
        });
        budgets.push(Budget {
            what: "polling calls per server, polling only".into(),
            measured: per(&polling),
            unit: "",
            target: None,
            note: format!(
                "{} looks at SSM, {} polling calls in all",
                polling.looks, polling.polling
            ),
        });
    }
    if wanted("dispatch") {
        let dispatch = large_dispatch(&binary, dispatch_instances, Duration::ZERO).await?;
        budgets.push(Budget {
            what: format!(
                "peak RSS, dispatch of {dispatch_instances} servers + 10 tracking batches"
            ),
            measured: dispatch.peak_rss_mib,
            unit: "MiB",
            target: Some(64.0),
            note: format!(
                "{:.1} s ({} the template's {} s timeout), {:.2} s CPU; {}",
                dispatch.seconds,
                if dispatch.seconds <= FUNCTION_TIMEOUT.as_secs_f64() {
                    "within"
                } else {
                    "past"
                },
                FUNCTION_TIMEOUT.as_secs(),
                dispatch.cpu_seconds,
                dispatch.detail
            ),
        });
        let ms = round_trip_ms;
        let slow = large_dispatch(&binary, dispatch_instances, Duration::from_millis(ms)).await?;
        budgets.push(Budget {
            what: format!(
                "dispatch of {dispatch_instances} servers, {ms} ms added to every call (AWS's \
                 round trip, which the emulator on loopback has not)"
            ),
            measured: slow.seconds,
            unit: "s",
            target: Some(FUNCTION_TIMEOUT.as_secs_f64()),
            note: format!(
                "{:.1} s without the added time; peak RSS {:.1} MiB, {:.2} s CPU; {}",
                dispatch.seconds, slow.peak_rss_mib, slow.cpu_seconds, slow.detail
            ),
        });
    }
    if wanted("plan") {
        let (plan, fleet_report) = large_plan(&binary, plan_snapshots).await?;
        budgets.push(Budget {
            what: format!("peak RSS, retention plan (dry run) over {plan_snapshots}+ snapshots"),
            measured: plan.peak_rss_mib,
            unit: "MiB",
            target: Some(64.0),
            note: format!(
                "{:.1} s, {:.2} s CPU; {}",
                plan.seconds, plan.cpu_seconds, plan.detail
            ),
        });
        budgets.push(Budget {
            what: format!("peak RSS, fleet report over the same {plan_snapshots}+ snapshots"),
            measured: fleet_report.peak_rss_mib,
            unit: "MiB",
            target: Some(64.0),
            note: format!(
                "{:.1} s, {:.2} s CPU; {}",
                fleet_report.seconds, fleet_report.cpu_seconds, fleet_report.detail
            ),
        });
    }
    budgets.push(Budget {
        what: "release binary size, x86_64 (stripped)".into(),
        measured: size_mib,
        unit: "MiB",
        target: None,
        note: "arm64 not measured: this machine has no aarch64 standard library to build with"
            .into(),
    });
    report.criterion = criterion_medians();
    if let Some((_, ns)) = report
        .criterion
        .iter()
        .find(|(name, _)| name.starts_with("retention/"))
    {
        budgets.push(Budget {
            what: "retention planner over 102,000 snapshots (criterion median)".into(),
            measured: ns / 1e6,
            unit: "ms",
            target: Some(1000.0),
            note: "retention::plan alone, in-process".into(),
        });
    }
    if let Some(million) = plan_million() {
        let of = |key: &str| million[key].as_f64().unwrap_or(f64::NAN);
        let detail = format!(
            "{} catalog entries in {} parts, {} sets planned ({} to delete); the whole pass's \
             own work (catalog read as ids, each part indexed, listed, admitted, planned, \
             absorbed) {:.0} ms; catalog and EC2 played by generators, not I/O",
            million["entries"],
            million["parts"],
            million["sets"],
            million["sets_to_delete"],
            of("total_ms")
        );
        budgets.push(Budget {
            what: "retention planning over 1,000,000 catalog entries with every tier, in parts"
                .into(),
            measured: of("planning_ms"),
            unit: "ms",
            target: Some(1000.0),
            note: detail.clone(),
        });
        budgets.push(Budget {
            what: "peak RSS, retention's pass over 1,000,000 catalog entries without its I/O"
                .into(),
            measured: of("peak_rss_mib"),
            unit: "MiB",
            target: Some(64.0),
            note: "`cargo bench --bench plan_million`: the same process as the line above; the \
                   I/O a pass adds (a page of DescribeSnapshots or of the catalog at a time) is \
                   in the retention plan's line over 100,000+ snapshots"
                .into(),
        });
    }
    report.budgets = budgets;
    report.notes = notes();
    report.took = began.elapsed();
    // When the file is written: the phases began `took` before.
    report.date = Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let markdown = bench::render(&report);
    if only.is_empty() {
        let path = workspace_root().join("BENCHMARKS.md");
        std::fs::write(&path, markdown)?;
        println!("==> wrote {}", path.display());
    } else {
        println!("{markdown}");
    }
    Ok(())
}
