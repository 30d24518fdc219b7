//! EBS snapshots: this account's own, found by tag; tags written on them; copies started into
//! other regions; deletions; and the AMIs that use them.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_ec2::error::SdkError;
use aws_sdk_ec2::types::{InstanceSpecification, ResourceType, Snapshot, TagSpecification};
use chrono::{DateTime, Utc};

use crate::aws::{aws, code_of, each_page, ec2_filter, ec2_tag, tag_map, utc};
use crate::error::Error;
use crate::model::snapshot::{
    LockMode, SnapshotFacts, SnapshotInfo, SnapshotLock, TagInterner, TierStatus,
};
use crate::model::tags::{TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RUN_ID};

/// Reads an SDK snapshot into plain facts.
fn facts_of(snapshot: &Snapshot) -> Option<SnapshotFacts> {
    Some(SnapshotFacts {
        snapshot_id: snapshot.snapshot_id()?.to_string(),
        volume_id: snapshot.volume_id().unwrap_or_default().to_string(),
        state: snapshot
            .state()
            .map(|s| s.as_str())
            .unwrap_or_default()
            .into(),
        start_time: snapshot.start_time().and_then(utc),
        size_gib: snapshot.volume_size(),
        tags: tag_map(snapshot.tags()),
        state_message: snapshot
            .state_message()
            .filter(|m| !m.is_empty())
            .map(str::to_string),
        archived: archived(snapshot.storage_tier()),
        encrypted_with: snapshot
            .encrypted()
            .unwrap_or(false)
            .then(|| snapshot.kms_key_id().unwrap_or_default().to_string()),
    })
}

/// The account's own snapshots carrying tag `key` = `value` (and, when given, of these volumes),
/// every page of them, each made into what the caller keeps by `keep` as its page arrives (so
/// that only one page of SDK snapshots is held at a time); `subject` names them in an error.
pub async fn own_tagged<T>(
    ec2: &aws_sdk_ec2::Client,
    (key, value): (&str, &str),
    volume_ids: Option<Vec<String>>,
    subject: &str,
    keep: impl FnMut(SnapshotFacts) -> Option<T>,
) -> Result<Vec<T>, Error> {
    let also = volume_ids.map(|ids| ("volume-id".to_string(), ids));
    own_tagged_into(ec2, (key, value), also, subject, Vec::new(), keep).await
}

/// `own_tagged`, into `found` (made with the capacity the caller expects to need: a list of
/// 100,000 snapshots that grows by doubling would hold up to twice its size).
async fn own_tagged_into<T>(
    ec2: &aws_sdk_ec2::Client,
    (key, value): (&str, &str),
    also: Option<(String, Vec<String>)>,
    subject: &str,
    mut found: Vec<T>,
    mut keep: impl FnMut(SnapshotFacts) -> Option<T>,
) -> Result<Vec<T>, Error> {
    let mut request = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(ec2_filter(&format!("tag:{key}"), [value]));
    if let Some((name, values)) = also {
        request = request.filters(ec2_filter(&name, values));
    }
    let pages = request
        .max_results(LIST_PAGE as i32)
        .into_paginator()
        .send();
    each_page(pages, "DescribeSnapshots", subject, |page| {
        found.extend(
            page.snapshots()
                .iter()
                .filter_map(facts_of)
                .filter_map(&mut keep),
        );
    })
    .await?;
    Ok(found)
}

/// The account's own snapshots with these ids (those that no longer exist are simply not
/// answered), 200 ids a call; `subject` names them in an error.
pub async fn by_ids(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    subject: &str,
) -> Result<Vec<SnapshotFacts>, Error> {
    let mut found = Vec::new();
    for chunk in ids.chunks(FILTER_VALUES) {
        let pages = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(ec2_filter("snapshot-id", chunk.iter().cloned()))
            .into_paginator()
            .send();
        each_page(pages, "DescribeSnapshots", subject, |page| {
            found.extend(page.snapshots().iter().filter_map(facts_of));
        })
        .await?;
    }
    Ok(found)
}

