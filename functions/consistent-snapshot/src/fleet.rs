//! The fleet: which tagged instances can take a VSS snapshot now, and why the others cannot.
//!
//! `preflight` is a pure decision over plain facts; `discover` and `agents` are the AWS edges.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use aws_sdk_ec2::types::{Filter, Instance};
use aws_sdk_ssm::types::InstanceInformationStringFilter;
use serde::{Deserialize, Serialize};

use crate::config::{parse_bool, AgentVersion, Config};
use crate::error::{aws, Error};

/// Per-instance override of `EXCLUDE_BOOT_VOLUME`.
pub const TAG_EXCLUDE_BOOT: &str = "ConsistentSnapshot:ExcludeBootVolume";

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
    pub state: String,
    /// `windows` for Windows instances (EC2 answers in lower case).
    pub platform: Option<String>,
    pub platform_details: Option<String>,
    pub root_device: Option<String>,
    pub volumes: Vec<AttachedVolume>,
    pub tags: BTreeMap<String, String>,
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

    fn is_windows(&self, agent: Option<&AgentFacts>) -> bool {
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
    pub ping_status: String,
    pub agent_version: String,
    pub platform_type: Option<String>,
}

/// An instance that passed preflight, with the volumes its snapshot set must contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub instance_id: String,
    pub name: String,
    pub exclude_boot_volume: bool,
    pub volumes: Vec<AttachedVolume>,
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
    /// Asked for by id in an on-demand call but not found with the target tag.
    NotTargeted,
    /// Another VSS command is running on the instance (another run, or one sent by hand):
    /// VSS takes one shadow copy at a time, and the instance is not frozen twice.
    VssInProgress {
        command_id: String,
        run_id: Option<String>,
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
        }
    }
}

/// Decides whether an instance can take a VSS snapshot now. Checks are in the order an operator
/// would fix them: state, platform, SSM registration, connectivity, agent version, volumes.
pub fn preflight(
    instance: &InstanceFacts,
    agent: Option<&AgentFacts>,
    config: &Config,
) -> Result<Target, SkipReason> {
    if instance.state != "running" {
        return Err(SkipReason::NotRunning {
            state: instance.state.clone(),
        });
    }
    if !instance.is_windows(agent) {
        let platform = instance
            .platform_details
            .clone()
            .or_else(|| instance.platform.clone())
            .unwrap_or_else(|| "unknown".into());
        return Err(SkipReason::NotWindows { platform });
    }
    let agent = agent.ok_or(SkipReason::SsmUnmanaged)?;
    if agent.ping_status != "Online" {
        return Err(SkipReason::SsmOffline {
            ping_status: agent.ping_status.clone(),
        });
    }
    let minimum = &config.min_ssm_agent_version;
    match AgentVersion::parse(&agent.agent_version) {
        Some(found) if found >= *minimum => {}
        _ => {
            return Err(SkipReason::AgentTooOld {
                found: agent.agent_version.clone(),
                minimum: minimum.to_string(),
            })
        }
    }
    let exclude_boot_volume = match instance.tags.get(TAG_EXCLUDE_BOOT) {
        None => config.exclude_boot_volume,
        Some(value) => parse_bool(value).ok_or_else(|| SkipReason::InvalidOverride {
            tag: TAG_EXCLUDE_BOOT.into(),
            value: value.clone(),
        })?,
    };
    let volumes = instance.expected_volumes(exclude_boot_volume);
    if volumes.is_empty() {
        return Err(SkipReason::NoEbsVolumes);
    }
    Ok(Target {
        instance_id: instance.instance_id.clone(),
        name: instance.display_name().to_string(),
        exclude_boot_volume,
        volumes,
    })
}

/// EC2 tags as a map.
pub fn tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Reads an SDK instance into plain facts.
pub fn facts_of(instance: &Instance) -> Option<InstanceFacts> {
    let instance_id = instance.instance_id()?.to_string();
    let tags = tag_map(instance.tags());
    let mut volumes: Vec<AttachedVolume> = instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some(AttachedVolume {
                volume_id: m.ebs()?.volume_id()?.to_string(),
                device: m.device_name()?.to_string(),
            })
        })
        .collect();
    volumes.sort();
    Some(InstanceFacts {
        name: tags.get("Name").filter(|n| !n.is_empty()).cloned(),
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|| "unknown".into()),
        platform: instance.platform().map(|p| p.as_str().to_string()),
        platform_details: instance.platform_details().map(str::to_string),
        root_device: instance.root_device_name().map(str::to_string),
        volumes,
        tags,
        instance_id,
    })
}

