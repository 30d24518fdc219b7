//! Copies of each run's sets to the copy regions: `plan` decides, `step` carries it out.

pub mod plan;
pub mod step;