/// Snapshots a page of a listing holds (DescribeSnapshots' largest `MaxResults`).
const LIST_PAGE: usize = 1000;

/// Whether `ids` are read in fewer calls from a listing of the `tagged` snapshots that carry a
/// tag (`LIST_PAGE` a page) than by id (`FILTER_VALUES` a call).
fn list_rather_than_ask(ids: usize, tagged: usize) -> bool {
    tagged.div_ceil(LIST_PAGE).max(1) < ids.div_ceil(FILTER_VALUES)
}

/// The account's own snapshots with these ids (those that no longer exist are simply not
/// answered), read in the fewer calls: by id, or from the listing of the snapshots tagged
/// `key` = `value` (about `tagged` of them), of which only these ids are kept, and then by id
/// those the listing did not find. The tag only chooses what is listed, never what is
/// believed: each snapshot answered is EC2's report of its own id, and one whose tag was
/// rewritten or removed is still read, by its id. `subject` names them in an error.
pub async fn by_ids_or_tag(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    (key, value): (&str, &str),
    tagged: usize,
    subject: &str,
) -> Result<Vec<SnapshotFacts>, Error> {
    if !list_rather_than_ask(ids.len(), tagged) {
        return by_ids(ec2, ids, subject).await;
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let listed = own_tagged(ec2, (key, value), None, subject, |facts| {
        wanted.contains(facts.snapshot_id.as_str()).then_some(facts)
    })
    .await?;
    with_ids(ec2, &listed, ids, subject).await
}

/// Of `listed` (snapshots already read by a tag, a page of 1,000 a call), those with these
/// ids, and by id, 200 a call, those the listing did not find: a tag anyone may rewrite must
/// not hide a snapshot. A snapshot that no longer exists is simply not answered.
pub async fn with_ids(
    ec2: &aws_sdk_ec2::Client,
    listed: &[SnapshotFacts],
    ids: &[String],
    subject: &str,
) -> Result<Vec<SnapshotFacts>, Error> {
    let by_id: HashMap<&str, &SnapshotFacts> =
        listed.iter().map(|s| (s.snapshot_id.as_str(), s)).collect();
    let mut found = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        match by_id.get(id.as_str()) {
            Some(facts) => found.push((*facts).clone()),
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        found.extend(by_ids(ec2, &missing, subject).await?);
    }
    Ok(found)
}

/// The account's own snapshots in a destination region tagged with this run's id, each with
/// its description (set at creation, which no later call can change).
pub async fn tagged_copies(
    ec2: &aws_sdk_ec2::Client,
    run_id: &str,
    subject: &str,
) -> Result<Vec<(SnapshotFacts, String)>, Error> {
    tagged_described(ec2, (TAG_RUN_ID, run_id), subject).await
}

/// The account's own snapshots tagged `key` = `value`, each with its description.
pub async fn tagged_described(
    ec2: &aws_sdk_ec2::Client,
    (key, value): (&str, &str),
    subject: &str,
) -> Result<Vec<(SnapshotFacts, String)>, Error> {
    let pages = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(ec2_filter(&format!("tag:{key}"), [value]))
        .max_results(1000)
        .into_paginator()
        .send();
    let mut found = Vec::new();
    each_page(pages, "DescribeSnapshots", subject, |page| {
        for snapshot in page.snapshots() {
            if let Some(facts) = facts_of(snapshot) {
                found.push((
                    facts,
                    snapshot.description().unwrap_or_default().to_string(),
                ));
            }
        }
    })
    .await?;
    Ok(found)
}

/// This run's snapshots (of these volumes, when given), found by the run-id tag, sorted by id.
pub async fn of_run(
    ec2: &aws_sdk_ec2::Client,
    run_id: &str,
    volume_ids: Option<Vec<String>>,
) -> Result<Vec<SnapshotFacts>, Error> {
    let mut found = own_tagged(
        ec2,
        (TAG_RUN_ID, run_id),
        volume_ids,
        &format!("run {run_id}"),
        Some,
    )
    .await?;
    found.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
    Ok(found)
}

/// This deployment's snapshots in one region (owner self, tagged with its `ManagedBy`) that
/// `admit` lets through (the catalog's vouching, `model::catalog::admit`), as retention and
/// the fleet report see them: only the tags they read, shared. `expected` is how many the
/// caller expects `admit` to let through (the catalog's count for the region).
pub async fn managed(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    managed_by: &str,
    expected: usize,
    mut admit: impl FnMut(SnapshotFacts) -> Option<SnapshotFacts>,
) -> Result<Vec<SnapshotInfo>, Error> {
    let subject = format!("{managed_by} in {region}");
    let mut interner = TagInterner::default();
    let found = Vec::with_capacity(expected);
    own_tagged_into(
        ec2,
        (TAG_MANAGED_BY, managed_by),
        None,
        &subject,
        found,
        |s| SnapshotInfo::from_facts(admit(s)?, &mut interner),
    )
    .await
}

/// `managed`, of these instances only as the snapshots' `ConsistentSnapshot:InstanceId` tag
/// names them (`FILTER_VALUES` at a time): the part of the fleet retention plans at once. A
/// tag is a hint here, not a decision: `admit` still decides, and what the catalog records of
/// these instances and the tag no longer names is read by id (`by_ids`) by the caller.
pub async fn managed_of(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    managed_by: &str,
    instance_ids: &[String],
    mut admit: impl FnMut(SnapshotFacts) -> Option<SnapshotFacts>,
) -> Result<Vec<SnapshotInfo>, Error> {
    let subject = format!("{managed_by} in {region}");
    let mut interner = TagInterner::default();
    let mut found = Vec::new();
    for chunk in instance_ids.chunks(FILTER_VALUES) {
        let also = Some((format!("tag:{TAG_INSTANCE_ID}"), chunk.to_vec()));
        found = own_tagged_into(
            ec2,
            (TAG_MANAGED_BY, managed_by),
            also,
            &subject,
            found,
            |s| SnapshotInfo::from_facts(admit(s)?, &mut interner),
        )
        .await?;
    }
    Ok(found)
}

/// The most values EC2 takes in one filter.
pub const FILTER_VALUES: usize = 200;

/// Writes these tags on one snapshot; `subject` names it in an error.
pub async fn tag(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
    tags: &[(String, String)],
    subject: &str,
) -> Result<(), Error> {
    ec2.create_tags()
        .resources(snapshot_id)
        .set_tags(Some(tags.iter().map(|(k, v)| ec2_tag(k, v)).collect()))
        .send()
        .await
        .map_err(|e| aws("CreateTags", subject, e))?;
    Ok(())
}

/// Whether EC2 reports a snapshot in the archive tier.
fn archived(tier: Option<&aws_sdk_ec2::types::StorageTier>) -> bool {
    tier == Some(&aws_sdk_ec2::types::StorageTier::Archive)
}

/// Writes one tag on many snapshots of a region, `TAG_BATCH` a call (CreateTags takes up to
/// 1,000 resources; fewer keeps one refused call small); `subject` names them in an error.
pub async fn tag_many(
    ec2: &aws_sdk_ec2::Client,
    snapshot_ids: &[String],
    (key, value): (&str, &str),
    subject: &str,
) -> Result<(), Error> {
    for chunk in snapshot_ids.chunks(TAG_BATCH) {
        ec2.create_tags()
            .set_resources(Some(chunk.to_vec()))
            .tags(ec2_tag(key, value))
            .send()
            .await
            .map_err(|e| aws("CreateTags", subject, e))?;
    }
    Ok(())
}

const TAG_BATCH: usize = 200;

/// For the calls that take no idempotency token (CopySnapshot, CreateSnapshots): a retry after
/// a lost answer would make a second copy or set, so the SDK does not retry them; the caller
/// looks for what a lost answer left instead.
fn without_retries() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default()
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
}

