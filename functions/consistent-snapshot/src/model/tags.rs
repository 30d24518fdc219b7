//! Every tag key this tool reads or writes, in one place, and the tag text rules.
//!
//! Tags are for operators (search, console, cost). The keys below are a contract with them and
//! with the IAM conditions of the template; renaming one is a breaking change.

use std::collections::BTreeMap;

use crate::model::ids::parse_regions;

/// The run a snapshot belongs to.
pub const TAG_RUN_ID: &str = "ConsistentSnapshot:RunId";
/// The instance a snapshot (or a restored volume) belongs to.
pub const TAG_INSTANCE_ID: &str = "ConsistentSnapshot:InstanceId";
/// The deployment that made it: retention only ever looks at its own.
pub const TAG_MANAGED_BY: &str = "ConsistentSnapshot:ManagedBy";
/// On a copy: the snapshot it was copied from, and that snapshot's region.
pub const TAG_SOURCE_SNAPSHOT: &str = "ConsistentSnapshot:SourceSnapshotId";
pub const TAG_SOURCE_REGION: &str = "ConsistentSnapshot:SourceRegion";
/// On a vault copy: how many snapshots its set has (a recovery shares only a whole set).
pub const TAG_SET_SIZE: &str = "ConsistentSnapshot:SetSize";
/// On a vault transit copy (an encrypted snapshot copied at home with a key the vault may use,
/// deleted once copied into the vault): the deployment that made it. Not `TAG_MANAGED_BY`:
/// it is no backup, and retention never sees it.
pub const TAG_VAULT_TRANSIT: &str = "ConsistentSnapshot:VaultTransit";
/// On a set's snapshots and copies: `FileSystem` when the set was taken with `NoWriters`
/// (file-system consistent, not application consistent), `CrashFallback` on the function's
/// own crash-consistent fallback. For operators; decisions read the catalog's verdict.
pub const TAG_CONSISTENCY: &str = "ConsistentSnapshot:Consistency";
pub const CONSISTENCY_FILE_SYSTEM: &str = "FileSystem";
/// On a crash-consistent fallback set (CreateSnapshots, when VSS could not run).
pub const CONSISTENCY_CRASH_FALLBACK: &str = "CrashFallback";

/// Per-instance overrides, read from the instance's tags.
pub const TAG_EXCLUDE_BOOT: &str = "ConsistentSnapshot:ExcludeBootVolume";
pub const TAG_COPY_ONLY: &str = "ConsistentSnapshot:CopyOnly";
pub const TAG_SAVE_VSS_METADATA: &str = "ConsistentSnapshot:SaveVssMetadata";
pub const TAG_COLLECT_DIAGNOSTIC_LOGS: &str = "ConsistentSnapshot:CollectDiagnosticLogs";
pub const TAG_NO_WRITERS: &str = "ConsistentSnapshot:NoWriters";
/// The failover cluster an instance is a node of: the VSS command goes only to the node that
/// owns the cluster's disks (found by the readiness probe at each run).
pub const TAG_CLUSTER: &str = "ConsistentSnapshot:Cluster";
pub const TAG_COPY_REGIONS: &str = "ConsistentSnapshot:CopyRegions";
pub const TAG_RETAIN_COUNT: &str = "ConsistentSnapshot:RetainCount";
pub const TAG_RETAIN_DAYS: &str = "ConsistentSnapshot:RetainDays";
pub const TAG_RETAIN_WEEKLY: &str = "ConsistentSnapshot:RetainWeekly";
pub const TAG_RETAIN_MONTHLY: &str = "ConsistentSnapshot:RetainMonthly";
pub const TAG_RETAIN_YEARLY: &str = "ConsistentSnapshot:RetainYearly";
/// On a kept set's snapshots: the retention tiers that keep it (`daily,monthly`), as the
/// catalog records them. Shown to operators; never read to decide anything.
pub const TAG_TIERS: &str = "ConsistentSnapshot:Tiers";

