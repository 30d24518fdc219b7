//! Configuration from environment variables, validated once at start with every problem listed.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::model::fleet::VssOptions;
use crate::model::ids::{
    is_account_id, is_region, parse_bool, parse_regions, AgentVersion, MAX_VSS_RETRIES,
};
use crate::model::requests::MAX_VERIFY;
use crate::model::snapshot::LockMode;
use crate::model::tags::{cut_chars, sanitize_tag_text, TAG_VALUE_MAX_CHARS};
use crate::model::tiers::{self, Retain};
use chrono_tz::Tz;

/// The most instance tags `COPY_INSTANCE_TAGS` may carry to each snapshot.
pub const MAX_COPIED_INSTANCE_TAGS: usize = 20;

/// Why an instance tag key may not be carried to snapshots: AWS's own, this function's
/// contract tags (an instance's tags are written by others: carried, one could pass for a
/// run's, a copy's or a set's), and the tags the document and this function write.
fn uncopyable_tag(key: &str) -> Option<&'static str> {
    if key.len() > 128 {
        return Some("is longer than 128 characters");
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Some("is AWS's own (aws:)");
    }
    if key.starts_with("ConsistentSnapshot") {
        return Some("is one of this function's own tags");
    }
    if ["Name", "Device", "AppConsistent", "AwsVssConfig"].contains(&key) {
        return Some("is written on every snapshot by the function or the VSS document");
    }
    None
}

/// Why `PROBE_DOCUMENT` cannot be the probe: not an SSM document name, or one of AWS's own
/// documents (those take parameters, such as the script `AWS-RunPowerShellScript` runs: the
/// probe must be the deployment's own fixed, read-only document).
/// What is wrong with `CATALOG_TABLE`, if anything.
fn catalog_table_problem(table: &str) -> Option<String> {
    let valid = (3..=255).contains(&table.len())
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    (!valid).then(|| {
        format!(
            "CATALOG_TABLE={table:?} is not a DynamoDB table name (3 to 255 of a-z A-Z 0-9 _ - .)"
        )
    })
}

/// What is wrong with the vault settings, each problem naming its setting.
fn vault_problems(vault: &Vault) -> Vec<String> {
    let mut problems = Vec::new();
    let account = &vault.account_id;
    if !is_account_id(account) {
        problems.push(format!(
            "VAULT_ACCOUNT_ID={account:?} is not an AWS account id (12 digits)"
        ));
    }
    // arn:partition:iam::account:role/name, of the vault's own account.
    let parts: Vec<&str> = vault.role_arn.splitn(6, ':').collect();
    let role_ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "iam"
        && parts[4] == account
        && parts[5].starts_with("role/")
        && parts[5].len() > 5;
    if !role_ok {
        problems.push(format!(
            "VAULT_ROLE_ARN={:?} is not a role of the vault account {account} (arn:aws:iam::{account}:role/NAME)",
            vault.role_arn
        ));
    }
    if vault.regions.is_empty() {
        problems.push("VAULT_REGIONS names no region: the vault copies go nowhere".to_string());
    }
    for region in &vault.regions {
        if !vault.kms_key_ids.contains_key(region) {
            problems.push(format!(
                "VAULT_KMS_KEY_IDS has no key for the vault region {region}: vault copies are re-encrypted with the vault's own key"
            ));
        }
    }
    problems
}

fn probe_document_problem(document: &str) -> Option<String> {
    let name_ok = (3..=128).contains(&document.len())
        && document
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    let aws_owned = ["AWS", "Amazon"].iter().any(|p| {
        document
            .to_ascii_lowercase()
            .starts_with(&p.to_ascii_lowercase())
    });
    if !name_ok {
        Some(format!(
            "PROBE_DOCUMENT={document:?} is not an SSM document name (3 to 128 of a-z A-Z 0-9 _ - .)"
        ))
    } else if aws_owned {
        Some(format!(
            "PROBE_DOCUMENT={document} is an AWS-owned document: the probe must be the stack's own read-only document (ReadinessProbeDocument)"
        ))
    } else {
        None
    }
}

