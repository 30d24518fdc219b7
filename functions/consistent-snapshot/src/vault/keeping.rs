//! The vault deployment (`MODE=vault`): the only thing that deletes in the vault account, and
//! the way a set leaves it for a recovery. It keeps its own catalog (`CATALOG_TABLE`, which the
//! fleet's account cannot reach) of the fleet's copies in its region (those carrying the
//! fleet's `ManagedBy` tag), and decides with `plan::keep` from that catalog and what EC2
//! reports. Every action first takes in what is new (`take_in`).
//!
//! * On its schedule: takes in, applies retention, ends the recovery shares whose
//!   `RECOVERY_SHARE_DAYS` are over, and reports the fleet against the RPO.
//! * `{"action":"retention","dry_run"?}`: deletes the recorded copies the plan lets go (older
//!   than `VAULT_RETAIN_DAYS` by EC2's own start time, not locked, not of their server's newest
//!   `VAULT_KEEP_NEWEST` whole sets), each named with its reason.
//! * `{"action":"report"}`: each server's newest whole set in the vault against `RPO_HOURS`,
//!   the intruders and the copies deleted by someone else.
//! * `{"action":"recover","instance_id","account"}` lists the server's whole sets (newest
//!   first, with when each was copied and any intruders) and shares nothing; with `"run_id"`
//!   it shares that set's own copies with a recovery account named in `RECOVERY_ACCOUNTS`, and
//!   answers them by device, for the volumes the recovery account creates.

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::app::{emit_metrics, App};
use crate::aws::snapshots::{self, Deletion};
use crate::config::VaultKeeping;
use crate::error::Error;
use crate::model::catalog::HeldRecord;
use crate::model::requests::RecoverRequest;
use crate::model::snapshot::SnapshotFacts;
use crate::model::tags::{
    TAG_DEVICE, TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RUN_ID, TAG_SET_SIZE, TAG_SOURCE_SNAPSHOT,
};
use crate::vault::plan::keep::{
    intake, plan_keeping, recovery_set, shares_over, vault_report, whole_runs, Held, Intake,
};

/// The fleet's copies in this region of the vault, with their locks.
async fn held(app: &App, keeping: &VaultKeeping) -> Result<Vec<Held>, Error> {
    let region = app.config.region.as_str();
    let subject = format!("the fleet's vault copies in {region}");
    let facts: Vec<SnapshotFacts> = snapshots::own_tagged(
        &app.aws.ec2,
        (TAG_MANAGED_BY, &keeping.fleet_managed_by),
        None,
        &subject,
        Some,
    )
    .await?;
    let ids: Vec<String> = facts.iter().map(|f| f.snapshot_id.clone()).collect();
    let locks = snapshots::locks(&app.aws.ec2, region, &ids).await?;
    Ok(facts
        .into_iter()
        .map(|f| Held {
            locked_until: locks.get(&f.snapshot_id).and_then(|l| l.until),
            instance_id: f.tags.get(TAG_INSTANCE_ID).cloned(),
            run_id: f.tags.get(TAG_RUN_ID).cloned(),
            set_size: f.tags.get(TAG_SET_SIZE).and_then(|n| n.parse().ok()),
            device: f.tags.get(TAG_DEVICE).cloned(),
            source_snapshot_id: f.tags.get(TAG_SOURCE_SNAPSHOT).cloned(),
            started: f.start_time,
            state: f.state,
            snapshot_id: f.snapshot_id,
        })
        .collect())
}

/// What EC2 lists in the vault now, and the catalog once it has taken it in: new copies
/// recorded, intruders and copies deleted by someone else named in the log and counted
/// (`VaultIntruders`, `VaultCopiesDeletedOutside`). A dry run writes nothing.
async fn take_in(
    app: &App,
    keeping: &VaultKeeping,
    dry_run: bool,
) -> Result<(Intake, Vec<Held>), Error> {
    let records = app.aws.catalog.held_records().await?;
    let held = held(app, keeping).await?;
    let intake = intake(records, &held, chrono::Utc::now());
    if !dry_run && !intake.changed.is_empty() {
        app.aws.catalog.put_held(&intake.changed).await?;
    }
    for r in &intake.changed {
        if let Some(at) = r.vanished {
            warn!(snapshot_id = %r.snapshot_id, instance_id = %r.instance_id, run_id = %r.run_id, noticed = %at.to_rfc3339(), "vault copy deleted by someone else: it is no longer in the vault, and this deployment did not delete it");
        } else if let Some(why) = &r.intruder {
            warn!(snapshot_id = %r.snapshot_id, instance_id = %r.instance_id, run_id = %r.run_id, why = %why, "vault copy is not part of its run's set: recorded as an intruder, never shared as the set");
        }
    }
    if !intake.unrecordable.is_empty() {
        warn!(copies = ?intake.unrecordable.keys().collect::<Vec<_>>(), "completed copies with no server, run or set size to record them by: kept, never deleted");
    }
    info!(
        dry_run,
        held = held.len(),
        recorded = intake.recorded,
        intruders = intake.intruders,
        vanished = intake.vanished,
        "vault intake: {} new copies recorded",
        intake.recorded
    );
    // Counted when recorded: a dry run's findings are found (and counted) again by the next
    // intake that writes.
    if !dry_run {
        emit_metrics(
            app,
            &[
                ("VaultCopiesRecorded", intake.recorded),
                ("VaultIntruders", intake.intruders),
                ("VaultCopiesDeletedOutside", intake.vanished),
            ],
            &[("Event", "vault-intake")],
        );
    }
    Ok((intake, held))
}

