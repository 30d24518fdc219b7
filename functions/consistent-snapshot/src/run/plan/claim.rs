//! Who may dispatch a run, and who may run its copy step: pure decisions over the run's
//! markers (`model::markers`).
//!
//! Sending the VSS command is the one step that must never happen twice, and a duplicated
//! schedule can reach two Lambdas at the same moment, both seeing an empty command history. The
//! run is therefore claimed first, by creating a marker only one caller can create.

use chrono::{DateTime, Utc};

use crate::model::markers::RunMarkers;

/// What an invocation that wants to dispatch a run may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds the run: try to create lease `epoch`.
    Take { epoch: u32 },
    /// Another invocation holds the run until `until`.
    Held { epoch: u32, until: DateTime<Utc> },
    /// The run's commands are sent: nothing left to dispatch.
    Dispatched,
    /// The run's summary is written.
    Reported,
    /// The run's dispatch failed for good (`dispatch_mode`): nothing more is tried.
    Abandoned { reason: String },
}

/// How many dispatches of one run may give up with an error before the next one closes it.
pub const DISPATCH_ERRORS_MAX: usize = 3;
/// How many leases a run's dispatch may take (each ends with its invocation: a large fleet's
/// dispatch may need several) before the next one closes it.
pub const DISPATCH_LEASES_MAX: u32 = 8;

/// What the holder of a run's lease does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchMode {
    /// Send what the command history does not show sent.
    Send,
    /// Send nothing more: track what was sent and record every instance still unsent as
    /// failed, with `reason`. The run then ends as any other, with its summary.
    Close { reason: String },
    /// Even closing failed: record the run as abandoned with `reason`, and stop.
    Abandon { reason: String },
}

/// The watch's takeovers are a chain, and a chain needs a cap: a dispatch that fails every
/// time (SendCommand throttled all night, the catalog refusing its writes) must end with a
/// record, not take lease after lease forever. The cap counts both the dispatches that gave
/// up with an error and every lease taken (a dispatch stopped by its Lambda's timeout leaves
/// no error, and a huge fleet's may need a few invocations): past the first cap the run is
/// closed, past one more it is abandoned.
pub fn dispatch_mode(markers: &RunMarkers, epoch: u32) -> DispatchMode {
    let errors = markers.dispatch_errors.len();
    let last = markers
        .dispatch_errors
        .iter()
        .max_by_key(|(epoch, _)| *epoch)
        .map(|(_, error)| format!(" (last: {error})"))
        .unwrap_or_default();
    let why = format!("the run's dispatch gave up {errors} time(s) in {epoch} lease(s){last}");
    if errors > DISPATCH_ERRORS_MAX || epoch > DISPATCH_LEASES_MAX {
        DispatchMode::Abandon { reason: why }
    } else if errors == DISPATCH_ERRORS_MAX || epoch == DISPATCH_LEASES_MAX {
        DispatchMode::Close { reason: why }
    } else {
        DispatchMode::Send
    }
}

/// What an invocation that wants to run a pass of the copy step may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyClaim {
    /// Nobody holds the copy step: try to create copy lease `epoch`.
    Take { epoch: u32 },
    /// Another pass holds it until `until`.
    Held { epoch: u32, until: DateTime<Utc> },
    /// Every copy of the run is final: the step is over.
    Final,
}

/// Decides from the markers whether to claim, wait or leave the run alone.
pub fn decide(markers: &RunMarkers, now: DateTime<Utc>) -> Claim {
    if let Some(reason) = &markers.abandoned {
        return Claim::Abandoned {
            reason: reason.clone(),
        };
    }
    if markers.reported {
        return Claim::Reported;
    }
    if markers.dispatched {
        return Claim::Dispatched;
    }
    match lease_claim(&markers.leases, now) {
        Lease::Free { epoch } => Claim::Take { epoch },
        Lease::Held { epoch, until } => Claim::Held { epoch, until },
    }
}

/// Decides whether to take the copy step.
pub fn decide_copy(markers: &RunMarkers, now: DateTime<Utc>) -> CopyClaim {
    step_claim(markers.copied, &markers.copy_leases, now)
}

/// Decides whether to take the vault step, as `decide_copy` the copy step.
pub fn decide_vault(markers: &RunMarkers, now: DateTime<Utc>) -> CopyClaim {
    step_claim(markers.vaulted, &markers.vault_leases, now)
}

/// A step over (`done`), or its leases as they stand.
fn step_claim(
    done: bool,
    leases: &[(u32, Option<DateTime<Utc>>)],
    now: DateTime<Utc>,
) -> CopyClaim {
    if done {
        return CopyClaim::Final;
    }
    match lease_claim(leases, now) {
        Lease::Free { epoch } => CopyClaim::Take { epoch },
        Lease::Held { epoch, until } => CopyClaim::Held { epoch, until },
    }
}

enum Lease {
    Free { epoch: u32 },
    Held { epoch: u32, until: DateTime<Utc> },
}

