//! The fleet report against the RPO: `plan` builds it from plain facts, `step` reads them.

pub mod plan;
pub mod step;
