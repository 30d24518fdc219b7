//! Who may dispatch a run: create-once markers in SSM Parameter Store.
//!
//! Sending the VSS command is the one step that must never happen twice, and a duplicated
//! schedule can reach two Lambdas at the same moment, both seeing an empty command history. The
//! run is therefore claimed first. `PutParameter` without `Overwrite` is an atomic create, so
//! every transition of a run is a marker that only one caller can create, under
//! `/consistent-snapshot/<deployment>/runs/<run id>/`:
//!
//! * `lease-<n>`: the invocation that created it dispatches the run, until its lease ends (its
//!   own Lambda deadline: after that, it has been stopped). A lease that ended without
//!   `dispatched` is taken over by creating `lease-<n+1>`.
//! * `dispatched`: every command of the run is sent and every tracking message queued.
//! * `reported`: the run's summary is written (so a duplicated final message writes nothing).
//!
//! `decide` is the pure decision; the functions below it are the Parameter Store edge. Every
//! marker carries its writer's token, so a create whose answer was lost and whose retry meets
//! `ParameterAlreadyExists` can still tell that it won.

use aws_sdk_ssm::types::ParameterType;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{aws, Error};

pub const ROOT: &str = "/consistent-snapshot";
const DISPATCHED: &str = "dispatched";
const REPORTED: &str = "reported";
const RETAINED: &str = "retained";
const LEASE: &str = "lease-";
const COPY_LEASE: &str = "copy-lease-";
const COPIED: &str = "copied";
const COPY_PASS: &str = "copy-pass-";
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

/// Decides from the markers whether to claim, wait or leave the run alone.
pub fn decide(markers: &RunMarkers, now: DateTime<Utc>) -> Claim {
    if markers.reported {
        return Claim::Reported;
    }
    if markers.dispatched {
        return Claim::Dispatched;
    }
    lease_claim(&markers.leases, now)
}

/// Decides whether to take the copy step: `Dispatched` here means every copy is final.
pub fn decide_copy(markers: &RunMarkers, now: DateTime<Utc>) -> Claim {
    if markers.copied {
        return Claim::Dispatched;
    }
    lease_claim(&markers.copy_leases, now)
}

fn lease_claim(leases: &[(u32, Option<DateTime<Utc>>)], now: DateTime<Utc>) -> Claim {
    match leases.iter().max_by_key(|(epoch, _)| *epoch) {
        None => Claim::Take { epoch: 0 },
        // A lease without a readable end is treated as ended: its writer is gone or broken.
        Some((epoch, Some(until))) if *until > now => Claim::Held {
            epoch: *epoch,
            until: *until,
        },
        Some((epoch, _)) => Claim::Take { epoch: epoch + 1 },
    }
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
        format!("{clean}-{:08x}", crate::event::fnv1a32(text.as_bytes()))
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

/// The Parameter Store edge of one run's markers.
pub struct RunMarkerStore<'a> {
    pub ssm: &'a aws_sdk_ssm::Client,
    pub path: String,
    pub run_id: &'a str,
    /// This invocation's token, written into every marker it creates.
    pub token: String,
}

impl<'a> RunMarkerStore<'a> {
    pub fn new(ssm: &'a aws_sdk_ssm::Client, managed_by: &str, run_id: &'a str) -> Self {
        RunMarkerStore {
            ssm,
            path: run_path(managed_by, run_id),
            run_id,
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub async fn read(&self) -> Result<RunMarkers, Error> {
        let mut pages = self
            .ssm
            .get_parameters_by_path()
            .path(&self.path)
            .recursive(false)
            .max_results(10)
            .into_paginator()
            .send();
        let mut found: Vec<(String, String)> = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws("GetParametersByPath", self.subject(), e))?;
            for p in page.parameters() {
                if let (Some(name), Some(value)) = (p.name(), p.value()) {
                    found.push((name.to_string(), value.to_string()));
                }
            }
        }
        Ok(parse_markers(
            found.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ))
    }

    /// Tries to create lease `epoch` ending at `until`; answers whether this invocation holds it.
    pub async fn take_lease(&self, epoch: u32, until: DateTime<Utc>) -> Result<bool, Error> {
        self.create(&format!("{LEASE}{epoch}"), Some(until)).await
    }

    /// Tries to create copy lease `epoch` ending at `until`.
    pub async fn take_copy_lease(&self, epoch: u32, until: DateTime<Utc>) -> Result<bool, Error> {
        self.create(&format!("{COPY_LEASE}{epoch}"), Some(until))
            .await
    }

    /// Gives copy lease `epoch` back before it ends, so that the next pass need not wait.
    pub async fn drop_copy_lease(&self, epoch: u32) -> Result<(), Error> {
        let name = format!("{}/{COPY_LEASE}{epoch}", self.path);
        self.ssm
            .delete_parameters()
            .names(name)
            .send()
            .await
            .map_err(|e| aws("DeleteParameters", self.subject(), e))?;
        Ok(())
    }

