//! Restores and restore tests: `plan` decides each step, `step` carries it out.

pub mod plan;
pub mod step;
