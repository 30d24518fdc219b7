//! Restores against EC2: `{"action":"restore",…}` and its queued job. Each pass looks at the
//! instance and the volumes, asks `restore::replace_step` for the next step, carries it out and
//! looks again; when EC2 needs time (a volume being created, an instance stopping), the job
//! comes back through the queue. Calling again with the same request resumes the same restore
//! (its id is derived from the request); `"rollback": true` puts the replaced volumes back.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};
use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::dispatch::{TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RUN_ID};
use crate::error::{aws, Error};
use crate::event::{fnv1a32, RestoreMode, RestoreRequest};
use crate::fleet::{self, tag_map};
use crate::handler::{to_json, App};
use crate::job::{Job, RestoreJob};
use crate::restore::{
    choose_set, replace_step, restore_id, volume_specs, DeviceView, ReplaceView, SourceSnapshot,
    Step, VolumeFacts, VolumeSpec, TAG_DETACHED_FROM, TAG_PURPOSE, TAG_REPLACED_BY,
    TAG_RESTORED_FROM, TAG_RESTORE_ID,
};
use crate::track;

/// The device a restored volume belongs at.
pub const TAG_RESTORE_DEVICE: &str = "ConsistentSnapshot:Device";
/// Steps one invocation carries out before handing the rest to the queue.
const STEPS_PER_PASS: usize = 12;
/// A restore not done by then is reported as failed (it can still be resumed by calling again).
const RESTORE_HOURS: i64 = 6;

/// What EC2 says of the instance a restore concerns.
#[derive(Debug, Clone, Default)]
pub(crate) struct InstanceView {
    pub name: String,
    pub state: String,
    pub zone: String,
    /// device -> (volume id, attachment status)
    pub devices: BTreeMap<String, (String, String)>,
}

/// Where a restore stands, as answered and logged.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreStatus {
    pub restore_id: String,
    pub instance_id: String,
    pub run_id: String,
    pub mode: RestoreMode,
    pub rollback: bool,
    pub consistent: bool,
    pub availability_zone: String,
    /// `done`, `in_progress` or `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every step this pass carried out.
    pub steps: Vec<Step>,
    /// The restored volumes, by device.
    pub volumes: Vec<RestoredVolume>,
    /// `replace`: what was swapped (the old volumes are kept, detached and tagged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<Swap>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoredVolume {
    pub device: String,
    pub snapshot_id: String,
    pub volume_id: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Swap {
    pub device: String,
    pub old_volume_id: String,
    pub new_volume_id: String,
}