/// The SSM documents that take a VSS snapshot set and accept the same parameters.
pub const VSS_DOCUMENTS: [&str; 2] = ["AWSEC2-CreateVssSnapshot", "AWSEC2-VssInstallAndSnapshot"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub target_tag_key: String,
    pub target_tag_value: String,
    pub queue_url: String,
    /// The tracking queue's ARN: SQS records from any other queue are refused.
    pub queue_arn: String,
    /// The catalog's DynamoDB table.
    pub catalog_table: String,
    pub ssm_document: String,
    pub exclude_boot_volume: bool,
    /// The document's options for instances whose tags do not say otherwise.
    pub vss: VssOptions,
    /// A server VSS left without a set gets one crash-consistent set by CreateSnapshots
    /// (`CRASH_CONSISTENT_FALLBACK`, on by default as with DLM).
    pub crash_consistent_fallback: bool,
    /// How many more attempts a server gets whose VSS freeze or thaw timed out
    /// (`VSS_RETRIES`, 0–3), each a run of its own after `vss_retry_pause_seconds`.
    pub vss_retries: u32,
    pub vss_retry_pause_seconds: u32,
    pub min_ssm_agent_version: AgentVersion,
    /// The deployment's read-only readiness probe (`PROBE_DOCUMENT`: the template's
    /// `ReadinessProbeDocument`); `None` when not deployed, and `probe: true` is refused.
    pub probe_document: Option<String>,
    /// How long a probing readiness call waits for the servers' answers (`PROBE_WAIT_SECONDS`).
    pub probe_wait_seconds: u32,
    pub managed_by: String,
    pub dry_run: bool,
    /// First delay before a tracking message looks again; doubled each time up to the maximum.
    pub poll_initial_seconds: u32,
    pub poll_max_seconds: u32,
    /// `COMPLETION_EVENTS`: SSM's status-change events reach the tracking queue (the template's
    /// `CompletionEventsRule`). An instance's polling look then first asks the catalog whether
    /// the event's look already recorded its end, and asks SSM only when it did not.
    pub completion_events: bool,
    /// How long SSM may try to deliver the command to an agent (`TimeoutSeconds`).
    pub command_delivery_timeout_seconds: u32,
    /// The document's `executionTimeout`: how long the snapshot step may run on the instance.
    pub vss_execution_timeout_seconds: u32,
    /// How long snapshots may stay `pending` before the set is reported as timed out.
    pub snapshot_completion_timeout_seconds: u32,
    /// Page size of DescribeInstances (5–1000).
    pub describe_page_size: i32,
    /// The most recorded snapshots retention plans at once (`RETENTION_PART_SNAPSHOTS`): a
    /// part of the fleet is read, planned and applied before the next, so a pass's memory is
    /// bounded by a part, not by the inventory.
    pub retention_part_snapshots: usize,
    /// The region the function runs in (and the fleet lives in).
    pub region: String,
    /// What the home region keeps of each instance: the newest `daily` consistent sets
    /// (`RETAIN_DAILY`, formerly `RETAIN_COUNT`), those standing for the newest `weekly`
    /// weeks, `monthly` months and `yearly` years, and every set younger than `days`.
    pub retain: Retain,
    /// Where weeks, months and years begin (`SCHEDULE_TIMEZONE`, the schedule's own).
    pub schedule_zone: Tz,
    /// Move sets kept only by the monthly or yearly tier to the archive tier once this many
    /// days old (`ARCHIVE_AFTER_DAYS`; unset: never).
    pub archive_after_days: Option<u32>,
    /// EBS Snapshot Lock on every kept backup, for as long as its tiers are expected to keep
    /// it (`LOCK_MODE`: none, governance or compliance).
    pub lock_mode: Option<LockMode>,
    /// A compliance lock's cooling-off period, in hours (`LOCK_COOL_OFF_HOURS`, 1–72; unset:
    /// none, the lock is final at once).
    pub lock_cool_off_hours: Option<u32>,
    /// The longest lock laid at once, in days (`LOCK_MAX_DAYS`, default 3,650; the template's
    /// IAM bounds `ec2:SnapshotLockDuration` by it): a set kept longer has its lock extended.
    pub lock_max_days: u32,
    /// Regions each finished set is copied to.
    pub copy_regions: Vec<String>,
    /// Regions an instance's `ConsistentSnapshot:CopyRegions` tag may name besides
    /// `copy_regions` (`COPY_REGIONS_ALLOWED`): a tag naming any other is refused.
    pub copy_regions_allowed: Vec<String>,
    /// KMS key per copy region, to encrypt the copies with.
    pub copy_kms_key_ids: BTreeMap<String, String>,
    /// Instance tag keys carried to the instance's snapshots and their copies
    /// (`COPY_INSTANCE_TAGS`: cost allocation, such as `CostCenter,Project`).
    pub copy_instance_tags: Vec<String>,
    /// What each copy region keeps (`COPY_RETAIN_DAILY`/`COPY_RETAIN_COUNT`,
    /// `COPY_RETAIN_WEEKLY`, … each the home region's when unset; `RETAIN_DAYS` as at home).
    pub copy_retain: Retain,
    /// Keep every backup of an instance that was terminated or untagged.
    pub keep_orphaned_backups: bool,
    /// Whether an instance's `RetainCount`/`RetainDays` tag may lower retention below the
    /// deployment's (`ALLOW_LOWER_OVERRIDES`); by default a tag may only raise it.
    pub allow_lower_overrides: bool,
    /// Recovery point objective: an instance whose newest consistent set is older is reported.
    pub rpo_hours: u32,
    /// SNS topic that receives a run's summary when the run needs attention.
    pub notify_topic_arn: Option<String>,
    /// CloudWatch namespace of the function's metrics.
    pub metrics_namespace: String,
    /// How many instances a verification restores when none are named.
    pub verify_sample_size: u32,
    /// The cost estimate's prices, in millionths of a dollar per GB-month: the standard tier
    /// (`COST_PER_GB_MONTH`, 0.05) and the archive tier (`ARCHIVE_COST_PER_GB_MONTH`, 0.0125).
    pub cost_micros_per_gb_month: u32,
    pub archive_cost_micros_per_gb_month: u32,
    /// A copy of every consistent set in a vault account the fleet's account cannot delete
    /// in (`VAULT_ACCOUNT_ID`, `VAULT_ROLE_ARN`, `VAULT_REGIONS`, …); `None`: no vault.
    pub vault: Option<Vault>,
    /// `MODE=vault`: this deployment is a vault account's, keeping the fleet's vault copies
    /// (`VaultKeeping`); it takes no backups of its own. `None`: a fleet deployment.
    pub vault_keeping: Option<VaultKeeping>,
}

