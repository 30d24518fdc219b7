//! Copies of a run's backups in the vault account, beside the copy step.
//!
//! Each pass (under the vault step's own lease and pass claims, as the copy step's) reads the
//! run's sets and vault copies from the catalog and lists the run's copies in each vault region
//! as the vault's role sees them (one DescribeSnapshots by the run's tag a region). For each
//! snapshot of a backup with no copy there, it shares the snapshot with the vault account
//! (that one account, `createVolumePermission`), has the vault's role copy it (re-encrypted
//! with the vault's key of the region), records the copy and locks it there. Copies whose
//! answer was lost are found by the next pass's listing and recorded, not made twice. When
//! every copy is final, or at the step's deadline, every snapshot of the run is unshared and
//! the step ends with one summary.
//!
//! An encrypted snapshot whose key the vault may not use (with `VAULT_TRANSIT_KMS_KEY_ID`) is
//! first copied at home with the transit key; that transit copy is shared and copied in its
//! stead (`plan::transit`), and deleted when the step is over.
//!
//! The role the function assumes may copy, tag, describe and lock in the vault, and nothing
//! else (`vault.yaml`): nothing this account does, the function included, deletes there.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::{dispatched_run, emit_metrics, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::snapshots::{self, CopyRequest, Deletion};
use crate::config::Vault;
use crate::copy::plan::{copy_tags, Backlog, RegionFault};
use crate::error::Error;
use crate::jobs::{Job, VaultJob};
use crate::model::catalog::{admit, CatalogIndex, TransitRecord, VaultRecord};
use crate::model::pace::Pace;
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::SnapshotState;
use crate::model::stop_time;
use crate::model::tags::{TAG_SET_SIZE, TAG_VAULT_TRANSIT};
use crate::run::plan::claim::{decide_vault, CopyClaim};
use crate::vault::plan::transit::{
    needs_transit, transit_description, transit_tags, transits, Transit,
};
use crate::vault::plan::{
    plan_vault, vault_description, vault_sources, VaultPlan, VaultSource, VaultSummary,
};

/// One pass of the vault step; see the module documentation.
pub async fn vault_job(
    app: &App,
    mut job: VaultJob,
    (deadline, lease_until): (DateTime<Utc>, DateTime<Utc>),
    message_id: &str,
) -> Result<(), Error> {
    let Some(vault) = app.config.vault.clone() else {
        warn!(run_id = %job.run_id, "a vault job, but no vault is configured (VAULT_ACCOUNT_ID): dropped");
        return Ok(());
    };
    let run = dispatched_run(app, &job.run_id, "vault").await?;
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    let claim = decide_vault(&store.read().await?, Utc::now());
    if claim == CopyClaim::Final {
        info!(run_id = %job.run_id, "vault copies already final (a duplicate delivery)");
        return Ok(());
    }
    if !store.claim_vault_pass(job.attempt, message_id).await? {
        info!(run_id = %job.run_id, pass = job.attempt, "vault pass already taken by another message");
        return Ok(());
    }
    if job.attempt == 0 {
        // Found once, by the first pass; its successors carry it. Not found, the run's own
        // copies go on without it.
        job.backlog = match backlog_runs(app, &vault, &job.run_id, run.started_at).await {
            Ok(runs) => runs,
            Err(err) => {
                warn!(run_id = %job.run_id, error = %err, "earlier runs not looked at for sets missing from the vault: this step copies its own run only");
                Vec::new()
            }
        };
    }
    // The successor first, so that a pass stopped half-way still has one; none past the
    // deadline, so that no chain outlives it.
    if Utc::now() <= job.deadline {
        requeue(app, Job::Vault(job.clone().next())).await?;
    }
    let CopyClaim::Take { epoch } = claim else {
        return Ok(());
    };
    if !store.take_vault_lease(epoch, lease_until).await? {
        return Ok(());
    }
    let stop_at = stop_time(Utc::now(), deadline);
    let pass = vault_pass(app, &vault, &job.run_id, stop_at).await;
    // The earlier runs after the step's own, each on its own: one that fails is left to the
    // next pass (and named), never stopping the run's own copies.
    let mut earlier = Vec::new();
    if pass.is_ok() {
        for run_id in &job.backlog {
            match vault_pass(app, &vault, run_id, stop_at).await {
                Ok(p) => earlier.push((run_id.clone(), p)),
                Err(err) => {
                    warn!(run_id = %job.run_id, backlog_run = %run_id, error = %err, "an earlier run's vault copies not looked at in this pass");
                }
            }
        }
    }
    store.drop_vault_lease(epoch).await?;
    let pass = pass?;
    let timed_out = Utc::now() > job.deadline;
    // A region refused for good is reported failed; one that may come back is looked at again.
    let is_over = |p: &Pass| p.plan.is_final() && p.faults.values().all(|f| f.permanent);
    let over = is_over(&pass)
        && earlier.iter().all(|(_, p)| is_over(p))
        && earlier.len() == job.backlog.len();
    if !over && !timed_out {
        info!(run_id = %job.run_id, started = pass.started, pending = pass.plan.pending.values().sum::<usize>(), backlog = job.backlog.len(), "vault copies in progress");
        return Ok(());
    }
    // Over: nothing of the runs stays shared, whatever became of their copies, and no transit
    // copy is kept.
    let mut transits_left = 0;
    for run_id in std::iter::once(&job.run_id).chain(&job.backlog) {
        unshare_all(app, &vault, run_id).await?;
        transits_left += delete_transits(app, run_id).await?;
    }
    if store.mark_vaulted().await? {
        for (run_id, p) in &earlier {
            let done: usize = p.plan.completed.values().sum();
            info!(run_id = %job.run_id, backlog_run = %run_id, completed = done, failed = p.plan.failed.len(), "vault backlog: an earlier run's copies, {done} completed");
        }
        report_vault(app, &vault, &job.run_id, (&pass, transits_left), timed_out);
    }
    Ok(())
}