/// The copies newly found deleted by someone else, for an answer.
fn vanished_ids(intake: &Intake) -> Vec<&str> {
    intake
        .changed
        .iter()
        .filter(|r| r.vanished.is_some())
        .map(|r| r.snapshot_id.as_str())
        .collect()
}

/// The vault's schedule: takes in, applies retention, ends the recovery shares whose time is
/// over, and reports the fleet.
/// One read of the catalog (the intake's) serves all three.
pub async fn scheduled(app: &App, keeping: &VaultKeeping) -> Result<Value, Error> {
    let dry_run = app.config.dry_run;
    let (retention, mut records) = apply_retention(app, keeping, dry_run).await?;
    let shares_ended = end_shares(app, dry_run, &mut records).await?;
    let report = report_of(app, &records);
    Ok(json!({"retention": retention, "shares_ended": shares_ended, "report": report}))
}

/// Unshares each recovery share whose time is over (`RECOVERY_SHARE_DAYS`) and records it
/// ended; one refused is named and tried again by the next schedule. Answers those ended.
async fn end_shares(
    app: &App,
    dry_run: bool,
    records: &mut [HeldRecord],
) -> Result<Vec<Value>, Error> {
    let over = shares_over(records, chrono::Utc::now());
    let mut ended = Vec::new();
    for (snapshot_id, account) in over {
        if !dry_run {
            if let Err(err) =
                snapshots::share_with(&app.aws.ec2, &snapshot_id, &account, false).await
            {
                warn!(snapshot_id = %snapshot_id, account = %account, code = err.aws_code().unwrap_or(""), error = %err, "recovery share not ended: the next schedule tries again");
                continue;
            }
            if let Some(record) = records.iter_mut().find(|r| r.snapshot_id == snapshot_id) {
                record.shared_with.remove(&account);
                app.aws
                    .catalog
                    .put_held(std::slice::from_ref(record))
                    .await?;
            }
        }
        info!(snapshot_id = %snapshot_id, account = %account, dry_run, "recovery share ended: the account can no longer use the vault copy");
        ended.push(json!({"snapshot_id": snapshot_id, "account": account}));
    }
    emit_metrics(
        app,
        &[("VaultSharesEnded", ended.len())],
        &[("Event", "vault-shares")],
    );
    Ok(ended)
}

/// The vault's retention: see the module documentation. Answers the plan and what was deleted.
pub async fn retention(app: &App, keeping: &VaultKeeping, dry_run: bool) -> Result<Value, Error> {
    Ok(apply_retention(app, keeping, dry_run).await?.0)
}

/// `retention`'s answer, and the catalog's records of the copies still held after it.
async fn apply_retention(
    app: &App,
    keeping: &VaultKeeping,
    dry_run: bool,
) -> Result<(Value, Vec<HeldRecord>), Error> {
    let (intake, held) = take_in(app, keeping, dry_run).await?;
    let plan = plan_keeping(
        &intake.records,
        &held,
        chrono::Utc::now(),
        keeping.retain_days,
        keeping.keep_newest,
    );
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for decision in plan.iter().filter(|d| d.delete) {
        if dry_run {
            continue;
        }
        let subject = format!("vault copy {}", decision.snapshot_id);
        match snapshots::delete(&app.aws.ec2, &decision.snapshot_id, &subject).await {
            Deletion::Deleted | Deletion::AlreadyGone => {
                info!(snapshot_id = %decision.snapshot_id, instance_id = ?decision.instance_id, run_id = ?decision.run_id, reason = %decision.reason, "vault copy deleted");
                deleted.push(decision.snapshot_id.clone());
            }
            Deletion::InUse => {
                warn!(snapshot_id = %decision.snapshot_id, "vault copy in use (an AMI): kept");
                failed.push(
                    json!({"snapshot_id": decision.snapshot_id, "code": "InvalidSnapshot.InUse"}),
                );
            }
            Deletion::Failed(err) => {
                warn!(snapshot_id = %decision.snapshot_id, code = err.aws_code().unwrap_or(""), error = %err, "vault copy not deleted");
                failed.push(json!({"snapshot_id": decision.snapshot_id, "code": err.aws_code().unwrap_or("Unknown")}));
            }
        }
    }
    // What this deployment deleted leaves its catalog (what someone else deleted stays, marked).
    let gone: Vec<&HeldRecord> = intake
        .records
        .iter()
        .filter(|r| deleted.contains(&r.snapshot_id))
        .collect();
    app.aws.catalog.forget_held(&gone).await?;
    let planned = plan.iter().filter(|d| d.delete).count();
    emit_metrics(
        app,
        &[
            ("VaultCopiesHeld", held.len()),
            ("VaultCopiesDeleted", deleted.len()),
            ("VaultDeletionsFailed", failed.len()),
        ],
        &[("Event", "vault-retention")],
    );
    info!(
        dry_run,
        held = held.len(),
        planned,
        deleted = deleted.len(),
        failed = failed.len(),
        "vault retention: {} of {} copies {}",
        if dry_run { planned } else { deleted.len() },
        held.len(),
        if dry_run {
            "would be deleted (dry run)"
        } else {
            "deleted"
        }
    );
    let answer = json!({
        "dry_run": dry_run,
        "held": held.len(),
        "recorded": intake.recorded,
        "intruders": intake.intruders,
        "deleted_outside": vanished_ids(&intake),
        "deleted": deleted,
        "failed": failed,
        "plan": plan,
    });
    let mut records = intake.records;
    records.retain(|r| !deleted.contains(&r.snapshot_id));
    Ok((answer, records))
}

