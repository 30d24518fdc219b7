//! Readiness: before the night, which tagged servers will not get a consistent set, and why. A
//! checklist per server (pass / warn / fail / unknown, each failure with its named cause and
//! fix), a pure function of what EC2 and SSM say of it — the same facts preflight and the
//! Windows side depend on.

use serde::Serialize;

use crate::config::Config;
use crate::model::cause::Cause;
use crate::model::fleet::{AgentFacts, InstanceFacts, RouteFacts, SkipReason};
use crate::model::ids::AgentVersion;
use crate::model::permissions::RoleFacts;
use crate::model::probe::ProbeResult;
use crate::model::state::{InstanceState, PingStatus};
use crate::model::tags::TAG_CLUSTER;
use crate::run::plan::preflight::preflight;

/// SSM Agent 3.3.1311.0 broke `AWS-ConfigureAWSPackage` installs of AwsVssComponents.
pub const KNOWN_BAD_AGENT: &str = "3.3.1311.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Not known from here (it needs a look on the instance).
    Unknown,
    Warn,
    Fail,
}

/// One check of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub result: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<&'static str>,
}

impl Check {
    pub(crate) fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Check {
            check,
            result: Verdict::Pass,
            detail: detail.into(),
            cause: None,
            fix: None,
        }
    }

    pub(crate) fn fail(check: &'static str, detail: impl Into<String>, cause: Cause) -> Self {
        Check {
            check,
            result: Verdict::Fail,
            detail: detail.into(),
            cause: Some(cause),
            fix: Some(cause.remediation()),
        }
    }

    pub(crate) fn warn(check: &'static str, detail: impl Into<String>, fix: &'static str) -> Self {
        Check {
            check,
            result: Verdict::Warn,
            detail: detail.into(),
            cause: None,
            fix: Some(fix),
        }
    }

    pub(crate) fn unknown(check: &'static str, detail: impl Into<String>) -> Self {
        Check {
            check,
            result: Verdict::Unknown,
            detail: detail.into(),
            cause: None,
            fix: None,
        }
    }
}

/// One server's readiness: its worst check, and every check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub instance_id: String,
    pub name: String,
    pub verdict: Verdict,
    pub checks: Vec<Check>,
}

/// At most this many characters of any text the probe reported are shown (its line is
/// written by the server).
const SHOWN: usize = 120;
/// At most this many failed writers are named.
const WRITERS_SHOWN: usize = 8;

/// A server's text, cut to what is shown.
fn shown(text: &str) -> String {
    let mut t: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(SHOWN)
        .collect();
    if text.chars().count() > SHOWN {
        t.push('…');
    }
    t
}

