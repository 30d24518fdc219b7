//! The readiness probe: what only the server itself can say before the night. One read-only
//! PowerShell command (the deployment's own SSM document, `ReadinessProbeDocument` in the
//! template, no parameters) prints one line, `CSPROBE {json}`; this module chooses the servers
//! it is sent to and reads that line (`readiness` turns it into checks). Pure.
//!
//! The line is written by the server: a hint, like a tag. It adds warnings or failures to a
//! readiness answer, and it may move a failover cluster's VSS command between the cluster's
//! own nodes (`run::plan::cluster`, only when every node agrees); it never takes a server out
//! of a run nor decides what a set is.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

use crate::model::command::Invocation;
use crate::model::fleet::{AgentFacts, InstanceFacts};
use crate::model::state::{CommandStatus, InstanceState, PingStatus};

/// What the probe's line starts with.
pub const PROBE_MARKER: &str = "CSPROBE ";
/// The probe line's format version this function reads.
pub const PROBE_VERSION: u32 = 1;

/// The probe's line, as the server printed it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProbeFacts {
    pub v: u32,
    /// `$ExecutionContext.SessionState.LanguageMode`: FullLanguage, ConstrainedLanguage, …
    #[serde(default)]
    pub language_mode: Option<String>,
    /// How many VSS writers `vssadmin list writers` listed.
    #[serde(default)]
    pub writers: u32,
    /// The writers not `Stable` or with a last error, as `name (state, last error)`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub failed_writers: Vec<String>,
    /// AwsVssComponents' version, `null` when `ec2-vss-agent.exe` is not installed.
    #[serde(default)]
    pub components: Option<String>,
    /// Disks with Logical Disk Manager (dynamic) partitions.
    #[serde(default)]
    pub dynamic_disks: u32,
    /// The failover cluster the node belongs to, if the cluster service runs.
    #[serde(default)]
    pub cluster: Option<ClusterFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClusterFacts {
    #[serde(default)]
    pub name: String,
    /// The cluster's Physical Disk resources.
    #[serde(default)]
    pub disks: u32,
    /// How many of them this node owns.
    #[serde(default)]
    pub owned_here: u32,
}

/// PowerShell 5.1's ConvertTo-Json may write a one-element array as the element itself.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Nothing(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Nothing(()) => Vec::new(),
    })
}

/// What the probe came to on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The probe ran and printed its line.
    Answered(ProbeFacts),
    /// The probe ran (or was meant to) and gave nothing readable: SSM's status, and why.
    Unreadable(String),
    /// No final answer within the probe's wait.
    NoAnswer(String),
    /// Not sent: why (the agent is not online, the server is not running, SendCommand refused).
    NotSent(String),
}

/// Which servers the probe is sent to (running Windows servers whose agent is online), and
/// why each other one is not probed.
pub fn probe_targets(
    fleet: &[InstanceFacts],
    agents: &HashMap<String, AgentFacts>,
) -> (Vec<String>, HashMap<String, ProbeResult>) {
    let mut send = Vec::new();
    let mut not_sent = HashMap::new();
    for instance in fleet {
        let agent = agents.get(&instance.instance_id);
        let why = match agent {
            _ if instance.state != InstanceState::Running => {
                Some(format!("not sent: the server is {}", instance.state))
            }
            _ if !instance.is_windows(agent) => Some("not sent: not a Windows server".into()),
            None => Some("not sent: the server is not managed by SSM".into()),
            Some(a) if a.ping_status != PingStatus::Online => {
                Some(format!("not sent: its SSM agent is {}", a.ping_status))
            }
            Some(_) => None,
        };
        match why {
            Some(why) => {
                not_sent.insert(instance.instance_id.clone(), ProbeResult::NotSent(why));
            }
            None => send.push(instance.instance_id.clone()),
        }
    }
    (send, not_sent)
}

/// What one of the probe's invocations says; `None` while it is not final.
pub fn probe_result(invocation: &Invocation) -> Option<ProbeResult> {
    if !invocation.status.is_final() {
        return None;
    }
    Some(match parse_probe(&invocation.output) {
        Ok(facts) => ProbeResult::Answered(facts),
        Err(why) if invocation.status == CommandStatus::Success => ProbeResult::Unreadable(why),
        Err(_) => ProbeResult::Unreadable(format!(
            "the probe ended {} ({})",
            invocation.status, invocation.status_details
        )),
    })
}

/// Reads the probe's line out of a command's output; the last such line counts.
pub fn parse_probe(output: &str) -> Result<ProbeFacts, String> {
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(PROBE_MARKER))
        .ok_or_else(|| format!("no {} line in the output", PROBE_MARKER.trim()))?;
    let facts: ProbeFacts =
        serde_json::from_str(line).map_err(|e| format!("the probe's line is not readable: {e}"))?;
    if facts.v != PROBE_VERSION {
        return Err(format!(
            "probe format {} (this function reads {PROBE_VERSION}): redeploy the stack's probe document",
            facts.v
        ));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> String {
        format!("some noise\r\n{PROBE_MARKER}{json}\r\n")
    }

    #[test]
    fn the_last_probe_line_is_read_and_a_bare_string_is_one_writer() {
        let facts = parse_probe(&format!(
            "{}{}",
            line(r#"{"v":1,"writers":1}"#),
            line(r#"{"v":1,"language_mode":"ConstrainedLanguage","writers":12,"failed_writers":"SqlServerWriter (Failed, Retryable error)","components":null,"dynamic_disks":2,"cluster":{"name":"SQLCLU","disks":2,"owned_here":0}}"#)
        ))
        .expect("parsed");
        assert_eq!(facts.language_mode.as_deref(), Some("ConstrainedLanguage"));
        assert_eq!(
            facts.failed_writers,
            ["SqlServerWriter (Failed, Retryable error)"]
        );
        assert_eq!((facts.components, facts.dynamic_disks), (None, 2));
        assert_eq!(
            facts.cluster,
            Some(ClusterFacts {
                name: "SQLCLU".into(),
                disks: 2,
                owned_here: 0
            })
        );
    }

    #[test]
    fn an_unreadable_line_or_another_format_is_an_error() {
        for output in [
            "",
            "CSPROBE {not json",
            "CSPROBE {\"v\":2}",
            "Method invocation is supported only on core types in this language mode.",
        ] {
            assert!(parse_probe(output).is_err(), "{output:?}");
        }
    }

    #[test]
    fn a_final_invocation_is_a_result_and_a_running_one_is_not() {
        let invocation = |status: CommandStatus, output: &str| Invocation {
            instance_id: "i-1".into(),
            status_details: status.to_string(),
            status,
            output: output.into(),
        };
        assert_eq!(
            probe_result(&invocation(CommandStatus::InProgress, "")),
            None
        );
        assert!(matches!(
            probe_result(&invocation(CommandStatus::Success, &line(r#"{"v":1}"#))),
            Some(ProbeResult::Answered(_))
        ));
        assert!(matches!(
            probe_result(&invocation(CommandStatus::TimedOut, "")),
            Some(ProbeResult::Unreadable(why)) if why.contains("TimedOut")
        ));
    }
}