/// Earlier runs with backups whose vault copies were never made or never seen final (in the
/// copy step's backlog window, at most its number of runs, newest first), from one read of the
/// catalog's sets and one of its vault copies: a night the vault refused (its role not yet deployed, a region down, the
/// step's deadline) is copied by the next nights. A run whose own vault step is not over is
/// left to it, so that no two steps copy the same snapshot at once.
async fn backlog_runs(
    app: &App,
    vault: &Vault,
    run_id: &str,
    started_at: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let mut backlog = Backlog::since(started_at);
    app.aws
        .catalog
        .scan_sets(|set, _| {
            if let Some(set) = set {
                backlog.add_set(&set);
            }
        })
        .await?;
    app.aws
        .catalog
        .scan_vault_copies(|copy| {
            // A copy that ended (completed, or failed in EC2 and reported so by its own night)
            // is not made again; one never started, or not seen final, is looked at.
            if copy.seen_final.is_some() {
                backlog.add_copy_at(
                    (&copy.instance_id, &copy.run_id, &copy.region),
                    copy.started_at,
                );
            }
        })
        .await?;
    let mut runs = Vec::new();
    for earlier in backlog.runs(run_id, &vault.regions, usize::MAX) {
        let markers = RunMarkerStore::new(&app.aws.catalog, &earlier)
            .read()
            .await?;
        if markers.vaulted {
            runs.push(earlier);
        }
    }
    if !runs.is_empty() {
        info!(run_id, backlog = ?runs, "earlier runs have backups not in the vault: this vault step copies them too");
    }
    Ok(runs)
}

/// What one pass did.
struct Pass {
    plan: VaultPlan,
    started: usize,
    /// Regions the vault's role could not read or copy into this pass.
    faults: BTreeMap<String, RegionFault>,
    not_locked: usize,
}

