//! The run's use cases: starting (and taking over) a dispatch, tracking it to the end (with
//! its crash-consistent fallbacks), retrying a timed-out freeze, and
//! importing the sets made before the catalog.

pub mod fallback;
pub mod import;
pub mod retry;
pub mod start;
pub mod tracking;
