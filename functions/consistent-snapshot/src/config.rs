//! Configuration from environment variables, validated once at start with every problem listed.

use std::fmt;

use crate::error::Error;

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
        if managed_by.len() > 200 || managed_by != crate::dispatch::sanitize_tag_text(&managed_by) {
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
        if poll_max_seconds < poll_initial_seconds {
            problems.push(format!(
                "TRACK_POLL_MAX_SECONDS={poll_max_seconds} is below TRACK_POLL_INITIAL_SECONDS={poll_initial_seconds}"
            ));
        }
        let min_ssm_agent_version = AgentVersion::parse(&min_agent).unwrap_or_else(|| {
            problems.push(format!(
                "MIN_SSM_AGENT_VERSION={min_agent} is not a dotted version such as 2.2.58.0"
            ));
            AgentVersion(vec![0])
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
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// `true`/`false` in the spellings operators use in CloudFormation parameters and tags.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// A dotted numeric version (SSM Agent versions look like `3.3.40.0`), compared numerically.
#[derive(Debug, Clone)]
pub struct AgentVersion(Vec<u64>);

/// `2.2.58` equals `2.2.58.0`: equality follows the padded ordering below.
impl PartialEq for AgentVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for AgentVersion {}

impl AgentVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Option<Vec<u64>> = text.trim().split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(AgentVersion)
    }
}

impl PartialOrd for AgentVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AgentVersion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let len = self.0.len().max(other.0.len());
        let at = |v: &Vec<u64>, i: usize| v.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| at(&self.0, i).cmp(&at(&other.0, i)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
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

    #[test]
    fn versions_compare_numerically_not_as_text() {
        let v = |s| AgentVersion::parse(s).expect("version");
        assert!(v("3.0.502.0") > v("2.2.58.0"));
        assert!(v("2.2.100.0") > v("2.2.58.0"));
        assert!(v("2.2.58") == v("2.2.58.0"));
        assert!(v("2.2.45.0") < v("2.2.58.0"));
        assert!(AgentVersion::parse("2.x").is_none());
        assert!(AgentVersion::parse("").is_none());
    }
}
