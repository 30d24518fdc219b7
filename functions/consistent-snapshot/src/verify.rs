//! Restore tests: `{"action":"verify"}` (and the optional verify schedule) restores the newest
//! consistent set of a sample of instances into new volumes in their own zone, waits through
//! the queue until EC2 has made them, records how long that took, deletes them, and reports
//! per instance. Only volumes tagged `ConsistentSnapshot:Purpose=verify` by this deployment
//! are ever deleted.

use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::error::{aws, Error};
use crate::event::{fnv1a32, RestoreMode, VerifyRequest};
use crate::fleet;
use crate::handler::App;
use crate::job::{Envelope, Job, RestoreJob, VerifyItem, VerifyJob};
use crate::restore::{choose_set, restore_id, volume_specs, TAG_PURPOSE};
use crate::run_claim::RunMarkerStore;

/// How long a verification may wait for its volumes.
const VERIFY_HOURS: i64 = 2;

/// A rotating sample: `n` of `ids`, a different mix each day, every instance in turn.
pub fn sample(ids: &[String], n: usize, day: &str) -> Vec<String> {
    let mut ranked: Vec<(u32, &String)> = ids
        .iter()
        .map(|id| (fnv1a32(format!("{day}|{id}").as_bytes()), id))
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(n)
        .map(|(_, id)| id.clone())
        .collect()
}

