//! Copies of a run's finished snapshot sets in other regions, for disaster recovery.
//!
//! `plan_copies` (pure) decides, from the run's snapshots, each instance's copy regions and
//! the copies already in each region, which copies to start and how far the others are. The
//! copy step runs under a lease of its own (`run_claim`), so two deliveries of the run's
//! message never copy the same snapshot twice, and it checks each destination first.
//! `ResourceLimitExceeded` (too many copies in flight into a region) is back-pressure: the
//! step stops starting copies there and looks again later through the queue.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use chrono::{Duration, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::parse_regions;
use crate::dispatch::{TAG_INSTANCE_ID, TAG_RUN_ID};
use crate::error::{aws, Error};
use crate::fleet;
use crate::handler::App;
use crate::job::{CopyJob, Envelope, Job, RetentionJob};
use crate::outcome::SnapshotFacts;
use crate::retention_run::TAG_SOURCE_SNAPSHOT;
use crate::run_claim::{self, Claim, RunMarkerStore};
use crate::track;

pub const TAG_SOURCE_REGION: &str = "ConsistentSnapshot:SourceRegion";
pub const TAG_COPY_REGIONS: &str = "ConsistentSnapshot:CopyRegions";

/// A copy already in a destination region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCopy {
    pub source_snapshot_id: String,
    pub snapshot_id: String,
    pub state: String,
}

/// What the copy step does now, and where the copies stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyPlan {
    /// (region, source snapshot) pairs to copy now.
    pub to_start: Vec<(String, String)>,
    /// Copies still pending, by region.
    pub pending: BTreeMap<String, usize>,
    pub completed: BTreeMap<String, usize>,
    /// Copies that ended in `error`: `region/copy (source)`.
    pub failed: Vec<String>,
    /// Instances whose copy-region override cannot be read: nothing of theirs is copied.
    pub invalid: Vec<String>,
}

impl CopyPlan {
    /// Every copy exists and is final.
    pub fn is_final(&self) -> bool {
        self.to_start.is_empty() && self.pending.values().all(|n| *n == 0)
    }
}

/// The regions an instance's sets are copied to: its override tag, else the configured ones.
pub fn copy_regions_of(
    tags: &BTreeMap<String, String>,
    configured: &[String],
    home: &str,
) -> Result<Vec<String>, String> {
    match tags.get(TAG_COPY_REGIONS) {
        None => Ok(configured.to_vec()),
        Some(value) => {
            let regions = parse_regions(value)
                .map_err(|why| format!("tag {TAG_COPY_REGIONS}={value:?}: {why}"))?;
            Ok(regions.into_iter().filter(|r| r != home).collect())
        }
    }
}

/// Decides which copies to start. `sources` are the run's snapshots with the regions their
/// instance's sets go to (or why that cannot be read); only `completed` ones are copied.
pub fn plan_copies(
    sources: &[(SnapshotFacts, Result<Vec<String>, String>)],
    existing: &BTreeMap<String, Vec<ExistingCopy>>,
) -> CopyPlan {
    let mut plan = CopyPlan::default();
    let mut invalid = BTreeSet::new();
    for (source, regions) in sources {
        let regions = match regions {
            Ok(regions) => regions,
            Err(why) => {
                let instance = source
                    .tags
                    .get(TAG_INSTANCE_ID)
                    .cloned()
                    .unwrap_or_default();
                invalid.insert(format!("{instance}: {why}"));
                continue;
            }
        };
        for region in regions {
            let copy = existing.get(region).and_then(|copies| {
                copies
                    .iter()
                    .find(|c| c.source_snapshot_id == source.snapshot_id)
            });
            match copy {
                None if source.state == "completed" => plan
                    .to_start
                    .push((region.clone(), source.snapshot_id.clone())),
                // Not completed yet: copied once it is; a failed snapshot is not copied.
                None if source.state == "pending" => {
                    *plan.pending.entry(region.clone()).or_default() += 1
                }
                None => {}
                Some(c) if c.state == "completed" => {
                    *plan.completed.entry(region.clone()).or_default() += 1
                }
                Some(c) if c.state == "error" => plan.failed.push(format!(
                    "{region}/{} (copy of {})",
                    c.snapshot_id, source.snapshot_id
                )),
                Some(_) => *plan.pending.entry(region.clone()).or_default() += 1,
            }
        }
    }
    plan.invalid = invalid.into_iter().collect();
    plan
}

