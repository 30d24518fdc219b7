//! Test harness: the local AWS emulator, a seeded Windows fleet, and a local SQS event source.
//!
//! The emulator (tests/emulator/: moto plus the simulated Windows side) runs as a child process
//! on 127.0.0.1 at a free port. The function under test is the real
//! `consistent_snapshot::handle`, fed real event payloads; it only talks AWS APIs over HTTP.
//! `World` puts the pieces together for a test: one emulator, one fleet, one queue, and one
//! method per thing an operator does.

pub mod bench;
pub mod capture;
pub mod chaos;
pub mod emulator;
pub mod faults;
pub mod fleet;
pub mod probes;
pub mod runtime;
pub mod sim;
pub mod source;
pub mod throttle;
pub mod world;

pub use capture::{Logs, Metrics};
pub use emulator::{workspace_root, Emulator, CATALOG_TABLE, PROBE_DOCUMENT, REGION};
pub use fleet::{
    demo_fleet, image_ids, seed, seed_bulk, ServerSpec, DATA_DEVICES, TAG_KEY, TAG_VALUE,
};
pub use probes::{
    attached_volumes, commands_per_instance, own_snapshots, plant_snapshot, readiness_checks,
    report_entry, report_without_clock, run_items, run_snapshots, sets_of, snapshot_tag,
    snapshots_where,
};
pub use sim::{Agent, CopyStats, Ebs, History, VssOutcome, Windows};
pub use source::{
    batch_failures, deadline_in, deliver_until, drain, drain_with, invoke, invoke_within,
    nightly_run, peek_bodies, queue_arn, queue_depth, queue_is_empty, receive, scheduled_event,
    sqs_records, Drained, FUNCTION_TIMEOUT,
};
pub use world::World;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
