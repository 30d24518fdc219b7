//! The fleet report against the RPO: `plan` builds it from plain facts, `step` reads them;
//! `cost` estimates what the kept sets cost (its arithmetic is `model::cost`).

pub mod cost;
pub mod plan;
pub mod step;
