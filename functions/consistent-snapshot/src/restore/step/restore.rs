//! Restores against EC2: `{"action":"restore",…}` and its queued job. Each pass looks at the
//! instance and the volumes, asks `restore::plan` for the next step, carries it out and looks
//! again; when EC2 needs time (a volume being created, an instance stopping), the job comes
//! back through the queue. Calling again with the same request resumes the same restore (its
//! id is derived from the request); `"rollback": true` puts the replaced volumes back.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tracing::{info, warn};

use crate::app::{emit_metrics, refuse, requeue, to_json, App};
use crate::aws::volumes::{self, NewVolume};
use crate::aws::{commands, instances, snapshots};
use crate::error::Error;
use crate::jobs::{Job, RestoreJob};
use crate::model::catalog::{admit, CatalogIndex};
use crate::model::pace::Pace;
use crate::model::requests::{RestoreMode, RestoreRequest};
use crate::model::restore::{SourceSnapshot, VolumeFacts};
use crate::model::stop_time;
use crate::model::tags::{
    TAG_DETACHED_FROM, TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_NAME, TAG_PURPOSE, TAG_REPLACED_BY,
    TAG_RESTORED_FROM, TAG_RESTORE_DEVICE, TAG_RESTORE_ID, TAG_RUN_ID,
};
use crate::restore::plan::{
    choose_set, replace_step, restore_id, restore_state, restore_zone, restored_and_swapped,
    source_snapshots, thaw_step, volume_specs, volume_token, volumes_step, DeviceView, ReplaceView,
    RestoreState, RestoreStatus, Step, VolumeSpec, ARCHIVE_RESTORE_HOURS, RESTORE_HOURS, THAW_DAYS,
};

/// Steps one invocation carries out before handing the rest to the queue.
const STEPS_PER_PASS: usize = 12;

/// `{"action":"restore",…}`: chooses the set, then starts (or resumes) the restore; steps
/// stop shortly before `deadline` and the rest goes to the queue.
pub async fn on_demand(
    app: &App,
    request: RestoreRequest,
    deadline: DateTime<Utc>,
) -> Result<Value, Error> {
    let instance_id = request.instance_id.as_str();
    let instance = instances::view(&app.aws.ec2, instance_id).await?;
    let zone = restore_zone(&request, instance.as_ref()).map_err(Error::Restore)?;
    let snapshots = instance_snapshots(app, instance_id).await?;
    let set = choose_set(
        &snapshots,
        &request.run_id,
        request.allow_crash_consistent.unwrap_or(false),
    )
    .map_err(|why| Error::Restore(format!("{instance_id}: {why}")))?;
    // A set in the archive tier is restored from it first: AWS takes up to 72 hours.
    let hours = if set.snapshots.iter().any(|s| s.archived) {
        ARCHIVE_RESTORE_HOURS
    } else {
        RESTORE_HOURS
    };
    let job = RestoreJob {
        restore_id: restore_id(instance_id, &set.run_id, request.mode, &zone, "restore"),
        instance_id: instance_id.to_string(),
        name: instance
            .map(|i| i.name)
            .unwrap_or_else(|| instance_id.to_string()),
        mode: request.mode,
        rollback: request.rollback.unwrap_or(false),
        zone,
        set,
        deadline: Utc::now() + Duration::hours(hours),
        attempt: 0,
    };
    info!(restore_id = %job.restore_id, instance_id, run_id = %job.set.run_id, mode = ?job.mode, rollback = job.rollback, "restore requested");
    // One replace of an instance at a time: another one is refused until it is done (or its
    // time is over). A rollback, or a call again, is the same restore and holds the same lock.
    if job.mode == RestoreMode::Replace {
        let held = app
            .aws
            .catalog
            .lock_replace(instance_id, &job.restore_id, job.deadline, Utc::now())
            .await?;
        if let Some(holder) = held {
            return Err(Error::Restore(format!(
                "{instance_id}: replace {holder} is in progress on this instance; call it again to let it finish, or roll it back, before another replace"
            )));
        }
    }
    app.aws.catalog.put_restore(&job, Utc::now()).await?;
    let status = restore_pass(app, job, stop_time(Utc::now(), deadline)).await?;
    Ok(to_json(&status))
}

/// A queued restore comes back: one more pass. The message is a reference: the restore is
/// the one its request recorded in the catalog, and a message naming another is refused.
pub async fn restore_job(
    app: &App,
    message: RestoreJob,
    deadline: DateTime<Utc>,
) -> Result<(), Error> {
    let recorded = app
        .aws
        .catalog
        .restore(&message.instance_id, &message.restore_id)
        .await?;
    let Some(recorded) = recorded else {
        return Err(refuse(
            app,
            format!(
                "restore job {} of {}: no such restore was requested",
                message.restore_id, message.instance_id
            ),
        ));
    };
    let job = RestoreJob {
        attempt: message.attempt,
        ..recorded
    };
    restore_pass(app, job, stop_time(Utc::now(), deadline))
        .await
        .map(|_| ())
}