/// A copy to start in a destination region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest<'a> {
    pub source_region: &'a str,
    pub source_snapshot_id: &'a str,
    pub description: String,
    pub tags: Vec<(String, String)>,
    /// Encrypt the copy with this KMS key.
    pub kms_key_id: Option<&'a str>,
}

/// Starts one copy with `ec2` (a client of the destination region); answers the copy's id.
///
/// CopySnapshot takes no idempotency token: a retry after a lost answer would make a second
/// copy. No SDK retry, then; the caller's next pass looks at the destination first.
pub async fn copy(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    request: CopyRequest<'_>,
) -> Result<String, Error> {
    let mut call = ec2
        .copy_snapshot()
        .source_region(request.source_region)
        .source_snapshot_id(request.source_snapshot_id)
        .description(request.description)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .set_tags(Some(
                    request.tags.iter().map(|(k, v)| ec2_tag(k, v)).collect(),
                ))
                .build(),
        );
    if let Some(key) = request.kms_key_id {
        call = call.encrypted(true).kms_key_id(key);
    }
    let out = call
        .customize()
        .config_override(without_retries())
        .send()
        .await
        .map_err(|e| {
            aws(
                "CopySnapshot",
                format!("{} to {region}", request.source_snapshot_id),
                e,
            )
        })?;
    Ok(out.snapshot_id().unwrap_or_default().to_string())
}