/// The on-instance checks of one server from its probe.
pub fn probe_checks(result: &ProbeResult) -> Vec<Check> {
    let facts = match result {
        ProbeResult::Answered(facts) => facts,
        ProbeResult::Unreadable(why) | ProbeResult::NoAnswer(why) | ProbeResult::NotSent(why) => {
            return vec![Check::unknown("on_instance", format!("probe: {why}"))];
        }
    };
    let mut checks = Vec::new();
    checks.push(match facts.language_mode.as_deref() {
        Some("FullLanguage") => Check::pass("language_mode", "PowerShell in FullLanguage mode"),
        Some(mode) => Check::fail(
            "language_mode",
            format!(
                "PowerShell runs in {}: the VSS document cannot",
                shown(mode)
            ),
            Cause::LanguageMode,
        ),
        None => Check::unknown("language_mode", "not reported"),
    });
    checks.push(if !facts.failed_writers.is_empty() {
        let named: Vec<String> = facts
            .failed_writers
            .iter()
            .take(WRITERS_SHOWN)
            .map(|w| shown(w))
            .collect();
        let more = facts.failed_writers.len().saturating_sub(WRITERS_SHOWN);
        Check::fail(
            "vss_writers",
            format!(
                "{} of {} writer(s) not stable: {}{}",
                facts.failed_writers.len(),
                facts.writers.max(facts.failed_writers.len() as u32),
                named.join("; "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
            Cause::WriterFailed,
        )
    } else if facts.writers == 0 {
        Check::unknown(
            "vss_writers",
            "vssadmin listed no writers (its output is read in English only)",
        )
    } else {
        Check::pass("vss_writers", format!("{} writer(s) stable", facts.writers))
    });
    checks.push(match facts.components.as_deref() {
        Some(v) if !v.trim().is_empty() => Check::pass(
            "aws_vss_components",
            format!("AwsVssComponents {}", shown(v)),
        ),
        _ => Check::fail(
            "aws_vss_components",
            "AwsVssComponents is not installed (no ec2-vss-agent.exe)",
            Cause::VssComponents,
        ),
    });
    checks.push(match facts.dynamic_disks {
        0 => Check::pass("dynamic_disks", "basic disks only"),
        n => Check::warn(
            "dynamic_disks",
            format!("{n} dynamic disk(s)"),
            "a dynamic disk restored to another server shows as a foreign disk to import, and a volume spanning disks needs every one of them: restore the whole set together",
        ),
    });
    checks.push(match &facts.cluster {
        None => Check::pass("cluster", "not a failover cluster node"),
        Some(c) if c.disks > 0 && c.owned_here >= c.disks => Check::pass(
            "cluster",
            format!(
                "node of cluster {} owning its {} disk(s)",
                shown(&c.name),
                c.disks
            ),
        ),
        Some(c) if c.disks == 0 => Check::pass(
            "cluster",
            format!("node of cluster {} (no shared disks)", shown(&c.name)),
        ),
        Some(c) => Check::fail(
            "cluster",
            format!(
                "node of cluster {} owning {} of its {} disk(s): the VSS document fails on a node that does not own them",
                shown(&c.name),
                c.owned_here,
                c.disks
            ),
            Cause::ClusterSecondary,
        ),
    });
    checks
}

/// A secondary node already tagged with its cluster is ready: each run sends the command to
/// the owner (`run::plan::cluster`), not to it.
fn cluster_tagged(mut checks: Vec<Check>, instance: &InstanceFacts) -> Vec<Check> {
    if let Some(name) = instance.tags.get(TAG_CLUSTER) {
        for check in checks
            .iter_mut()
            .filter(|c| c.check == "cluster" && c.result == Verdict::Fail)
        {
            *check = Check::pass(
                "cluster",
                format!(
                    "{}; tagged {TAG_CLUSTER}={}: each run sends the VSS command to the node that owns the disks",
                    check.detail,
                    shown(name)
                ),
            );
        }
    }
    checks
}

/// Windows Server 2016 (10.0.14393) or later: what the current VSS documents run on. SSM
/// reports the version (`PlatformVersion`); 2012 R2 (6.3) and 2008 R2 (6.1) need the older
/// document versions AWS pins for them.
fn windows_version(instance: &InstanceFacts, agent: Option<&AgentFacts>) -> Check {
    let Some(version) = agent.and_then(|a| a.platform_version.as_deref()) else {
        return Check::unknown("windows_version", "SSM reports no OS version");
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), _) if major >= 10 => {
            Check::pass("windows_version", format!("Windows {version}"))
        }
        (Some(major), Some(minor)) if instance.is_windows(agent) => Check {
            check: "windows_version",
            result: Verdict::Fail,
            detail: format!(
                "Windows {major}.{minor} ({version}): the current VSS documents need Windows Server 2016 or later"
            ),
            cause: Some(Cause::InvalidPlatform),
            fix: Some("upgrade to Windows Server 2016 or later, or run the older version of the VSS document that AWS pins for Windows Server 2012 R2"),
        },
        _ => Check::unknown("windows_version", format!("{version:?} is not a version")),
    }
}

/// Instance types whose freeze window is known to be too tight (AWS's troubleshooting page).
fn too_small(instance_type: &str) -> bool {
    let (family, size) = instance_type.split_once('.').unwrap_or((instance_type, ""));
    matches!(family, "t2" | "t3" | "t3a") && matches!(size, "nano" | "micro")
}