/// The vault's report: each server its catalog holds, against `RPO_HOURS` (`VaultServersStale`
/// counts those whose newest whole set is older, or who have none).
pub async fn report(app: &App) -> Result<Value, Error> {
    let records = app.aws.catalog.held_records().await?;
    Ok(report_of(app, &records))
}

/// `report` of these records.
fn report_of(app: &App, records: &[HeldRecord]) -> Value {
    let rpo_hours = app.config.rpo_hours;
    let servers = vault_report(records, chrono::Utc::now(), rpo_hours);
    let stale: Vec<&str> = servers
        .iter()
        .filter(|s| !s.within_rpo)
        .map(|s| s.instance_id.as_str())
        .collect();
    let intruders: usize = servers.iter().map(|s| s.intruders).sum();
    let vanished: usize = servers.iter().map(|s| s.vanished).sum();
    emit_metrics(
        app,
        &[
            ("VaultServers", servers.len()),
            ("VaultServersStale", stale.len()),
        ],
        &[("Event", "vault-report")],
    );
    if stale.is_empty() {
        info!(
            servers = servers.len(),
            rpo_hours, "vault report: every server's newest whole set is within {rpo_hours} h"
        );
    } else {
        warn!(servers = servers.len(), stale = ?stale, rpo_hours, "vault report: {} of {} servers have no whole set in the vault within {rpo_hours} h", stale.len(), servers.len());
    }
    json!({
        "rpo_hours": rpo_hours,
        "totals": {"servers": servers.len(), "stale": stale.len(), "intruders": intruders, "deleted_outside": vanished},
        "servers": servers,
    })
}

/// Shares a whole set with a recovery account: see the module documentation.
pub async fn recover(
    app: &App,
    keeping: &VaultKeeping,
    request: RecoverRequest,
) -> Result<Value, Error> {
    if !keeping.recovery_accounts.contains(&request.account) {
        return Err(Error::Event(format!(
            "field `account`: {} is not one of RECOVERY_ACCOUNTS ({}): a set is shared only with a named recovery account",
            request.account,
            keeping.recovery_accounts.join(", ")
        )));
    }
    let dry_run = request.dry_run.unwrap_or(false);
    let (intake, held) = take_in(app, keeping, dry_run).await?;
    // Nothing is chosen for the operator: without a run, the whole ones are listed.
    let Some(run_id) = request.run_id.clone() else {
        let runs = whole_runs(&intake.records, &request.instance_id);
        info!(instance_id = %request.instance_id, whole_runs = runs.len(), "vault sets listed for a recovery: none shared until one is chosen");
        return Ok(json!({
            "instance_id": request.instance_id,
            "shared": false,
            "whole_runs": runs,
            "choose": "add \"run_id\" to share that set; after a compromise of the fleet account, choose one copied before it (the copies' tags are written by the fleet's role; `copied_at` is EC2's time)",
        }));
    };
    let set = recovery_set(&intake.records, &held, &request.instance_id, &run_id)
        .map_err(|why| Error::Event(format!("field `run_id`: {why}")))?;
    let until = chrono::Utc::now() + chrono::Duration::days(i64::from(keeping.recovery_share_days));
    if !dry_run {
        // Each share recorded as it is made, so that the schedule ends every one of them.
        for copy in &set {
            let mut record = (*copy).clone();
            record.shared_with.insert(request.account.clone(), until);
            app.aws
                .catalog
                .put_held(std::slice::from_ref(&record))
                .await?;
            snapshots::share_with(&app.aws.ec2, &copy.snapshot_id, &request.account, true).await?;
        }
    }
    info!(instance_id = %request.instance_id, run_id = %run_id, account = %request.account, snapshots = set.len(), until = %until.to_rfc3339(), dry_run, "vault set shared with the recovery account");
    Ok(json!({
        "dry_run": dry_run,
        "shared": !dry_run,
        "instance_id": request.instance_id,
        "run_id": run_id,
        "account": request.account,
        "shared_until": until,
        "region": app.config.region,
        "snapshots": set.iter().map(|r| json!({"snapshot_id": r.snapshot_id, "device": r.device})).collect::<Vec<_>>(),
    }))
}
