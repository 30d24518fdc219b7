//! Retrying a freeze that timed out. VSS holds writes for a fixed 10 seconds; a freeze or thaw
//! that times out (heavy I/O, antivirus, a small instance) usually succeeds a minute later, so
//! the servers a run left crash-consistent for that cause alone are tried again in a run of
//! their own, `<run>-vss<n>`, after a pause: each attempt is its own run and its own set in the
//! catalog (the failed one stays, crash-consistent, as the night's fallback), and the RPO
//! report counts the best of them. At most `VSS_RETRIES` attempts follow the first. Pure.

use crate::model::catalog::SetRecord;
use crate::model::cause::Cause;
use crate::model::ids::{is_run_id, MAX_VSS_RETRIES};
use crate::run::plan::outcome::{Outcome, OutcomeKind};

/// The suffix of a retry's run id, followed by its attempt (1, 2, 3).
pub const RETRY_SUFFIX: &str = "-vss";

/// The run `run_id` retries (itself for a run of its own), and which retry it is (0: none).
pub fn attempt_of(run_id: &str) -> (&str, u32) {
    if let Some((base, n)) = run_id.rsplit_once(RETRY_SUFFIX) {
        let one_digit = n.len() == 1 && n.bytes().all(|b| b.is_ascii_digit());
        if let (true, Ok(n)) = (one_digit && !base.is_empty(), n.parse::<u32>()) {
            if (1..=MAX_VSS_RETRIES).contains(&n) {
                return (base, n);
            }
        }
    }
    (run_id, 0)
}

/// The run id of the retry that follows `run_id`, if `max_retries` allows one more and the id
/// stays a run id (at most 64 characters).
pub fn next_retry_run_id(run_id: &str, max_retries: u32) -> Option<String> {
    let (base, attempt) = attempt_of(run_id);
    let next = attempt + 1;
    if next > max_retries.min(MAX_VSS_RETRIES) {
        return None;
    }
    let id = format!("{base}{RETRY_SUFFIX}{next}");
    is_run_id(&id).then_some(id)
}

/// Whether an outcome is one a retry may fix: VSS ran and its freeze or thaw timed out, and
/// left a set (crash-consistent, recorded in the catalog, where the retry's step checks it),
/// not the function's own fallback.
pub fn retryable(outcome: &Outcome) -> bool {
    outcome.cause == Some(Cause::FreezeTimeout)
        && matches!(
            outcome.kind,
            OutcomeKind::CrashConsistent | OutcomeKind::Incomplete
        )
        && !outcome.fallback
}

/// Whether a recorded set of the run a retry names vouches for retrying its server.
pub fn vouches_for_retry(set: &SetRecord) -> bool {
    set.cause == Some(Cause::FreezeTimeout) && !set.is_backup() && !set.fallback
}

/// The most servers one retry takes (its message and its run stay bounded; a freeze that
/// times out on more at once is not a passing load spike).
pub const MAX_RETRIED: usize = 1_000;

/// What a finished run retries: the run id of the retry and the servers, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPlan {
    pub run_id: String,
    pub instance_ids: Vec<String>,
}

pub fn plan_retry(run_id: &str, outcomes: &[Outcome], max_retries: u32) -> Option<RetryPlan> {
    let mut instance_ids: Vec<String> = outcomes
        .iter()
        .filter(|o| retryable(o))
        .map(|o| o.instance_id.clone())
        .collect();
    if instance_ids.is_empty() {
        return None;
    }
    instance_ids.sort();
    instance_ids.dedup();
    instance_ids.truncate(MAX_RETRIED);
    Some(RetryPlan {
        run_id: next_retry_run_id(run_id, max_retries)?,
        instance_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, kind: OutcomeKind, cause: Option<Cause>) -> Outcome {
        Outcome {
            instance_id: id.into(),
            name: id.into(),
            kind,
            volumes: 2,
            snapshots: vec![],
            reason: None,
            cause,
            fallback: false,
        }
    }

    #[test]
    fn a_retry_counts_its_attempt_in_its_run_id_and_stops_at_the_cap() {
        let run = "20261205T020000Z-0a1b2c3d";
        assert_eq!(attempt_of(run), (run, 0));
        assert_eq!(
            next_retry_run_id(run, 2).as_deref(),
            Some("20261205T020000Z-0a1b2c3d-vss1")
        );
        assert_eq!(
            next_retry_run_id("20261205T020000Z-0a1b2c3d-vss1", 2).as_deref(),
            Some("20261205T020000Z-0a1b2c3d-vss2")
        );
        assert_eq!(next_retry_run_id("20261205T020000Z-0a1b2c3d-vss2", 2), None);
        assert_eq!(next_retry_run_id(run, 0), None);
        // Never past three, whatever is configured; a name that only looks like one is a run.
        assert_eq!(next_retry_run_id("r-vss3", 9), None);
        assert_eq!(attempt_of("backup-vss"), ("backup-vss", 0));
        assert_eq!(attempt_of("backup-vss12"), ("backup-vss12", 0));
        assert_eq!(attempt_of("-vss1"), ("-vss1", 0));
        // A retry id past 64 characters is not made.
        assert_eq!(next_retry_run_id(&"r".repeat(61), 3), None);
    }

    #[test]
    fn only_a_freeze_that_timed_out_is_retried() {
        let outcomes = [
            outcome(
                "i-2",
                OutcomeKind::CrashConsistent,
                Some(Cause::FreezeTimeout),
            ),
            outcome(
                "i-1",
                OutcomeKind::CrashConsistent,
                Some(Cause::FreezeTimeout),
            ),
            outcome(
                "i-3",
                OutcomeKind::CrashConsistent,
                Some(Cause::WriterFailed),
            ),
            outcome("i-4", OutcomeKind::Consistent, None),
            outcome("i-5", OutcomeKind::Skipped, Some(Cause::AgentOffline)),
            Outcome {
                fallback: true,
                ..outcome(
                    "i-6",
                    OutcomeKind::CrashConsistent,
                    Some(Cause::FreezeTimeout),
                )
            },
        ];
        assert_eq!(
            plan_retry("r", &outcomes, 1),
            Some(RetryPlan {
                run_id: "r-vss1".into(),
                instance_ids: vec!["i-1".into(), "i-2".into()],
            })
        );
        assert_eq!(plan_retry("r", &outcomes, 0), None);
        assert_eq!(plan_retry("r", &outcomes[2..5], 3), None);
    }
}