/// Why a CreateSnapshots gave no snapshots.
#[derive(Debug)]
pub enum CreateFailure {
    /// Refused: nothing was made.
    Refused(Error),
    /// No answer, or a server error: the snapshots may have been made.
    Unknown(Error),
}

/// Takes one crash-consistent snapshot set of an instance with CreateSnapshots (all its EBS
/// volumes at one point in time, the boot volume left out when asked), tagged at creation;
/// answers its snapshots as EC2 reported them.
///
/// CreateSnapshots takes no idempotency token: no SDK retry, as for CopySnapshot; the caller
/// claims the call in the catalog first and, after a lost answer, finds the set by its tags.
pub async fn create_for_instance(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
    exclude_boot_volume: bool,
    description: &str,
    tags: &[(String, String)],
) -> Result<Vec<SnapshotFacts>, CreateFailure> {
    let out = ec2
        .create_snapshots()
        .instance_specification(
            InstanceSpecification::builder()
                .instance_id(instance_id)
                .exclude_boot_volume(exclude_boot_volume)
                .build(),
        )
        .description(description)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .set_tags(Some(tags.iter().map(|(k, v)| ec2_tag(k, v)).collect()))
                .build(),
        )
        .customize()
        .config_override(without_retries())
        .send()
        .await
        .map_err(|e| {
            // Refused by EC2 (an answer below 500): nothing was made. Anything else (no answer,
            // a server error) may have made the snapshots.
            let refused =
                matches!(&e, SdkError::ServiceError(ctx) if !ctx.raw().status().is_server_error());
            let err = aws("CreateSnapshots", instance_id, e);
            if refused {
                CreateFailure::Refused(err)
            } else {
                CreateFailure::Unknown(err)
            }
        })?;
    Ok(out
        .snapshots()
        .iter()
        .filter_map(|s| {
            Some(SnapshotFacts {
                snapshot_id: s.snapshot_id()?.to_string(),
                volume_id: s.volume_id().unwrap_or_default().to_string(),
                state: s.state().map(|v| v.as_str()).unwrap_or_default().into(),
                start_time: s.start_time().and_then(utc),
                size_gib: s.volume_size(),
                tags: tag_map(s.tags()),
                state_message: None,
                archived: false,
                encrypted_with: None,
            })
        })
        .collect())
}

/// What a DeleteSnapshot did.
#[derive(Debug)]
pub enum Deletion {
    Deleted,
    /// `InvalidSnapshot.NotFound`: it was already gone.
    AlreadyGone,
    /// `InvalidSnapshot.InUse`: an AMI uses it; it is kept.
    InUse,
    Failed(Error),
}