/// What a vault deployment keeps of the copies a fleet's function makes in its account, and
/// where it may share a set for a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKeeping {
    /// `FLEET_MANAGED_BY`: the fleet deployment's `ConsistentSnapshot:ManagedBy` tag value,
    /// which its vault copies carry. Only those are ever deleted here.
    pub fleet_managed_by: String,
    /// `VAULT_RETAIN_DAYS` (default 35): a vault copy is deleted only once older than this, by
    /// the start time EC2 reports (no tag can make a copy older).
    pub retain_days: u32,
    /// `VAULT_KEEP_NEWEST` (default 7): each server's newest sets are kept, however old.
    pub keep_newest: u32,
    /// `RECOVERY_ACCOUNTS`: the only accounts a set may be shared with for a recovery.
    pub recovery_accounts: Vec<String>,
    /// `RECOVERY_SHARE_DAYS` (default 7): a set shared for a recovery is unshared by the
    /// vault's schedule this long after (time to copy it or make its volumes there).
    pub recovery_share_days: u32,
}

/// The vault account, and how the function copies into it: each consistent set is shared
/// with the account, copied there by the assumed role (re-encrypted with the vault's key of
/// the region), locked there, then unshared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vault {
    /// `VAULT_ACCOUNT_ID`: the account the sets are shared with and copied into.
    pub account_id: String,
    /// `VAULT_ROLE_ARN`: the role of that account the function assumes to copy, tag, describe
    /// and lock there (never to delete).
    pub role_arn: String,
    /// `VAULT_REGIONS`: the vault's regions (the home region may be one of them).
    pub regions: Vec<String>,
    /// `VAULT_KMS_KEY_IDS`: the vault's own key in each of its regions (`region=key,…`).
    pub kms_key_ids: BTreeMap<String, String>,
    /// `VAULT_LOCK_MODE` (governance, the default, or compliance) and `VAULT_LOCK_DAYS`
    /// (default 30): the lock laid on each vault copy by the function.
    pub lock_mode: LockMode,
    pub lock_days: u32,
    /// `VAULT_TRANSIT_KMS_KEY_ID`: a key of this account in the home region that the vault
    /// account may use. An encrypted snapshot with another key (the default `aws/ebs` key
    /// cannot be shared at all) is first copied at home, re-encrypted with it, and that
    /// *transit copy* is shared and copied into the vault, then deleted. `None`: snapshots are
    /// shared as they are (unencrypted, or with a key the vault account may already use).
    pub transit_kms_key_id: Option<String>,
}

impl Config {
    /// The account of the tracking queue (its ARN's fifth field): the deployment's own.
    pub fn account_of_queue(&self) -> &str {
        self.queue_arn.split(':').nth(4).unwrap_or_default()
    }

