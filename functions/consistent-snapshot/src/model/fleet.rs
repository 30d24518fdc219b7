//! The fleet as plain facts: what EC2 says of an instance, what SSM says of its agent, and what
//! a run decided about it (a target with its volumes, or the reason it is skipped).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::state::{AttachmentState, InstanceState, PingStatus};

/// An EBS volume attached to an instance, at its device name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachedVolume {
    pub volume_id: String,
    pub device: String,
}

/// What EC2 says of an instance, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    pub instance_id: String,
    pub name: Option<String>,
    pub state: InstanceState,
    /// `windows` for Windows instances (EC2 answers in lower case).
    pub platform: Option<String>,
    pub platform_details: Option<String>,
    pub root_device: Option<String>,
    pub volumes: Vec<AttachedVolume>,
    pub tags: BTreeMap<String, String>,
    /// Where and how it runs, for the readiness check.
    pub host: HostFacts,
}

/// What the readiness check reads of an instance besides its volumes and agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub instance_type: Option<String>,
    /// The instance profile's ARN; `None` without one.
    pub instance_profile: Option<String>,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    /// Instance-store (ephemeral) storage its type comes with, in GB (`None`: not read).
    pub instance_store_gb: Option<u32>,
}

/// What the fleet's VPCs say of a route to the EC2 API (the VSS document calls it from the
/// instance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFacts {
    /// Per subnet with its own route table: whether it has a default route.
    pub subnet_routes: std::collections::HashMap<String, bool>,
    /// Per VPC: whether its main route table has a default route.
    pub main_routes: std::collections::HashMap<String, bool>,
    /// VPCs with an available `ec2` interface endpoint.
    pub ec2_endpoints: std::collections::HashSet<String>,
}

impl RouteFacts {
    /// Whether an instance there reaches the EC2 API; `None` when nothing is known of its
    /// subnet (not read, or EC2-Classic).
    pub fn reaches_ec2(&self, host: &HostFacts) -> Option<bool> {
        let vpc = host.vpc_id.as_deref()?;
        if self.ec2_endpoints.contains(vpc) {
            return Some(true);
        }
        let subnet = host.subnet_id.as_deref()?;
        self.subnet_routes
            .get(subnet)
            .or_else(|| self.main_routes.get(vpc))
            .copied()
    }
}

impl InstanceFacts {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.instance_id)
    }

    /// The volumes a snapshot set of this instance must contain.
    pub fn expected_volumes(&self, exclude_boot_volume: bool) -> Vec<AttachedVolume> {
        self.volumes
            .iter()
            .filter(|v| {
                !(exclude_boot_volume && self.root_device.as_deref() == Some(v.device.as_str()))
            })
            .cloned()
            .collect()
    }

    /// Windows by EC2's platform fields, or (for imported images that EC2 does not recognise)
    /// by the platform SSM's agent reports.
    pub fn is_windows(&self, agent: Option<&AgentFacts>) -> bool {
        let ec2_says = self
            .platform
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("windows"))
            || self
                .platform_details
                .as_deref()
                .is_some_and(|p| p.to_ascii_lowercase().contains("windows"));
        ec2_says
            || agent
                .and_then(|a| a.platform_type.as_deref())
                .is_some_and(|p| p.eq_ignore_ascii_case("windows"))
    }
}

/// What SSM says of an instance's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFacts {
    pub ping_status: PingStatus,
    pub agent_version: String,
    pub platform_type: Option<String>,
    /// The OS version SSM reports (`10.0.20348` for Windows Server 2022).
    pub platform_version: Option<String>,
}

/// One instance as a restore sees it: its state, zone and what is attached at each device.
#[derive(Debug, Clone, Default)]
pub struct InstanceView {
    pub name: String,
    pub state: InstanceState,
    pub zone: String,
    /// Device → (volume id, attachment state).
    pub devices: BTreeMap<String, (String, AttachmentState)>,
}