/// The copy step's result, logged once per run.
#[derive(Debug, Clone, Serialize)]
pub struct CopySummary {
    pub run_id: String,
    pub started_now: usize,
    pub completed: BTreeMap<String, usize>,
    pub pending: BTreeMap<String, usize>,
    pub failed: Vec<String>,
    pub invalid: Vec<String>,
    pub timed_out: bool,
}

impl App {
    /// One pass of the copy step; see the module documentation.
    ///
    /// Each pass queues the next one before it works, so a pass stopped half-way still has a
    /// successor; and only one message per pass goes on (`claim_copy_pass`), so duplicate
    /// deliveries do not multiply the step's messages.
    pub(crate) async fn copy_job(
        &self,
        job: CopyJob,
        lease_until: chrono::DateTime<Utc>,
        message_id: &str,
    ) -> Result<(), Error> {
        let store = RunMarkerStore::new(&self.ssm, &self.config.managed_by, &job.run_id);
        let claim = run_claim::decide_copy(&store.read().await?, Utc::now());
        if matches!(claim, Claim::Dispatched | Claim::Reported) {
            info!(run_id = %job.run_id, "copies already final (a duplicate delivery)");
            return Ok(());
        }
        let token = if message_id.is_empty() {
            store.token.clone()
        } else {
            message_id.to_string()
        };
        if !store.claim_copy_pass(job.attempt, &token).await? {
            info!(run_id = %job.run_id, pass = job.attempt, "copy pass already taken by another message");
            return Ok(());
        }
        self.requeue(Job::Copy(job.clone().next())).await?;
        let Claim::Take { epoch } = claim else {
            // Another pass is still working; the successor looks again.
            return Ok(());
        };
        if !store.take_copy_lease(epoch, lease_until).await? {
            return Ok(());
        }
        let pass = self.copy_pass(&job).await;
        // Given back at once: the next pass, by this message or a duplicate, need not wait.
        store.drop_copy_lease(epoch).await?;
        let (plan, started, limited) = pass?;
        let timed_out = Utc::now() > job.deadline;
        if (plan.is_final() && started == 0 && !limited) || timed_out {
            self.enqueue(&[Envelope::new(Job::Retention(RetentionJob {
                run_id: job.run_id.clone(),
                deleted_before: 0,
            }))])
            .await?;
            if store.mark_copied().await? {
                let summary = CopySummary {
                    run_id: job.run_id.clone(),
                    started_now: started,
                    completed: plan.completed.clone(),
                    pending: plan.pending.clone(),
                    failed: plan.failed.clone(),
                    invalid: plan.invalid.clone(),
                    timed_out,
                };
                let text = serde_json::to_string(&summary).unwrap_or_default();
                let done: usize = plan.completed.values().sum();
                let pending: usize = plan.pending.values().sum();
                self.emit_metrics(
                    &[
                        ("SnapshotsCopied", done),
                        ("CopiesFailed", plan.failed.len() + plan.invalid.len()),
                        ("CopiesTimedOut", if timed_out { pending } else { 0 }),
                    ],
                    &[("RunId", &job.run_id), ("Event", "copies")],
                );
                if plan.failed.is_empty() && plan.invalid.is_empty() && !timed_out {
                    info!(run_id = %job.run_id, copies = %text, "copies: {done} completed");
                } else {
                    warn!(run_id = %job.run_id, copies = %text, "copies need attention: {done} completed, {} failed, {} not readable, timed out: {timed_out}", plan.failed.len(), plan.invalid.len());
                }
            }
            return Ok(());
        }
        info!(run_id = %job.run_id, started, limited, pending = plan.pending.values().sum::<usize>(), "copies in progress");
        Ok(())
    }