/// This deployment's snapshots of an instance that the catalog records (and EC2 confirms), as
/// restore sources, with the catalog's run, device and verdict.
pub async fn instance_snapshots(
    app: &App,
    instance_id: &str,
) -> Result<Vec<SourceSnapshot>, Error> {
    let (sets, _) = app.aws.catalog.sets_of(instance_id).await?;
    let index = CatalogIndex::new(&sets, []);
    let ids: Vec<String> = sets
        .iter()
        .flat_map(|s| s.snapshots.iter().map(|r| r.snapshot_id.clone()))
        .collect();
    let subject = format!("snapshots of {instance_id}");
    let home = app.config.region.as_str();
    let managed_by = app.config.managed_by.as_str();
    let admitted = snapshots::by_ids(&app.aws.ec2, &ids, &subject)
        .await?
        .into_iter()
        .filter_map(|facts| match admit(facts, home, &index, managed_by) {
            Ok(admitted) => Some(admitted),
            Err(f) => {
                warn!(instance_id, snapshot_id = %f.snapshot_id, why = %f.why, "not restored from: EC2 no longer reports it as recorded");
                None
            }
        })
        .collect();
    Ok(source_snapshots(admitted, managed_by))
}

/// Carries out steps until the restore is done, failed or must wait, at most
/// `STEPS_PER_PASS` of them and none that may not end before `stop_at` (judged by the longest
/// step so far); what is left is queued.
async fn restore_pass(
    app: &App,
    job: RestoreJob,
    stop_at: DateTime<Utc>,
) -> Result<RestoreStatus, Error> {
    let mut steps = Vec::new();
    let mut last = Step::Wait {
        for_what: "a first look".into(),
    };
    // The restore's volumes as last seen, while no step has changed them since.
    let mut seen = None;
    // Paced by the longest look-and-step so far.
    let mut pace = Pace::until(stop_at);
    for _ in 0..STEPS_PER_PASS {
        let began = Utc::now();
        if !pace.fits(began) {
            info!(restore_id = %job.restore_id, instance_id = %job.instance_id, longest_step_ms = pace.longest().num_milliseconds(), "restore pass: no time left in this invocation for another step; the next pass goes on");
            break;
        }
        let (step, restored) = next_step(app, &job).await?;
        last = step;
        match &last {
            Step::Done | Step::Fail { .. } | Step::Wait { .. } => {
                seen = Some(restored);
                break;
            }
            step => {
                let step = step.clone();
                if let Err(err) = carry_out(app, &job, &step).await {
                    // Refused for good (a permission, a key): the restore fails at once, named
                    // with the code, rather than coming back with its message until the queue
                    // gives it up. Anything else comes back with the message.
                    if !err.is_permanent() {
                        return Err(err);
                    }
                    last = Step::Fail {
                        why: format!("{err} (what was done stays, see `steps`; roll back or call again once fixed)"),
                    };
                    break;
                }
                steps.push(step);
                pace.took(began, Utc::now());
            }
        }
    }
    let (state, waiting_for, error) = restore_state(&last, Utc::now() > job.deadline);
    let restored = match seen {
        Some(restored) => restored,
        None => restored_volumes(app, &job.instance_id, &job.restore_id).await?,
    };
    let replaced = match job.mode {
        RestoreMode::Replace => replaced_volumes(app, &job.restore_id, &job.instance_id).await?,
        RestoreMode::Volumes => BTreeMap::new(),
    };
    let (volumes, replaced) = restored_and_swapped(&job, &restored, &replaced);
    let report = RestoreStatus {
        restore_id: job.restore_id.clone(),
        instance_id: job.instance_id.clone(),
        run_id: job.set.run_id.clone(),
        mode: job.mode,
        rollback: job.rollback,
        consistent: job.set.consistent,
        file_system_only: job.set.file_system_only,
        availability_zone: job.zone.clone(),
        status: state,
        waiting_for,
        error,
        steps,
        volumes,
        replaced,
    };
    match report.status {
        RestoreState::InProgress => {
            requeue(
                app,
                Job::Restore(RestoreJob {
                    attempt: job.attempt + 1,
                    ..job
                }),
            )
            .await?;
        }
        RestoreState::Done => {
            if job.mode == RestoreMode::Replace {
                if let Err(err) = app
                    .aws
                    .catalog
                    .unlock_replace(&job.instance_id, &job.restore_id)
                    .await
                {
                    warn!(restore_id = %job.restore_id, error = %err, "replace lock not given back: it ends with the restore's time");
                }
            }
            let text = serde_json::to_string(&report).unwrap_or_default();
            info!(restore_id = %report.restore_id, restore = %text, "restore {} of {} from run {}: done", report.restore_id, report.instance_id, report.run_id);
        }
        RestoreState::Failed => {
            emit_metrics(
                app,
                &[("RestoresFailed", 1)],
                &[("RestoreId", &report.restore_id), ("Event", "restore")],
            );
            let text = serde_json::to_string(&report).unwrap_or_default();
            warn!(restore_id = %report.restore_id, restore = %text, "restore {} of {} from run {}: failed: {}", report.restore_id, report.instance_id, report.run_id, report.error.clone().unwrap_or_default());
        }
    }
    Ok(report)
}

