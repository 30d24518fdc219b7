//! Configuration from environment variables, validated once at start with every problem listed.

use crate::error::Error;
use crate::model::ids::{is_region, parse_bool, parse_regions, AgentVersion};
use crate::model::requests::MAX_VERIFY;
use crate::model::tags::sanitize_tag_text;

/// The SSM documents that take a VSS snapshot set and accept the same parameters.
pub const VSS_DOCUMENTS: [&str; 2] = ["AWSEC2-CreateVssSnapshot", "AWSEC2-VssInstallAndSnapshot"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub target_tag_key: String,
    pub target_tag_value: String,
    pub queue_url: String,
    pub ssm_document: String,
    pub exclude_boot_volume: bool,
    pub vss_copy_only: bool,
    pub min_ssm_agent_version: AgentVersion,
    pub managed_by: String,
    pub dry_run: bool,
    /// First delay before a tracking message looks again; doubled each time up to the maximum.
    pub poll_initial_seconds: u32,
    pub poll_max_seconds: u32,
    /// How long SSM may try to deliver the command to an agent (`TimeoutSeconds`).
    pub command_delivery_timeout_seconds: u32,
    /// The document's `executionTimeout`: how long the snapshot step may run on the instance.
    pub vss_execution_timeout_seconds: u32,
    /// How long snapshots may stay `pending` before the set is reported as timed out.
    pub snapshot_completion_timeout_seconds: u32,
    /// Page size of DescribeInstances (5–1000).
    pub describe_page_size: i32,
    /// The region the function runs in (and the fleet lives in).
    pub region: String,
    /// Keep the newest this many consistent sets per instance.
    pub retain_count: u32,
    /// Also keep every set younger than this many days.
    pub retain_days: Option<u32>,
    /// Regions each finished set is copied to.
    pub copy_regions: Vec<String>,
    /// KMS key per copy region, to encrypt the copies with.
    pub copy_kms_key_ids: std::collections::BTreeMap<String, String>,
    /// Keep the newest this many consistent sets per instance in each copy region.
    pub copy_retain_count: u32,
    /// Keep every backup of an instance that was terminated or untagged.
    pub keep_orphaned_backups: bool,
    /// Recovery point objective: an instance whose newest consistent set is older is reported.
    pub rpo_hours: u32,
    /// SNS topic that receives a run's summary when the run needs attention.
    pub notify_topic_arn: Option<String>,
    /// CloudWatch namespace of the function's metrics.
    pub metrics_namespace: String,
    /// How many instances a verification restores when none are named.
    pub verify_sample_size: u32,
}

impl Config {
    /// Reads the configuration through `get` (the process environment in the Lambda).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut problems = Vec::new();
        let text = |name: &str, default: &str| -> String {
            match get(name) {
                Some(v) if !v.trim().is_empty() => v.trim().to_string(),
                _ => default.to_string(),
            }
        };
        let target_tag_key = text("TARGET_TAG_KEY", "ConsistentSnapshot");
        let target_tag_value = text("TARGET_TAG_VALUE", "WindowsVSS");
        let queue_url = text("QUEUE_URL", "");
        let ssm_document = text("SSM_DOCUMENT", VSS_DOCUMENTS[0]);
        let exclude_boot_volume = text("EXCLUDE_BOOT_VOLUME", "false");
        let vss_copy_only = text("VSS_COPY_ONLY", "false");
        let min_agent = text("MIN_SSM_AGENT_VERSION", "2.2.58.0");
        let function_name = text("AWS_LAMBDA_FUNCTION_NAME", "consistent-snapshot");
        let managed_by = text("MANAGED_BY", &function_name);
        let dry_run = text("DRY_RUN", "false");
        let poll_initial = text("TRACK_POLL_INITIAL_SECONDS", "30");
        let poll_max = text("TRACK_POLL_MAX_SECONDS", "900");
        let delivery = text("COMMAND_DELIVERY_TIMEOUT_SECONDS", "600");
        let execution = text("VSS_EXECUTION_TIMEOUT_SECONDS", "900");
        let completion = text("SNAPSHOT_COMPLETION_TIMEOUT_SECONDS", "86400");
        let page = text("DESCRIBE_PAGE_SIZE", "1000");
        let region = text("AWS_REGION", &text("AWS_DEFAULT_REGION", ""));
        let retain = text("RETAIN_COUNT", "7");
        let retain_days_text = text("RETAIN_DAYS", "");
        let copy_regions_text = text("COPY_REGIONS", "");
        let copy_keys_text = text("COPY_KMS_KEY_IDS", "");
        let copy_retain = text("COPY_RETAIN_COUNT", &retain);
        let keep_orphans = text("KEEP_ORPHANED_BACKUPS", "true");
        let rpo = text("RPO_HOURS", "26");
        let notify_topic_arn = text("NOTIFY_TOPIC_ARN", "");
        let metrics_namespace = text("METRICS_NAMESPACE", "ConsistentSnapshot");
        let verify_sample = text("VERIFY_SAMPLE_SIZE", "2");

