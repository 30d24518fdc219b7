//! The run's pure decisions: which instances can be snapshotted (`preflight`), which command
//! each gets (`dispatch`), who may dispatch (`claim`), when an instance or the run is final
//! (`track`), what each set turned out to be (`outcome`), which snapshots are the set (`record`), what an upgrade records (`import`), the crash-consistent fallback (`fallback`), what a server's checklist says before the night (`readiness`), which servers a timed-out freeze sends to another attempt (`retry`), which node of a failover cluster gets the command (`cluster`), and the run's summary (`summary`).

pub mod claim;
pub mod cluster;
pub mod dispatch;
pub mod fallback;
pub mod import;
pub mod outcome;
pub mod preflight;
pub mod readiness;
pub mod record;
pub mod retry;
pub mod summary;
pub mod track;
