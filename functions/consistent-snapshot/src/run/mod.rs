//! A run: discover and preflight the fleet, claim the run, send the VSS document, track every
//! instance to its outcome, and write the run's one summary.

pub mod plan;
pub mod step;