/// Restores: the restore a volume was made by, its source snapshot, the device it belongs at,
/// why it was made (`restore` or `verify`), and on a volume a replace took off an instance, the
/// restore that did it and where the volume was.
pub const TAG_RESTORE_ID: &str = "ConsistentSnapshot:RestoreId";
pub const TAG_RESTORED_FROM: &str = "ConsistentSnapshot:RestoredFrom";
pub const TAG_RESTORE_DEVICE: &str = "ConsistentSnapshot:Device";
pub const TAG_PURPOSE: &str = "ConsistentSnapshot:Purpose";
pub const TAG_REPLACED_BY: &str = "ConsistentSnapshot:ReplacedBy";
pub const TAG_DETACHED_FROM: &str = "ConsistentSnapshot:DetachedFrom";

/// Written by the VSS document itself (it refuses them in its `tags` parameter).
pub const TAG_APP_CONSISTENT: &str = "AppConsistent";
pub const TAG_DEVICE: &str = "Device";
/// The console's name column.
pub const TAG_NAME: &str = "Name";

/// The tags retention and the fleet report read; a snapshot's other tags (`Name`, the VSS
/// document's `AwsVssConfig`, an operator's own) are not kept, which keeps a plan over
/// 100,000 snapshots small.
pub const TAGS_READ: [&str; 8] = [
    TAG_MANAGED_BY,
    TAG_CONSISTENCY,
    TAG_INSTANCE_ID,
    TAG_RUN_ID,
    TAG_APP_CONSISTENT,
    TAG_DEVICE,
    TAG_SOURCE_SNAPSHOT,
    TAG_SOURCE_REGION,
];

/// EC2's limits: a tag value holds at most 256 characters, a snapshot's description 255.
pub const TAG_VALUE_MAX_CHARS: usize = 256;
pub const DESCRIPTION_MAX_CHARS: usize = 255;

/// `text` cut to at most `max` characters (as EC2 counts them), ending in `…` when cut, so
/// that a long instance name cannot make a tag or a description EC2 refuses.
pub fn cut_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// What an `AppConsistent` tag value says: only `true` (any case) is consistent.
pub fn is_app_consistent(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Keeps only the characters the VSS documents accept in a tag (letters, digits, space and
/// `( ) . / \ - " ' @ _ + : = { }`); anything else, `;` and `,` included, becomes `_`.
pub fn sanitize_tag_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ().\\/-\"'@_+:={}".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The regions an instance's sets are copied to: its override tag, else the configured ones.
/// A tag may name only regions of `configured` or `allowed` (`COPY_REGIONS_ALLOWED`): a stray
/// or forged tag must not send the instance's backups, nor the function's reads, anywhere
/// else; such a tag is refused for that instance, with the regions it named.
pub fn copy_regions_of(
    tags: &BTreeMap<String, String>,
    configured: &[String],
    allowed: &[String],
    home: &str,
) -> Result<Vec<String>, String> {
    let Some(value) = tags.get(TAG_COPY_REGIONS) else {
        return Ok(configured.to_vec());
    };
    let regions: Vec<String> = parse_regions(value)
        .map_err(|why| format!("tag {TAG_COPY_REGIONS}={value:?}: {why}"))?
        .into_iter()
        .filter(|r| r != home)
        .collect();
    let outside: Vec<&str> = regions
        .iter()
        .filter(|r| !configured.contains(r) && !allowed.contains(r))
        .map(String::as_str)
        .collect();
    if !outside.is_empty() {
        return Err(format!(
            "tag {TAG_COPY_REGIONS}={value:?}: {} not in COPY_REGIONS or COPY_REGIONS_ALLOWED",
            outside.join(", ")
        ));
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_to_ec2s_limit_in_characters() {
        assert_eq!(cut_chars("sql01 xvdf", TAG_VALUE_MAX_CHARS), "sql01 xvdf");
        let name = "é".repeat(300);
        let cut = cut_chars(&name, TAG_VALUE_MAX_CHARS);
        assert_eq!(cut.chars().count(), TAG_VALUE_MAX_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(cut_chars(&"a".repeat(256), 256), "a".repeat(256));
    }

    #[test]
    fn only_true_is_app_consistent() {
        assert!(is_app_consistent(Some("True")) && is_app_consistent(Some("true")));
        assert!(!is_app_consistent(Some("False")));
        assert!(!is_app_consistent(Some("yes")));
        assert!(!is_app_consistent(None));
    }
}