/// The instances carrying the target tag (or, when `ids` is given, those of them), in every
/// state but terminated: stopped ones are reported, not silently ignored.
pub async fn discover(
    ec2: &aws_sdk_ec2::Client,
    config: &Config,
    ids: Option<&[String]>,
) -> Result<Vec<InstanceFacts>, Error> {
    let tag = Filter::builder()
        .name(format!("tag:{}", config.target_tag_key))
        .values(&config.target_tag_value)
        .build();
    let states = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ["pending", "running", "stopping", "stopped"]
                .map(String::from)
                .to_vec(),
        ))
        .build();
    describe(ec2, &[tag, states], ids, config.describe_page_size).await
}

/// DescribeInstances with these filters (and these ids, when given), every page followed;
/// sorted by instance id, each instance once.
pub async fn describe(
    ec2: &aws_sdk_ec2::Client,
    filters: &[Filter],
    ids: Option<&[String]>,
    page_size: i32,
) -> Result<Vec<InstanceFacts>, Error> {
    // DescribeInstances takes at most 200 values in one filter.
    let id_chunks: Vec<Option<&[String]>> = match ids {
        None => vec![None],
        Some(ids) => ids.chunks(200).map(Some).collect(),
    };
    let mut found = Vec::new();
    for chunk in id_chunks {
        let mut request = ec2
            .describe_instances()
            .set_filters(Some(filters.to_vec()))
            .max_results(page_size);
        let subject = match chunk {
            Some(chunk) => {
                request = request.filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                );
                format!(
                    "{} instances from {}",
                    chunk.len(),
                    chunk.first().map(String::as_str).unwrap_or("-")
                )
            }
            None => "the tagged fleet".to_string(),
        };
        let mut pages = request.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws("DescribeInstances", subject.clone(), e))?;
            found.extend(
                page.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(facts_of),
            );
        }
    }
    found.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    found.dedup_by(|a, b| a.instance_id == b.instance_id);
    Ok(found)
}

