//! Restore tests: `{"action":"verify"}` (and the optional verify schedule) restores the newest
//! consistent set of a sample of instances into new volumes in their own zone, waits through
//! the queue until EC2 has made them, records how long that took, deletes them, and reports
//! per instance. Only volumes tagged `ConsistentSnapshot:Purpose=verify` by this deployment
//! are ever deleted.

use chrono::{Duration, Utc};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::app::{emit_metrics, enqueue, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::{instances, volumes};
use crate::error::Error;
use crate::jobs::{Envelope, Job, RestoreJob, VerifyItem, VerifyJob};
use crate::model::requests::{RestoreMode, VerifyRequest};
use crate::model::state::VolumeState;
use crate::restore::plan::{
    choose_set, deletable_verify_volumes, evaluate_verification, restore_id, sample, volume_specs,
};
use crate::restore::step::restore::{create_volume, instance_snapshots, restored_volumes};

/// How long a verification may wait for its volumes.
const VERIFY_HOURS: i64 = 2;

/// Starts a verification: one restore into new volumes per sampled instance.
pub async fn on_demand(app: &App, request: VerifyRequest) -> Result<Value, Error> {
    let now = Utc::now();
    let ids = match request.instance_ids {
        Some(ids) => ids,
        None => {
            let fleet = instances::discover(&app.aws.ec2, &app.config, None).await?;
            let ids: Vec<String> = fleet.into_iter().map(|i| i.instance_id).collect();
            let n = request.sample.unwrap_or(app.config.verify_sample_size) as usize;
            sample(&ids, n, &now.format("%Y-%m-%d").to_string())
        }
    };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let verify_id = format!("verify-{}-{}", now.format("%Y%m%dT%H%M%SZ"), &suffix[..8]);
    let mut items = Vec::new();
    for instance_id in &ids {
        items.push(start_verify(app, &verify_id, instance_id).await);
    }
    let job = VerifyJob {
        verify_id: verify_id.clone(),
        started_at: now,
        deadline: now + Duration::hours(VERIFY_HOURS),
        items: items.clone(),
        attempt: 0,
    };
    enqueue(app, &[Envelope::new(Job::Verify(job))]).await?;
    info!(verify_id = %verify_id, instances = items.len(), "verification started");
    Ok(json!({
        "verify_id": verify_id,
        "status": "in_progress",
        "instances": items,
    }))
}

/// Creates the volumes of one instance's newest consistent set in its zone. An instance that
/// fails (a permission, a key, EC2's error) is reported failed with the AWS code and the
/// others go on; the volumes it made before failing are this verification's, deleted with
/// the rest when the verification ends.
async fn start_verify(app: &App, verify_id: &str, instance_id: &str) -> VerifyItem {
    let mut item = VerifyItem {
        instance_id: instance_id.to_string(),
        name: instance_id.to_string(),
        restore_id: None,
        run_id: None,
        volumes: 0,
        error: None,
    };
    if let Err(err) = begin_verify(app, verify_id, &mut item).await {
        warn!(verify_id, instance_id, error = %err, "verification of this instance failed to start");
        item.error = Some(err.to_string());
    }
    item
}

async fn begin_verify(app: &App, verify_id: &str, item: &mut VerifyItem) -> Result<(), Error> {
    let instance_id = item.instance_id.clone();
    let Some(instance) = instances::view(&app.aws.ec2, &instance_id).await? else {
        item.error = Some("the instance is gone".into());
        return Ok(());
    };
    item.name = instance.name.clone();
    let set = match choose_set(
        &instance_snapshots(app, &instance_id).await?,
        "latest",
        false,
    ) {
        Ok(set) => set,
        Err(why) => {
            item.error = Some(why);
            return Ok(());
        }
    };
    let job = RestoreJob {
        restore_id: restore_id(
            &instance_id,
            &set.run_id,
            RestoreMode::Volumes,
            verify_id,
            "verify",
        ),
        instance_id: instance_id.to_string(),
        name: instance.name.clone(),
        mode: RestoreMode::Volumes,
        rollback: false,
        zone: instance.zone.clone(),
        set,
        deadline: Utc::now() + Duration::hours(VERIFY_HOURS),
        attempt: 0,
    };
    let specs = volume_specs(&job.set, &job.zone, &Default::default());
    // Known before any volume is made: the verification's end finds (and deletes) what was
    // made, however far this got.
    item.restore_id = Some(job.restore_id.clone());
    item.run_id = Some(job.set.run_id.clone());
    item.volumes = specs.len();
    let existing = restored_volumes(app, &job.instance_id, &job.restore_id).await?;
    for spec in specs.iter().filter(|s| !existing.contains_key(&s.device)) {
        create_volume(app, &job, spec, "verify").await?;
    }
    Ok(())
}

/// A queued verification comes back: waits for the volumes, then measures and cleans up.
pub async fn verify_job(app: &App, job: VerifyJob) -> Result<(), Error> {
    let now = Utc::now();
    let past_deadline = now > job.deadline;
    let mut creating = 0;
    let mut looked = Vec::new();
    for item in &job.items {
        let volumes = match &item.restore_id {
            Some(id) => restored_volumes(app, &item.instance_id, id).await?,
            None => Default::default(),
        };
        creating += volumes
            .values()
            .filter(|v| v.state == VolumeState::Creating)
            .count();
        looked.push(volumes);
    }
    if creating > 0 && !past_deadline {
        info!(verify_id = %job.verify_id, creating, "verification waiting for volumes");
        return requeue(
            app,
            Job::Verify(VerifyJob {
                attempt: job.attempt + 1,
                ..job
            }),
        )
        .await;
    }
    let seconds = (now - job.started_at).num_seconds();
    let mut results = Vec::new();
    for (item, volumes) in job.items.iter().zip(&looked) {
        results.push(evaluate_verification(item, volumes, seconds));
    }
    // The report is claimed before any volume is deleted: a duplicate delivery that looks
    // after a deletion began finds the claim taken, and its (wrong) view is never reported.
    let store = RunMarkerStore::new(&app.aws.catalog, &job.verify_id);
    let reports = store.mark_reported().await?;
    // Every delivery cleans up: only this verification's own volumes, never an attached one.
    // A deletion that fails is reported and tried again by the message's next delivery.
    let mut not_deleted = Vec::new();
    for volume in deletable_verify_volumes(looked.iter().flat_map(|v| v.values())) {
        let subject = format!("{} ({})", volume.volume_id, job.verify_id);
        match volumes::delete(&app.aws.ec2, &volume.volume_id, &subject).await {
            Ok(true) => {
                info!(verify_id = %job.verify_id, volume_id = %volume.volume_id, "verification volume deleted")
            }
            Ok(false) => {}
            Err(err) => {
                warn!(verify_id = %job.verify_id, error = %err, "verification volume not deleted");
                not_deleted.push(err);
            }
        }
    }
    let cleanup = match not_deleted.into_iter().next() {
        Some(err) => Err(err),
        None => Ok(()),
    };
    if !reports {
        info!(verify_id = %job.verify_id, "the verification's report is already written (a duplicate delivery)");
        return cleanup;
    }
    let restorable = results.iter().filter(|r| r.restorable).count();
    let failed = results.len() - restorable;
    emit_metrics(
        app,
        &[
            ("RestoresVerified", restorable),
            ("RestoreFailures", failed),
            ("RestoreSeconds", usize::try_from(seconds).unwrap_or(0)),
        ],
        &[("Event", "verify"), ("VerifyId", &job.verify_id)],
    );
    let text = serde_json::to_string(&results).unwrap_or_default();
    let line =
        format!(
        "verify {}: {restorable} of {} instances restorable, volumes ready within {seconds} s, {}",
        job.verify_id,
        results.len(),
        if cleanup.is_ok() { "all deleted" } else { "some not deleted yet (tried again)" }
    );
    if failed == 0 && cleanup.is_ok() {
        info!(verify_id = %job.verify_id, verify = %text, "{line}");
    } else {
        warn!(verify_id = %job.verify_id, verify = %text, "{line}");
    }
    cleanup
}