    /// Reads the run's snapshots and copies, starts the missing copies; answers the plan, how
    /// many copies were started and whether a region's copy limit was met.
    async fn copy_pass(&self, job: &CopyJob) -> Result<(CopyPlan, usize, bool), Error> {
        let snapshots: Vec<SnapshotFacts> = track::run_snapshots(&self.ec2, &job.run_id, None)
            .await?
            .into_iter()
            .filter(|s| s.tags.contains_key(TAG_INSTANCE_ID))
            .collect();
        let facts = self
            .instances_named_on(
                snapshots
                    .iter()
                    .filter_map(|s| s.tags.get(TAG_INSTANCE_ID).map(String::as_str)),
            )
            .await?;
        let sources: Vec<(SnapshotFacts, Result<Vec<String>, String>)> = snapshots
            .into_iter()
            .map(|s| {
                let tags = s
                    .tags
                    .get(TAG_INSTANCE_ID)
                    .and_then(|id| facts.get(id))
                    .map(|f| f.tags.clone())
                    .unwrap_or_default();
                let regions =
                    copy_regions_of(&tags, &self.config.copy_regions, &self.config.region);
                (s, regions)
            })
            .collect();
        let regions: BTreeSet<String> = sources
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flatten()
            .cloned()
            .collect();
        let mut existing = BTreeMap::new();
        for region in &regions {
            existing.insert(
                region.clone(),
                copies_in(&self.ec2_in(region), region, &job.run_id).await?,
            );
        }
        let plan = plan_copies(&sources, &existing);
        let by_id: BTreeMap<&str, &SnapshotFacts> = sources
            .iter()
            .map(|(s, _)| (s.snapshot_id.as_str(), s))
            .collect();
        let mut started = 0;
        let mut limited: BTreeSet<String> = BTreeSet::new();
        for (region, source_id) in &plan.to_start {
            if limited.contains(region) {
                continue;
            }
            let Some(source) = by_id.get(source_id.as_str()) else {
                continue;
            };
            match self.start_copy(region, source).await {
                Ok(copy_id) => {
                    info!(run_id = %job.run_id, region = %region, source = %source_id, copy = %copy_id, "copy started");
                    started += 1;
                }
                Err(err) if err.aws_code() == Some("ResourceLimitExceeded") => {
                    info!(run_id = %job.run_id, region = %region, "copy limit of the region reached: the rest waits for the next pass");
                    limited.insert(region.clone());
                }
                // Throttled, or no answer: whether the copy exists, the next pass will see.
                Err(err) => {
                    warn!(run_id = %job.run_id, region = %region, source = %source_id, error = %err, "copy not confirmed: the next pass checks the destination");
                    limited.insert(region.clone());
                }
            }
        }
        Ok((plan, started, !limited.is_empty()))
    }

    async fn start_copy(&self, region: &str, source: &SnapshotFacts) -> Result<String, Error> {
        let mut tags: Vec<Tag> = source
            .tags
            .iter()
            .filter(|(k, _)| !k.starts_with("aws:"))
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        tags.push(
            Tag::builder()
                .key(TAG_SOURCE_SNAPSHOT)
                .value(&source.snapshot_id)
                .build(),
        );
        tags.push(
            Tag::builder()
                .key(TAG_SOURCE_REGION)
                .value(&self.config.region)
                .build(),
        );
        let name = source.tags.get("Name").map(String::as_str).unwrap_or("-");
        let run = source
            .tags
            .get(TAG_RUN_ID)
            .map(String::as_str)
            .unwrap_or("-");
        let mut request = self
            .ec2_in(region)
            .copy_snapshot()
            .source_region(&self.config.region)
            .source_snapshot_id(&source.snapshot_id)
            .description(format!(
                "Copy of {} ({name}) from {}, consistent-snapshot run {run}",
                source.snapshot_id, self.config.region
            ))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(tags))
                    .build(),
            );
        if let Some(key) = self.config.copy_kms_key_ids.get(region) {
            request = request.encrypted(true).kms_key_id(key);
        }
        // CopySnapshot takes no idempotency token: a retry after a lost answer would make a
        // second copy. No SDK retry, then; the next pass looks at the destination first.
        let out = request
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default()
                    .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| {
                aws(
                    "CopySnapshot",
                    format!("{} to {region}", source.snapshot_id),
                    e,
                )
            })?;
        Ok(out.snapshot_id().unwrap_or_default().to_string())
    }
}

