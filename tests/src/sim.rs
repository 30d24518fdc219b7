//! The emulator's `/_sim` control API, typed: what a test may ask of the simulated Windows side
//! and of EBS, checked by the compiler (the emulator also refuses unknown fields). `None` keeps
//! the emulator's default.

use std::collections::BTreeMap;

use serde::Serialize;

/// Whether SSM hears from a server's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Agent {
    Online,
    /// Registered, but `ConnectionLost`: commands are never delivered.
    Offline,
    /// Not registered with SSM at all.
    Unmanaged,
    /// Deregistered since SSM's fleet view was last updated: still listed as online, but
    /// SendCommand refuses any call naming it (`InvalidInstanceId`).
    Deregistered,
}

/// What the VSS document does on a server when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VssOutcome {
    Success,
    /// The freeze fails: snapshots without `AppConsistent=True`, the command `Failed`.
    VssFailure,
    /// A writer (SQL Server's) fails: snapshots without `AppConsistent=True`, `Failed`.
    WriterFailed,
    /// PowerShell is not in FullLanguage mode: no snapshot, `Failed`.
    LanguageMode,
    /// The instance role lacks `AWSEC2VssSnapshotPolicy`: no snapshot, `Failed`.
    MissingPermission,
    /// The instance cannot reach the EC2 API: no snapshot, `Failed`.
    NoEc2Route,
    /// AwsVssComponents is not installed: no snapshot, `Failed`.
    ComponentsMissing,
    /// The instance has no EBS volume: no snapshot, the command `Failed`.
    NoEbs,
    /// The command never reaches the agent; it times out after `delivery_timeout`.
    Undeliverable,
}

/// How one server's Windows side behaves (`POST /_sim/instances`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Windows {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm: Option<Agent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<VssOutcome>,
    /// Seconds during which GetCommandInvocation answers `InvocationDoesNotExist`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<f64>,
    /// Seconds the document stays `InProgress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Seconds before an undeliverable command times out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_timeout: Option<f64>,
    /// The next this many VSS commands time out in the freeze, then `outcome` holds again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_failures: Option<u32>,
    /// The OS version SSM reports (`10.0.20348`; `6.3.9600` is Windows Server 2012 R2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows_version: Option<String>,
    /// Disks with dynamic partitions, as the readiness probe finds them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_disks: Option<u32>,
    /// The failover cluster the server is a node of, as the readiness probe finds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Whether the node owns the cluster's shared disks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owns_cluster_disks: Option<bool>,
}

impl Windows {
    /// A server whose document takes this long: `lag` unknown to SSM, then `duration` running.
    pub fn timing(lag: f64, duration: f64) -> Self {
        Windows {
            lag: Some(lag),
            duration: Some(duration),
            ..Windows::default()
        }
    }

    pub fn outcome(outcome: VssOutcome) -> Self {
        Windows {
            outcome: Some(outcome),
            ..Windows::default()
        }
    }

    pub fn agent(agent: Agent) -> Self {
        Windows {
            ssm: Some(agent),
            ..Windows::default()
        }
    }

    /// A server whose next `n` freezes time out (a passing load spike).
    pub fn freeze_fails(n: u32) -> Self {
        Windows {
            freeze_failures: Some(n),
            ..Windows::default()
        }
    }

    /// A server whose SSM reports this OS version.
    pub fn windows_version(version: &str) -> Self {
        Windows {
            windows_version: Some(version.to_string()),
            ..Windows::default()
        }
    }

    /// A server with this many dynamic disks.
    pub fn dynamic_disks(disks: u32) -> Self {
        Windows {
            dynamic_disks: Some(disks),
            ..Windows::default()
        }
    }

    /// A node of failover cluster `name`, owning its shared disks or not.
    pub fn cluster_node(name: &str, owns_disks: bool) -> Self {
        Windows {
            cluster: Some(name.to_string()),
            owns_cluster_disks: Some(owns_disks),
            ..Windows::default()
        }
    }

    pub fn agent_version(version: &str) -> Self {
        Windows {
            agent_version: Some(version.to_string()),
            ..Windows::default()
        }
    }
}

/// How EBS behaves (`POST /_sim/ebs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ebs {
    /// New snapshots and copies stay `pending` this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_seconds: Option<f64>,
    /// New volumes stay `creating` (and cannot be attached) this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_seconds: Option<f64>,
    /// Instances stay `stopping`/`pending` this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_seconds: Option<f64>,
    /// The next N copies into a region answer `ResourceLimitExceeded`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub copy_refusals: BTreeMap<String, u32>,
    /// Copies stay `pending` this long (else `pending_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_seconds: Option<f64>,
    /// At most this many copies in flight into one region (AWS: 20); the next answer
    /// `ResourceLimitExceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_limit: Option<u32>,
    /// Copies into these regions end in `error` with this state message (a KMS key the copy
    /// may not use: "Given key ID is not accessible").
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub copy_errors: BTreeMap<String, String>,
    /// Archiving a snapshot (ModifySnapshotTier) takes this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_seconds: Option<f64>,
    /// Restoring one from the archive tier takes this long (AWS: up to 72 hours).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
}

/// What one destination region saw of copies (`GET /_sim/copies`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct CopyStats {
    pub started: u32,
    pub refused: u32,
    pub max_in_flight: u32,
}

/// Earlier nightly runs' consistent sets of these instances (`POST /_sim/history`): one
/// snapshot per attached volume, tagged as the function tags them, `hours_apart` apart, the
/// newest `newest_hours` old; copies in `copy_region` when given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    pub region: String,
    pub managed_by: String,
    pub instance_ids: Vec<String>,
    pub sets: u64,
    pub hours_apart: f64,
    pub newest_hours: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_region: Option<String>,
    /// The sets (0 = the newest) that VSS left crash-consistent: `AppConsistent=False`, and
    /// recorded as crash-consistent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crash_consistent: Vec<u64>,
}

impl History {
    /// `sets` nightly sets of each of `instance_ids` in `region`, a day apart, the newest a day
    /// old, consistent, of the tests' deployment (`vss-test`), no copies: change a field with
    /// `History { copy_region: …, ..History::nightly(…) }`.
    pub fn nightly(region: &str, instance_ids: &[String], sets: u64) -> Self {
        History {
            region: region.to_string(),
            managed_by: "vss-test".to_string(),
            instance_ids: instance_ids.to_vec(),
            sets,
            hours_apart: 24.0,
            newest_hours: 24.0,
            copy_region: None,
            crash_consistent: Vec::new(),
        }
    }
}