/// Deletes one snapshot; `subject` names it in an error.
pub async fn delete(ec2: &aws_sdk_ec2::Client, snapshot_id: &str, subject: &str) -> Deletion {
    match ec2.delete_snapshot().snapshot_id(snapshot_id).send().await {
        Ok(_) => Deletion::Deleted,
        Err(err) => match err.as_service_error().and_then(code_of) {
            Some("InvalidSnapshot.NotFound") => Deletion::AlreadyGone,
            Some("InvalidSnapshot.InUse") => Deletion::InUse,
            _ => Deletion::Failed(aws("DeleteSnapshot", subject, err)),
        },
    }
}

/// Locks one snapshot in `mode` for `days` from now (LockSnapshot with a duration, which IAM's
/// `ec2:SnapshotLockDuration` can bound), or extends its lock to then. `cool_off_hours` is given only for a snapshot not locked yet
/// (AWS refuses it when extending a compliance lock past its cooling-off period).
pub async fn lock(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
    (mode, days): (LockMode, u32),
    cool_off_hours: Option<u32>,
    subject: &str,
) -> Result<(), Error> {
    let mode = match mode {
        LockMode::Governance => aws_sdk_ec2::types::LockMode::Governance,
        LockMode::Compliance => aws_sdk_ec2::types::LockMode::Compliance,
    };
    ec2.lock_snapshot()
        .snapshot_id(snapshot_id)
        .lock_mode(mode)
        .lock_duration(i32::try_from(days).unwrap_or(i32::MAX))
        .set_cool_off_period(cool_off_hours.and_then(|h| i32::try_from(h).ok()))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws("LockSnapshot", subject, e))
}

/// Lets `account` copy the snapshot (`share`) or no longer (`!share`): ModifySnapshotAttribute
/// of `createVolumePermission` for that one account. Either is idempotent; a snapshot gone is
/// no longer shared, and unsharing it answers Ok.
pub async fn share_with(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
    account: &str,
    share: bool,
) -> Result<(), Error> {
    use aws_sdk_ec2::types::{OperationType, SnapshotAttributeName};
    let operation = if share {
        OperationType::Add
    } else {
        OperationType::Remove
    };
    let answer = ec2
        .modify_snapshot_attribute()
        .snapshot_id(snapshot_id)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .operation_type(operation)
        .user_ids(account)
        .send()
        .await;
    match answer {
        Ok(_) => Ok(()),
        Err(err)
            if !share
                && err.as_service_error().and_then(code_of) == Some("InvalidSnapshot.NotFound") =>
        {
            Ok(())
        }
        Err(err) => Err(aws(
            "ModifySnapshotAttribute",
            format!(
                "{} {snapshot_id} with account {account}",
                if share { "sharing" } else { "unsharing" }
            ),
            err,
        )),
    }
}

/// What a ModifySnapshotTier (to the archive tier) did.
#[derive(Debug)]
pub enum Archival {
    Started,
    /// Already archived, or being moved between tiers (`IncorrectState`): nothing to do.
    AlreadyMoving,
    Failed(Error),
}

/// Moves one snapshot to the archive tier.
pub async fn archive(ec2: &aws_sdk_ec2::Client, snapshot_id: &str, subject: &str) -> Archival {
    let call = ec2
        .modify_snapshot_tier()
        .snapshot_id(snapshot_id)
        .storage_tier(aws_sdk_ec2::types::TargetStorageTier::Archive)
        .send()
        .await;
    match call {
        Ok(_) => Archival::Started,
        Err(err) => match err.as_service_error().and_then(code_of) {
            Some("IncorrectState") => Archival::AlreadyMoving,
            _ => Archival::Failed(aws("ModifySnapshotTier", subject, err)),
        },
    }
}

