//! Copies of each run's backups in a vault account the fleet's account cannot delete in:
//! `plan` decides, `step` carries it out (`keeping`: the vault deployment's own steps).

pub mod keeping;
pub mod plan;
pub mod step;
