//! Who may dispatch a run, and who may run its copy step: pure decisions over the run's
//! markers (`model::markers`).
//!
//! Sending the VSS command is the one step that must never happen twice, and a duplicated
//! schedule can reach two Lambdas at the same moment, both seeing an empty command history. The
//! run is therefore claimed first, by creating a marker only one caller can create.

use chrono::{DateTime, Utc};

use crate::model::markers::RunMarkers;

/// What an invocation that wants to dispatch a run may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds the run: try to create lease `epoch`.
    Take { epoch: u32 },
    /// Another invocation holds the run until `until`.
    Held { epoch: u32, until: DateTime<Utc> },
    /// The run's commands are sent: nothing left to dispatch.
    Dispatched,
    /// The run's summary is written.
    Reported,
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
    if markers.copied {
        return CopyClaim::Final;
    }
    match lease_claim(&markers.copy_leases, now) {
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
}