/// The tier status of these snapshots of one region (DescribeSnapshotTierStatus, filtered by
/// id, paged).
pub async fn tier_status(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    subject: &str,
) -> Result<BTreeMap<String, TierStatus>, Error> {
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(IDS_PER_CALL) {
        let pages = ec2
            .describe_snapshot_tier_status()
            .filters(ec2_filter("snapshot-id", chunk.to_vec()))
            .into_paginator()
            .send();
        each_page(pages, "DescribeSnapshotTierStatus", subject, |page| {
            for s in page.snapshot_tier_statuses() {
                let Some(id) = s.snapshot_id() else { continue };
                found.insert(
                    id.to_string(),
                    TierStatus {
                        storage_tier: s
                            .storage_tier()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_default(),
                        last_operation: s
                            .last_tiering_operation_status()
                            .map(|t| t.as_str().to_string()),
                        restore_expiry: s.restore_expiry_time().and_then(utc),
                        last_started: s.last_tiering_start_time().and_then(utc),
                    },
                );
            }
        })
        .await?;
    }
    Ok(found)
}

/// Restores archived snapshots temporarily, for `days` (AWS: up to 72 hours to complete);
/// one already being restored is left as it is. Answers how many restores were started.
pub async fn restore_from_archive(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    days: i32,
    subject: &str,
) -> Result<usize, Error> {
    let mut started = 0;
    for id in ids {
        match ec2
            .restore_snapshot_tier()
            .snapshot_id(id)
            .temporary_restore_days(days)
            .send()
            .await
        {
            Ok(_) => started += 1,
            Err(err) if err.as_service_error().and_then(code_of) == Some("IncorrectState") => {}
            Err(err) => {
                return Err(aws(
                    "RestoreSnapshotTier",
                    format!("{id} of {subject}"),
                    err,
                ))
            }
        }
    }
    Ok(started)
}

/// Ids asked of DescribeLockedSnapshots and ListSnapshotsInRecycleBin a call; the largest page
/// DescribeLockedSnapshots answers, and the fewest pages of a region's locks read before asking
/// by id instead (a vault that locks everything holds far more locks than a night deletes):
/// twice as many as the ids asked would fill, so that a deployment that locks what it keeps
/// reads its locks in pages (ten times fewer calls than by id).
const IDS_PER_CALL: usize = 100;
const LOCKS_PER_PAGE: i32 = 1_000;
const LOCK_PAGES_MAX: usize = 20;
/// The states of a lock in force (`expired` is no lock).
const LOCKS_IN_FORCE: [&str; 3] = ["governance", "compliance", "compliance-cooloff"];

/// The EBS Snapshot Locks in force on these snapshots of `region`: the region's locks, a
/// page of 1,000 a call (one call when there are few), or, past `LOCK_PAGES_MAX` pages (or twice
/// the pages `ids` would fill), asked for these snapshots by id, 100 a call.
pub async fn locks(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ids: &[String],
) -> Result<BTreeMap<String, SnapshotLock>, Error> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut found = BTreeMap::new();
    let mut token: Option<String> = None;
    let pages = LOCK_PAGES_MAX.max(2 * ids.len().div_ceil(LOCKS_PER_PAGE as usize));
    for _ in 0..pages {
        let page = locks_in_force(ec2, region, token.take()).await?;
        collect_locks(page.snapshots(), |id| wanted.contains(id), &mut found);
        token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(found);
        }
    }
    locks_by_id(ec2, region, ids).await
}

/// Every EBS Snapshot Lock in force in `region`, when they fit one page of 1,000 (the usual
/// case: locks are an operator's exception); `None` when there are more, which are then asked
/// for the snapshots concerned (`locks`).
pub async fn few_locks(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
) -> Result<Option<BTreeMap<String, SnapshotLock>>, Error> {
    let page = locks_in_force(ec2, region, None).await?;
    if page.next_token().is_some_and(|t| !t.is_empty()) {
        return Ok(None);
    }
    let mut found = BTreeMap::new();
    collect_locks(page.snapshots(), |_| true, &mut found);
    Ok(Some(found))
}

