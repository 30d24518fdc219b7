//! The on-demand calls' payloads (`{"action": …}`), as the operator writes them. Parsed and
//! validated in `entry::event`; each field is named in the error when it is wrong.

use serde::{Deserialize, Serialize};

/// At most this many instance ids in one on-demand call.
pub const MAX_INSTANCE_IDS: usize = 1000;
/// At most this many instances are restored in one verification.
pub const MAX_VERIFY: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Only these instances (each must carry the target tag); all tagged instances when absent.
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Re-use a run id (for example to resume a run); a fresh one when absent. Never one of
    /// the form of a scheduled run's id.
    #[serde(default)]
    pub run_id: Option<String>,
    /// The same token makes a retried call the same run (`od-<token>`).
    #[serde(default)]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// A dry run's plan of these instances only (a fleet's whole plan is cut to its
    /// deletions past 2,000 sets).
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// A finished run's full record instead of the fleet report.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Which page of that record (from 0): each holds at most 500 outcomes.
    #[serde(default)]
    pub page: Option<usize>,
}

/// `{"action":"recover","instance_id","run_id"?,"account","dry_run"?}` (vault deployments):
/// list a server's whole sets in the vault, or share the one `run_id` names with a recovery
/// account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    pub instance_id: String,
    #[serde(default)]
    pub run_id: Option<String>,
    pub account: String,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// `{"action":"cost","instance_ids"?}`: what each kept set costs (EBS direct APIs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostRequest {
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
}

/// `{"action":"readiness","instance_ids"?}`: the tagged fleet's (or these tagged servers')
/// checklist before the night.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessRequest {
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
    /// Also run the deployment's read-only probe document on each server whose agent is
    /// online, and wait (`PROBE_WAIT_SECONDS`) for what only the server can say.
    #[serde(default)]
    pub probe: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// The `ManagedBy` tag value the sets carry, when it is not this deployment's (an upgrade
    /// that changed the default).
    #[serde(default)]
    pub managed_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub instance_id: String,
    /// `latest` (the newest consistent set) or a run id.
    pub run_id: String,
    /// Where the volumes are created (`volumes` mode): the instance's zone when absent.
    #[serde(default)]
    pub availability_zone: Option<String>,
    pub mode: RestoreMode,
    /// Restore a crash-consistent or incomplete set too (refused otherwise).
    #[serde(default)]
    pub allow_crash_consistent: Option<bool>,
    /// `replace` only: put the volumes this restore replaced back, and start the instance.
    #[serde(default)]
    pub rollback: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Verify these instances; a rotating sample of the fleet when absent.
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
    /// How many instances the sample holds (default `VERIFY_SAMPLE_SIZE`).
    #[serde(default)]
    pub sample: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    Volumes,
    Replace,
}
