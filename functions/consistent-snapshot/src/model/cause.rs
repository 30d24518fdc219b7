//! Why a server has no consistent set: the document's output, SSM's status details and what
//! preflight found of the agent, classified into named causes, each with the one line an
//! operator needs to fix it. Pure; the texts are AWS's documented failure messages
//! (`AWS-FACTS.md`), matched without regard to case.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::fleet::SkipReason;

/// A named root cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// VSS held writes past its fixed 10-second window (freeze or thaw timed out).
    FreezeTimeout,
    /// An application's VSS writer failed.
    WriterFailed,
    /// PowerShell is not in FullLanguage mode on the instance.
    LanguageMode,
    /// The instance's role lacks a permission the document uses.
    InstanceRolePermission,
    /// The instance cannot reach the EC2 API.
    NoEc2Route,
    /// AwsVssComponents is missing or too old.
    VssComponents,
    /// Nothing to snapshot.
    NoEbsVolumes,
    /// The SSM agent is registered but not online.
    AgentOffline,
    /// The instance is not managed by SSM.
    AgentUnmanaged,
    /// The SSM agent is older than the deployment's minimum.
    AgentTooOld,
    /// The command never reached the agent.
    Undeliverable,
    /// The document ran past its execution timeout, or SSM never finished it.
    ExecutionTimedOut,
    /// SSM refused to run the document on the instance.
    SsmAccessDenied,
    /// Not a platform the document runs on.
    InvalidPlatform,
    /// The command was cancelled, or the instance stopped while it ran.
    Cancelled,
    /// A `ConsistentSnapshot:*` option tag has a value that is not understood.
    InvalidOption,
    /// A failover cluster node that does not own the cluster's disks, not tagged with its
    /// cluster: the document fails there.
    ClusterSecondary,
}

