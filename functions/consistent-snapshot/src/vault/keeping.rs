//! The vault deployment (`MODE=vault`): the only thing that deletes in the vault account, and
//! the way a set leaves it for a recovery. It reads the fleet's copies in its own region (those
//! carrying the fleet's `ManagedBy` tag), their locks, and decides with `plan::keep`.
//!
//! * On its schedule (or `{"action":"retention","dry_run"?}`): deletes the copies the plan
//!   lets go (older than `VAULT_RETAIN_DAYS` by EC2's own start time, not locked, not among
//!   their server's newest `VAULT_KEEP_NEWEST` sets), each named with its reason.
//! * `{"action":"recover","instance_id","account"}` lists the server's whole sets in the vault
//!   (newest first, with when each was copied) and shares nothing; with `"run_id"` it shares
//!   that set, if whole, with a recovery account named in `RECOVERY_ACCOUNTS`, and answers its
//!   snapshots by device, for the volumes the recovery account creates.

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::app::{emit_metrics, App};
use crate::aws::snapshots::{self, Deletion};
use crate::config::VaultKeeping;
use crate::error::Error;
use crate::model::requests::RecoverRequest;
use crate::model::snapshot::SnapshotFacts;
use crate::model::tags::{TAG_DEVICE, TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RUN_ID, TAG_SET_SIZE};
use crate::vault::plan::keep::{plan_keeping, recovery_set, whole_runs, Held};

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
            started: f.start_time,
            state: f.state,
            snapshot_id: f.snapshot_id,
        })
        .collect())
}

/// The vault's retention: see the module documentation. Answers the plan and what was deleted.
pub async fn retention(app: &App, keeping: &VaultKeeping, dry_run: bool) -> Result<Value, Error> {
    let held = held(app, keeping).await?;
    let plan = plan_keeping(
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
    Ok(json!({
        "dry_run": dry_run,
        "held": held.len(),
        "deleted": deleted,
        "failed": failed,
        "plan": plan,
    }))
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
    let held = held(app, keeping).await?;
    // Nothing is chosen for the operator: without a run, the whole ones are listed.
    let Some(run_id) = request.run_id.clone() else {
        let runs = whole_runs(&held, &request.instance_id);
        info!(instance_id = %request.instance_id, whole_runs = runs.len(), "vault sets listed for a recovery: none shared until one is chosen");
        return Ok(json!({
            "instance_id": request.instance_id,
            "shared": false,
            "whole_runs": runs,
            "choose": "add \"run_id\" to share that set; after a compromise of the fleet account, choose one copied before it (the copies' tags are written by the fleet's role)",
        }));
    };
    let set = recovery_set(&held, &request.instance_id, &run_id)
        .map_err(|why| Error::Event(format!("field `run_id`: {why}")))?;
    let dry_run = request.dry_run.unwrap_or(false);
    if !dry_run {
        for copy in &set {
            snapshots::share_with(&app.aws.ec2, &copy.snapshot_id, &request.account, true).await?;
        }
    }
    info!(instance_id = %request.instance_id, run_id = %run_id, account = %request.account, snapshots = set.len(), dry_run, "vault set shared with the recovery account");
    Ok(json!({
        "dry_run": dry_run,
        "shared": !dry_run,
        "instance_id": request.instance_id,
        "run_id": run_id,
        "account": request.account,
        "region": app.config.region,
        "snapshots": set.iter().map(|h| json!({"snapshot_id": h.snapshot_id, "device": h.device})).collect::<Vec<_>>(),
    }))
}