/// Looks at EC2 and names the next step; answers the restore's volumes it saw, by device.
async fn next_step(
    app: &App,
    job: &RestoreJob,
) -> Result<(Step, BTreeMap<String, VolumeFacts>), Error> {
    let restored = restored_volumes(app, &job.instance_id, &job.restore_id).await?;
    // A set that was in the archive tier is restored from it before any volume is made.
    let wanted: Vec<String> = job
        .set
        .snapshots
        .iter()
        .filter(|s| s.archived && !restored.contains_key(&s.device))
        .map(|s| s.snapshot_id.clone())
        .collect();
    if !wanted.is_empty() {
        let subject = format!("the set of {} from run {}", job.instance_id, job.set.run_id);
        let statuses = snapshots::tier_status(&app.aws.ec2, &wanted, &subject).await?;
        if let Some(step) = thaw_step(&wanted, &statuses) {
            return Ok((step, restored));
        }
    }
    let step = match job.mode {
        RestoreMode::Volumes => volumes_step(job, &restored),
        RestoreMode::Replace => replace_next_step(app, job, &restored).await?,
    };
    Ok((step, restored))
}

/// The next step of a `replace` (or its rollback), from the instance, its agent and the
/// volumes.
async fn replace_next_step(
    app: &App,
    job: &RestoreJob,
    restored: &BTreeMap<String, VolumeFacts>,
) -> Result<Step, Error> {
    let instance = instances::view(&app.aws.ec2, &job.instance_id)
        .await?
        .ok_or_else(|| Error::Restore(format!("{}: the instance is gone", job.instance_id)))?;
    let targets = if job.rollback {
        replaced_volumes(app, &job.restore_id, &job.instance_id).await?
    } else {
        restored.clone()
    };
    let agent = commands::agents(&app.aws.ssm, std::slice::from_ref(&job.instance_id))
        .await?
        .remove(&job.instance_id)
        .map(|a| a.ping_status);
    let view = ReplaceView {
        instance_id: job.instance_id.clone(),
        instance_state: instance.state.clone(),
        agent,
        devices: job
            .set
            .snapshots
            .iter()
            .map(|s| DeviceView {
                device: s.device.clone(),
                target: targets.get(&s.device).cloned(),
                attached: instance.devices.get(&s.device).cloned(),
            })
            .collect(),
    };
    Ok(replace_step(&view, job.rollback))
}

async fn carry_out(app: &App, job: &RestoreJob, step: &Step) -> Result<(), Error> {
    let id = job.instance_id.as_str();
    let ec2 = &app.aws.ec2;
    info!(restore_id = %job.restore_id, instance_id = id, step = ?step, "restore step");
    match step {
        Step::Thaw { snapshots } => {
            let subject = format!("the set of {id} from run {}", job.set.run_id);
            let started =
                snapshots::restore_from_archive(ec2, snapshots, THAW_DAYS, &subject).await?;
            info!(restore_id = %job.restore_id, instance_id = id, started, days = THAW_DAYS, "restore from the archive tier started (AWS takes up to 72 hours)");
        }
        Step::Create { devices } => {
            let instance = instances::view(ec2, id).await?.unwrap_or_default();
            let current = volumes::by_id(
                ec2,
                instance.devices.values().map(|(v, _)| v.clone()).collect(),
            )
            .await?;
            let by_device: BTreeMap<String, VolumeFacts> = instance
                .devices
                .iter()
                .filter_map(|(d, (v, _))| current.get(v).map(|f| (d.clone(), f.clone())))
                .collect();
            for spec in volume_specs(&job.set, &job.zone, &by_device)
                .into_iter()
                .filter(|s| devices.contains(&s.device))
            {
                create_volume(app, job, &spec, "restore").await?;
            }
        }
        Step::Stop => instances::stop(ec2, id).await?,
        Step::Start => instances::start(ec2, id).await?,
        Step::Detach { volumes } => {
            for (device, volume) in volumes {
                if !job.rollback {
                    // Recorded before anything else: a rollback reattaches only what the
                    // catalog says this restore took off, never a volume tagged to look so.
                    app.aws
                        .catalog
                        .record_restore_volume(id, &job.restore_id, DETACHED, volume, device)
                        .await?;
                    // Tagged first: a replaced volume is always findable (and never deleted).
                    let tags = [
                        (TAG_REPLACED_BY, job.restore_id.clone()),
                        (TAG_DETACHED_FROM, format!("{id} {device}")),
                    ];
                    volumes::tag(ec2, volume, &tags, &format!("{volume} of {id}")).await?;
                }
                volumes::detach(ec2, volume, id, device).await?;
            }
        }
        Step::Attach { volumes } => {
            for (device, volume) in volumes {
                volumes::attach(ec2, volume, id, device).await?;
            }
        }
        Step::Wait { .. } | Step::Done | Step::Fail { .. } => {}
    }
    Ok(())
}