impl Cause {
    /// The cause's CloudWatch metric: how many servers of a run ended with it.
    pub fn metric(self) -> &'static str {
        match self {
            Cause::FreezeTimeout => "CauseFreezeTimeout",
            Cause::WriterFailed => "CauseWriterFailed",
            Cause::LanguageMode => "CauseLanguageMode",
            Cause::InstanceRolePermission => "CauseInstanceRolePermission",
            Cause::NoEc2Route => "CauseNoEc2Route",
            Cause::VssComponents => "CauseVssComponents",
            Cause::NoEbsVolumes => "CauseNoEbsVolumes",
            Cause::AgentOffline => "CauseAgentOffline",
            Cause::AgentUnmanaged => "CauseAgentUnmanaged",
            Cause::AgentTooOld => "CauseAgentTooOld",
            Cause::Undeliverable => "CauseUndeliverable",
            Cause::ExecutionTimedOut => "CauseExecutionTimedOut",
            Cause::SsmAccessDenied => "CauseSsmAccessDenied",
            Cause::InvalidPlatform => "CauseInvalidPlatform",
            Cause::Cancelled => "CauseCancelled",
            Cause::InvalidOption => "CauseInvalidOption",
            Cause::ClusterSecondary => "CauseClusterSecondary",
        }
    }

    /// One line: what to do about it.
    pub fn remediation(self) -> &'static str {
        match self {
            Cause::FreezeTimeout => "VSS holds writes for at most 10 s: schedule away from heavy I/O (native backups, index rebuilds, scans), exclude VSS and the SSM agent from antivirus, or move off t2/t3 nano and micro",
            Cause::WriterFailed => "run `vssadmin list writers` on the server and restart the failed writer's service (for SQL Server, SQL Writer); the next run retries",
            Cause::LanguageMode => "PowerShell is not in FullLanguage mode (AppLocker or WDAC policy): allow the SSM agent's scripts to run in FullLanguage",
            Cause::InstanceRolePermission => "attach the managed policy AWSEC2VssSnapshotPolicy to the instance profile's role",
            Cause::NoEc2Route => "give the instance a route to the EC2 API: an `ec2` interface VPC endpoint or a NAT gateway, and a proxy that allows ec2.<region>.amazonaws.com and the instance metadata service",
            Cause::VssComponents => "install or update AwsVssComponents (AWS-ConfigureAWSPackage), or set SSM_DOCUMENT=AWSEC2-VssInstallAndSnapshot",
            Cause::NoEbsVolumes => "attach an EBS volume, or clear ConsistentSnapshot:ExcludeBootVolume when the boot volume is the only one",
            Cause::AgentOffline => "start the SSM agent (service AmazonSSMAgent) and check that the instance reaches the SSM endpoints",
            Cause::AgentUnmanaged => "register the instance with SSM: the SSM agent installed and an instance profile with AmazonSSMManagedInstanceCore",
            Cause::AgentTooOld => "update the SSM agent (AWS-UpdateSSMAgent) to MIN_SSM_AGENT_VERSION or later",
            Cause::Undeliverable => "the SSM agent did not pick the command up: check that it runs and reaches the SSM endpoints",
            Cause::ExecutionTimedOut => "the document did not finish in time: check the server's I/O load and its VSS event log, or raise VSS_EXECUTION_TIMEOUT_SECONDS",
            Cause::SsmAccessDenied => "SSM could not run the document on the instance: check the agent's run-as settings and the document's permissions",
            Cause::InvalidPlatform => "the VSS documents run on Windows only: remove the target tag from this instance",
            Cause::Cancelled => "the command was cancelled or the instance stopped during it: nothing to fix unless it repeats",
            Cause::InvalidOption => "set the ConsistentSnapshot:* option tags to true or false, and not NoWriters with SaveVssMetadata (the document refuses them together)",
            Cause::ClusterSecondary => "tag every node of the failover cluster ConsistentSnapshot:Cluster=<cluster name>: each run then sends the VSS command to the node that owns the disks only",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::FreezeTimeout => "VSS freeze timed out",
            Cause::WriterFailed => "VSS writer failed",
            Cause::LanguageMode => "PowerShell language mode",
            Cause::InstanceRolePermission => "instance role permission",
            Cause::NoEc2Route => "no route to the EC2 API",
            Cause::VssComponents => "AwsVssComponents missing",
            Cause::NoEbsVolumes => "no EBS volume",
            Cause::AgentOffline => "SSM agent offline",
            Cause::AgentUnmanaged => "not managed by SSM",
            Cause::AgentTooOld => "SSM agent too old",
            Cause::Undeliverable => "command undeliverable",
            Cause::ExecutionTimedOut => "document timed out",
            Cause::SsmAccessDenied => "SSM access denied",
            Cause::InvalidPlatform => "not Windows",
            Cause::Cancelled => "cancelled",
            Cause::InvalidOption => "invalid option tag",
            Cause::ClusterSecondary => "cluster secondary node",
        })
    }
}

/// The document's texts, each with its cause, most telling first: a freeze that timed out
/// often also names a writer, and an unreachable API also reads as an exception.
const TEXTS: [(&[&str], Cause); 7] = [
    (
        &[
            "thaw pipe connection timed out",
            "error on thaw",
            "timeout waiting for vss freeze",
            "vss_e_flush_writes_timeout",
            "vss_e_hold_writes_timeout",
        ],
        Cause::FreezeTimeout,
    ),
    (&["language mode"], Cause::LanguageMode),
    (
        &[
            "unauthorizedoperation",
            "not authorized to perform",
            "accessdeniedexception",
        ],
        Cause::InstanceRolePermission,
    ),
    (
        &[
            "unable to connect to the remote server",
            "could not connect to the endpoint",
            "remote name could not be resolved",
            "no such host is known",
        ],
        Cause::NoEc2Route,
    ),
    (
        &[
            "awsvsscomponents is not installed",
            "awsvsscomponents was not found",
            "ec2-vss-agent.exe could not be found",
            "ec2-vss-agent.exe is not recognized",
            "awsvsscomponents is older",
        ],
        Cause::VssComponents,
    ),
    (&["vss_e_writererror", "writer failed"], Cause::WriterFailed),
    (&["no ebs volume"], Cause::NoEbsVolumes),
];