        if queue_url.is_empty() {
            problems.push("QUEUE_URL is required (the URL of the tracking queue)".to_string());
        }
        if target_tag_key.is_empty() || target_tag_key.len() > 128 {
            problems.push("TARGET_TAG_KEY must be 1 to 128 characters".to_string());
        }
        if !VSS_DOCUMENTS.contains(&ssm_document.as_str()) {
            problems.push(format!(
                "SSM_DOCUMENT={ssm_document} is not one of {}",
                VSS_DOCUMENTS.join(", ")
            ));
        }
        if managed_by.len() > 200 || managed_by != sanitize_tag_text(&managed_by) {
            problems.push(format!(
                "MANAGED_BY={managed_by} must be at most 200 letters, digits, spaces or ( ) . / - @ _ + : = {{ }}"
            ));
        }
        let mut flag = |name: &str, value: &str| {
            parse_bool(value).unwrap_or_else(|| {
                problems.push(format!("{name}={value} is not true or false"));
                false
            })
        };
        let exclude_boot_volume = flag("EXCLUDE_BOOT_VOLUME", &exclude_boot_volume);
        let vss_copy_only = flag("VSS_COPY_ONLY", &vss_copy_only);
        let dry_run = flag("DRY_RUN", &dry_run);
        let keep_orphaned_backups = flag("KEEP_ORPHANED_BACKUPS", &keep_orphans);
        let mut number = |name: &str, value: &str, min: u32, max: u32| -> u32 {
            match value.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "{name}={value} must be a whole number from {min} to {max}"
                    ));
                    min
                }
            }
        };
        let poll_initial_seconds = number("TRACK_POLL_INITIAL_SECONDS", &poll_initial, 1, 900);
        let poll_max_seconds = number("TRACK_POLL_MAX_SECONDS", &poll_max, 1, 900);
        let command_delivery_timeout_seconds =
            number("COMMAND_DELIVERY_TIMEOUT_SECONDS", &delivery, 30, 2_592_000);
        let vss_execution_timeout_seconds =
            number("VSS_EXECUTION_TIMEOUT_SECONDS", &execution, 120, 172_800);
        let snapshot_completion_timeout_seconds = number(
            "SNAPSHOT_COMPLETION_TIMEOUT_SECONDS",
            &completion,
            60,
            1_209_600,
        );
        let describe_page_size = number("DESCRIBE_PAGE_SIZE", &page, 5, 1000) as i32;
        let retain_count = number("RETAIN_COUNT", &retain, 1, 1000);
        let rpo_hours = number("RPO_HOURS", &rpo, 1, 8760);
        let verify_sample_size = number("VERIFY_SAMPLE_SIZE", &verify_sample, 1, MAX_VERIFY as u32);
        let copy_retain_count = number("COPY_RETAIN_COUNT", &copy_retain, 1, 1000);
        let retain_days = (!retain_days_text.is_empty())
            .then(|| number("RETAIN_DAYS", &retain_days_text, 1, 36_500));
        let copy_regions = parse_regions(&copy_regions_text).unwrap_or_else(|why| {
            problems.push(format!("COPY_REGIONS: {why}"));
            vec![]
        });
        let mut copy_kms_key_ids = std::collections::BTreeMap::new();
        for pair in copy_keys_text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some((r, key)) if is_region(r.trim()) && !key.trim().is_empty() => {
                    copy_kms_key_ids.insert(r.trim().to_string(), key.trim().to_string());
                }
                _ => problems.push(format!(
                    "COPY_KMS_KEY_IDS: {pair:?} is not region=key (eu-west-1=arn:aws:kms:…)"
                )),
            }
        }
        if region.is_empty() && !copy_regions.is_empty() {
            problems.push("AWS_REGION is not set: the copies' source region is unknown".into());
        }
        if copy_regions.contains(&region) {
            problems.push(format!(
                "COPY_REGIONS includes the function's own region {region}"
            ));
        }
        let is_topic_arn =
            notify_topic_arn.starts_with("arn:") && notify_topic_arn.contains(":sns:");
        if !notify_topic_arn.is_empty() && !is_topic_arn {
            problems.push(format!(
                "NOTIFY_TOPIC_ARN={notify_topic_arn} is not an SNS topic ARN (arn:aws:sns:region:account:name)"
            ));
        }
        if metrics_namespace.len() > 255
            || metrics_namespace.starts_with("AWS/")
            || !metrics_namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_/#:".contains(c))
        {
            problems.push(format!(
                "METRICS_NAMESPACE={metrics_namespace} must be at most 255 letters, digits or . - _ / # : and not start with AWS/"
            ));
        }
        if poll_max_seconds < poll_initial_seconds {
            problems.push(format!(
                "TRACK_POLL_MAX_SECONDS={poll_max_seconds} is below TRACK_POLL_INITIAL_SECONDS={poll_initial_seconds}"
            ));
        }
        let min_ssm_agent_version = AgentVersion::parse(&min_agent).unwrap_or_else(|| {
            problems.push(format!(
                "MIN_SSM_AGENT_VERSION={min_agent} is not a dotted version such as 2.2.58.0"
            ));
            AgentVersion::zero()
        });

        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        Ok(Config {
            target_tag_key,
            target_tag_value,
            queue_url,
            ssm_document,
            exclude_boot_volume,
            vss_copy_only,
            min_ssm_agent_version,
            managed_by,
            dry_run,
            poll_initial_seconds,
            poll_max_seconds,
            command_delivery_timeout_seconds,
            vss_execution_timeout_seconds,
            snapshot_completion_timeout_seconds,
            describe_page_size,
            region,
            retain_count,
            retain_days,
            copy_regions,
            copy_kms_key_ids,
            copy_retain_count,
            keep_orphaned_backups,
            rpo_hours,
            notify_topic_arn: (!notify_topic_arn.is_empty()).then_some(notify_topic_arn),
            metrics_namespace,
            verify_sample_size,
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| env.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = config(&[("QUEUE_URL", "http://q")]).expect("valid");
        assert_eq!(c.target_tag_key, "ConsistentSnapshot");
        assert_eq!(c.target_tag_value, "WindowsVSS");
        assert_eq!(c.ssm_document, "AWSEC2-CreateVssSnapshot");
        assert!(!c.exclude_boot_volume && !c.vss_copy_only && !c.dry_run);
        assert_eq!(
            c.min_ssm_agent_version,
            AgentVersion::parse("2.2.58.0").expect("v")
        );
        assert_eq!(c.managed_by, "consistent-snapshot");
        assert_eq!(
            (c.retain_count, c.retain_days, c.copy_retain_count),
            (7, None, 7)
        );
        assert!(c.copy_regions.is_empty() && c.keep_orphaned_backups);
    }

    #[test]
    fn copy_and_retention_settings_are_read_and_checked() {
        let c = config(&[
            ("QUEUE_URL", "q"),
            ("AWS_REGION", "us-east-1"),
            ("RETAIN_COUNT", "3"),
            ("RETAIN_DAYS", "14"),
            ("COPY_REGIONS", "eu-west-1, us-west-2,eu-west-1"),
            ("COPY_KMS_KEY_IDS", "eu-west-1=alias/dr"),
            ("KEEP_ORPHANED_BACKUPS", "false"),
        ])
        .expect("valid");
        assert_eq!(c.copy_regions, vec!["eu-west-1", "us-west-2"]);
        assert_eq!(
            c.copy_kms_key_ids.get("eu-west-1").map(String::as_str),
            Some("alias/dr")
        );
        assert_eq!(
            (c.retain_count, c.retain_days, c.copy_retain_count),
            (3, Some(14), 3)
        );
        assert!(!c.keep_orphaned_backups);
        let err = config(&[
            ("QUEUE_URL", "q"),
            ("AWS_REGION", "us-east-1"),
            ("RETAIN_COUNT", "0"),
            ("COPY_REGIONS", "us-east-1,Europe"),
            ("COPY_KMS_KEY_IDS", "eu-west-1"),
        ])
        .expect_err("invalid")
        .to_string();
        for name in ["RETAIN_COUNT=0", "\"Europe\"", "COPY_KMS_KEY_IDS"] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
        let own = config(&[
            ("QUEUE_URL", "q"),
            ("AWS_REGION", "us-east-1"),
            ("COPY_REGIONS", "us-east-1"),
        ])
        .expect_err("own region")
        .to_string();
        assert!(own.contains("own region"), "{own}");
    }

    #[test]
    fn operations_settings_are_read_and_checked() {
        let c = config(&[("QUEUE_URL", "q")]).expect("valid");
        assert_eq!(
            (
                c.rpo_hours,
                c.notify_topic_arn.clone(),
                c.metrics_namespace.as_str()
            ),
            (26, None, "ConsistentSnapshot")
        );
        let topic = "arn:aws:sns:eu-west-1:123456789012:backups";
        let c = config(&[
            ("QUEUE_URL", "q"),
            ("RPO_HOURS", "4"),
            ("NOTIFY_TOPIC_ARN", topic),
        ])
        .expect("valid");
        assert_eq!(
            (c.rpo_hours, c.notify_topic_arn.as_deref()),
            (4, Some(topic))
        );
        let err = config(&[
            ("QUEUE_URL", "q"),
            ("RPO_HOURS", "0"),
            ("NOTIFY_TOPIC_ARN", "backups@example.com"),
            ("METRICS_NAMESPACE", "AWS/EC2"),
        ])
        .expect_err("invalid")
        .to_string();
        for name in [
            "RPO_HOURS=0",
            "NOTIFY_TOPIC_ARN=backups",
            "METRICS_NAMESPACE=AWS/EC2",
        ] {
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn managed_by_defaults_to_the_function_name() {
        let c =
            config(&[("QUEUE_URL", "q"), ("AWS_LAMBDA_FUNCTION_NAME", "prod-vss")]).expect("valid");
        assert_eq!(c.managed_by, "prod-vss");
    }

    #[test]
    fn every_problem_is_listed_by_name() {
        let err = config(&[
            ("EXCLUDE_BOOT_VOLUME", "maybe"),
            ("SSM_DOCUMENT", "AWS-RunShellScript"),
            ("MIN_SSM_AGENT_VERSION", "two"),
            ("TRACK_POLL_MAX_SECONDS", "5000"),
        ])
        .expect_err("invalid");
        let text = err.to_string();
        for name in [
            "QUEUE_URL",
            "EXCLUDE_BOOT_VOLUME=maybe",
            "SSM_DOCUMENT",
            "MIN_SSM_AGENT_VERSION",
            "TRACK_POLL_MAX_SECONDS",
        ] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
    }
}
