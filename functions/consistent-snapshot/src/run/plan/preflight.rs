//! Preflight: which tagged instances can take a VSS snapshot now, and why the others cannot.
//! A pure decision over what EC2 and SSM say of each instance.

use crate::config::Config;
use crate::model::fleet::{
    is_cluster_name, AgentFacts, InstanceFacts, SkipReason, Target, VssOptions,
};
use crate::model::ids::{parse_bool, AgentVersion};
use crate::model::state::{InstanceState, PingStatus};
use crate::model::tags::{
    TAG_CLUSTER, TAG_COLLECT_DIAGNOSTIC_LOGS, TAG_COPY_ONLY, TAG_EXCLUDE_BOOT, TAG_NO_WRITERS,
    TAG_SAVE_VSS_METADATA,
};

/// Decides whether an instance can take a VSS snapshot now. Checks are in the order an operator
/// would fix them: state, platform, SSM registration, connectivity, agent version, volumes.
pub fn preflight(
    instance: &InstanceFacts,
    agent: Option<&AgentFacts>,
    config: &Config,
) -> Result<Target, SkipReason> {
    if instance.state != InstanceState::Running {
        return Err(SkipReason::NotRunning {
            state: instance.state.to_string(),
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
    if agent.ping_status != PingStatus::Online {
        return Err(SkipReason::SsmOffline {
            ping_status: agent.ping_status.to_string(),
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
    let exclude_boot_volume = flag_tag(instance, TAG_EXCLUDE_BOOT, config.exclude_boot_volume)?;
    let defaults = config.vss;
    let options = VssOptions {
        copy_only: flag_tag(instance, TAG_COPY_ONLY, defaults.copy_only)?,
        save_vss_metadata: flag_tag(instance, TAG_SAVE_VSS_METADATA, defaults.save_vss_metadata)?,
        collect_diagnostic_logs: flag_tag(
            instance,
            TAG_COLLECT_DIAGNOSTIC_LOGS,
            defaults.collect_diagnostic_logs,
        )?,
        no_writers: flag_tag(instance, TAG_NO_WRITERS, defaults.no_writers)?,
    };
    if options.no_writers && options.save_vss_metadata {
        return Err(SkipReason::InvalidCombination {
            why: format!(
                "NoWriters and SaveVssMetadata together (tags {TAG_NO_WRITERS}, {TAG_SAVE_VSS_METADATA}, or the deployment's defaults): the document refuses them, nothing was sent"
            ),
        });
    }
    let cluster = match instance.tags.get(TAG_CLUSTER) {
        None => None,
        Some(name) if is_cluster_name(name) => Some(name.clone()),
        Some(value) => {
            return Err(SkipReason::InvalidOverride {
                tag: TAG_CLUSTER.into(),
                value: value.clone(),
            })
        }
    };
    let volumes = instance.expected_volumes(exclude_boot_volume);
    if volumes.is_empty() {
        return Err(SkipReason::NoEbsVolumes);
    }
    Ok(Target {
        instance_id: instance.instance_id.clone(),
        name: instance.display_name().to_string(),
        exclude_boot_volume,
        options,
        volumes,
        cost_tags: config.cost_tags(&instance.tags),
        cluster,
    })
}

/// An instance's override tag of one of the document's options: absent, the deployment's
/// `default`; a value that is not true or false is refused for that instance, never guessed.
fn flag_tag(instance: &InstanceFacts, tag: &str, default: bool) -> Result<bool, SkipReason> {
    match instance.tags.get(tag) {
        None => Ok(default),
        Some(value) => parse_bool(value).ok_or_else(|| SkipReason::InvalidOverride {
            tag: tag.into(),
            value: value.clone(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::fleet::AttachedVolume;
    use std::collections::BTreeMap;

    /// A deployment's configuration with only the required settings (also the readiness
    /// checklist's tests').
    pub(crate) fn config() -> Config {
        Config::from_lookup(|n| match n {
            "QUEUE_URL" => Some("q".to_string()),
            "QUEUE_ARN" => Some("arn:aws:sqs:eu-west-1:123456789012:q".to_string()),
            "CATALOG_TABLE" => Some("prod-catalog".to_string()),
            _ => None,
        })
        .expect("config")
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
            host: Default::default(),
        }
    }

    fn online() -> AgentFacts {
        AgentFacts {
            ping_status: "Online".into(),
            agent_version: "3.3.40.0".into(),
            platform_type: Some("Windows".into()),
            platform_version: None,
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
            platform_version: None,
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

    #[test]
    fn vss_options_come_from_the_deployment_unless_the_instance_tag_says_otherwise() {
        let mut c = config();
        c.vss.copy_only = true;
        let plain = preflight(&windows("i-1"), Some(&online()), &c).expect("target");
        assert_eq!(
            plain.options,
            VssOptions {
                copy_only: true,
                ..VssOptions::default()
            }
        );
        let mut tagged = windows("i-1");
        tagged.tags.insert(TAG_COPY_ONLY.into(), "false".into());
        tagged
            .tags
            .insert(TAG_SAVE_VSS_METADATA.into(), "True".into());
        tagged
            .tags
            .insert(TAG_COLLECT_DIAGNOSTIC_LOGS.into(), "true".into());
        let target = preflight(&tagged, Some(&online()), &c).expect("target");
        assert_eq!(
            target.options,
            VssOptions {
                copy_only: false,
                save_vss_metadata: true,
                collect_diagnostic_logs: true,
                no_writers: false,
            }
        );
        // A value that is not true or false is refused for that instance, by tag and value.
        let mut bad = windows("i-1");
        bad.tags
            .insert(TAG_SAVE_VSS_METADATA.into(), "yes please".into());
        assert_eq!(
            preflight(&bad, Some(&online()), &c),
            Err(SkipReason::InvalidOverride {
                tag: TAG_SAVE_VSS_METADATA.into(),
                value: "yes please".into()
            })
        );
        // NoWriters with SaveVssMetadata is refused for that instance: the document would
        // refuse it anyway, and nothing is sent.
        let mut both = windows("i-1");
        both.tags.insert(TAG_NO_WRITERS.into(), "true".into());
        both.tags
            .insert(TAG_SAVE_VSS_METADATA.into(), "true".into());
        assert!(matches!(
            preflight(&both, Some(&online()), &c),
            Err(SkipReason::InvalidCombination { .. })
        ));
        both.tags.remove(TAG_SAVE_VSS_METADATA);
        let target = preflight(&both, Some(&online()), &c).expect("target");
        assert!(target.options.no_writers);
    }
}