/// The cause of a VSS command that did not leave a consistent set, from what SSM reported:
/// the document's output first, then the status details. `None`: nothing known matched (the
/// reason still quotes the output).
pub fn cause_of_invocation(status_details: &str, output: &str) -> Option<Cause> {
    let text = output.to_ascii_lowercase();
    if let Some((_, cause)) = TEXTS
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| text.contains(n)))
    {
        return Some(*cause);
    }
    // Windows names the writer: "Writer 'SqlServerWriter' failed", "State: [8] Failed".
    if text
        .lines()
        .any(|l| l.contains("writer") && l.contains("failed"))
    {
        return Some(Cause::WriterFailed);
    }
    let details: String = status_details
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    match details.as_str() {
        "undeliverable" | "deliverytimedout" => Some(Cause::Undeliverable),
        "executiontimedout" | "timedout" => Some(Cause::ExecutionTimedOut),
        "accessdenied" => Some(Cause::SsmAccessDenied),
        "invalidplatform" => Some(Cause::InvalidPlatform),
        "cancelled" | "terminated" => Some(Cause::Cancelled),
        _ => None,
    }
}

/// The cause of a command still not final at its deadline, from the last status SSM gave:
/// never started on the instance, or started and never finished.
pub fn cause_of_deadline(status: &str) -> Cause {
    match status {
        "Pending" | "Delayed" => Cause::Undeliverable,
        _ => Cause::ExecutionTimedOut,
    }
}

