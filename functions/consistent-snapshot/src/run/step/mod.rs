//! The run's use cases: starting (and taking over) a dispatch, and tracking it to the end.

pub mod start;
pub mod tracking;
