//! The run's pure decisions: which instances can be snapshotted (`preflight`), which command
//! each gets (`dispatch`), who may dispatch (`claim`), when an instance or the run is final
//! (`track`), what each set turned out to be (`outcome`), and the run's summary (`summary`).

pub mod claim;
pub mod dispatch;
pub mod outcome;
pub mod preflight;
pub mod summary;
pub mod track;
