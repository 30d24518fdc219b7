//! Application-consistent (VSS) EBS snapshots of a tagged Windows fleet, as one AWS Lambda.
//!
//! Decisions are pure functions over plain data (`fleet::preflight`, `dispatch::plan_commands`,
//! `outcome::classify`, `track::next_instance_step`); AWS calls stay at the edges.

pub mod config;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod fleet;
pub mod handler;
pub mod job;
pub mod outcome;
pub mod report;
pub mod track;

pub use config::Config;
pub use error::Error;
pub use handler::App;