/// The copies of a run's snapshots in one region (found by the run id and source tags).
async fn copies_in(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    run_id: &str,
) -> Result<Vec<ExistingCopy>, Error> {
    let subject = format!("copies of run {run_id} in {region}");
    track::own_snapshots_tagged(ec2, TAG_RUN_ID, run_id, &subject, |s| {
        let tags = fleet::tag_map(s.tags());
        Some(ExistingCopy {
            source_snapshot_id: tags.get(TAG_SOURCE_SNAPSHOT)?.clone(),
            snapshot_id: s.snapshot_id()?.to_string(),
            state: s
                .state()
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
        })
    })
    .await
}

/// How long the copy step may take before what is left is reported as timed out.
pub fn copy_deadline(completion_timeout_seconds: u32) -> chrono::DateTime<Utc> {
    Utc::now() + Duration::seconds(i64::from(completion_timeout_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: &str, state: &str) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            volume_id: "vol-1".into(),
            state: state.into(),
            tags: [(TAG_INSTANCE_ID.to_string(), "i-1".to_string())].into(),
        }
    }

    fn copy(source: &str, state: &str) -> ExistingCopy {
        ExistingCopy {
            source_snapshot_id: source.into(),
            snapshot_id: format!("copy-{source}"),
            state: state.into(),
        }
    }

    #[test]
    fn copies_start_once_per_region_and_only_from_completed_snapshots() {
        let regions = Ok(vec!["eu-west-1".to_string(), "us-west-2".to_string()]);
        let sources = vec![
            (source("snap-a", "completed"), regions.clone()),
            (source("snap-b", "completed"), regions.clone()),
            (source("snap-c", "pending"), regions),
        ];
        let existing: BTreeMap<String, Vec<ExistingCopy>> = [
            (
                "eu-west-1".to_string(),
                vec![copy("snap-a", "completed"), copy("snap-b", "pending")],
            ),
            ("us-west-2".to_string(), vec![copy("snap-a", "error")]),
        ]
        .into();
        let plan = plan_copies(&sources, &existing);
        assert_eq!(
            plan.to_start,
            vec![("us-west-2".to_string(), "snap-b".to_string())]
        );
        assert_eq!(plan.completed.get("eu-west-1"), Some(&1));
        // eu-west-1: snap-b's copy is pending and snap-c is not completed yet.
        assert_eq!(plan.pending.get("eu-west-1"), Some(&2));
        assert_eq!(plan.pending.get("us-west-2"), Some(&1));
        assert_eq!(
            plan.failed,
            vec!["us-west-2/copy-snap-a (copy of snap-a)".to_string()]
        );
        assert!(!plan.is_final());
        // Everything copied and completed: final, nothing to start.
        let existing: BTreeMap<String, Vec<ExistingCopy>> =
            [("eu-west-1".to_string(), vec![copy("snap-a", "completed")])].into();
        let plan = plan_copies(
            &[(source("snap-a", "completed"), Ok(vec!["eu-west-1".into()]))],
            &existing,
        );
        assert!(plan.is_final() && plan.to_start.is_empty());
    }

    #[test]
    fn an_instance_tag_overrides_the_regions_and_a_bad_one_copies_nothing() {
        let configured = vec!["eu-west-1".to_string()];
        let mut tags = BTreeMap::new();
        assert_eq!(
            copy_regions_of(&tags, &configured, "us-east-1"),
            Ok(configured.clone())
        );
        tags.insert(
            TAG_COPY_REGIONS.to_string(),
            "ap-southeast-2, us-east-1".into(),
        );
        assert_eq!(
            copy_regions_of(&tags, &configured, "us-east-1"),
            Ok(vec!["ap-southeast-2".to_string()])
        );
        tags.insert(TAG_COPY_REGIONS.to_string(), "mars".into());
        let bad = copy_regions_of(&tags, &configured, "us-east-1");
        assert!(bad.as_ref().is_err_and(|e| e.contains("mars")));
        let plan = plan_copies(&[(source("snap-a", "completed"), bad)], &BTreeMap::new());
        assert!(plan.to_start.is_empty());
        assert_eq!(plan.invalid.len(), 1);
    }
}