/// One instance's verification result.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub instance_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub restorable: bool,
    pub volumes: usize,
    /// From the request to every volume available, as seen by the job's looks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl App {
    /// Starts a verification: one restore into new volumes per sampled instance.
    pub(crate) async fn on_demand_verify(&self, request: VerifyRequest) -> Result<Value, Error> {
        let now = Utc::now();
        let ids = match request.instance_ids {
            Some(ids) => ids,
            None => {
                let fleet = fleet::discover(&self.ec2, &self.config, None).await?;
                let ids: Vec<String> = fleet.into_iter().map(|i| i.instance_id).collect();
                let n = request.sample.unwrap_or(self.config.verify_sample_size) as usize;
                sample(&ids, n, &now.format("%Y-%m-%d").to_string())
            }
        };
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let verify_id = format!("verify-{}-{}", now.format("%Y%m%dT%H%M%SZ"), &suffix[..8]);
        let mut items = Vec::new();
        for instance_id in &ids {
            items.push(self.start_verify(&verify_id, instance_id).await?);
        }
        let job = VerifyJob {
            verify_id: verify_id.clone(),
            started_at: now,
            deadline: now + Duration::hours(VERIFY_HOURS),
            items: items.clone(),
            attempt: 0,
        };
        self.enqueue(&[Envelope::new(Job::Verify(job))]).await?;
        info!(verify_id = %verify_id, instances = items.len(), "verification started");
        Ok(json!({
            "verify_id": verify_id,
            "status": "in_progress",
            "instances": items,
        }))
    }

    /// Creates the volumes of one instance's newest consistent set in its zone.
    async fn start_verify(&self, verify_id: &str, instance_id: &str) -> Result<VerifyItem, Error> {
        let mut item = VerifyItem {
            instance_id: instance_id.to_string(),
            name: instance_id.to_string(),
            restore_id: None,
            run_id: None,
            volumes: 0,
            error: None,
        };
        let Some(instance) = self.instance_view(instance_id).await? else {
            item.error = Some("the instance is gone".into());
            return Ok(item);
        };
        item.name = instance.name.clone();
        let set = match choose_set(
            &self.instance_snapshots(instance_id).await?,
            "latest",
            false,
        ) {
            Ok(set) => set,
            Err(why) => {
                item.error = Some(why);
                return Ok(item);
            }
        };
        let job = RestoreJob {
            restore_id: restore_id(
                instance_id,
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
        let existing = self.restored_volumes(&job.restore_id).await?;
        let specs = volume_specs(&job.set, &job.zone, &Default::default());
        for spec in specs.iter().filter(|s| !existing.contains_key(&s.device)) {
            self.create_volume(&job, spec, "verify").await?;
        }
        item.restore_id = Some(job.restore_id);
        item.run_id = Some(job.set.run_id);
        item.volumes = specs.len();
        Ok(item)
    }

    /// A queued verification comes back: waits for the volumes, then measures and cleans up.
    pub(crate) async fn verify_job(&self, job: VerifyJob) -> Result<(), Error> {
        let now = Utc::now();
        let past_deadline = now > job.deadline;
        let mut creating = 0;
        let mut looked = Vec::new();
        for item in &job.items {
            let volumes = match &item.restore_id {
                Some(id) => self.restored_volumes(id).await?,
                None => Default::default(),
            };
            creating += volumes.values().filter(|v| v.state == "creating").count();
            looked.push(volumes);
        }
        if creating > 0 && !past_deadline {
            info!(verify_id = %job.verify_id, creating, "verification waiting for volumes");
            return self
                .requeue(Job::Verify(VerifyJob {
                    attempt: job.attempt + 1,
                    ..job
                }))
                .await;
        }
        let seconds = (now - job.started_at).num_seconds();
        let mut results = Vec::new();
        for (item, volumes) in job.items.iter().zip(&looked) {
            let mut error = item.error.clone();
            if error.is_none() {
                if volumes.len() < item.volumes {
                    error = Some(format!(
                        "{} of {} volumes found",
                        volumes.len(),
                        item.volumes
                    ));
                } else if let Some(v) = volumes.values().find(|v| v.state != "available") {
                    error = Some(format!("volume {} is {}", v.volume_id, v.state));
                }
            }
            results.push(Verified {
                instance_id: item.instance_id.clone(),
                name: item.name.clone(),
                run_id: item.run_id.clone(),
                restorable: error.is_none(),
                volumes: volumes.len(),
                seconds: error.is_none().then_some(seconds),
                error,
            });
        }
        // The report is claimed before any volume is deleted: a duplicate delivery that looks
        // after a deletion began finds the claim taken, and its (wrong) view is never reported.
        let store = RunMarkerStore::new(&self.ssm, &self.config.managed_by, &job.verify_id);
        let reports = store.mark_reported().await?;
        // Every delivery cleans up: only this verification's own volumes, never an attached one.
        // A deletion that fails is reported and tried again by the message's next delivery.
        let mut not_deleted = Vec::new();
        for volume in looked.iter().flat_map(|v| v.values()).filter(|v| {
            v.tags.get(TAG_PURPOSE).map(String::as_str) == Some("verify") && v.attachment.is_none()
        }) {
            match self
                .ec2
                .delete_volume()
                .volume_id(&volume.volume_id)
                .send()
                .await
            {
                Ok(_) => {
                    info!(verify_id = %job.verify_id, volume_id = %volume.volume_id, "verification volume deleted")
                }
                Err(e) => {
                    let code = e.as_service_error().and_then(|s| {
                        aws_sdk_ec2::error::ProvideErrorMetadata::code(s).map(str::to_string)
                    });
                    if code.as_deref() != Some("InvalidVolume.NotFound") {
                        let err = aws(
                            "DeleteVolume",
                            format!("{} ({})", volume.volume_id, job.verify_id),
                            e,
                        );
                        warn!(verify_id = %job.verify_id, error = %err, "verification volume not deleted");
                        not_deleted.push(err);
                    }
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
        self.emit_metrics(
            &[
                ("RestoresVerified", restorable),
                ("RestoreFailures", failed),
                ("RestoreSeconds", usize::try_from(seconds).unwrap_or(0)),
            ],
            &[("Event", "verify"), ("VerifyId", &job.verify_id)],
        );
        let text = serde_json::to_string(&results).unwrap_or_default();
        let line = format!(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_rotates_by_day_and_covers_the_fleet() {
        let ids: Vec<String> = (0..10).map(|i| format!("i-{i:08x}")).collect();
        let today = sample(&ids, 3, "2026-11-23");
        assert_eq!(today.len(), 3);
        assert_eq!(today, sample(&ids, 3, "2026-11-23"), "stable within a day");
        let mut seen = std::collections::BTreeSet::new();
        for day in 1..=28 {
            seen.extend(sample(&ids, 3, &format!("2026-11-{day:02}")));
        }
        assert_eq!(
            seen.len(),
            10,
            "every instance is verified within four weeks"
        );
        assert_eq!(sample(&ids, 20, "d").len(), 10);
    }
}