/// SSM's view of the agents of these instances; an instance missing from the map is not
/// registered with SSM.
pub async fn agents(
    ssm: &aws_sdk_ssm::Client,
    instance_ids: &[String],
) -> Result<HashMap<String, AgentFacts>, Error> {
    let mut agents = HashMap::new();
    // The InstanceIds filter takes at most 50 values.
    for chunk in instance_ids.chunks(50) {
        let filter = InstanceInformationStringFilter::builder()
            .key("InstanceIds")
            .set_values(Some(chunk.to_vec()))
            .build()
            .map_err(|e| Error::Event(format!("building the SSM filter: {e}")))?;
        let mut pages = ssm
            .describe_instance_information()
            .filters(filter)
            .max_results(50)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                aws(
                    "DescribeInstanceInformation",
                    format!("{} instances from {}", chunk.len(), chunk[0]),
                    e,
                )
            })?;
            for info in page.instance_information_list() {
                let Some(id) = info.instance_id() else {
                    continue;
                };
                agents.insert(
                    id.to_string(),
                    AgentFacts {
                        ping_status: info
                            .ping_status()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                        agent_version: info.agent_version().unwrap_or_default().to_string(),
                        platform_type: info.platform_type().map(|p| p.as_str().to_string()),
                    },
                );
            }
        }
    }
    Ok(agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_lookup(|n| (n == "QUEUE_URL").then(|| "q".to_string())).expect("config")
    }

    fn windows(id: &str) -> InstanceFacts {
        InstanceFacts {
            instance_id: id.into(),
            name: Some("sql01".into()),
            state: "running".into(),
            platform: Some("windows".into()),
            platform_details: Some("Windows".into()),
            root_device: Some("/dev/sda1".into()),
            volumes: vec![
                AttachedVolume {
                    volume_id: "vol-1".into(),
                    device: "/dev/sda1".into(),
                },
                AttachedVolume {
                    volume_id: "vol-2".into(),
                    device: "xvdf".into(),
                },
            ],
            tags: BTreeMap::new(),
        }
    }

    fn online() -> AgentFacts {
        AgentFacts {
            ping_status: "Online".into(),
            agent_version: "3.3.40.0".into(),
            platform_type: Some("Windows".into()),
        }
    }

    #[test]
    fn a_running_online_windows_instance_is_a_target_with_all_its_volumes() {
        let target = preflight(&windows("i-1"), Some(&online()), &config()).expect("target");
        assert_eq!(target.volumes.len(), 2);
        assert_eq!(target.name, "sql01");
        assert!(!target.exclude_boot_volume);
    }

    #[test]
    fn each_reason_to_skip() {
        let c = config();
        let mut stopped = windows("i-1");
        stopped.state = "stopped".into();
        assert_eq!(
            preflight(&stopped, Some(&online()), &c),
            Err(SkipReason::NotRunning {
                state: "stopped".into()
            })
        );

        let mut linux = windows("i-1");
        linux.platform = None;
        linux.platform_details = Some("Linux/UNIX".into());
        let linux_agent = AgentFacts {
            platform_type: Some("Linux".into()),
            ..online()
        };
        assert_eq!(
            preflight(&linux, Some(&linux_agent), &c),
            Err(SkipReason::NotWindows {
                platform: "Linux/UNIX".into()
            })
        );

        assert_eq!(
            preflight(&windows("i-1"), None, &c),
            Err(SkipReason::SsmUnmanaged)
        );

        let lost = AgentFacts {
            ping_status: "ConnectionLost".into(),
            ..online()
        };
        assert_eq!(
            preflight(&windows("i-1"), Some(&lost), &c),
            Err(SkipReason::SsmOffline {
                ping_status: "ConnectionLost".into()
            })
        );

        let old = AgentFacts {
            agent_version: "2.2.45.0".into(),
            ..online()
        };
        assert!(matches!(
            preflight(&windows("i-1"), Some(&old), &c),
            Err(SkipReason::AgentTooOld { .. })
        ));
        let garbled = AgentFacts {
            agent_version: String::new(),
            ..online()
        };
        assert!(matches!(
            preflight(&windows("i-1"), Some(&garbled), &c),
            Err(SkipReason::AgentTooOld { .. })
        ));

        let mut bare = windows("i-1");
        bare.volumes.clear();
        assert_eq!(
            preflight(&bare, Some(&online()), &c),
            Err(SkipReason::NoEbsVolumes)
        );

        let mut bad = windows("i-1");
        bad.tags.insert(TAG_EXCLUDE_BOOT.into(), "sometimes".into());
        assert!(matches!(
            preflight(&bad, Some(&online()), &c),
            Err(SkipReason::InvalidOverride { .. })
        ));
    }

    #[test]
    fn windows_is_recognised_from_ssm_when_ec2_has_no_platform() {
        let mut imported = windows("i-1");
        imported.platform = None;
        imported.platform_details = None;
        assert!(preflight(&imported, Some(&online()), &config()).is_ok());
    }

    #[test]
    fn boot_volume_is_excluded_by_setting_or_by_tag() {
        let mut c = config();
        c.exclude_boot_volume = true;
        let target = preflight(&windows("i-1"), Some(&online()), &c).expect("target");
        assert_eq!(
            target.volumes,
            vec![AttachedVolume {
                volume_id: "vol-2".into(),
                device: "xvdf".into()
            }]
        );

        let mut tagged = windows("i-1");
        tagged.tags.insert(TAG_EXCLUDE_BOOT.into(), "False".into());
        assert_eq!(
            preflight(&tagged, Some(&online()), &c)
                .expect("target")
                .volumes
                .len(),
            2
        );

        let mut only_root = windows("i-1");
        only_root.volumes.truncate(1);
        assert_eq!(
            preflight(&only_root, Some(&online()), &c),
            Err(SkipReason::NoEbsVolumes)
        );
    }
}