/// The cause behind a skip that needs fixing; `None` for a skip that is no fault (stopped,
/// not asked for, a VSS command already running).
pub fn cause_of_skip(reason: &SkipReason) -> Option<Cause> {
    match reason {
        SkipReason::NotWindows { .. } => Some(Cause::InvalidPlatform),
        SkipReason::SsmUnmanaged => Some(Cause::AgentUnmanaged),
        SkipReason::SsmOffline { .. } => Some(Cause::AgentOffline),
        SkipReason::AgentTooOld { .. } => Some(Cause::AgentTooOld),
        SkipReason::NoEbsVolumes => Some(Cause::NoEbsVolumes),
        SkipReason::InvalidOverride { .. } | SkipReason::InvalidCombination { .. } => {
            Some(Cause::InvalidOption)
        }
        SkipReason::NotRunning { .. }
        | SkipReason::NotTargeted
        | SkipReason::VssInProgress { .. }
        | SkipReason::ClusterSecondary { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cause.
    const CAUSES: [Cause; 16] = [
        Cause::FreezeTimeout,
        Cause::WriterFailed,
        Cause::LanguageMode,
        Cause::InstanceRolePermission,
        Cause::NoEc2Route,
        Cause::VssComponents,
        Cause::NoEbsVolumes,
        Cause::AgentOffline,
        Cause::AgentUnmanaged,
        Cause::AgentTooOld,
        Cause::Undeliverable,
        Cause::ExecutionTimedOut,
        Cause::SsmAccessDenied,
        Cause::InvalidPlatform,
        Cause::Cancelled,
        Cause::InvalidOption,
    ];

    /// AWS's documented failure texts, as the documents and Windows print them.
    #[test]
    fn each_documented_failure_text_names_its_cause() {
        let cases = [
            ("Thaw pipe connection timed out. error on thaw", Cause::FreezeTimeout),
            ("ERROR: Timeout waiting for VSS Freeze", Cause::FreezeTimeout),
            (
                "Method invocation is supported only on core types in this language mode.",
                Cause::LanguageMode,
            ),
            (
                "An error occurred (UnauthorizedOperation) when calling the CreateSnapshots operation: You are not authorized to perform this operation.",
                Cause::InstanceRolePermission,
            ),
            (
                "Unable to connect to the remote server (https://ec2.eu-west-1.amazonaws.com)",
                Cause::NoEc2Route,
            ),
            (
                "The term 'C:\\Program Files\\Amazon\\AwsVssComponents\\ec2-vss-agent.exe' is not recognized: ec2-vss-agent.exe could not be found",
                Cause::VssComponents,
            ),
            (
                "Writer 'SqlServerWriter' failed: VSS_E_WRITERERROR_RETRYABLE",
                Cause::WriterFailed,
            ),
            (
                "Writer name: 'Microsoft Exchange Writer' State: [8] Failed",
                Cause::WriterFailed,
            ),
            (
                "Exception: No EBS volumes are attached to this instance",
                Cause::NoEbsVolumes,
            ),
        ];
        for (text, cause) in cases {
            assert_eq!(
                cause_of_invocation("Failed", &format!("Created snap-1\n{text}")),
                Some(cause),
                "{text}"
            );
        }
        // A freeze that timed out because a writer was slow is a freeze timeout: that is
        // what the remediation addresses.
        assert_eq!(
            cause_of_invocation(
                "Failed",
                "Writer 'SqlServerWriter' failed\nTimeout waiting for VSS Freeze"
            ),
            Some(Cause::FreezeTimeout)
        );
    }

    #[test]
    fn ssm_status_details_name_a_cause_when_the_output_says_nothing() {
        let cases = [
            ("Undeliverable", Some(Cause::Undeliverable)),
            ("DeliveryTimedOut", Some(Cause::Undeliverable)),
            ("Delivery Timed Out", Some(Cause::Undeliverable)),
            ("ExecutionTimedOut", Some(Cause::ExecutionTimedOut)),
            ("Access Denied", Some(Cause::SsmAccessDenied)),
            ("InvalidPlatform", Some(Cause::InvalidPlatform)),
            ("Terminated", Some(Cause::Cancelled)),
            ("Failed", None),
        ];
        for (details, cause) in cases {
            assert_eq!(cause_of_invocation(details, "\n"), cause, "{details}");
        }
        // An unknown text is no cause: the reason quotes it, nothing is guessed.
        assert_eq!(
            cause_of_invocation("Failed", "something odd happened"),
            None
        );
    }

    #[test]
    fn a_command_that_never_started_is_undeliverable_one_that_never_ended_timed_out() {
        assert_eq!(cause_of_deadline("Pending"), Cause::Undeliverable);
        assert_eq!(cause_of_deadline("Delayed"), Cause::Undeliverable);
        assert_eq!(cause_of_deadline("InProgress"), Cause::ExecutionTimedOut);
    }

    #[test]
    fn skips_that_need_fixing_have_a_cause_and_the_others_none() {
        assert_eq!(
            cause_of_skip(&SkipReason::SsmOffline {
                ping_status: "ConnectionLost".into()
            }),
            Some(Cause::AgentOffline)
        );
        assert_eq!(
            cause_of_skip(&SkipReason::AgentTooOld {
                found: "2.2.45.0".into(),
                minimum: "2.2.58.0".into()
            }),
            Some(Cause::AgentTooOld)
        );
        assert_eq!(
            cause_of_skip(&SkipReason::NotRunning {
                state: "stopped".into()
            }),
            None
        );
    }

    #[test]
    fn every_cause_has_its_own_metric_and_a_fix() {
        let metrics: std::collections::BTreeSet<&str> = CAUSES.iter().map(|c| c.metric()).collect();
        assert_eq!(metrics.len(), CAUSES.len());
        assert!(CAUSES
            .iter()
            .all(|c| !c.remediation().is_empty() && c.metric().starts_with("Cause")));
    }
}
