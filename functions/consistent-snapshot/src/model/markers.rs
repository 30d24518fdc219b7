//! A run's markers: create-once parameters under
//! `/consistent-snapshot/<deployment>/runs/<run id>/`, each saying that one transition of the run
//! happened (see `run::plan::claim` for what they decide, and `aws::markers` for the store).
//!
//! * `lease-<n>`: the invocation that created it dispatches the run, until its lease ends (its
//!   own Lambda deadline: after that, it has been stopped). A lease that ended without
//!   `dispatched` is taken over by creating `lease-<n+1>`.
//! * `dispatched`: every command of the run is sent and every tracking message queued.
//! * `reported`: the run's summary is written (so a duplicated final message writes nothing).
//! * `copy-lease-<n>`, `copy-pass-<n>`, `copied`, `retained`: the same for the copy step and
//!   retention.
//!
//! Every marker carries its writer's token, so a create whose answer was lost and whose retry
//! meets `ParameterAlreadyExists` can still tell that it won.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ids::fnv1a32;

pub const ROOT: &str = "/consistent-snapshot";
pub const DISPATCHED: &str = "dispatched";
pub const REPORTED: &str = "reported";
pub const RETAINED: &str = "retained";
pub const LEASE: &str = "lease-";
pub const COPY_LEASE: &str = "copy-lease-";
pub const COPIED: &str = "copied";
pub const COPY_PASS: &str = "copy-pass-";
/// The markers `release` keeps: each says a step of the run is over.
const KEPT: [&str; 3] = [REPORTED, COPIED, RETAINED];

/// What one marker says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerValue {
    pub token: String,
    /// When a lease ends (absent on the other markers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// A run's markers as read from Parameter Store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunMarkers {
    /// Lease epochs and their ends.
    pub leases: Vec<(u32, Option<DateTime<Utc>>)>,
    pub dispatched: bool,
    pub reported: bool,
    /// Leases of the copy step, and whether every copy is final.
    pub copy_leases: Vec<(u32, Option<DateTime<Utc>>)>,
    pub copied: bool,
    /// Every marker's full name.
    pub names: Vec<String>,
}

/// Parameter names allow letters, digits and `. - _`; anything else becomes `_`, and a short
/// hash of the original keeps two deployments whose names differ only there apart.
pub fn path_segment(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == text {
        clean
    } else {
        format!("{clean}-{:08x}", fnv1a32(text.as_bytes()))
    }
}

/// The Parameter Store path of a run's markers.
pub fn run_path(managed_by: &str, run_id: &str) -> String {
    format!(
        "{ROOT}/{}/runs/{}",
        path_segment(managed_by),
        path_segment(run_id)
    )
}

/// Reads the markers from the parameters found under a run's path (name, value).
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
        } else {
            let until = || {
                serde_json::from_str::<MarkerValue>(value)
                    .ok()
                    .and_then(|v| v.until)
            };
            if let Some(epoch) = leaf.strip_prefix(LEASE).and_then(|n| n.parse().ok()) {
                markers.leases.push((epoch, until()));
            } else if let Some(epoch) = leaf.strip_prefix(COPY_LEASE).and_then(|n| n.parse().ok()) {
                markers.copy_leases.push((epoch, until()));
            }
        }
    }
    markers
}

/// The markers a finished run releases: all but those that say a step is over.
pub fn to_release(markers: &RunMarkers) -> Vec<String> {
    markers
        .names
        .iter()
        .filter(|n| {
            let leaf = n.rsplit('/').next().unwrap_or_default();
            !KEPT.contains(&leaf)
        })
        .cloned()
        .collect()
}

/// How long a finished run's `reported` marker is kept: far longer than any redelivery.
pub const KEEP_REPORTED_DAYS: i64 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_keeps_only_the_markers_that_say_a_step_is_over() {
        let path = run_path("prod", "r1");
        let leaves = [
            "lease-0",
            "dispatched",
            "reported",
            "copy-lease-2",
            "copy-pass-0",
            "copy-pass-7",
            "copied",
            "retained",
        ];
        let names: Vec<String> = leaves.iter().map(|l| format!("{path}/{l}")).collect();
        let markers = parse_markers(names.iter().map(|n| (n.as_str(), "{}")));
        let released: Vec<String> = to_release(&markers)
            .iter()
            .map(|n| n.rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            released,
            [
                "lease-0",
                "dispatched",
                "copy-lease-2",
                "copy-pass-0",
                "copy-pass-7"
            ]
        );
        assert!(markers.copied && markers.reported);
        assert_eq!(markers.copy_leases.len(), 1, "a pass marker is not a lease");
    }

    fn markers(params: &[(String, String)]) -> RunMarkers {
        parse_markers(params.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    #[test]
    fn unknown_leaves_are_ignored() {
        let m = markers(&[("/x/runs/r/lease-x".into(), "{}".into())]);
        assert_eq!(
            m,
            RunMarkers {
                names: vec!["/x/runs/r/lease-x".into()],
                ..RunMarkers::default()
            }
        );
    }

    #[test]
    fn paths_keep_only_parameter_name_characters_and_stay_distinct() {
        assert_eq!(
            run_path("vss-prod", "20261123T000000Z-ab12cd34"),
            "/consistent-snapshot/vss-prod/runs/20261123T000000Z-ab12cd34"
        );
        let a = path_segment("prod vss");
        let b = path_segment("prod_vss");
        assert_ne!(a, b);
        assert!(a.starts_with("prod_vss-"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    }
}
