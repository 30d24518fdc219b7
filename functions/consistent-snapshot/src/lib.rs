//! Application-consistent (VSS) EBS snapshots of a tagged Windows fleet, as one AWS Lambda.
//!
//! Decisions are pure functions over plain data (`fleet::preflight`, `dispatch::plan_commands`,
//! `history::plan_dispatch`, `run_claim::decide`, `outcome::classify`,
//! `track::next_instance_step`); AWS calls stay at the edges.

pub mod config;
pub mod copy;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod fleet;
pub mod fleet_report;
mod fleet_report_aws;
pub mod handler;
pub mod history;
pub mod job;
pub mod metrics;
pub mod outcome;
pub mod report;
pub mod restore;
mod restore_aws;
pub mod retention;
pub mod retention_run;
pub mod run_claim;
pub mod run_start;
mod run_tracking;
pub mod track;
mod verify;

pub use config::Config;
pub use error::Error;
pub use handler::App;