/// One page (`LOCKS_PER_PAGE`) of the locks in force in `region`, from `token`.
async fn locks_in_force(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    token: Option<String>,
) -> Result<aws_sdk_ec2::operation::describe_locked_snapshots::DescribeLockedSnapshotsOutput, Error>
{
    ec2.describe_locked_snapshots()
        .filters(ec2_filter("lock-state", LOCKS_IN_FORCE.map(String::from)))
        .max_results(LOCKS_PER_PAGE)
        .set_next_token(token)
        .send()
        .await
        .map_err(|e| aws("DescribeLockedSnapshots", region, e))
}

/// The locks in force on these snapshots of `region`, asked by id, 100 a call.
pub async fn locks_by_id(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ids: &[String],
) -> Result<BTreeMap<String, SnapshotLock>, Error> {
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(IDS_PER_CALL) {
        let page = ec2
            .describe_locked_snapshots()
            .set_snapshot_ids(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| aws("DescribeLockedSnapshots", region, e))?;
        collect_locks(page.snapshots(), |_| true, &mut found);
    }
    Ok(found)
}

fn collect_locks(
    infos: &[aws_sdk_ec2::types::LockedSnapshotsInfo],
    wanted: impl Fn(&str) -> bool,
    found: &mut BTreeMap<String, SnapshotLock>,
) {
    for info in infos {
        let state = info.lock_state().map(|s| s.as_str()).unwrap_or_default();
        match info.snapshot_id() {
            Some(id) if wanted(id) && LOCKS_IN_FORCE.contains(&state) => {
                let lock = SnapshotLock {
                    state: state.to_string(),
                    until: info.lock_expires_on().and_then(utc),
                };
                found.insert(id.to_string(), lock);
            }
            _ => {}
        }
    }
}

/// Of these snapshots of `region` (just deleted), those a Recycle Bin rule holds, with the
/// time each leaves the bin for good (`None`: not reported).
pub async fn in_recycle_bin(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ids: &[String],
) -> Result<BTreeMap<String, Option<DateTime<Utc>>>, Error> {
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(IDS_PER_CALL) {
        let pages = ec2
            .list_snapshots_in_recycle_bin()
            .set_snapshot_ids(Some(chunk.to_vec()))
            .into_paginator()
            .send();
        each_page(pages, "ListSnapshotsInRecycleBin", region, |page| {
            for info in page.snapshots() {
                if let Some(id) = info.snapshot_id() {
                    found.insert(id.to_string(), info.recycle_bin_exit_time().and_then(utc));
                }
            }
        })
        .await?;
    }
    Ok(found)
}

/// Which of the account's own AMIs use which snapshots, in one region.
pub async fn used_by_images(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let pages = ec2
        .describe_images()
        .owners("self")
        .max_results(1000)
        .into_paginator()
        .send();
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let subject = format!("own AMIs in {region}");
    each_page(pages, "DescribeImages", &subject, |page| {
        for image in page.images() {
            let Some(image_id) = image.image_id() else {
                continue;
            };
            for mapping in image.block_device_mappings() {
                if let Some(snapshot) = mapping.ebs().and_then(|e| e.snapshot_id()) {
                    used.entry(snapshot.to_string())
                        .or_default()
                        .push(image_id.to_string());
                }
            }
        }
    })
    .await?;
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_listed_by_their_tag_only_when_that_takes_fewer_calls() {
        // One call by id holds 200 ids: a listing is never fewer.
        assert!(!list_rather_than_ask(0, 0));
        assert!(!list_rather_than_ask(200, 200));
        // 201 ids are two calls by id, one page of a listing of up to 1,000.
        assert!(list_rather_than_ask(201, 201));
        assert!(list_rather_than_ask(201, 1000));
        assert!(!list_rather_than_ask(201, 1001));
        // A night's 3,000 copies in a region: 3 pages instead of 15 calls.
        assert!(list_rather_than_ask(3000, 3000));
        // A few ids left to look at among many tagged: by id.
        assert!(!list_rather_than_ask(150, 3000));
        assert!(!list_rather_than_ask(400, 3000));
        assert!(list_rather_than_ask(700, 3000));
    }
}
