//! A run's markers: create-once items of the run in the catalog (`aws::catalog`, conditional
//! writes), each saying that one transition of the run happened (see `run::plan::claim` for
//! what they decide).
//!
//! * `lease-<n>`: the invocation that created it dispatches the run, until its lease ends (its
//!   own Lambda deadline: after that, it has been stopped). A lease that ended without
//!   `dispatched` is taken over by creating `lease-<n+1>`.
//! * `dispatched`: every command of the run is sent and every tracking message queued.
//! * `dispatch-error-<n>`: the holder of lease `n` gave up with this error (its invocation
//!   failed); after a few, the dispatch closes, then is abandoned (`run::plan::claim`).
//! * `abandoned`: the run's dispatch failed for good; nothing more is tried for it.
//! * `reported`: the run's summary is written (so a duplicated final message writes nothing).
//! * `run-look-<n>`: look `n` at the whole run is taken by one message (the others, duplicate
//!   deliveries' successors, end there), so the run's chain never multiplies.
//! * `copy-lease-<n>`, `copy-pass-<n>`, `copied`: the same for the copy step.
//! * `retention-pass-<n>`, `retained`: the same for retention: a pass is taken by one message,
//!   so a duplicate of a pass's message (or of its successor's) does not start a second chain
//!   of passes, which a retention of many parts would go on multiplying.
//! * `vault-lease-<n>`, `vault-pass-<n>`, `vaulted`: the same for the vault step.
//! * `copy-unsure`: a copy pass may have started copies it did not record (it is written
//!   before a pass's first CopySnapshot and deleted when every copy it started is recorded);
//!   the next pass looks for them in the copy regions before it starts any.
//!
//! Every marker carries its writer's token, so a create whose answer was lost and whose retry
//! meets its own item can still tell that it won.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const DISPATCHED: &str = "dispatched";
pub const REPORTED: &str = "reported";
pub const RETAINED: &str = "retained";
pub const LEASE: &str = "lease-";
pub const COPY_LEASE: &str = "copy-lease-";
pub const COPIED: &str = "copied";
pub const COPY_PASS: &str = "copy-pass-";
pub const COPY_UNSURE: &str = "copy-unsure";
pub const RUN_LOOK: &str = "run-look-";
pub const VAULT_LEASE: &str = "vault-lease-";
pub const VAULT_PASS: &str = "vault-pass-";
pub const RETENTION_PASS: &str = "retention-pass-";
pub const VAULTED: &str = "vaulted";
pub const DISPATCH_ERROR: &str = "dispatch-error-";
/// `fallback-<instance id>`: the run's look is about to call CreateSnapshots for that
/// instance's crash-consistent fallback (a look that finds it, and no set recorded, looks for
/// what a lost answer left before calling again).
pub const FALLBACK: &str = "fallback-";
/// `unsure-fallback-<instance id>`: that CreateSnapshots went unanswered (no answer, a server
/// error): the run's next look looks for what it left, once, before the summary.
pub const FALLBACK_UNSURE: &str = "unsure-fallback-";
pub const ABANDONED: &str = "abandoned";
/// The markers `release` keeps: each says a step of the run is over.
const KEPT: [&str; 5] = [REPORTED, COPIED, RETAINED, ABANDONED, VAULTED];

/// What one marker says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerValue {
    pub token: String,
    /// When a lease ends (absent on the other markers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Why a dispatch gave up (`dispatch-error-<n>`, `abandoned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A run's markers as read from the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunMarkers {
    /// Lease epochs and their ends.
    pub leases: Vec<(u32, Option<DateTime<Utc>>)>,
    pub dispatched: bool,
    pub reported: bool,
    /// Leases of the copy step, and whether every copy is final.
    pub copy_leases: Vec<(u32, Option<DateTime<Utc>>)>,
    pub copied: bool,
    /// Leases of the vault step, and whether every vault copy of the run is final.
    pub vault_leases: Vec<(u32, Option<DateTime<Utc>>)>,
    pub vaulted: bool,
    /// The run's retention is over (its summary written).
    pub retained: bool,
    /// A copy pass ended without saying that every copy it started is recorded.
    pub copy_unsure: bool,
    /// The errors the dispatch gave up with, by lease epoch.
    pub dispatch_errors: Vec<(u32, String)>,
    /// Why the run was abandoned, once it was.
    pub abandoned: Option<String>,
    /// Every marker's full name.
    pub names: Vec<String>,
}

