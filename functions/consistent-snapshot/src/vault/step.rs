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
//! The role the function assumes may copy, tag, describe and lock in the vault, and nothing
//! else (`vault.yaml`): nothing this account does, the function included, deletes there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::{dispatched_run, emit_metrics, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::snapshots::{self, CopyRequest};
use crate::config::Vault;
use crate::copy::plan::{copy_tags, RegionFault};
use crate::error::Error;
use crate::jobs::{Job, VaultJob};
use crate::model::catalog::{admit, CatalogIndex, VaultRecord};
use crate::model::pace::Pace;
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::SnapshotState;
use crate::model::stop_time;
use crate::model::tags::TAG_SET_SIZE;
use crate::run::plan::claim::{decide_vault, CopyClaim};
use crate::vault::plan::{
    plan_vault, vault_description, vault_sources, VaultPlan, VaultSource, VaultSummary,
};

/// One pass of the vault step; see the module documentation.
pub async fn vault_job(
    app: &App,
    job: VaultJob,
    (deadline, lease_until): (DateTime<Utc>, DateTime<Utc>),
    message_id: &str,
) -> Result<(), Error> {
    let Some(vault) = app.config.vault.clone() else {
        warn!(run_id = %job.run_id, "a vault job, but no vault is configured (VAULT_ACCOUNT_ID): dropped");
        return Ok(());
    };
    dispatched_run(app, &job.run_id, "vault").await?;
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
    let pass = vault_pass(app, &vault, &job.run_id, stop_time(Utc::now(), deadline)).await;
    store.drop_vault_lease(epoch).await?;
    let pass = pass?;
    let timed_out = Utc::now() > job.deadline;
    // A region refused for good is reported failed; one that may come back is looked at again.
    let over = pass.plan.is_final() && pass.faults.values().all(|f| f.permanent);
    if !over && !timed_out {
        info!(run_id = %job.run_id, started = pass.started, pending = pass.plan.pending.values().sum::<usize>(), "vault copies in progress");
        return Ok(());
    }
    // Over: nothing of the run stays shared, whatever became of its copies.
    unshare_all(app, &vault, &job.run_id).await?;
    if store.mark_vaulted().await? {
        report_vault(app, &vault, &job.run_id, &pass, timed_out);
    }
    Ok(())
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
    let mut started = 0;
    let mut records = Vec::new();
    let mut shared: std::collections::HashSet<String> = Default::default();
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
        if !shared.contains(&source.snapshot_id) {
            let share =
                snapshots::share_with(&app.aws.ec2, &source.snapshot_id, &vault.account_id, true)
                    .await;
            if let Err(err) = share {
                // Not shared, not copied: the region waits for the next pass, or is reported
                // failed when the refusal is for good (a permission, an encrypted set's key).
                let fault = RegionFault::of(&err);
                warn!(run_id, region = %region, source = %source.snapshot_id, code = %fault.code, permanent = fault.permanent, error = %err, "set not shared with the vault account: not copied there");
                if fault.permanent {
                    faults.insert(region, fault);
                } else {
                    *plan.pending.entry(region).or_default() += 1;
                }
                continue;
            }
            shared.insert(source.snapshot_id.clone());
        }
        match copy_one(app, vault, run_id, &region, &source, facts).await {
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

/// One CopySnapshot by the vault's role, and its record in the catalog.
async fn copy_one(
    app: &App,
    vault: &Vault,
    run_id: &str,
    region: &str,
    source: &VaultSource,
    facts: &SnapshotFacts,
) -> Result<VaultRecord, Error> {
    let home = app.config.region.as_str();
    let ec2 = app.aws.vault_ec2(&vault.role_arn, region).await;
    let request = CopyRequest {
        source_region: home,
        source_snapshot_id: &source.snapshot_id,
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
/// deleted meanwhile is no longer shared).
async fn unshare_all(app: &App, vault: &Vault, run_id: &str) -> Result<(), Error> {
    let (sets, _) = app.aws.catalog.vault_view(run_id).await?;
    for source in vault_sources(&sets) {
        snapshots::share_with(&app.aws.ec2, &source.snapshot_id, &vault.account_id, false).await?;
    }
    Ok(())
}

/// The vault step's one summary: a log line and its metrics.
fn report_vault(app: &App, vault: &Vault, run_id: &str, pass: &Pass, timed_out: bool) {
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
    if failed == 0 && summary.regions_failed.is_empty() && !timed_out && summary.not_locked == 0 {
        info!(run_id, vault = %text, "vault: {done} copies completed in account {}", vault.account_id);
    } else {
        warn!(run_id, vault = %text, "vault copies need attention: {done} completed, {failed} failed, {pending} not final, regions refused: {:?}, timed out: {timed_out}", summary.regions_failed);
    }
}