    /// Reads the configuration through `get` (the process environment in the Lambda); the
    /// error lists every problem, each naming its setting.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut s = Settings {
            get,
            problems: Vec::new(),
        };
        let function_name = s.text("AWS_LAMBDA_FUNCTION_NAME", "consistent-snapshot");
        // RETAIN_DAILY is RETAIN_COUNT's new name: either may be set, not both differently.
        let (daily_name, copy_daily_name) = (
            if s.text("RETAIN_DAILY", "").is_empty() {
                "RETAIN_COUNT"
            } else {
                "RETAIN_DAILY"
            },
            if s.text("COPY_RETAIN_DAILY", "").is_empty() {
                "COPY_RETAIN_COUNT"
            } else {
                "COPY_RETAIN_DAILY"
            },
        );
        for (new, old) in [
            ("RETAIN_DAILY", "RETAIN_COUNT"),
            ("COPY_RETAIN_DAILY", "COPY_RETAIN_COUNT"),
        ] {
            let (a, b) = (s.text(new, ""), s.text(old, ""));
            if !a.is_empty() && !b.is_empty() && a != b {
                s.problems.push(format!(
                    "{new}={a} and {old}={b} disagree ({old} is {new}'s former name: set one)"
                ));
            }
        }
        let home = Retain {
            daily: s.number(daily_name, "7", 1, 1000),
            weekly: s.number("RETAIN_WEEKLY", "0", 0, 1000),
            monthly: s.number("RETAIN_MONTHLY", "0", 0, 1200),
            yearly: s.number("RETAIN_YEARLY", "0", 0, 100),
            days: s.optional_number("RETAIN_DAYS", 1, 36_500),
        };
        let copy_retain = Retain {
            daily: s.number(copy_daily_name, &home.daily.to_string(), 1, 1000),
            weekly: s.number("COPY_RETAIN_WEEKLY", &home.weekly.to_string(), 0, 1000),
            monthly: s.number("COPY_RETAIN_MONTHLY", &home.monthly.to_string(), 0, 1200),
            yearly: s.number("COPY_RETAIN_YEARLY", &home.yearly.to_string(), 0, 100),
            days: home.days,
        };
        let zone_name = s.text("SCHEDULE_TIMEZONE", "UTC");
        let schedule_zone = tiers::zone(&zone_name).unwrap_or_else(|why| {
            s.problems.push(format!("SCHEDULE_TIMEZONE: {why}"));
            Tz::UTC
        });
        let region = s.text("AWS_REGION", &s.text("AWS_DEFAULT_REGION", ""));
        let config = Config {
            target_tag_key: s.text("TARGET_TAG_KEY", "ConsistentSnapshot"),
            target_tag_value: s.text("TARGET_TAG_VALUE", "WindowsVSS"),
            queue_url: s.text("QUEUE_URL", ""),
            queue_arn: s.text("QUEUE_ARN", ""),
            catalog_table: s.text("CATALOG_TABLE", ""),
            ssm_document: s.text("SSM_DOCUMENT", VSS_DOCUMENTS[0]),
            exclude_boot_volume: s.flag("EXCLUDE_BOOT_VOLUME", "false"),
            vss: VssOptions {
                copy_only: s.flag("VSS_COPY_ONLY", "false"),
                save_vss_metadata: s.flag("VSS_SAVE_METADATA", "false"),
                collect_diagnostic_logs: s.flag("VSS_COLLECT_DIAGNOSTIC_LOGS", "false"),
                no_writers: s.flag("VSS_NO_WRITERS", "false"),
            },
            crash_consistent_fallback: s.flag("CRASH_CONSISTENT_FALLBACK", "true"),
            vss_retries: s.number("VSS_RETRIES", "1", 0, MAX_VSS_RETRIES),
            vss_retry_pause_seconds: s.number("VSS_RETRY_PAUSE_SECONDS", "120", 0, 900),
            min_ssm_agent_version: s.version("MIN_SSM_AGENT_VERSION", "2.2.58.0"),
            probe_document: Some(s.text("PROBE_DOCUMENT", "")).filter(|d| !d.is_empty()),
            probe_wait_seconds: s.number("PROBE_WAIT_SECONDS", "60", 10, 600),
            // A function name is unique in its account and region; the region keeps two
            // deployments of one name in two regions (whose copies meet) apart.
            managed_by: s.text(
                "MANAGED_BY",
                &if region.is_empty() {
                    function_name.clone()
                } else {
                    format!("{function_name}-{region}")
                },
            ),
            dry_run: s.flag("DRY_RUN", "false"),
            poll_initial_seconds: s.number("TRACK_POLL_INITIAL_SECONDS", "30", 1, 900),
            poll_max_seconds: s.number("TRACK_POLL_MAX_SECONDS", "900", 1, 900),
            completion_events: s.flag("COMPLETION_EVENTS", "false"),
            command_delivery_timeout_seconds: s.number(
                "COMMAND_DELIVERY_TIMEOUT_SECONDS",
                "600",
                30,
                2_592_000,
            ),
            vss_execution_timeout_seconds: s.number(
                "VSS_EXECUTION_TIMEOUT_SECONDS",
                "900",
                120,
                172_800,
            ),
            snapshot_completion_timeout_seconds: s.number(
                "SNAPSHOT_COMPLETION_TIMEOUT_SECONDS",
                "86400",
                60,
                1_209_600,
            ),
            describe_page_size: s.number("DESCRIBE_PAGE_SIZE", "1000", 5, 1000) as i32,
            retention_part_snapshots: s.number("RETENTION_PART_SNAPSHOTS", "10000", 1, 100_000)
                as usize,
            region,
            retain: home,
            schedule_zone,
            archive_after_days: s.optional_number("ARCHIVE_AFTER_DAYS", 1, 36_500),
            lock_mode: s.lock_mode("LOCK_MODE"),
            lock_cool_off_hours: s.optional_number("LOCK_COOL_OFF_HOURS", 1, 72),
            lock_max_days: s.number("LOCK_MAX_DAYS", "3650", 1, 36_500),
            copy_regions: s.regions("COPY_REGIONS"),
            copy_regions_allowed: s.regions("COPY_REGIONS_ALLOWED"),
            copy_kms_key_ids: s.keys_by_region("COPY_KMS_KEY_IDS"),
            copy_instance_tags: s
                .text("COPY_INSTANCE_TAGS", "")
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
            copy_retain,
            keep_orphaned_backups: s.flag("KEEP_ORPHANED_BACKUPS", "true"),
            allow_lower_overrides: s.flag("ALLOW_LOWER_OVERRIDES", "false"),
            rpo_hours: s.number("RPO_HOURS", "26", 1, 8760),
            notify_topic_arn: Some(s.text("NOTIFY_TOPIC_ARN", "")).filter(|t| !t.is_empty()),
            metrics_namespace: s.text("METRICS_NAMESPACE", "ConsistentSnapshot"),
            verify_sample_size: s.number("VERIFY_SAMPLE_SIZE", "2", 1, MAX_VERIFY as u32),
            cost_micros_per_gb_month: s.price("COST_PER_GB_MONTH", "0.05"),
            archive_cost_micros_per_gb_month: s.price("ARCHIVE_COST_PER_GB_MONTH", "0.0125"),
            vault: s.vault(),
            vault_keeping: s.vault_keeping(),
        };
        let mut problems = s.problems;
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Config(problems))
        }
    }

    /// What is wrong with settings that each read well: required ones missing, names out of
    /// their rules, settings that contradict each other.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.lock_cool_off_hours.is_some() && self.lock_mode != Some(LockMode::Compliance) {
            problems.push(
                "LOCK_COOL_OFF_HOURS is the cooling-off period of a compliance lock: set LOCK_MODE=compliance, or unset it"
                    .to_string(),
            );
        }
        if self.archive_after_days.is_some()
            && self.retain.monthly == 0
            && self.retain.yearly == 0
            && self.copy_retain.monthly == 0
            && self.copy_retain.yearly == 0
        {
            problems.push(
                "ARCHIVE_AFTER_DAYS archives sets kept only by the monthly or yearly tier: set RETAIN_MONTHLY or RETAIN_YEARLY too".to_string(),
            );
        }
        if self.vault_keeping.is_some() {
            if self.vault.is_some() {
                problems.push(
                    "MODE=vault and VAULT_ACCOUNT_ID: a vault deployment copies into no vault of its own".to_string(),
                );
            }
            // A vault deployment keeps copies and its catalog of them: no runs, no queue.
            problems.extend(catalog_table_problem(&self.catalog_table));
            return problems;
        }
        if self.queue_url.is_empty() {
            problems.push("QUEUE_URL is required (the URL of the tracking queue)".to_string());
        }
        if !self.queue_arn.starts_with("arn:") || self.queue_arn.split(':').count() != 6 {
            problems.push(format!(
                "QUEUE_ARN={:?} is not the tracking queue's ARN (arn:aws:sqs:region:account:name): SQS records are accepted only from it",
                self.queue_arn
            ));
        }
        problems.extend(catalog_table_problem(&self.catalog_table));
        if self.target_tag_key.is_empty() || self.target_tag_key.len() > 128 {
            problems.push("TARGET_TAG_KEY must be 1 to 128 characters".to_string());
        }
        if self.vss.no_writers && self.vss.save_vss_metadata {
            problems.push(
                "VSS_NO_WRITERS and VSS_SAVE_METADATA are both true: the VSS documents refuse NoWriters with SaveVssMetadata"
                    .to_string(),
            );
        }
        if !VSS_DOCUMENTS.contains(&self.ssm_document.as_str()) {
            problems.push(format!(
                "SSM_DOCUMENT={} is not one of {}",
                self.ssm_document,
                VSS_DOCUMENTS.join(", ")
            ));
        }
        if let Some(document) = &self.probe_document {
            problems.extend(probe_document_problem(document));
        }
        let managed_by = &self.managed_by;
        if managed_by.len() > 200 || *managed_by != sanitize_tag_text(managed_by) {
            problems.push(format!(
                "MANAGED_BY={managed_by} must be at most 200 letters, digits, spaces or ( ) . / - @ _ + : = {{ }}"
            ));
        }
        if self.region.is_empty() && !self.copy_regions.is_empty() {
            problems.push("AWS_REGION is not set: the copies' source region is unknown".into());
        }
        if self.copy_regions.contains(&self.region) {
            problems.push(format!(
                "COPY_REGIONS includes the function's own region {}",
                self.region
            ));
        }
        if let Some(topic) = &self.notify_topic_arn {
            if !(topic.starts_with("arn:") && topic.contains(":sns:")) {
                problems.push(format!(
                    "NOTIFY_TOPIC_ARN={topic} is not an SNS topic ARN (arn:aws:sns:region:account:name)"
                ));
            }
        }
        let namespace = &self.metrics_namespace;
        if namespace.len() > 255
            || namespace.starts_with("AWS/")
            || !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_/#:".contains(c))
        {
            problems.push(format!(
                "METRICS_NAMESPACE={namespace} must be at most 255 letters, digits or . - _ / # : and not start with AWS/"
            ));
        }
        if self.copy_instance_tags.len() > MAX_COPIED_INSTANCE_TAGS {
            problems.push(format!(
                "COPY_INSTANCE_TAGS names {} keys: at most {MAX_COPIED_INSTANCE_TAGS} (a snapshot holds 50 tags, and this function and the document write their own)",
                self.copy_instance_tags.len()
            ));
        }
        for key in &self.copy_instance_tags {
            if let Some(why) = uncopyable_tag(key) {
                problems.push(format!("COPY_INSTANCE_TAGS: {key:?} {why}"));
            }
        }
        if self.poll_max_seconds < self.poll_initial_seconds {
            problems.push(format!(
                "TRACK_POLL_MAX_SECONDS={} is below TRACK_POLL_INITIAL_SECONDS={}",
                self.poll_max_seconds, self.poll_initial_seconds
            ));
        }
        problems
    }

    /// The instance's tags that `COPY_INSTANCE_TAGS` names, as they are (values of at most
    /// 256 characters, as EC2 keeps them).
    pub fn cost_tags(&self, tags: &BTreeMap<String, String>) -> Vec<(String, String)> {
        self.copy_instance_tags
            .iter()
            .filter_map(|k| Some((k.clone(), cut_chars(tags.get(k)?, TAG_VALUE_MAX_CHARS))))
            .collect()
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// Reads settings by name, each with its default, and collects every problem instead of
/// stopping at the first (a wrong value reads as its range's lowest, never used: the
/// configuration is refused as a whole).
struct Settings<G> {
    get: G,
    problems: Vec<String>,
}

impl<G: Fn(&str) -> Option<String>> Settings<G> {
    /// The value, trimmed; `default` when unset or blank.
    fn text(&self, name: &str, default: &str) -> String {
        match (self.get)(name) {
            Some(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => default.to_string(),
        }
    }

    /// A price in dollars per GB-month (above 0, at most 10), in millionths of a dollar.
    fn price(&mut self, name: &str, default: &str) -> u32 {
        let value = self.text(name, default);
        match value.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 10.0 => (p * 1e6).round() as u32,
            _ => {
                self.problems.push(format!(
                    "{name}={value} must be a price in dollars per GB-month, above 0 and at most 10"
                ));
                0
            }
        }
    }

    fn flag(&mut self, name: &str, default: &str) -> bool {
        let value = self.text(name, default);
        parse_bool(&value).unwrap_or_else(|| {
            self.problems
                .push(format!("{name}={value} is not true or false"));
            false
        })
    }

    fn number(&mut self, name: &str, default: &str, min: u32, max: u32) -> u32 {
        let value = self.text(name, default);
        match value.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.problems.push(format!(
                    "{name}={value} must be a whole number from {min} to {max}"
                ));
                min
            }
        }
    }

    /// A number that may be left unset.
    /// `none` (or unset), `governance` or `compliance`.
    fn lock_mode(&mut self, name: &str) -> Option<LockMode> {
        match self.text(name, "none").to_ascii_lowercase().as_str() {
            "none" => None,
            "governance" => Some(LockMode::Governance),
            "compliance" => Some(LockMode::Compliance),
            other => {
                self.problems.push(format!(
                    "{name}={other:?} is not none, governance or compliance"
                ));
                None
            }
        }
    }

    /// `MODE`: `fleet` (the default) or `vault`, with the vault deployment's settings.
    fn vault_keeping(&mut self) -> Option<VaultKeeping> {
        match self.text("MODE", "fleet").as_str() {
            "fleet" => return None,
            "vault" => {}
            other => {
                self.problems
                    .push(format!("MODE={other:?} is not fleet or vault"));
                return None;
            }
        }
        let keeping = VaultKeeping {
            fleet_managed_by: self.text("FLEET_MANAGED_BY", ""),
            retain_days: self.number("VAULT_RETAIN_DAYS", "35", 1, 36_500),
            keep_newest: self.number("VAULT_KEEP_NEWEST", "7", 1, 1000),
            recovery_accounts: self
                .text("RECOVERY_ACCOUNTS", "")
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
            recovery_share_days: self.number("RECOVERY_SHARE_DAYS", "7", 1, 365),
        };
        if keeping.fleet_managed_by.is_empty() {
            self.problems.push(
                "FLEET_MANAGED_BY is required with MODE=vault: the fleet deployment's ManagedBy tag, which its vault copies carry".to_string(),
            );
        }
        for account in &keeping.recovery_accounts {
            if !is_account_id(account) {
                self.problems.push(format!(
                    "RECOVERY_ACCOUNTS: {account:?} is not an AWS account id (12 digits)"
                ));
            }
        }
        Some(keeping)
    }

    /// The vault settings: none of them set, no vault; any set, all of them are read and
    /// checked together (`vault_problems`).
    fn vault(&mut self) -> Option<Vault> {
        let account_id = self.text("VAULT_ACCOUNT_ID", "");
        let role_arn = self.text("VAULT_ROLE_ARN", "");
        let regions = self.regions("VAULT_REGIONS");
        if account_id.is_empty() && role_arn.is_empty() && regions.is_empty() {
            return None;
        }
        let vault = Vault {
            account_id,
            role_arn,
            regions,
            kms_key_ids: self.keys_by_region("VAULT_KMS_KEY_IDS"),
            lock_mode: self
                .lock_mode("VAULT_LOCK_MODE")
                .unwrap_or(LockMode::Governance),
            lock_days: self.number("VAULT_LOCK_DAYS", "30", 1, 36_500),
            transit_kms_key_id: Some(self.text("VAULT_TRANSIT_KMS_KEY_ID", ""))
                .filter(|k| !k.is_empty()),
        };
        self.problems.extend(vault_problems(&vault));
        Some(vault)
    }

    fn optional_number(&mut self, name: &str, min: u32, max: u32) -> Option<u32> {
        let set = !self.text(name, "").is_empty();
        set.then(|| self.number(name, "", min, max))
    }

    fn regions(&mut self, name: &str) -> Vec<String> {
        parse_regions(&self.text(name, "")).unwrap_or_else(|why| {
            self.problems.push(format!("{name}: {why}"));
            vec![]
        })
    }

    /// `region=key,…`.
    fn keys_by_region(&mut self, name: &str) -> BTreeMap<String, String> {
        let text = self.text(name, "");
        let mut keys = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((r, key)) if is_region(r.trim()) && !key.trim().is_empty() => {
                    keys.insert(r.trim().to_string(), key.trim().to_string());
                }
                _ => self.problems.push(format!(
                    "{name}: {pair:?} is not region=key (eu-west-1=arn:aws:kms:…)"
                )),
            }
        }
        keys
    }

    fn version(&mut self, name: &str, default: &str) -> AgentVersion {
        let value = self.text(name, default);
        AgentVersion::parse(&value).unwrap_or_else(|| {
            self.problems.push(format!(
                "{name}={value} is not a dotted version such as 2.2.58.0"
            ));
            AgentVersion::zero()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A configuration of these settings, with the queue's ARN and the catalog as a
    /// deployment has them (a test that wants them missing overrides them with "").
    fn config(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        let env: HashMap<String, String> = [
            ("QUEUE_ARN", "arn:aws:sqs:eu-west-1:123456789012:q"),
            ("CATALOG_TABLE", "prod-catalog"),
        ]
        .iter()
        .chain(pairs)
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
        assert!(!c.exclude_boot_volume && c.vss == VssOptions::default() && !c.dry_run);
        assert_eq!(
            c.min_ssm_agent_version,
            AgentVersion::parse("2.2.58.0").expect("v")
        );
        assert_eq!(c.managed_by, "consistent-snapshot");
        assert_eq!(
            (c.retain, c.copy_retain),
            (Retain::daily(7), Retain::daily(7))
        );
        assert_eq!(c.schedule_zone, Tz::UTC);
        assert!(!c.allow_lower_overrides, "a tag may only raise retention");
        assert!(c.copy_regions.is_empty() && c.keep_orphaned_backups);
        assert!(
            c.crash_consistent_fallback,
            "as DLM: a server VSS failed still gets a set"
        );
    }

    #[test]
    fn retention_tiers_and_the_time_zone_are_read_with_the_old_name_kept() {
        let c = config(&[
            ("QUEUE_URL", "q"),
            ("RETAIN_DAILY", "7"),
            ("RETAIN_WEEKLY", "4"),
            ("RETAIN_MONTHLY", "12"),
            ("RETAIN_YEARLY", "1"),
            ("COPY_RETAIN_COUNT", "3"),
            ("COPY_RETAIN_YEARLY", "0"),
            ("SCHEDULE_TIMEZONE", "Europe/Paris"),
        ])
        .expect("valid");
        let home = Retain {
            daily: 7,
            weekly: 4,
            monthly: 12,
            yearly: 1,
            days: None,
        };
        assert_eq!(c.retain, home);
        assert_eq!(
            c.copy_retain,
            Retain {
                daily: 3,
                yearly: 0,
                ..home
            }
        );
        assert_eq!(c.schedule_zone, chrono_tz::Europe::Paris);
        assert_eq!(c.archive_after_days, None);
        let archive_alone = config(&[("QUEUE_URL", "q"), ("ARCHIVE_AFTER_DAYS", "30")])
            .expect_err("archiving with no monthly or yearly tier")
            .to_string();
        assert!(archive_alone.contains("RETAIN_MONTHLY"), "{archive_alone}");
        // The cost estimate's prices, in millionths of a dollar per GB-month.
        assert_eq!(
            (
                c.cost_micros_per_gb_month,
                c.archive_cost_micros_per_gb_month
            ),
            (50_000, 12_500)
        );
        let priced = config(&[("QUEUE_URL", "q"), ("COST_PER_GB_MONTH", "0.055")]).expect("valid");
        assert_eq!(priced.cost_micros_per_gb_month, 55_000);
        for bad in ["0", "-1", "cheap", "11"] {
            let err = config(&[("QUEUE_URL", "q"), ("COST_PER_GB_MONTH", bad)])
                .expect_err("refused")
                .to_string();
            assert!(err.contains("COST_PER_GB_MONTH"), "{bad}: {err}");
        }
        let old = config(&[("QUEUE_URL", "q"), ("RETAIN_COUNT", "5")]).expect("valid");
        assert_eq!(old.retain.daily, 5);
        let err = config(&[
            ("QUEUE_URL", "q"),
            ("RETAIN_DAILY", "5"),
            ("RETAIN_COUNT", "6"),
            ("RETAIN_WEEKLY", "-1"),
            ("SCHEDULE_TIMEZONE", "Paris"),
        ])
        .expect_err("invalid")
        .to_string();
        for name in [
            "RETAIN_DAILY=5 and RETAIN_COUNT=6",
            "RETAIN_WEEKLY",
            "\"Paris\"",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
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
            (c.retain.daily, c.retain.days, c.copy_retain.daily),
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
    fn the_vault_settings_are_read_together_and_checked() {
        let none = config(&[("QUEUE_URL", "q")]).expect("valid");
        assert_eq!(none.vault, None);
        let c = config(&[
            ("QUEUE_URL", "q"),
            ("VAULT_ACCOUNT_ID", "222222222222"),
            (
                "VAULT_ROLE_ARN",
                "arn:aws:iam::222222222222:role/consistent-snapshot-vault-access",
            ),
            ("VAULT_REGIONS", "eu-west-1"),
            ("VAULT_KMS_KEY_IDS", "eu-west-1=alias/vault"),
        ])
        .expect("valid");
        let vault = c.vault.expect("a vault");
        assert_eq!(vault.regions, ["eu-west-1"]);
        assert_eq!(
            (vault.lock_mode, vault.lock_days),
            (LockMode::Governance, 30)
        );
        // A role of another account, a region without its key, a malformed account: each named.
        let err = config(&[
            ("QUEUE_URL", "q"),
            ("VAULT_ACCOUNT_ID", "2222"),
            ("VAULT_ROLE_ARN", "arn:aws:iam::333333333333:role/x"),
            ("VAULT_REGIONS", "eu-west-1,us-west-2"),
            ("VAULT_KMS_KEY_IDS", "eu-west-1=alias/vault"),
        ])
        .expect_err("invalid")
        .to_string();
        for name in [
            "VAULT_ACCOUNT_ID=\"2222\"",
            "VAULT_ROLE_ARN",
            "no key for the vault region us-west-2",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
        let partial = config(&[("QUEUE_URL", "q"), ("VAULT_REGIONS", "eu-west-1")])
            .expect_err("a vault without its account")
            .to_string();
        assert!(partial.contains("VAULT_ACCOUNT_ID"), "{partial}");
    }

    #[test]
    fn a_vault_deployment_needs_no_queue_but_its_own_catalog() {
        let vault = [("MODE", "vault"), ("FLEET_MANAGED_BY", "fleet-a")];
        let c = config(&[vault[0], vault[1], ("CATALOG_TABLE", "vault-catalog")])
            .expect("no queue needed");
        assert_eq!(c.catalog_table, "vault-catalog");
        assert!(c.vault_keeping.is_some());
        let err = config(&[vault[0], vault[1], ("CATALOG_TABLE", "x")])
            .expect_err("not a table name")
            .to_string();
        assert!(err.contains("CATALOG_TABLE"), "{err}");
    }

    #[test]
    fn cost_tags_name_only_keys_an_instance_may_pass_on() {
        let c = config(&[
            ("QUEUE_URL", "q"),
            ("COPY_INSTANCE_TAGS", " CostCenter, Project ,"),
        ])
        .expect("valid");
        assert_eq!(c.copy_instance_tags, vec!["CostCenter", "Project"]);
        let tags: BTreeMap<String, String> = [
            ("CostCenter".to_string(), "finance".to_string()),
            ("Owner".to_string(), "dba".to_string()),
        ]
        .into();
        assert_eq!(
            c.cost_tags(&tags),
            vec![("CostCenter".to_string(), "finance".to_string())]
        );
        for refused in [
            "ConsistentSnapshot:RunId",
            "aws:cloudformation:stack-name",
            "Name",
            "AppConsistent",
        ] {
            let err = config(&[("QUEUE_URL", "q"), ("COPY_INSTANCE_TAGS", refused)])
                .expect_err(refused)
                .to_string();
            assert!(err.contains("COPY_INSTANCE_TAGS"), "{refused}: {err}");
        }
        let many: Vec<String> = (0..21).map(|i| format!("k{i}")).collect();
        assert!(config(&[("QUEUE_URL", "q"), ("COPY_INSTANCE_TAGS", &many.join(","))]).is_err());
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
    fn managed_by_defaults_to_the_function_name_and_its_region() {
        let c =
            config(&[("QUEUE_URL", "q"), ("AWS_LAMBDA_FUNCTION_NAME", "prod-vss")]).expect("valid");
        assert_eq!(c.managed_by, "prod-vss");
        let c = config(&[
            ("QUEUE_URL", "q"),
            ("AWS_LAMBDA_FUNCTION_NAME", "prod-vss"),
            ("AWS_REGION", "eu-west-1"),
        ])
        .expect("valid");
        assert_eq!(c.managed_by, "prod-vss-eu-west-1");
    }

    #[test]
    fn a_timed_out_freeze_is_retried_once_by_default_and_never_more_than_three_times() {
        let c = config(&[("QUEUE_URL", "q")]).expect("valid");
        assert_eq!((c.vss_retries, c.vss_retry_pause_seconds), (1, 120));
        for (name, bad) in [("VSS_RETRIES", "4"), ("VSS_RETRY_PAUSE_SECONDS", "901")] {
            let err = config(&[("QUEUE_URL", "q"), (name, bad)])
                .expect_err(name)
                .to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn the_probe_is_only_ever_the_stacks_own_document() {
        let c = config(&[("QUEUE_URL", "q")]).expect("valid");
        assert_eq!((c.probe_document, c.probe_wait_seconds), (None, 60));
        let c = config(&[
            ("QUEUE_URL", "q"),
            ("PROBE_DOCUMENT", "prod-vss-probe-1A2B"),
        ])
        .expect("valid");
        assert_eq!(c.probe_document.as_deref(), Some("prod-vss-probe-1A2B"));
        for (document, says) in [
            ("AWS-RunPowerShellScript", "AWS-owned"),
            ("AmazonInspector-ManageAWSAgent", "AWS-owned"),
            ("no spaces allowed", "not an SSM document name"),
        ] {
            let err = config(&[("QUEUE_URL", "q"), ("PROBE_DOCUMENT", document)])
                .expect_err(document)
                .to_string();
            assert!(err.contains(says), "{document}: {err}");
        }
        assert!(config(&[("QUEUE_URL", "q"), ("PROBE_WAIT_SECONDS", "3600")]).is_err());
    }

    #[test]
    fn every_problem_is_listed_by_name() {
        let err = config(&[
            ("EXCLUDE_BOOT_VOLUME", "maybe"),
            ("SSM_DOCUMENT", "AWS-RunShellScript"),
            ("MIN_SSM_AGENT_VERSION", "two"),
            ("TRACK_POLL_MAX_SECONDS", "5000"),
            ("QUEUE_ARN", "tracking"),
            ("CATALOG_TABLE", ""),
        ])
        .expect_err("invalid");
        let text = err.to_string();
        for name in [
            "QUEUE_URL",
            "QUEUE_ARN=\"tracking\"",
            "CATALOG_TABLE",
            "EXCLUDE_BOOT_VOLUME=maybe",
            "SSM_DOCUMENT",
            "MIN_SSM_AGENT_VERSION",
            "TRACK_POLL_MAX_SECONDS",
        ] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
    }
}
