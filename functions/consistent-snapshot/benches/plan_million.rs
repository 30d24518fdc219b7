//! Retention's planning over 1,000,000 catalog entries, the way a pass runs it: the catalog read
//! as ids (`Recorded`), then the fleet a part at a time (10,000 recorded snapshots, the default
//! `RETENTION_PART_SNAPSHOTS`): each part's records indexed, its snapshots as EC2 would list them
//! admitted against that index, planned with every tier (daily, weekly, monthly, yearly and the
//! archive) in a time zone with a DST change, and taken into the pass's outcome.
//!
//! The catalog's scan and query answers and EC2's listings are made by generators as they are
//! needed, and dropped as a pass drops them: what is measured is the function's own work and
//! memory over them, not the I/O. `make bench` runs it (release) and BENCHMARKS.md reports its
//! times and its peak RSS (`VmHWM`), from `<target>/plan-million.json`.

use std::collections::BTreeMap;
use std::time::{Duration as Elapsed, Instant};

use chrono::{DateTime, Duration, TimeZone, Utc};
use consistent_snapshot::catalog::{RecordedSnapshot, SetRecord, Verdict};
use consistent_snapshot::plans::{
    self, admit, CatalogIndex, InstanceStanding, Policy, Recorded, Retain, RetentionOutcome,
    ANSWER_SETS,
};
use consistent_snapshot::{AttachedVolume, SnapshotFacts, SnapshotInfo, TagInterner};
use serde_json::json;

const MANAGED_BY: &str = "bench";
const REGION: &str = "eu-central-1";
const INSTANCES: usize = 2_000;
/// Nightly sets a server has: 2,000 × 167 × 3 = 1,002,000 recorded snapshots.
const SETS: usize = 167;
const VOLUMES: usize = 3;
const PART_SNAPSHOTS: usize = 10_000;
/// Servers a part holds at most (one EC2 filter's values).
const PART_INSTANCES: usize = 200;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0)
        .single()
        .unwrap_or_default()
}

fn instance_id(i: usize) -> String {
    format!("i-{i:017x}")
}

fn snapshot_id(i: usize, k: usize, v: usize) -> String {
    format!("snap-{:017x}", (i * SETS + k) * VOLUMES + v)
}

/// Server `i`'s set of night `k` (0 = the newest) as the catalog records it: every tenth
/// night VSS failed and the set is crash-consistent.
fn record(i: usize, k: usize) -> SetRecord {
    let taken = now() - Duration::hours(24 * k as i64 + 1);
    let volumes: Vec<AttachedVolume> = (0..VOLUMES)
        .map(|v| AttachedVolume {
            volume_id: format!("vol-{i:08x}{v:09x}"),
            device: format!("xvd{}", (b'f' + v as u8) as char),
        })
        .collect();
    SetRecord {
        run_id: format!("{}-0b0b0b0b", taken.format("%Y%m%dT%H%M%SZ")),
        instance_id: instance_id(i),
        name: format!("sql-{i:04}"),
        region: REGION.into(),
        started_at: taken,
        snapshots: volumes
            .iter()
            .enumerate()
            .map(|(v, vol)| RecordedSnapshot {
                snapshot_id: snapshot_id(i, k, v),
                volume_id: vol.volume_id.clone(),
                device: vol.device.clone(),
                start_time: taken,
            })
            .collect(),
        expected: volumes,
        verdict: if k % 10 == 9 {
            Verdict::CrashConsistent
        } else {
            Verdict::Consistent
        },
        reason: None,
        cause: None,
        fallback: false,
        verified_at: taken,
        verified_by: "bench".into(),
    }
}