/// Creates one restored volume. The client token makes a repeated call (after a lost
/// answer) the same volume in AWS; the restore-id tag makes it found by the next look.
pub async fn create_volume(
    app: &App,
    job: &RestoreJob,
    spec: &VolumeSpec,
    purpose: &str,
) -> Result<String, Error> {
    let volume = NewVolume {
        snapshot_id: &spec.snapshot_id,
        zone: &spec.zone,
        volume_type: spec.volume_type.as_deref(),
        size_gib: spec.size_gib,
        iops: spec.iops,
        throughput: spec.throughput,
        client_token: volume_token(&job.restore_id, &spec.device),
        tags: vec![
            (TAG_RESTORE_ID, job.restore_id.clone()),
            (TAG_RESTORED_FROM, spec.snapshot_id.clone()),
            (TAG_RESTORE_DEVICE, spec.device.clone()),
            (TAG_PURPOSE, purpose.to_string()),
            (TAG_MANAGED_BY, app.config.managed_by.clone()),
            (TAG_INSTANCE_ID, job.instance_id.clone()),
            (TAG_RUN_ID, job.set.run_id.clone()),
            (
                TAG_NAME,
                format!(
                    "{} {} ({} {})",
                    job.name, spec.device, purpose, job.set.run_id
                ),
            ),
        ],
    };
    let subject = format!(
        "{} of {} in {}",
        spec.snapshot_id, job.instance_id, spec.zone
    );
    let volume_id = volumes::create(&app.aws.ec2, volume, &subject).await?;
    app.aws
        .catalog
        .record_restore_volume(
            &job.instance_id,
            &job.restore_id,
            CREATED,
            &volume_id,
            &spec.device,
        )
        .await?;
    info!(restore_id = %job.restore_id, instance_id = %job.instance_id, device = %spec.device, snapshot_id = %spec.snapshot_id, volume_id = %volume_id, "volume created from snapshot");
    Ok(volume_id)
}

/// The catalog's roles of a restore's volumes.
const CREATED: &str = "created";
const DETACHED: &str = "detached";

/// The volumes of a restore, by device: those it created, as the catalog recorded them (a
/// volume merely tagged with the restore's id is none of them).
pub async fn restored_volumes(
    app: &App,
    instance_id: &str,
    restore_id: &str,
) -> Result<BTreeMap<String, VolumeFacts>, Error> {
    let recorded = app
        .aws
        .catalog
        .restore_volumes(instance_id, restore_id, CREATED)
        .await?;
    let found = volumes::tagged(&app.aws.ec2, TAG_RESTORE_ID, restore_id).await?;
    Ok(found
        .into_iter()
        .filter_map(|v| {
            let device = recorded.get(&v.volume_id)?.clone();
            (v.tags.get(TAG_RESTORE_DEVICE) == Some(&device)).then_some((device, v))
        })
        .collect())
}

/// The volumes a `replace` detached from the instance, by device: only those the catalog
/// recorded before detaching them.
async fn replaced_volumes(
    app: &App,
    restore_id: &str,
    instance_id: &str,
) -> Result<BTreeMap<String, VolumeFacts>, Error> {
    let recorded = app
        .aws
        .catalog
        .restore_volumes(instance_id, restore_id, DETACHED)
        .await?;
    let found = volumes::tagged(&app.aws.ec2, TAG_REPLACED_BY, restore_id).await?;
    Ok(found
        .into_iter()
        .filter_map(|v| Some((recorded.get(&v.volume_id)?.clone(), v)))
        .collect())
}