impl App {
    /// `{"action":"restore",…}`: chooses the set, then starts (or resumes) the restore.
    pub(crate) async fn on_demand_restore(&self, request: RestoreRequest) -> Result<Value, Error> {
        let instance_id = request.instance_id.as_str();
        let instance = self.instance_view(instance_id).await?;
        if instance.is_none() && request.mode == RestoreMode::Replace {
            return Err(Error::Restore(format!(
                "{instance_id}: no such instance to replace the volumes of (restore into new volumes with \"mode\":\"volumes\" and an availability_zone)"
            )));
        }
        if let (RestoreMode::Replace, Some(zone), Some(view)) =
            (request.mode, &request.availability_zone, &instance)
        {
            if zone != &view.zone {
                return Err(Error::Restore(format!(
                    "{instance_id} is in {}: a replace restores into the instance's own zone, not {zone} (use \"mode\":\"volumes\" for another zone)",
                    view.zone
                )));
            }
        }
        let zone = match (&request.availability_zone, &instance) {
            (Some(zone), _) if request.mode == RestoreMode::Volumes => zone.clone(),
            (_, Some(view)) => view.zone.clone(),
            (_, None) => {
                return Err(Error::Restore(format!(
                "{instance_id}: the instance is gone; name the availability_zone to restore into"
            )))
            }
        };
        let snapshots = self.instance_snapshots(instance_id).await?;
        let set = choose_set(
            &snapshots,
            &request.run_id,
            request.allow_crash_consistent.unwrap_or(false),
        )
        .map_err(|why| Error::Restore(format!("{instance_id}: {why}")))?;
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
            deadline: Utc::now() + Duration::hours(RESTORE_HOURS),
            attempt: 0,
        };
        info!(restore_id = %job.restore_id, instance_id, run_id = %job.set.run_id, mode = ?job.mode, rollback = job.rollback, "restore requested");
        let status = self.restore_pass(job).await?;
        Ok(to_json(&status))
    }

    /// A queued restore comes back: one more pass.
    pub(crate) async fn restore_job(&self, job: RestoreJob) -> Result<(), Error> {
        self.restore_pass(job).await.map(|_| ())
    }

    /// Carries out steps until the restore is done, failed or must wait; a wait is queued.
    async fn restore_pass(&self, job: RestoreJob) -> Result<RestoreStatus, Error> {
        let mut steps = Vec::new();
        let mut last = Step::Wait {
            for_what: "a first look".into(),
        };
        // The restore's volumes as last seen, while no step has changed them since.
        let mut seen = None;
        for _ in 0..STEPS_PER_PASS {
            let (step, restored) = self.next_step(&job).await?;
            last = step;
            match &last {
                Step::Done | Step::Fail { .. } | Step::Wait { .. } => {
                    seen = Some(restored);
                    break;
                }
                step => {
                    self.carry_out(&job, step).await?;
                    steps.push(step.clone());
                }
            }
        }
        let past_deadline = Utc::now() > job.deadline;
        let (status, waiting_for, error) = match &last {
            Step::Done => ("done", None, None),
            Step::Fail { why } => ("failed", None, Some(why.clone())),
            Step::Wait { for_what } if past_deadline => (
                "failed",
                None,
                Some(format!(
                    "not done after {RESTORE_HOURS} h, still waiting for {for_what}; call again to resume"
                )),
            ),
            Step::Wait { for_what } => ("in_progress", Some(for_what.clone()), None),
            _ => ("in_progress", Some("the next pass".to_string()), None),
        };
        let report = self
            .restore_status(&job, status, waiting_for, error, steps, seen)
            .await?;
        if report.status == "in_progress" {
            self.requeue(Job::Restore(RestoreJob {
                attempt: job.attempt + 1,
                ..job
            }))
            .await?;
        } else {
            let text = serde_json::to_string(&report).unwrap_or_default();
            if report.status == "done" {
                info!(restore_id = %report.restore_id, restore = %text, "restore {} of {} from run {}: done", report.restore_id, report.instance_id, report.run_id);
            } else {
                warn!(restore_id = %report.restore_id, restore = %text, "restore {} of {} from run {}: failed: {}", report.restore_id, report.instance_id, report.run_id, report.error.clone().unwrap_or_default());
            }
        }
        Ok(report)
    }

    /// Looks at EC2 and names the next step; answers the restore's volumes it saw, by device.
    async fn next_step(
        &self,
        job: &RestoreJob,
    ) -> Result<(Step, BTreeMap<String, VolumeFacts>), Error> {
        let restored = self.restored_volumes(&job.restore_id).await?;
        let step = if job.mode == RestoreMode::Volumes {
            volumes_step(job, &restored)
        } else {
            self.replace_next_step(job, &restored).await?
        };
        Ok((step, restored))
    }

    /// The next step of a `replace` (or its rollback), from the instance, its agent and the
    /// volumes.
    async fn replace_next_step(
        &self,
        job: &RestoreJob,
        restored: &BTreeMap<String, VolumeFacts>,
    ) -> Result<Step, Error> {
        let instance = self
            .instance_view(&job.instance_id)
            .await?
            .ok_or_else(|| Error::Restore(format!("{}: the instance is gone", job.instance_id)))?;
        let targets = if job.rollback {
            self.replaced_volumes(&job.restore_id, &job.instance_id)
                .await?
        } else {
            restored.clone()
        };
        let agent = fleet::agents(&self.ssm, std::slice::from_ref(&job.instance_id))
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

    async fn carry_out(&self, job: &RestoreJob, step: &Step) -> Result<(), Error> {
        let id = job.instance_id.as_str();
        info!(restore_id = %job.restore_id, instance_id = id, step = ?step, "restore step");
        match step {
            Step::Create { devices } => {
                let instance = self.instance_view(id).await?.unwrap_or_default();
                let current = self
                    .volumes_by_id(instance.devices.values().map(|(v, _)| v.clone()).collect())
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
                    self.create_volume(job, &spec, "restore").await?;
                }
            }
            Step::Stop => {
                self.ec2
                    .stop_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .map_err(|e| aws("StopInstances", id, e))?;
            }
            Step::Start => {
                self.ec2
                    .start_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .map_err(|e| aws("StartInstances", id, e))?;
            }
            Step::Detach { volumes } => {
                for (device, volume) in volumes {
                    if !job.rollback {
                        // Tagged first: a replaced volume is always findable (and never deleted).
                        self.ec2
                            .create_tags()
                            .resources(volume)
                            .tags(tag(TAG_REPLACED_BY, &job.restore_id))
                            .tags(tag(TAG_DETACHED_FROM, &format!("{id} {device}")))
                            .send()
                            .await
                            .map_err(|e| aws("CreateTags", format!("{volume} of {id}"), e))?;
                    }
                    self.ec2
                        .detach_volume()
                        .volume_id(volume)
                        .instance_id(id)
                        .device(device)
                        .send()
                        .await
                        .map_err(|e| {
                            aws("DetachVolume", format!("{volume} from {id} {device}"), e)
                        })?;
                }
            }
            Step::Attach { volumes } => {
                for (device, volume) in volumes {
                    self.ec2
                        .attach_volume()
                        .volume_id(volume)
                        .instance_id(id)
                        .device(device)
                        .send()
                        .await
                        .map_err(|e| {
                            aws("AttachVolume", format!("{volume} to {id} {device}"), e)
                        })?;
                }
            }
            Step::Wait { .. } | Step::Done | Step::Fail { .. } => {}
        }
        Ok(())
    }

    /// Creates one restored volume. The client token makes a repeated call (after a lost
    /// answer) the same volume in AWS; the restore-id tag makes it found by the next look.
    pub(crate) async fn create_volume(
        &self,
        job: &RestoreJob,
        spec: &VolumeSpec,
        purpose: &str,
    ) -> Result<String, Error> {
        let tags = [
            (TAG_RESTORE_ID, job.restore_id.as_str()),
            (TAG_RESTORED_FROM, spec.snapshot_id.as_str()),
            (TAG_RESTORE_DEVICE, spec.device.as_str()),
            (TAG_PURPOSE, purpose),
            (TAG_MANAGED_BY, self.config.managed_by.as_str()),
            (TAG_INSTANCE_ID, job.instance_id.as_str()),
            (TAG_RUN_ID, job.set.run_id.as_str()),
            (
                "Name",
                &format!(
                    "{} {} ({} {})",
                    job.name, spec.device, purpose, job.set.run_id
                ),
            ),
        ];
        let token = format!("{}-{:08x}", job.restore_id, fnv1a32(spec.device.as_bytes()));
        let mut request = self
            .ec2
            .create_volume()
            .snapshot_id(&spec.snapshot_id)
            .availability_zone(&spec.zone)
            .client_token(token.chars().take(64).collect::<String>())
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
                    .build(),
            )
            .set_size(spec.size_gib)
            .set_iops(spec.iops)
            .set_throughput(spec.throughput);
        if let Some(kind) = &spec.volume_type {
            request = request.volume_type(VolumeType::from(kind.as_str()));
        }
        let out = request.send().await.map_err(|e| {
            aws(
                "CreateVolume",
                format!(
                    "{} of {} in {}",
                    spec.snapshot_id, job.instance_id, spec.zone
                ),
                e,
            )
        })?;
        let volume_id = out.volume_id().unwrap_or_default().to_string();
        info!(restore_id = %job.restore_id, instance_id = %job.instance_id, device = %spec.device, snapshot_id = %spec.snapshot_id, volume_id = %volume_id, "volume created from snapshot");
        Ok(volume_id)
    }

    async fn restore_status(
        &self,
        job: &RestoreJob,
        status: &'static str,
        waiting_for: Option<String>,
        error: Option<String>,
        steps: Vec<Step>,
        seen: Option<BTreeMap<String, VolumeFacts>>,
    ) -> Result<RestoreStatus, Error> {
        let restored = match seen {
            Some(restored) => restored,
            None => self.restored_volumes(&job.restore_id).await?,
        };
        let volumes = job
            .set
            .snapshots
            .iter()
            .filter_map(|s| {
                restored.get(&s.device).map(|v| RestoredVolume {
                    device: s.device.clone(),
                    snapshot_id: s.snapshot_id.clone(),
                    volume_id: v.volume_id.clone(),
                    state: v.state.clone(),
                })
            })
            .collect();
        let mut replaced = Vec::new();
        if job.mode == RestoreMode::Replace {
            let old = self
                .replaced_volumes(&job.restore_id, &job.instance_id)
                .await?;
            for (device, volume) in &old {
                replaced.push(Swap {
                    device: device.clone(),
                    old_volume_id: volume.volume_id.clone(),
                    new_volume_id: restored
                        .get(device)
                        .map(|v| v.volume_id.clone())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(RestoreStatus {
            restore_id: job.restore_id.clone(),
            instance_id: job.instance_id.clone(),
            run_id: job.set.run_id.clone(),
            mode: job.mode,
            rollback: job.rollback,
            consistent: job.set.consistent,
            availability_zone: job.zone.clone(),
            status,
            waiting_for,
            error,
            steps,
            volumes,
            replaced,
        })
    }

    /// This deployment's snapshots of an instance, as restore sources.
    pub(crate) async fn instance_snapshots(
        &self,
        instance_id: &str,
    ) -> Result<Vec<SourceSnapshot>, Error> {
        let managed_by = &self.config.managed_by;
        track::own_snapshots_tagged(
            &self.ec2,
            TAG_INSTANCE_ID,
            instance_id,
            &format!("snapshots of {instance_id}"),
            |s| {
                let tags = tag_map(s.tags());
                if tags.get(TAG_MANAGED_BY) != Some(managed_by) {
                    return None;
                }
                Some(SourceSnapshot {
                    snapshot_id: s.snapshot_id()?.to_string(),
                    run_id: tags.get(TAG_RUN_ID)?.clone(),
                    device: tags.get("Device")?.clone(),
                    state: s
                        .state()
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default(),
                    app_consistent: tags
                        .get("AppConsistent")
                        .is_some_and(|v| v.eq_ignore_ascii_case("true")),
                    size_gib: s.volume_size(),
                    start_time: chrono::DateTime::from_timestamp(s.start_time()?.secs(), 0)?,
                })
            },
        )
        .await
    }

    /// The instance's state, zone and attachments; `None` when it does not exist.
    pub(crate) async fn instance_view(
        &self,
        instance_id: &str,
    ) -> Result<Option<InstanceView>, Error> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .and_then(|s| aws_sdk_ec2::error::ProvideErrorMetadata::code(s))
                    == Some("InvalidInstanceID.NotFound") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(aws("DescribeInstances", instance_id, e)),
        };
        let Some(instance) = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
        else {
            return Ok(None);
        };
        let state = instance
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        if state == "terminated" {
            return Ok(None);
        }
        let tags = tag_map(instance.tags());
        Ok(Some(InstanceView {
            name: tags
                .get("Name")
                .cloned()
                .unwrap_or_else(|| instance_id.to_string()),
            state,
            zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_string(),
            devices: instance
                .block_device_mappings()
                .iter()
                .filter_map(|m| {
                    let ebs = m.ebs()?;
                    Some((
                        m.device_name()?.to_string(),
                        (
                            ebs.volume_id()?.to_string(),
                            ebs.status()
                                .map(|s| s.as_str().to_string())
                                .unwrap_or_default(),
                        ),
                    ))
                })
                .collect(),
        }))
    }

    /// The volumes of a restore, by device.
    pub(crate) async fn restored_volumes(
        &self,
        restore_id: &str,
    ) -> Result<BTreeMap<String, VolumeFacts>, Error> {
        let found = self
            .volumes(
                &[filter(&format!("tag:{TAG_RESTORE_ID}"), restore_id)],
                restore_id,
            )
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|v| Some((v.tags.get(TAG_RESTORE_DEVICE)?.clone(), v)))
            .collect())
    }

    /// The volumes a `replace` detached from the instance, by device.
    async fn replaced_volumes(
        &self,
        restore_id: &str,
        instance_id: &str,
    ) -> Result<BTreeMap<String, VolumeFacts>, Error> {
        let found = self
            .volumes(
                &[filter(&format!("tag:{TAG_REPLACED_BY}"), restore_id)],
                restore_id,
            )
            .await?;
        let prefix = format!("{instance_id} ");
        Ok(found
            .into_iter()
            .filter_map(|v| {
                let device = v
                    .tags
                    .get(TAG_DETACHED_FROM)?
                    .strip_prefix(&prefix)?
                    .to_string();
                Some((device, v))
            })
            .collect())
    }

    async fn volumes_by_id(
        &self,
        ids: Vec<String>,
    ) -> Result<BTreeMap<String, VolumeFacts>, Error> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let found = self
            .volumes(&[filter_values("volume-id", ids)], "the instance's volumes")
            .await?;
        Ok(found
            .into_iter()
            .map(|v| (v.volume_id.clone(), v))
            .collect())
    }

    /// DescribeVolumes with these filters, every page.
    pub(crate) async fn volumes(
        &self,
        filters: &[Filter],
        subject: &str,
    ) -> Result<Vec<VolumeFacts>, Error> {
        let mut pages = self
            .ec2
            .describe_volumes()
            .set_filters(Some(filters.to_vec()))
            .max_results(500)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws("DescribeVolumes", subject, e))?;
            for v in page.volumes() {
                let Some(volume_id) = v.volume_id() else {
                    continue;
                };
                found.push(VolumeFacts {
                    volume_id: volume_id.to_string(),
                    state: v
                        .state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    zone: v.availability_zone().unwrap_or_default().to_string(),
                    volume_type: v.volume_type().map(|t| t.as_str().to_string()),
                    size_gib: v.size(),
                    iops: v.iops(),
                    throughput: v.throughput(),
                    attachment: v.attachments().first().map(|a| {
                        (
                            a.instance_id().unwrap_or_default().to_string(),
                            a.device().unwrap_or_default().to_string(),
                            a.state()
                                .map(|s| s.as_str().to_string())
                                .unwrap_or_default(),
                        )
                    }),
                    tags: tag_map(v.tags()),
                });
            }
        }
        Ok(found)
    }
}

/// The next step of a `volumes` restore: create what is missing, then wait until EBS has made
/// every volume.
fn volumes_step(job: &RestoreJob, restored: &BTreeMap<String, VolumeFacts>) -> Step {
    let missing: Vec<String> = job
        .set
        .snapshots
        .iter()
        .filter(|s| !restored.contains_key(&s.device))
        .map(|s| s.device.clone())
        .collect();
    if !missing.is_empty() {
        return Step::Create { devices: missing };
    }
    if let Some(v) = restored.values().find(|v| v.state == "error") {
        return Step::Fail {
            why: format!("volume {} failed to create", v.volume_id),
        };
    }
    let creating: Vec<&str> = restored
        .values()
        .filter(|v| v.state == "creating")
        .map(|v| v.volume_id.as_str())
        .collect();
    if creating.is_empty() {
        Step::Done
    } else {
        Step::Wait {
            for_what: format!("volume(s) {} to be created", creating.join(", ")),
        }
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn filter_values(name: &str, values: Vec<String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values))
        .build()
}
