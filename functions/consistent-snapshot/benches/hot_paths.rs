//! The two pure hot paths: the retention plan over a large history, and an SQS batch of
//! tracking messages read and decided. `make bench` records their medians in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, Duration, TimeZone, Utc};
use consistent_snapshot::plans::{self, InstanceStanding, Policy, Retain};
use consistent_snapshot::{
    AttachedVolume, Envelope, FinalInvocation, InstanceJob, Job, Look, SnapshotInfo, TagInterner,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;

const MANAGED_BY: &str = "bench";
const INSTANCES: usize = 2_000;
const SETS: usize = 17;
const VOLUMES: usize = 3;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0)
        .single()
        .unwrap_or_default()
}

/// 2,000 instances × 17 nightly sets × 3 volumes: 102,000 snapshots, as DescribeSnapshots
/// would list them (not grouped, not sorted).
fn history() -> Vec<SnapshotInfo> {
    let mut snapshots = Vec::with_capacity(INSTANCES * SETS * VOLUMES);
    let mut interner = TagInterner::default();
    for set in 0..SETS {
        let taken = now() - Duration::hours(24 * set as i64 + 1);
        let run_id = format!("{}-0b0b0b0b", taken.format("%Y%m%dT%H%M%SZ"));
        for instance in 0..INSTANCES {
            let instance_id = format!("i-{instance:017x}");
            for volume in 0..VOLUMES {
                let device = format!("xvd{}", (b'f' + volume as u8) as char);
                // Read as the function reads them: only the tags retention uses, shared.
                let tags = interner.tags([
                    ("ConsistentSnapshot:RunId", run_id.as_str()),
                    ("ConsistentSnapshot:ManagedBy", MANAGED_BY),
                    ("ConsistentSnapshot:InstanceId", instance_id.as_str()),
                    ("Device", device.as_str()),
                    ("AppConsistent", "True"),
                ]);
                snapshots.push(SnapshotInfo {
                    snapshot_id: format!("snap-{:017x}", snapshots.len()),
                    state: "completed".into(),
                    start_time: taken,
                    tags,
                    used_by_images: Box::default(),
                    copies_in_progress: 0,
                    archived: false,
                    recorded_tiers: 0,
                });
            }
        }
    }
    snapshots
}

fn retention_plan(c: &mut Criterion) {
    let snapshots = history();
    let instances: BTreeMap<String, InstanceStanding> = (0..INSTANCES)
        .map(|i| {
            (
                format!("i-{i:017x}"),
                InstanceStanding::Live {
                    retain: Retain::daily(7),
                    lowering: None,
                },
            )
        })
        .collect();
    let policy = Policy {
        managed_by: MANAGED_BY.into(),
        retain: Retain::daily(7),
        keep_orphans: true,
        zone: chrono_tz::Tz::UTC,
        archive_after_days: None,
        lock: false,
    };
    let mut group = c.benchmark_group("retention");
    group.sample_size(10);
    group.throughput(Throughput::Elements(snapshots.len() as u64));
    group.bench_function("plan_102000_snapshots", |b| {
        b.iter(|| {
            let plan = plans::retention("us-east-1", &snapshots, &instances, &policy, now());
            black_box(plan.snapshots_to_delete())
        })
    });
    group.finish();
}

fn instance_job(n: usize) -> InstanceJob {
    InstanceJob {
        run_id: "20261123T010000Z-1a2b3c4d".into(),
        instance_id: format!("i-{n:017x}"),
        name: format!("sql-prod-{n:02}"),
        command_id: "6f1c4b2e-0d6b-4b8e-9a55-3e5f1a2b3c4d".into(),
        volumes: (0..VOLUMES)
            .map(|v| AttachedVolume {
                volume_id: format!("vol-{n:08x}{v:09x}"),
                device: format!("xvd{}", (b'f' + v as u8) as char),
            })
            .collect(),
        stage_deadline: now() + Duration::hours(1),
        attempt: 2,
    }
}

/// A full batch of 10 tracking messages as the event source hands it over.
fn sqs_batch() -> String {
    let records: Vec<_> = (0..10)
        .map(|n| {
            json!({
                "messageId": format!("0c6b6a3e-0000-4000-8000-{n:012}"),
                "receiptHandle": "AQEB".repeat(40),
                "body": Envelope::new(Job::Instance(instance_job(n))).to_body(),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1763859600000",
                    "SenderId": "AROAEXAMPLE:consistent-snapshot",
                    "ApproximateFirstReceiveTimestamp": "1763859600000"
                },
                "messageAttributes": {},
                "md5OfBody": "0123456789abcdef0123456789abcdef",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:tracking",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records }).to_string()
}

/// Reads the batch, decides each message after a look, and writes what would be re-queued or
/// recorded: the function's own work per batch, without the AWS calls.
fn handle(batch: &str, look: &Look) -> usize {
    let Ok(event) = serde_json::from_str::<SqsEvent>(batch) else {
        return 0;
    };
    let mut decided = 0;
    for record in &event.records {
        let Some(body) = record.body.as_deref() else {
            continue;
        };
        let Ok(Envelope {
            job: Job::Instance(job),
            ..
        }) = Envelope::from_body(body)
        else {
            continue;
        };
        match plans::next_instance_step(&job, look, now()) {
            plans::Next::Wait { job, .. } => {
                decided += Envelope::new(Job::Instance(job)).to_body().len()
            }
            plans::Next::Report(report) => {
                decided += serde_json::to_string(&report).map_or(0, |r| r.len())
            }
            plans::Next::TimedOut(outcome) => decided += outcome.volumes,
        }
    }
    decided
}

fn message_handling(c: &mut Criterion) {
    let batch = sqs_batch();
    // A document's output as long as SSM keeps it: the writers' states, then what it created.
    let mut output =
        "Writer name: 'SqlServerWriter' State: [1] Stable Last error: No error\n".repeat(300);
    output.truncate(23_800);
    for v in 0..VOLUMES {
        output.push_str(&format!(
            "Created snap-{v:017x} from vol-{v:017x} device: xvd{}\n",
            (b'f' + v as u8) as char
        ));
    }
    let finished = Look::Final(FinalInvocation {
        status: "Success".into(),
        status_details: "Success".into(),
        output,
    });
    let waiting = Look::NotYet {
        status: "InProgress".into(),
    };
    let mut group = c.benchmark_group("sqs_batch_of_10");
    group.throughput(Throughput::Elements(10));
    group.bench_function("final_look", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| black_box(handle(&batch, &finished)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("not_final_requeue", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| black_box(handle(&batch, &waiting)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, retention_plan, message_handling);
criterion_main!(benches);