/// One of the set's snapshots as DescribeSnapshots lists it, with its tags.
fn listed(set: &SetRecord, v: usize) -> SnapshotFacts {
    let s = &set.snapshots[v];
    let tags: BTreeMap<String, String> = [
        ("ConsistentSnapshot:ManagedBy", MANAGED_BY),
        ("ConsistentSnapshot:InstanceId", set.instance_id.as_str()),
        ("ConsistentSnapshot:RunId", set.run_id.as_str()),
        ("Device", s.device.as_str()),
        ("AppConsistent", "True"),
        ("Name", set.name.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    SnapshotFacts {
        snapshot_id: s.snapshot_id.clone(),
        volume_id: s.volume_id.clone(),
        state: "completed".into(),
        start_time: Some(s.start_time),
        size_gib: Some(100),
        tags,
        state_message: None,
        archived: false,
        encrypted_with: None,
    }
}

/// The process's peak resident set (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a filter) is not for this bench.
    if std::env::args().skip(1).any(|a| a != "--bench") {
        return;
    }
    let retain = Retain {
        daily: 7,
        weekly: 4,
        monthly: 12,
        yearly: 1,
        days: None,
    };
    let policy = Policy {
        managed_by: MANAGED_BY.into(),
        retain,
        keep_orphans: true,
        zone: chrono_tz::Europe::Berlin,
        archive_after_days: Some(30),
        lock: false,
    };
    let started = Instant::now();
    // The catalog's scan, one record at a time.
    let mut recorded = Recorded::default();
    for i in 0..INSTANCES {
        for k in 0..SETS {
            recorded.add_set(&record(i, k));
        }
    }
    recorded.finish();
    let recorded_at = started.elapsed();
    let parts = recorded.parts((PART_SNAPSHOTS, PART_INSTANCES), None, None);
    let entries: usize = recorded.instances().values().sum();
    drop(recorded);
    let mut outcome = RetentionOutcome::new(true);
    let mut planning = Elapsed::ZERO;
    let mut admitted = 0usize;
    for part in &parts {
        // The part's records, as its queries answer them.
        let records: Vec<SetRecord> = part
            .iter()
            .filter_map(|id| usize::from_str_radix(id.trim_start_matches("i-"), 16).ok())
            .flat_map(|i| (0..SETS).map(move |k| record(i, k)))
            .collect();
        let index = CatalogIndex::new(&records, []);
        // Its snapshots, as EC2 lists them, admitted as `part_snapshots` admits them.
        let mut interner = TagInterner::default();
        let snapshots: Vec<SnapshotInfo> = records
            .iter()
            .flat_map(|set| (0..VOLUMES).map(move |v| listed(set, v)))
            .filter_map(|facts| admit(facts, REGION, &index, MANAGED_BY).ok())
            .filter_map(|facts| SnapshotInfo::from_facts(facts, &mut interner))
            .collect();
        drop(records);
        drop(index);
        admitted += snapshots.len();
        let instances: BTreeMap<String, InstanceStanding> = part
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    InstanceStanding::Live {
                        retain,
                        lowering: None,
                    },
                )
            })
            .collect();
        let began = Instant::now();
        let plan = plans::retention(REGION, &snapshots, &instances, &policy, now());
        planning += began.elapsed();
        drop(snapshots);
        outcome.absorb(vec![plan], ANSWER_SETS);
    }
    let total = started.elapsed();
    let answer = outcome.to_bounded_json(ANSWER_SETS);
    let summary = &answer["plan_summary"][0];
    let result = json!({
        "entries": entries,
        "admitted": admitted,
        "parts": parts.len(),
        "sets": summary["sets"],
        "sets_to_delete": summary["sets_to_delete"],
        "planning_ms": planning.as_secs_f64() * 1e3,
        "recorded_ms": recorded_at.as_secs_f64() * 1e3,
        "total_ms": total.as_secs_f64() * 1e3,
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("plan_million: {result}");
    if admitted != entries {
        eprintln!("plan_million: {admitted} of {entries} entries admitted");
        std::process::exit(1);
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let target = if std::path::Path::new(&target).is_relative() {
        // Benches run in the package's folder; the workspace's target is two levels up.
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(target)
    } else {
        target.into()
    };
    let path = target.join("plan-million.json");
    if let Err(e) = std::fs::write(&path, result.to_string()) {
        eprintln!("plan_million: {} not written: {e}", path.display());
        std::process::exit(1);
    }
}