/// The VSS document's options for one instance, beyond `ExcludeBootVolume`: the deployment's
/// defaults, or the instance's own tags.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct VssOptions {
    /// `CopyOnly`: a copy-only backup, which leaves SQL Server's differential base alone (a full
    /// VSS backup resets it: the next native differential backup fails).
    #[serde(default)]
    pub copy_only: bool,
    /// `SaveVssMetadata`: the writers' metadata saved with the set, as AWS's SQL Server restore
    /// runbook needs (AwsVssComponents 2.4.0 or later).
    #[serde(default)]
    pub save_vss_metadata: bool,
    /// `CollectDiagnosticLogs`: the document's logs zipped on the instance, for troubleshooting.
    #[serde(default)]
    pub collect_diagnostic_logs: bool,
    /// `NoWriters`: the application writers are left out of the shadow copy. The set is
    /// file-system consistent, not application consistent, and is recorded and reported so.
    #[serde(default)]
    pub no_writers: bool,
}

/// An instance that passed preflight, with the volumes its snapshot set must contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub instance_id: String,
    pub name: String,
    pub exclude_boot_volume: bool,
    /// The document's other options for this instance.
    #[serde(default)]
    pub options: VssOptions,
    pub volumes: Vec<AttachedVolume>,
    /// The instance's tags named in `COPY_INSTANCE_TAGS` (cost allocation): carried to its
    /// snapshots and their copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cost_tags: Vec<(String, String)>,
    /// The failover cluster it is a node of (`ConsistentSnapshot:Cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// Whether `name` may name a cluster: 1 to 63 letters, digits, `-`, `_` or `.` (Windows
/// cluster names are NetBIOS names of at most 15; the tag is only a key to group nodes).
pub fn is_cluster_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Why an instance is not snapshotted in this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    NotRunning {
        state: String,
    },
    NotWindows {
        platform: String,
    },
    SsmUnmanaged,
    SsmOffline {
        ping_status: String,
    },
    AgentTooOld {
        found: String,
        minimum: String,
    },
    NoEbsVolumes,
    InvalidOverride {
        tag: String,
        value: String,
    },
    /// Options the document refuses together (`NoWriters` with `SaveVssMetadata`).
    InvalidCombination {
        why: String,
    },
    /// Asked for by id in an on-demand call but not found with the target tag.
    NotTargeted,
    /// Another VSS command is running on the instance (another run, or one sent by hand):
    /// VSS takes one shadow copy at a time, and the instance is not frozen twice.
    VssInProgress {
        command_id: String,
        run_id: Option<String>,
    },
    /// A node of a failover cluster that does not own the cluster's disks: the set is taken
    /// on the node that does (both nodes' probes said so).
    ClusterSecondary {
        cluster: String,
        owner: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotRunning { state } => write!(f, "instance is {state}, not running"),
            SkipReason::NotWindows { platform } => {
                write!(f, "not a Windows instance (platform {platform})")
            }
            SkipReason::SsmUnmanaged => f.write_str("not managed by SSM (no agent registered)"),
            SkipReason::SsmOffline { ping_status } => {
                write!(f, "SSM agent is {ping_status}, not Online")
            }
            SkipReason::AgentTooOld { found, minimum } => {
                write!(f, "SSM agent {found} is older than the minimum {minimum}")
            }
            SkipReason::NoEbsVolumes => f.write_str("no EBS volume attached"),
            SkipReason::InvalidOverride { tag, value } => {
                write!(f, "tag {tag}={value:?} is not true or false")
            }
            SkipReason::InvalidCombination { why } => f.write_str(why),
            SkipReason::NotTargeted => {
                f.write_str("not found as a running or stopped instance with the target tag")
            }
            SkipReason::VssInProgress { command_id, run_id } => match run_id {
                Some(run) => write!(f, "VSS command {command_id} of run {run} is still running"),
                None => write!(
                    f,
                    "VSS command {command_id} (not sent by this tool) is still running"
                ),
            },
            SkipReason::ClusterSecondary { cluster, owner } => write!(
                f,
                "secondary node of cluster {cluster}: the set is taken on {owner}, which owns the cluster's disks"
            ),
        }
    }
}