/// The checklist of one tagged server; with its probe's result, the checks only the server
/// itself can answer too.
pub fn readiness(
    instance: &InstanceFacts,
    agent: Option<&AgentFacts>,
    routes: &RouteFacts,
    probe: Option<&ProbeResult>,
    role: Option<&RoleFacts>,
    config: &Config,
) -> Readiness {
    let mut checks = Vec::new();
    checks.push(match &instance.state {
        InstanceState::Running => Check::pass("state", "running"),
        InstanceState::Stopped => Check::warn(
            "state",
            "stopped: skipped while it is stopped",
            "start it before the schedule, or remove the target tag",
        ),
        other => Check::warn(
            "state",
            format!("{other}: skipped unless running"),
            "start it before the schedule, or remove the target tag",
        ),
    });
    checks.push(if instance.is_windows(agent) {
        Check::pass("windows", "a Windows instance")
    } else {
        Check::fail("windows", "not a Windows instance", Cause::InvalidPlatform)
    });
    checks.push(match agent {
        _ if instance.state != InstanceState::Running => Check::unknown(
            "ssm_agent",
            "not running: its agent is checked once it runs",
        ),
        None => Check::fail(
            "ssm_agent",
            "not registered with SSM",
            Cause::AgentUnmanaged,
        ),
        Some(a) if a.ping_status != PingStatus::Online => Check::fail(
            "ssm_agent",
            format!("agent {} is {}", a.agent_version, a.ping_status),
            Cause::AgentOffline,
        ),
        Some(a) => match AgentVersion::parse(&a.agent_version) {
            Some(v) if v < config.min_ssm_agent_version => Check::fail(
                "ssm_agent",
                format!(
                    "agent {} is older than {}",
                    a.agent_version, config.min_ssm_agent_version
                ),
                Cause::AgentTooOld,
            ),
            None => Check::fail(
                "ssm_agent",
                format!("agent version {:?} is not readable", a.agent_version),
                Cause::AgentTooOld,
            ),
            Some(_) if a.agent_version == KNOWN_BAD_AGENT => Check::warn(
                "ssm_agent",
                format!("agent {KNOWN_BAD_AGENT} is online, but cannot install AwsVssComponents"),
                "update the SSM agent (AWS-UpdateSSMAgent) before installing or updating AwsVssComponents",
            ),
            Some(_) => Check::pass("ssm_agent", format!("agent {} online", a.agent_version)),
        },
    });
    // The option tags and the volumes, as preflight reads them (with a stand-in agent, so that
    // an offline agent does not hide a bad tag).
    let online = AgentFacts {
        ping_status: "Online".into(),
        agent_version: "99.0.0.0".into(),
        platform_type: Some("Windows".into()),
        platform_version: None,
    };
    let running = InstanceFacts {
        state: InstanceState::Running,
        platform: Some("windows".into()),
        ..instance.clone()
    };
    match preflight(&running, Some(&online), config) {
        Ok(target) => {
            checks.push(Check::pass("options", "option tags valid"));
            checks.push(Check::pass(
                "volumes",
                format!("{} EBS volume(s) to snapshot", target.volumes.len()),
            ));
        }
        Err(SkipReason::NoEbsVolumes) => {
            checks.push(Check::pass("options", "option tags valid"));
            checks.push(Check::fail(
                "volumes",
                "no EBS volume to snapshot",
                Cause::NoEbsVolumes,
            ));
        }
        Err(why) => {
            checks.push(Check::fail(
                "options",
                why.to_string(),
                Cause::InvalidOption,
            ));
        }
    }
    checks.push(windows_version(instance, agent));
    checks.push(match instance.host.instance_store_gb {
        Some(0) => Check::pass("instance_store", "no instance-store volume"),
        Some(gb) => Check::warn(
            "instance_store",
            format!(
                "{} comes with {gb} GB of instance-store volumes: no snapshot protects them, and they are empty after a stop",
                instance.host.instance_type.as_deref().unwrap_or("its type")
            ),
            "keep nothing that must be backed up on instance-store volumes (tempdb or a page file only)",
        ),
        None => Check::unknown("instance_store", "the instance type was not read"),
    });
    checks.push(match instance.host.instance_type.as_deref() {
        Some(t) if too_small(t) => Check::warn(
            "instance_type",
            format!("{t}: VSS freezes often time out on nano and micro instances"),
            Cause::FreezeTimeout.remediation(),
        ),
        Some(t) => Check::pass("instance_type", t),
        None => Check::unknown("instance_type", "not reported"),
    });
    checks.push(match (&instance.host.instance_profile, role) {
        (None, _) => Check::fail(
            "instance_profile",
            "no instance profile: the document cannot call EC2 from the instance",
            Cause::InstanceRolePermission,
        ),
        (Some(arn), None) => Check::pass(
            "instance_profile",
            format!("{arn} (its role's permissions are simulated by readiness only)"),
        ),
        (Some(arn), Some(RoleFacts::Unknown(why))) => {
            Check::unknown("instance_profile", format!("{arn}: not simulated: {why}"))
        }
        (Some(_), Some(RoleFacts::Simulated { role, denied })) if denied.is_empty() => Check::pass(
            "instance_profile",
            format!("{role} allows every call the VSS document makes (simulated)"),
        ),
        (Some(_), Some(RoleFacts::Simulated { role, denied })) => Check::fail(
            "instance_profile",
            format!(
                "{role} does not allow {} (simulated): attach AWSEC2VssSnapshotPolicy",
                denied.join(", ")
            ),
            Cause::InstanceRolePermission,
        ),
    });
    checks.push(match routes.reaches_ec2(&instance.host) {
        Some(true) => Check::pass("ec2_route", "a default route or an ec2 endpoint"),
        Some(false) => Check::fail(
            "ec2_route",
            format!(
                "subnet {} has no default route and its VPC no ec2 endpoint",
                instance.host.subnet_id.as_deref().unwrap_or("-")
            ),
            Cause::NoEc2Route,
        ),
        None => Check::unknown("ec2_route", "the subnet's routes were not read"),
    });
    match probe {
        Some(result) => checks.extend(cluster_tagged(probe_checks(result), instance)),
        None => checks.push(Check::unknown(
            "on_instance",
            "PowerShell language mode, VSS writers, AwsVssComponents, dynamic disks and the cluster role need a look on the instance (`probe: true`)",
        )),
    }
    // The worst of what is known: an unknown is listed, not a verdict.
    let verdict = checks
        .iter()
        .map(|c| c.result)
        .filter(|r| *r != Verdict::Unknown)
        .max()
        .unwrap_or(Verdict::Pass);
    Readiness {
        instance_id: instance.instance_id.clone(),
        name: instance.display_name().to_string(),
        verdict,
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fleet::{AttachedVolume, HostFacts};
    use crate::model::probe::{parse_probe, PROBE_MARKER};
    use crate::run::plan::preflight::tests::config;
    use std::collections::BTreeMap;

    fn server() -> InstanceFacts {
        InstanceFacts {
            instance_id: "i-1".into(),
            name: Some("sql01".into()),
            state: "running".into(),
            platform: Some("windows".into()),
            platform_details: Some("Windows".into()),
            root_device: Some("/dev/sda1".into()),
            volumes: vec![AttachedVolume {
                volume_id: "vol-1".into(),
                device: "/dev/sda1".into(),
            }],
            tags: BTreeMap::new(),
            host: HostFacts {
                instance_type: Some("m5.large".into()),
                instance_profile: Some("arn:aws:iam::1:instance-profile/vss".into()),
                subnet_id: Some("subnet-1".into()),
                vpc_id: Some("vpc-1".into()),
                instance_store_gb: Some(0),
            },
        }
    }

    fn agent(ping: &str, version: &str) -> AgentFacts {
        AgentFacts {
            ping_status: ping.into(),
            agent_version: version.into(),
            platform_type: Some("Windows".into()),
            platform_version: None,
        }
    }

    fn routed() -> RouteFacts {
        RouteFacts {
            main_routes: [("vpc-1".to_string(), true)].into(),
            ..RouteFacts::default()
        }
    }

    fn failed(r: &Readiness) -> Vec<(&str, Option<Cause>)> {
        r.checks
            .iter()
            .filter(|c| c.result == Verdict::Fail)
            .map(|c| (c.check, c.cause))
            .collect()
    }

    #[test]
    fn a_ready_server_passes_everything_it_can_see_from_here() {
        let r = readiness(
            &server(),
            Some(&agent("Online", "3.3.40.0")),
            &routed(),
            None,
            None,
            &config(),
        );
        assert_eq!(r.verdict, Verdict::Pass);
        assert!(r
            .checks
            .iter()
            .any(|c| c.check == "on_instance" && c.result == Verdict::Unknown));
        assert!(failed(&r).is_empty());
    }

    #[test]
    fn each_failing_fact_names_its_check_and_cause() {
        let c = config();
        let ok = agent("Online", "3.3.40.0");
        let offline = readiness(
            &server(),
            Some(&agent("ConnectionLost", "3.3.40.0")),
            &routed(),
            None,
            None,
            &c,
        );
        assert_eq!(failed(&offline), [("ssm_agent", Some(Cause::AgentOffline))]);
        let old = readiness(
            &server(),
            Some(&agent("Online", "2.2.45.0")),
            &routed(),
            None,
            None,
            &c,
        );
        assert_eq!(failed(&old), [("ssm_agent", Some(Cause::AgentTooOld))]);
        let mut both = server();
        both.tags
            .insert("ConsistentSnapshot:NoWriters".into(), "true".into());
        both.tags
            .insert("ConsistentSnapshot:SaveVssMetadata".into(), "true".into());
        let r = readiness(
            &both,
            Some(&agent("ConnectionLost", "1")),
            &routed(),
            None,
            None,
            &c,
        );
        assert!(
            failed(&r).contains(&("options", Some(Cause::InvalidOption))),
            "{r:?}"
        );
        let mut bare = server();
        bare.host.instance_profile = None;
        assert_eq!(
            failed(&readiness(&bare, Some(&ok), &routed(), None, None, &c)),
            [("instance_profile", Some(Cause::InstanceRolePermission))]
        );
        let private = RouteFacts {
            main_routes: [("vpc-1".to_string(), false)].into(),
            ..RouteFacts::default()
        };
        assert_eq!(
            failed(&readiness(&server(), Some(&ok), &private, None, None, &c)),
            [("ec2_route", Some(Cause::NoEc2Route))]
        );
        // An ec2 endpoint in the VPC is a route too.
        let endpoint = RouteFacts {
            ec2_endpoints: ["vpc-1".to_string()].into(),
            ..private
        };
        assert!(failed(&readiness(&server(), Some(&ok), &endpoint, None, None, &c)).is_empty());
    }

    #[test]
    fn small_instances_and_the_known_bad_agent_are_warnings() {
        let mut tiny = server();
        tiny.host.instance_type = Some("t3.micro".into());
        let r = readiness(
            &tiny,
            Some(&agent("Online", KNOWN_BAD_AGENT)),
            &routed(),
            None,
            None,
            &config(),
        );
        assert_eq!(r.verdict, Verdict::Warn);
        let warned: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| c.result == Verdict::Warn)
            .map(|c| c.check)
            .collect();
        assert_eq!(warned, ["ssm_agent", "instance_type"]);
        assert!(!too_small("t3.large") && !too_small("m5.large") && too_small("t2.nano"));
    }

    fn line(json: &str) -> String {
        format!("some noise\r\n{PROBE_MARKER}{json}\r\n")
    }

    fn verdicts(result: &ProbeResult) -> Vec<(&'static str, Verdict, Option<Cause>)> {
        probe_checks(result)
            .into_iter()
            .map(|c| (c.check, c.result, c.cause))
            .collect()
    }

    const HEALTHY: &str = r#"{"v":1,"language_mode":"FullLanguage","writers":12,"failed_writers":[],"components":"2.5.0","dynamic_disks":0,"cluster":null}"#;

    #[test]
    fn a_healthy_server_passes_every_check() {
        let facts = parse_probe(&line(HEALTHY)).expect("parsed");
        assert_eq!(
            verdicts(&ProbeResult::Answered(facts)),
            vec![
                ("language_mode", Verdict::Pass, None),
                ("vss_writers", Verdict::Pass, None),
                ("aws_vss_components", Verdict::Pass, None),
                ("dynamic_disks", Verdict::Pass, None),
                ("cluster", Verdict::Pass, None),
            ]
        );
    }

    #[test]
    fn each_problem_the_server_reports_is_its_named_cause() {
        let facts = parse_probe(&line(
            r#"{"v":1,"language_mode":"ConstrainedLanguage","writers":12,"failed_writers":"SqlServerWriter (Failed, Retryable error)","components":null,"dynamic_disks":2,"cluster":{"name":"SQLCLU","disks":2,"owned_here":0}}"#,
        ))
        .expect("parsed");
        assert_eq!(facts.failed_writers.len(), 1, "one writer as a bare string");
        let checks = probe_checks(&ProbeResult::Answered(facts));
        let got: Vec<_> = checks
            .iter()
            .map(|c| (c.check, c.result, c.cause))
            .collect();
        assert_eq!(
            got,
            vec![
                ("language_mode", Verdict::Fail, Some(Cause::LanguageMode)),
                ("vss_writers", Verdict::Fail, Some(Cause::WriterFailed)),
                (
                    "aws_vss_components",
                    Verdict::Fail,
                    Some(Cause::VssComponents)
                ),
                ("dynamic_disks", Verdict::Warn, None),
                ("cluster", Verdict::Fail, Some(Cause::ClusterSecondary)),
            ]
        );
        assert!(checks[1].detail.contains("SqlServerWriter"), "{checks:?}");
        assert!(checks
            .iter()
            .all(|c| c.result != Verdict::Fail || c.fix.is_some()));
    }

    #[test]
    fn an_unreadable_or_missing_probe_answer_is_unknown_never_a_pass() {
        for output in ["", "CSPROBE {not json"] {
            let result = match parse_probe(output) {
                Ok(facts) => ProbeResult::Answered(facts),
                Err(why) => ProbeResult::Unreadable(why),
            };
            assert_eq!(
                verdicts(&result),
                vec![("on_instance", Verdict::Unknown, None)],
                "{output:?}"
            );
        }
        assert_eq!(
            verdicts(&ProbeResult::NoAnswer("no answer within 60 s".into())),
            vec![("on_instance", Verdict::Unknown, None)]
        );
    }

    #[test]
    fn what_the_server_wrote_is_cut_before_it_is_shown() {
        let long = "W".repeat(10_000);
        let facts = parse_probe(&line(&format!(
            r#"{{"v":1,"language_mode":"{long}","writers":1,"failed_writers":["{long}","{long}"],"components":"2.5.0"}}"#
        )))
        .expect("parsed");
        for check in probe_checks(&ProbeResult::Answered(facts)) {
            assert!(
                check.detail.len() < 1_000,
                "{}: {}",
                check.check,
                check.detail.len()
            );
        }
    }

    #[test]
    fn a_node_owning_its_clusters_disks_passes() {
        let facts = parse_probe(&line(
            r#"{"v":1,"language_mode":"FullLanguage","writers":3,"components":"2.5.0","cluster":{"name":"SQLCLU","disks":2,"owned_here":2}}"#,
        ))
        .expect("parsed");
        let checks = probe_checks(&ProbeResult::Answered(facts));
        assert_eq!(checks[4].result, Verdict::Pass, "{checks:?}");
    }

    #[test]
    fn an_older_windows_fails_and_instance_store_volumes_are_a_warning() {
        let c = config();
        let with_version = |v: &str| AgentFacts {
            platform_version: Some(v.into()),
            ..agent("Online", "3.3.40.0")
        };
        let r = readiness(
            &server(),
            Some(&with_version("6.3.9600")),
            &routed(),
            None,
            None,
            &c,
        );
        assert_eq!(
            failed(&r),
            [("windows_version", Some(Cause::InvalidPlatform))]
        );
        let r = readiness(
            &server(),
            Some(&with_version("10.0.20348")),
            &routed(),
            None,
            None,
            &c,
        );
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        let mut local = server();
        local.host.instance_store_gb = Some(75);
        let r = readiness(
            &local,
            Some(&with_version("10.0.20348")),
            &routed(),
            None,
            None,
            &c,
        );
        assert_eq!(r.verdict, Verdict::Warn);
        assert!(r
            .checks
            .iter()
            .any(|c| c.check == "instance_store" && c.detail.contains("75 GB")));
    }
}
