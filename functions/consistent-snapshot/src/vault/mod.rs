//! Copies of each run's backups in a vault account the fleet's account cannot delete in:
//! `plan` decides, `step` carries it out.

pub mod plan;
pub mod step;