    /// Claims pass `pass` of the copy step for the message `message_id`: one message per pass
    /// goes on, whichever invocations it is delivered to. A redelivery of the same message
    /// (after its invocation was stopped, or a duplicate) finds its own claim and goes on too.
    pub async fn claim_copy_pass(&self, pass: u32, message_id: &str) -> Result<bool, Error> {
        self.create_as(&format!("{COPY_PASS}{pass}"), None, message_id)
            .await
    }

    /// Marks every copy of the run final; answers whether this invocation was the first to.
    pub async fn mark_copied(&self) -> Result<bool, Error> {
        self.create(COPIED, None).await
    }

    /// Marks the run dispatched; answers whether this invocation was the first to.
    pub async fn mark_dispatched(&self) -> Result<bool, Error> {
        self.create(DISPATCHED, None).await
    }

    /// Marks the run reported; answers whether this invocation was the first to (and so writes
    /// the summary).
    pub async fn mark_reported(&self) -> Result<bool, Error> {
        self.create(REPORTED, None).await
    }

    /// Marks the run's retention done; answers whether this invocation was the first to (and
    /// so writes the retention summary).
    pub async fn mark_retained(&self) -> Result<bool, Error> {
        self.create(RETAINED, None).await
    }

    /// Deletes the run's markers once it is over, all but the ones that say a step is over
    /// (`reported`, `copied`, `retained`): they stay (until `sweep`), so that a late duplicate
    /// of the schedule or of a message, or the copy step's last queued pass, finds its step
    /// over and does not start it again.
    pub async fn release(&self, markers: &RunMarkers) -> Result<(), Error> {
        let names = to_release(markers);
        for chunk in names.chunks(10) {
            self.ssm
                .delete_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| aws("DeleteParameters", self.subject(), e))?;
        }
        Ok(())
    }

    async fn create(&self, leaf: &str, until: Option<DateTime<Utc>>) -> Result<bool, Error> {
        self.create_as(leaf, until, &self.token).await
    }

    /// Creates marker `leaf` with `token`; answers whether the marker is `token`'s (created
    /// now, or earlier by a call whose answer was lost).
    async fn create_as(
        &self,
        leaf: &str,
        until: Option<DateTime<Utc>>,
        token: &str,
    ) -> Result<bool, Error> {
        let name = format!("{}/{leaf}", self.path);
        let value = serde_json::to_string(&MarkerValue {
            token: token.to_string(),
            until,
        })
        .unwrap_or_default();
        let put = self
            .ssm
            .put_parameter()
            .name(&name)
            .value(&value)
            .r#type(ParameterType::String)
            .overwrite(false)
            .description(format!("consistent-snapshot run {} ({leaf})", self.run_id))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_already_exists()) =>
            {
                // Either another invocation created it, or this one did and the answer was
                // lost before a retry: the token says which.
                let current = self
                    .ssm
                    .get_parameter()
                    .name(&name)
                    .send()
                    .await
                    .map_err(|e| aws("GetParameter", format!("{} ({leaf})", self.subject()), e))?;
                let mine = current
                    .parameter()
                    .and_then(|p| p.value())
                    .and_then(|v| serde_json::from_str::<MarkerValue>(v).ok())
                    .is_some_and(|v| v.token == token);
                Ok(mine)
            }
            Err(err) => Err(aws(
                "PutParameter",
                format!("{} ({leaf})", self.subject()),
                err,
            )),
        }
    }

    fn subject(&self) -> String {
        format!("run {} ({})", self.run_id, self.path)
    }
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

/// Deletes this deployment's markers older than `cutoff` (Standard parameters are limited to
/// 10,000 a region); answers how many it deleted.
pub async fn sweep(
    ssm: &aws_sdk_ssm::Client,
    managed_by: &str,
    cutoff: DateTime<Utc>,
) -> Result<usize, Error> {
    let path = format!("{ROOT}/{}/runs", path_segment(managed_by));
    let mut pages = ssm
        .get_parameters_by_path()
        .path(&path)
        .recursive(true)
        .max_results(10)
        .into_paginator()
        .send();
    let mut old = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws("GetParametersByPath", path.clone(), e))?;
        for p in page.parameters() {
            let modified = p
                .last_modified_date()
                .and_then(|d| DateTime::from_timestamp(d.secs(), 0));
            if let (Some(name), Some(modified)) = (p.name(), modified) {
                if modified < cutoff {
                    old.push(name.to_string());
                }
            }
        }
    }
    for chunk in old.chunks(10) {
        ssm.delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| aws("DeleteParameters", path.clone(), e))?;
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

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
            Claim::Held { epoch: 0, .. }
        ));
        assert_eq!(
            decide_copy(&m, now() + Duration::seconds(30)),
            Claim::Take { epoch: 1 }
        );
        let mut params = params;
        params.push(("/x/runs/r/copied".into(), "{}".into()));
        assert_eq!(decide_copy(&markers(&params), now()), Claim::Dispatched);
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