async fn vault_pass(
    app: &App,
    vault: &Vault,
    run_id: &str,
    stop_at: DateTime<Utc>,
) -> Result<Pass, Error> {
    let home = app.config.region.as_str();
    let (sets, recorded) = app.aws.catalog.vault_view(run_id).await?;
    let sources = vault_sources(&sets);
    let mut found = BTreeMap::new();
    let mut faults = BTreeMap::new();
    for region in &vault.regions {
        let ec2 = app.aws.vault_ec2(&vault.role_arn, region).await;
        let subject = format!(
            "vault copies of run {run_id} in {region} of {}",
            vault.account_id
        );
        match snapshots::tagged_copies(&ec2, run_id, &subject).await {
            Ok(listed) => {
                found.insert(region.clone(), listed);
            }
            Err(err) => {
                let fault = RegionFault::of(&err);
                warn!(run_id, region = %region, account = %vault.account_id, code = %fault.code, permanent = fault.permanent, error = %err, "vault region not readable by the vault's role: nothing copied there in this pass");
                faults.insert(region.clone(), fault);
            }
        }
    }
    let mut plan = plan_vault(
        (run_id, home, &vault.account_id),
        &sources,
        &recorded,
        &found,
        Utc::now(),
    );
    for adopted in &plan.adopted {
        info!(run_id, region = %adopted.region, source = %adopted.source_snapshot_id, copy = %adopted.snapshot_id, "a vault copy whose CopySnapshot answer was lost: recorded");
    }
    let mut changed: Vec<VaultRecord> = plan.adopted.clone();
    changed.extend(plan.newly_final.iter().cloned());
    app.aws.catalog.record_vault_copies(&changed).await?;
    let index = CatalogIndex::new(&sets, &[]);
    let (started, lock_later) = start_copies(
        app,
        (vault, run_id, &index),
        &mut plan,
        &mut faults,
        stop_at,
    )
    .await?;
    let mut to_lock = std::mem::take(&mut plan.to_lock);
    to_lock.extend(lock_later);
    let not_locked = lock_copies(app, vault, run_id, to_lock).await?;
    Ok(Pass {
        plan,
        started,
        faults,
        not_locked,
    })
}