fn lease_claim(leases: &[(u32, Option<DateTime<Utc>>)], now: DateTime<Utc>) -> Lease {
    match leases.iter().max_by_key(|(epoch, _)| *epoch) {
        None => Lease::Free { epoch: 0 },
        // A lease without a readable end is treated as ended: its writer is gone or broken.
        Some((epoch, Some(until))) if *until > now => Lease::Held {
            epoch: *epoch,
            until: *until,
        },
        Some((epoch, _)) => Lease::Free { epoch: epoch + 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::markers::{parse_markers, MarkerValue};
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn lease(epoch: u32, ends_in: i64) -> (String, String) {
        let value = MarkerValue {
            token: format!("t{epoch}"),
            until: Some(now() + Duration::seconds(ends_in)),
            error: None,
        };
        (
            format!("/consistent-snapshot/d/runs/r/lease-{epoch}"),
            serde_json::to_string(&value).unwrap_or_default(),
        )
    }

    fn markers(params: &[(String, String)]) -> RunMarkers {
        parse_markers(params.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    #[test]
    fn an_unclaimed_run_is_taken_at_epoch_zero() {
        assert_eq!(decide(&markers(&[]), now()), Claim::Take { epoch: 0 });
    }

    #[test]
    fn a_live_lease_is_held_and_an_ended_one_is_taken_over_by_the_next_epoch() {
        let live = markers(&[lease(0, -100), lease(1, 30)]);
        assert_eq!(
            decide(&live, now()),
            Claim::Held {
                epoch: 1,
                until: now() + Duration::seconds(30)
            }
        );
        let ended = markers(&[lease(0, -100), lease(1, -1)]);
        assert_eq!(decide(&ended, now()), Claim::Take { epoch: 2 });
        // A lease whose end cannot be read is over: its writer was not this version.
        let broken = markers(&[("/x/runs/r/lease-4".into(), "not json".into())]);
        assert_eq!(decide(&broken, now()), Claim::Take { epoch: 5 });
    }

    #[test]
    fn dispatched_and_reported_runs_are_left_alone_whatever_the_leases_say() {
        let mut params = vec![lease(0, 60), ("/x/runs/r/dispatched".into(), "{}".into())];
        assert_eq!(decide(&markers(&params), now()), Claim::Dispatched);
        params.push(("/x/runs/r/reported".into(), "{}".into()));
        assert_eq!(decide(&markers(&params), now()), Claim::Reported);
    }

    #[test]
    fn the_copy_step_has_leases_of_its_own() {
        let params = vec![
            lease(0, -100),
            (
                "/x/runs/r/copy-lease-0".into(),
                serde_json::to_string(&MarkerValue {
                    token: "c".into(),
                    until: Some(now() + Duration::seconds(20)),
                    error: None,
                })
                .unwrap_or_default(),
            ),
        ];
        let m = markers(&params);
        assert_eq!(decide(&m, now()), Claim::Take { epoch: 1 });
        assert!(matches!(
            decide_copy(&m, now()),
            CopyClaim::Held { epoch: 0, .. }
        ));
        assert_eq!(
            decide_copy(&m, now() + Duration::seconds(30)),
            CopyClaim::Take { epoch: 1 }
        );
        let mut params = params;
        params.push(("/x/runs/r/copied".into(), "{}".into()));
        assert_eq!(decide_copy(&markers(&params), now()), CopyClaim::Final);
    }

    fn dispatch_error(epoch: u32, error: &str) -> (String, String) {
        let value = MarkerValue {
            token: format!("t{epoch}"),
            until: None,
            error: Some(error.into()),
        };
        (
            format!("/x/runs/r/dispatch-error-{epoch}"),
            serde_json::to_string(&value).unwrap_or_default(),
        )
    }

    #[test]
    fn a_dispatch_that_keeps_failing_is_closed_then_abandoned_never_taken_forever() {
        let mut params = vec![lease(0, -10)];
        assert_eq!(dispatch_mode(&markers(&params), 1), DispatchMode::Send);
        // Two errors: still sending.
        params.push(dispatch_error(0, "SendCommand: ThrottlingException"));
        params.push(lease(1, -5));
        params.push(dispatch_error(1, "SendCommand: ThrottlingException"));
        assert_eq!(dispatch_mode(&markers(&params), 2), DispatchMode::Send);
        // The third closes: nothing more is sent, the reason names the last error.
        params.push(lease(2, -1));
        params.push(dispatch_error(2, "SendCommand: ThrottlingException (i-3)"));
        let DispatchMode::Close { reason } = dispatch_mode(&markers(&params), 3) else {
            panic!("not closed");
        };
        assert!(reason.contains("gave up 3 time(s)"), "{reason}");
        assert!(reason.contains("ThrottlingException (i-3)"), "{reason}");
        // Closing failed too: abandoned.
        params.push(lease(3, -1));
        params.push(dispatch_error(3, "PutItem: AccessDeniedException"));
        assert!(matches!(
            dispatch_mode(&markers(&params), 4),
            DispatchMode::Abandon { .. }
        ));
        // An abandoned run is left alone, whatever its leases say.
        params.push((
            "/x/runs/r/abandoned".into(),
            r#"{"token":"t","error":"gave up"}"#.into(),
        ));
        assert_eq!(
            decide(&markers(&params), now()),
            Claim::Abandoned {
                reason: "gave up".into()
            }
        );
    }

    #[test]
    fn leases_stopped_without_an_error_are_capped_too() {
        // A dispatch stopped by its Lambda's timeout each time records no error.
        let params: Vec<_> = (0..DISPATCH_LEASES_MAX).map(|e| lease(e, -1)).collect();
        let m = markers(&params);
        assert_eq!(
            dispatch_mode(&m, DISPATCH_LEASES_MAX - 1),
            DispatchMode::Send
        );
        assert!(matches!(
            dispatch_mode(&m, DISPATCH_LEASES_MAX),
            DispatchMode::Close { .. }
        ));
        assert!(matches!(
            dispatch_mode(&m, DISPATCH_LEASES_MAX + 1),
            DispatchMode::Abandon { .. }
        ));
    }
}