/// Reads the markers from a run's marker items (leaf name, value).
pub fn parse_markers<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> RunMarkers {
    let mut markers = RunMarkers::default();
    for (name, value) in params {
        markers.names.push(name.to_string());
        let leaf = name.rsplit('/').next().unwrap_or_default();
        if leaf == DISPATCHED {
            markers.dispatched = true;
        } else if leaf == REPORTED {
            markers.reported = true;
        } else if leaf == COPIED {
            markers.copied = true;
        } else if leaf == VAULTED {
            markers.vaulted = true;
        } else if leaf == RETAINED {
            markers.retained = true;
        } else if leaf == COPY_UNSURE {
            markers.copy_unsure = true;
        } else {
            let parsed = serde_json::from_str::<MarkerValue>(value).ok();
            let until = parsed.as_ref().and_then(|v| v.until);
            // A marker of an error whose text cannot be read still counts as that error.
            let error = || {
                parsed
                    .as_ref()
                    .and_then(|v| v.error.clone())
                    .unwrap_or_else(|| "an error that was not recorded".into())
            };
            if leaf == ABANDONED {
                markers.abandoned = Some(error());
            } else if let Some(epoch) = leaf.strip_prefix(LEASE).and_then(|n| n.parse().ok()) {
                markers.leases.push((epoch, until));
            } else if let Some(epoch) = leaf.strip_prefix(COPY_LEASE).and_then(|n| n.parse().ok()) {
                markers.copy_leases.push((epoch, until));
            } else if let Some(epoch) = leaf.strip_prefix(VAULT_LEASE).and_then(|n| n.parse().ok())
            {
                markers.vault_leases.push((epoch, until));
            } else if let Some(epoch) = leaf
                .strip_prefix(DISPATCH_ERROR)
                .and_then(|n| n.parse().ok())
            {
                markers.dispatch_errors.push((epoch, error()));
            }
        }
    }
    markers
}

/// The markers a finished run releases: all but those that say a step is over, and the vault
/// step's (which runs beside the copy step and retention, and may still be going when
/// retention ends: they go with the run's TTL).
pub fn to_release(markers: &RunMarkers) -> Vec<String> {
    markers
        .names
        .iter()
        .filter(|n| {
            let leaf = n.rsplit('/').next().unwrap_or_default();
            !KEPT.contains(&leaf) && !leaf.starts_with(VAULT_LEASE) && !leaf.starts_with(VAULT_PASS)
        })
        .cloned()
        .collect()
}

/// How long a run's items stay in the catalog (by TTL): longer than the queue keeps a message
/// (14 days), so no redelivery or replay finds its run forgotten.
pub const KEEP_RUN_DAYS: i64 = 15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_keeps_only_the_markers_that_say_a_step_is_over() {
        let leaves = [
            "lease-0",
            "dispatched",
            "reported",
            "copy-lease-2",
            "copy-pass-0",
            "copy-pass-7",
            "run-look-3",
            "copied",
            "retained",
            // The vault step may still be going when retention ends.
            "vault-lease-1",
            "vault-pass-4",
        ];
        let names: Vec<String> = leaves.iter().map(|l| l.to_string()).collect();
        let markers = parse_markers(names.iter().map(|n| (n.as_str(), "{}")));
        let released: Vec<String> = to_release(&markers);
        assert_eq!(
            released,
            [
                "lease-0",
                "dispatched",
                "copy-lease-2",
                "copy-pass-0",
                "copy-pass-7",
                "run-look-3"
            ]
        );
        assert!(markers.copied && markers.reported);
        assert_eq!(markers.copy_leases.len(), 1, "a pass marker is not a lease");
        assert_eq!(
            markers.vault_leases.len(),
            1,
            "a pass marker is not a lease"
        );
    }

    fn markers(params: &[(String, String)]) -> RunMarkers {
        parse_markers(params.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    #[test]
    fn unknown_leaves_are_ignored() {
        let m = markers(&[("lease-x".into(), "{}".into())]);
        assert_eq!(
            m,
            RunMarkers {
                names: vec!["lease-x".into()],
                ..RunMarkers::default()
            }
        );
    }
}