/// Starts the plan's copies until `stop_at`: each source described at home first (copied only
/// if the catalog vouches for it and it is completed), shared with the vault account, copied by
/// the vault's role, recorded. Answers how many started, and their records (to lock).
async fn start_copies(
    app: &App,
    (vault, run_id, index): (&Vault, &str, &CatalogIndex),
    plan: &mut VaultPlan,
    faults: &mut BTreeMap<String, RegionFault>,
    stop_at: DateTime<Utc>,
) -> Result<(usize, Vec<VaultRecord>), Error> {
    let home = app.config.region.as_str();
    if plan.to_copy.is_empty() {
        return Ok((0, Vec::new()));
    }
    let ids: Vec<String> = plan
        .to_copy
        .iter()
        .map(|(_, s)| s.snapshot_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut sources: BTreeMap<String, SnapshotFacts> = BTreeMap::new();
    for found in snapshots::by_ids(&app.aws.ec2, &ids, &format!("run {run_id}")).await? {
        match admit(found, home, index, &app.config.managed_by) {
            Ok(admitted) => {
                sources.insert(admitted.snapshot_id.clone(), admitted);
            }
            Err(foreign) => {
                warn!(run_id, snapshot_id = %foreign.snapshot_id, why = %foreign.why, "foreign snapshot: not copied to the vault")
            }
        }
    }
    let transit_key = vault.transit_kms_key_id.as_deref();
    let mut transit = transit_states(app, run_id, transit_key, &plan.to_copy, &sources).await?;
    let mut started = 0;
    let mut records = Vec::new();
    let mut shared: std::collections::HashSet<String> = Default::default();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut pace = Pace::until(stop_at);
    for (region, source) in std::mem::take(&mut plan.to_copy) {
        let began = Utc::now();
        if faults.contains_key(&region) {
            continue;
        }
        if started > 0 && !pace.fits(began) {
            info!(
                run_id,
                started, "vault pass: no time left in this invocation; the next pass goes on"
            );
            *plan.pending.entry(region).or_default() += 1;
            continue;
        }
        let Some(facts) = sources.get(&source.snapshot_id) else {
            continue;
        };
        if facts.state != SnapshotState::Completed {
            // Copied once completed, by a later pass.
            *plan.pending.entry(region).or_default() += 1;
            continue;
        }
        // What is shared and copied: the snapshot, or its transit copy.
        let from = if needs_transit(facts, transit_key) {
            let state = transit
                .get(&source.snapshot_id)
                .cloned()
                .unwrap_or(Transit::Start);
            match state {
                Transit::Ready(id) => id,
                Transit::Pending => {
                    *plan.pending.entry(region).or_default() += 1;
                    continue;
                }
                Transit::Failed(why) => {
                    warn!(run_id, region = %region, source = %source.snapshot_id, why = %why, "transit copy failed: the snapshot does not reach the vault in this run");
                    plan.failed.push((region, source.snapshot_id.clone(), why));
                    continue;
                }
                Transit::Start => {
                    let next = start_transit(app, run_id, facts, transit_key).await;
                    if let Transit::Failed(why) = &next {
                        plan.failed
                            .push((region.clone(), source.snapshot_id.clone(), why.clone()));
                    } else {
                        *plan.pending.entry(region).or_default() += 1;
                    }
                    transit.insert(source.snapshot_id.clone(), next);
                    pace.took(began, Utc::now());
                    continue;
                }
            }
        } else {
            source.snapshot_id.clone()
        };
        if let Some(why) = refused.get(&from) {
            plan.failed
                .push((region, source.snapshot_id.clone(), why.clone()));
            continue;
        }
        if !shared.contains(&from) {
            let share = snapshots::share_with(&app.aws.ec2, &from, &vault.account_id, true).await;
            if let Err(err) = share {
                // Not shared, not copied: a refusal for good (the default aws/ebs key cannot be
                // shared, a permission) fails this snapshot in every region, never the others;
                // else the next pass tries again.
                let fault = RegionFault::of(&err);
                warn!(run_id, region = %region, source = %source.snapshot_id, code = %fault.code, permanent = fault.permanent, error = %err, "snapshot not shared with the vault account: not copied there");
                if fault.permanent {
                    let why = format!("not shared with the vault account ({})", fault.code);
                    refused.insert(from.clone(), why.clone());
                    plan.failed.push((region, source.snapshot_id.clone(), why));
                } else {
                    *plan.pending.entry(region).or_default() += 1;
                }
                continue;
            }
            shared.insert(from.clone());
        }
        match copy_one(app, (vault, run_id, &region), (&source, facts, &from)).await {
            Ok(record) => {
                info!(run_id, region = %region, account = %vault.account_id, source = %source.snapshot_id, copy = %record.snapshot_id, "vault copy started");
                started += 1;
                *plan.pending.entry(region).or_default() += 1;
                records.push(record);
            }
            Err(err) if err.is_permanent() => {
                let fault = RegionFault::of(&err);
                warn!(run_id, region = %region, account = %vault.account_id, source = %source.snapshot_id, code = %fault.code, error = %err, "vault copies into the region refused: it is reported failed");
                faults.insert(region, fault);
            }
            // Throttled, the region's copy limit, no answer: the next pass looks (a copy whose
            // answer was lost is found by its tag) and goes on.
            Err(err) => {
                warn!(run_id, region = %region, source = %source.snapshot_id, error = %err, "vault copy not confirmed: the next pass looks again");
                *plan.pending.entry(region).or_default() += 1;
            }
        }
        pace.took(began, Utc::now());
    }
    Ok((started, records))
}

/// Each source's transit copy that this pass needs (none when no snapshot to copy needs
/// one): recorded, or found at home by its description (and recorded), or to start.
async fn transit_states(
    app: &App,
    run_id: &str,
    transit_key: Option<&str>,
    to_copy: &[(String, VaultSource)],
    sources: &BTreeMap<String, SnapshotFacts>,
) -> Result<BTreeMap<String, Transit>, Error> {
    let needing: BTreeSet<&str> = to_copy
        .iter()
        .filter_map(|(_, s)| sources.get(&s.snapshot_id))
        .filter(|f| f.state == SnapshotState::Completed && needs_transit(f, transit_key))
        .map(|f| f.snapshot_id.as_str())
        .collect();
    if needing.is_empty() {
        return Ok(BTreeMap::new());
    }
    let recorded = app.aws.catalog.transit_copies(run_id).await?;
    let listed = snapshots::tagged_described(
        &app.aws.ec2,
        (TAG_VAULT_TRANSIT, &app.config.managed_by),
        &format!("vault transit copies of run {run_id}"),
    )
    .await?;
    let (states, adopted) = transits(run_id, &needing, &recorded, &listed, Utc::now());
    for t in &adopted {
        info!(run_id, source = %t.source_snapshot_id, transit = %t.snapshot_id, "a transit copy whose CopySnapshot answer was lost: recorded");
    }
    app.aws.catalog.record_transits(&adopted).await?;
    Ok(states)
}

/// Starts a source's transit copy at home, re-encrypted with the transit key, and records it;
/// answers how it then stands (pending, or failed with AWS's code when refused for good; a
/// lost answer is found by the next pass by its description).
async fn start_transit(
    app: &App,
    run_id: &str,
    facts: &SnapshotFacts,
    transit_key: Option<&str>,
) -> Transit {
    let home = app.config.region.as_str();
    let request = CopyRequest {
        source_region: home,
        source_snapshot_id: &facts.snapshot_id,
        description: transit_description(&facts.snapshot_id, run_id),
        tags: transit_tags(facts, &app.config.managed_by),
        kms_key_id: transit_key,
    };
    match snapshots::copy(&app.aws.ec2, home, request).await {
        Ok(copy_id) => {
            let record = TransitRecord {
                run_id: run_id.to_string(),
                source_snapshot_id: facts.snapshot_id.clone(),
                snapshot_id: copy_id,
                started_at: Utc::now(),
                deleted: false,
            };
            info!(run_id, source = %record.source_snapshot_id, transit = %record.snapshot_id, "transit copy started, re-encrypted with the transit key");
            match app
                .aws
                .catalog
                .record_transits(std::slice::from_ref(&record))
                .await
            {
                Ok(()) => Transit::Pending,
                // Not recorded: the next pass finds it by its description.
                Err(err) => {
                    warn!(run_id, transit = %record.snapshot_id, error = %err, "transit copy not recorded: the next pass finds it");
                    Transit::Pending
                }
            }
        }
        Err(err) if err.is_permanent() => {
            let code = err.aws_code().unwrap_or("Unknown").to_string();
            warn!(run_id, source = %facts.snapshot_id, code = %code, error = %err, "transit copy refused: the snapshot does not reach the vault in this run");
            Transit::Failed(format!("transit copy refused ({code})"))
        }
        Err(err) => {
            warn!(run_id, source = %facts.snapshot_id, error = %err, "transit copy not confirmed: the next pass looks again");
            Transit::Pending
        }
    }
}

/// Deletes the run's transit copies (only those the catalog records); answers how many are
/// left (in use by a copy still going, or refused), each named in the log.
async fn delete_transits(app: &App, run_id: &str) -> Result<usize, Error> {
    let recorded = app.aws.catalog.transit_copies(run_id).await?;
    let mut done = Vec::new();
    let mut left = 0;
    for mut t in recorded.into_iter().filter(|t| !t.deleted) {
        let subject = format!("transit copy {} of run {run_id}", t.snapshot_id);
        match snapshots::delete(&app.aws.ec2, &t.snapshot_id, &subject).await {
            Deletion::Deleted | Deletion::AlreadyGone => {
                info!(run_id, transit = %t.snapshot_id, source = %t.source_snapshot_id, "transit copy deleted");
                t.deleted = true;
                done.push(t);
            }
            Deletion::InUse => {
                warn!(run_id, transit = %t.snapshot_id, "transit copy in use (a copy still going): left; delete it once the vault copy is final");
                left += 1;
            }
            Deletion::Failed(err) => {
                warn!(run_id, transit = %t.snapshot_id, code = err.aws_code().unwrap_or(""), error = %err, "transit copy not deleted");
                left += 1;
            }
        }
    }
    app.aws.catalog.record_transits(&done).await?;
    Ok(left)
}

/// One CopySnapshot by the vault's role (of the source, or of its transit copy `from`), and
/// its record in the catalog.
async fn copy_one(
    app: &App,
    (vault, run_id, region): (&Vault, &str, &str),
    (source, facts, from): (&VaultSource, &SnapshotFacts, &str),
) -> Result<VaultRecord, Error> {
    let home = app.config.region.as_str();
    let ec2 = app.aws.vault_ec2(&vault.role_arn, region).await;
    let request = CopyRequest {
        source_region: home,
        source_snapshot_id: from,
        description: vault_description(&source.snapshot_id, home, run_id),
        tags: {
            let mut tags = copy_tags(facts, home);
            tags.push((TAG_SET_SIZE.to_string(), source.set_size.to_string()));
            tags
        },
        kms_key_id: vault.kms_key_ids.get(region).map(String::as_str),
    };
    let copy_id = snapshots::copy(&ec2, region, request).await?;
    let record = VaultRecord {
        run_id: run_id.to_string(),
        instance_id: source.instance_id.clone(),
        account: vault.account_id.clone(),
        region: region.to_string(),
        source_snapshot_id: source.snapshot_id.clone(),
        snapshot_id: copy_id,
        started_at: Utc::now(),
        seen_final: None,
        locked_until: None,
    };
    app.aws
        .catalog
        .record_vault_copies(std::slice::from_ref(&record))
        .await?;
    Ok(record)
}

/// Locks these vault copies (a pending copy can be locked; its lock runs from completion);
/// records each lock laid. Answers how many are left unlocked (the next pass tries again).
async fn lock_copies(
    app: &App,
    vault: &Vault,
    run_id: &str,
    copies: Vec<VaultRecord>,
) -> Result<usize, Error> {
    let mut locked = Vec::new();
    let mut left = 0;
    for mut copy in copies {
        let ec2 = app.aws.vault_ec2(&vault.role_arn, &copy.region).await;
        let subject = format!("vault copy {} in {}", copy.snapshot_id, copy.region);
        match snapshots::lock(
            &ec2,
            &copy.snapshot_id,
            (vault.lock_mode, vault.lock_days),
            None,
            &subject,
        )
        .await
        {
            Ok(()) => {
                copy.locked_until =
                    Some(Utc::now() + chrono::Duration::days(i64::from(vault.lock_days)));
                locked.push(copy);
            }
            Err(err) => {
                warn!(run_id, region = %copy.region, copy = %copy.snapshot_id, code = err.aws_code().unwrap_or(""), error = %err, "vault copy not locked: the next pass tries again");
                left += 1;
            }
        }
    }
    app.aws.catalog.record_vault_copies(&locked).await?;
    Ok(left)
}

/// Unshares every snapshot of the run's backups from the vault account (idempotent; a snapshot
/// deleted meanwhile is no longer shared). One that went through a transit copy was never
/// shared (its transit copy is deleted).
async fn unshare_all(app: &App, vault: &Vault, run_id: &str) -> Result<(), Error> {
    let (sets, _) = app.aws.catalog.vault_view(run_id).await?;
    let transited: BTreeSet<String> = app
        .aws
        .catalog
        .transit_copies(run_id)
        .await?
        .into_iter()
        .map(|t| t.source_snapshot_id)
        .collect();
    for source in vault_sources(&sets) {
        if transited.contains(&source.snapshot_id) {
            continue;
        }
        snapshots::share_with(&app.aws.ec2, &source.snapshot_id, &vault.account_id, false).await?;
    }
    Ok(())
}

/// The vault step's one summary: a log line and its metrics.
fn report_vault(
    app: &App,
    vault: &Vault,
    run_id: &str,
    (pass, transits_left): (&Pass, usize),
    timed_out: bool,
) {
    let summary = VaultSummary {
        run_id: run_id.to_string(),
        account: vault.account_id.clone(),
        completed: pass.plan.completed.clone(),
        pending: pass.plan.pending.clone(),
        failed: pass.plan.failed.clone(),
        regions_failed: pass
            .faults
            .iter()
            .map(|(region, f)| (region.clone(), f.code.clone()))
            .collect(),
        not_locked: pass.not_locked,
        transits_left,
        timed_out,
    };
    let text = serde_json::to_string(&summary).unwrap_or_default();
    let done: usize = summary.completed.values().sum();
    let pending: usize = summary.pending.values().sum();
    let failed = summary.failed.len();
    emit_metrics(
        app,
        &[
            ("VaultCopies", done),
            (
                "VaultCopiesFailed",
                failed + if timed_out { pending } else { 0 },
            ),
            ("VaultCopiesNotLocked", summary.not_locked),
        ],
        &[("RunId", run_id), ("Event", "vault")],
    );
    if failed == 0
        && summary.regions_failed.is_empty()
        && !timed_out
        && summary.not_locked == 0
        && transits_left == 0
    {
        info!(run_id, vault = %text, "vault: {done} copies completed in account {}", vault.account_id);
    } else {
        warn!(run_id, vault = %text, "vault copies need attention: {done} completed, {failed} failed, {pending} not final, regions refused: {:?}, timed out: {timed_out}", summary.regions_failed);
    }
}
