//! Application-consistent (VSS) EBS snapshots of a tagged Windows fleet, as one AWS Lambda.
//!
//! The folders are the architecture; dependencies point one way:
//!
//! ```text
//! model  ←  config, jobs  ←  aws  ←  <concern>/plan  ←  <concern>/step  ←  entry  ←  main
//! ```
//!
//! * `model/`: the shared vocabulary (tags, ids, states, plain facts); imports nothing.
//! * `aws/`: the only place that names an SDK type; SDK types in, model facts out.
//! * `run/`, `copy/`, `vault/`, `retention/`, `restore/`, `report/`: each concern's pure decisions
//!   (`plan`, taking `now` and plain facts, returning decisions with reasons) and its use cases
//!   (`step`, free functions over `&App` that read, decide, act).
//! * `entry/`: event parsing, routing and the SQS batch loop.
//! * `jobs.rs`: the state machine of the queued jobs, on one screen.
//!
//! The exports below are what the binary, the test harness, the benches and the fuzz tests use.

mod app;
mod aws;
mod config;
mod copy;
mod entry;
mod error;
mod jobs;
mod model;
mod report;
mod restore;
mod retention;
mod run;
mod vault;

pub use app::App;
pub use aws::metrics::MetricsOut;
pub use aws::{load_sdk_config, SdkConfig};
pub use config::Config;
pub use entry::event::Event;
pub use entry::{handle, handle_until, plausible_deadline};
pub use error::Error;
pub use jobs::{backoff_seconds, Envelope, InstanceJob, Job, RetentionJob, RunJob};
pub use model::cause::Cause;
pub use model::command::{comment, FinalInvocation, Look};
pub use model::fleet::AttachedVolume;
pub use model::snapshot::{SnapshotFacts, SnapshotInfo, TagInterner};
pub use run::plan::outcome::OutcomeKind;
pub use run::plan::summary::RunSummary;

/// The catalog's store and records: for the import, and for the harness's fixtures of earlier
/// nights' sets.
pub mod catalog {
    pub use crate::aws::catalog::Catalog;
    pub use crate::model::catalog::{CopyRecord, RecordedSnapshot, SetRecord, Verdict};
}

/// The pure decisions the benches measure.
pub mod plans {
    pub use crate::model::catalog::{admit, CatalogIndex, Recorded};
    pub use crate::model::requests::RestoreMode;
    pub use crate::model::tiers::Retain;
    pub use crate::restore::plan::restore_id;
    pub use crate::retention::plan::{
        plan as retention, InstanceStanding, Policy, RetentionOutcome, ANSWER_SETS,
    };
    pub use crate::run::plan::track::{next_instance_step, Next};
}
