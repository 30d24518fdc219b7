//! Retention against AWS: read this deployment's snapshots, the AMIs and the instances of
//! every region it uses, plan with `retention::plan`, and delete what the plan says, logging
//! each deletion with its reason. At the end of every run, and on demand.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::copy::copy_regions_of;
use crate::dispatch::{TAG_INSTANCE_ID, TAG_MANAGED_BY};
use crate::error::{aws, Error};
use crate::fleet;
use crate::handler::{to_json, App};
use crate::job::{Job, RetentionJob};
use crate::retention::{
    self, instance_state, Action, Policy, RegionPlan, SnapshotInfo, TagInterner,
};
use crate::run_claim::RunMarkerStore;
use crate::track;

pub const TAG_SOURCE_SNAPSHOT: &str = "ConsistentSnapshot:SourceSnapshotId";

/// What applying the plans did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionOutcome {
    pub dry_run: bool,
    pub plans: Vec<RegionPlan>,
    /// `region/snapshot`: deleted now.
    pub deleted: Vec<String>,
    /// Planned for deletion but kept, with why (an AMI uses it, …).
    pub kept: Vec<String>,
    /// Deletions that failed; tried again with the next run.
    pub failed: Vec<String>,
    /// Deletions not tried because the invocation's time ran out: the next pass does them.
    pub unfinished: usize,
    /// Snapshots deleted by earlier passes of the same retention.
    pub deleted_before: usize,
}

/// The most sets an on-demand answer lists (Lambda answers at most 6 MB), and the most a log
/// line lists (CloudWatch Logs keeps events of at most 256 KB). Every decision to delete is
/// logged on a line of its own whatever the size of the plan.
pub const ANSWER_SETS: usize = 2_000;
pub const LOG_LINE_SETS: usize = 200;

/// When deleting stops: 10 s before the invocation's deadline (a quarter of the time left when
/// that is less), leaving time to queue the next pass and to answer.
fn stop_time(deadline: DateTime<Utc>) -> DateTime<Utc> {
    let left = deadline - Utc::now();
    deadline - std::cmp::min(Duration::seconds(10), left / 4)
}

impl RetentionOutcome {
    fn sets(&self) -> usize {
        self.plans
            .iter()
            .map(|p| p.instances.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// The outcome as JSON: the whole plan when it has at most `max_sets` sets; above that,
    /// each region's counts, the first `max_sets` sets to delete and the first `max_sets`
    /// snapshots of each list, with how many were left out.
    pub fn to_bounded_json(&self, max_sets: usize) -> Value {
        if self.sets() <= max_sets {
            return to_json(self);
        }
        let regions: Vec<Value> = self
            .plans
            .iter()
            .map(|p| {
                json!({
                    "region": p.region,
                    "instances": p.instances.len(),
                    "sets": p.instances.values().map(Vec::len).sum::<usize>(),
                    "sets_to_delete": p.deletions().count(),
                    "snapshots_to_delete": p.snapshots_to_delete(),
                    "unattributed": p.unattributed.len(),
                })
            })
            .collect();
        let to_delete: usize = self.plans.iter().map(|p| p.deletions().count()).sum();
        let deletions: Vec<Value> = self
            .plans
            .iter()
            .flat_map(|p| {
                p.deletions().map(move |(instance_id, set)| {
                    json!({
                        "region": p.region,
                        "instance_id": instance_id,
                        "run_id": set.run_id,
                        "snapshots": set.snapshots,
                        "reason": set.reason,
                    })
                })
            })
            .take(max_sets)
            .collect();
        let first =
            |list: &[String]| -> Vec<String> { list.iter().take(max_sets).cloned().collect() };
        json!({
            "dry_run": self.dry_run,
            "plan_summary": regions,
            "deletions_not_listed": to_delete - deletions.len(),
            "deletions": deletions,
            "deleted_count": self.deleted.len(),
            "deleted": first(&self.deleted),
            "kept_count": self.kept.len(),
            "kept": first(&self.kept),
            "failed_count": self.failed.len(),
            "failed": first(&self.failed),
            "unfinished": self.unfinished,
        })
    }

    /// The metrics of an applied retention: snapshots deleted, and planned but kept.
    pub fn metric_counts(&self) -> [(&'static str, usize); 2] {
        [
            ("SnapshotsDeleted", self.deleted_before + self.deleted.len()),
            ("DeletionsHeldBack", self.kept.len()),
        ]
    }

    pub fn summary_line(&self) -> String {
        let planned: usize = self.plans.iter().map(RegionPlan::snapshots_to_delete).sum();
        let sets = self.sets();
        if self.dry_run {
            return format!(
                "retention (dry run): {sets} sets in {} region(s), {planned} snapshots would be deleted",
                self.plans.len()
            );
        }
        format!(
            "retention: {sets} sets in {} region(s), {} snapshots deleted, {} kept although planned, {} failed, {} left for the next pass",
            self.plans.len(),
            self.deleted_before + self.deleted.len(),
            self.kept.len(),
            self.failed.len(),
            self.unfinished
        )
    }
}

impl App {
    /// An EC2 client for `region` with everything else as configured (endpoint included).
    pub(crate) fn ec2_in(&self, region: &str) -> aws_sdk_ec2::Client {
        if region == self.config.region || self.config.region.is_empty() {
            return self.ec2.clone();
        }
        let config = self
            .ec2
            .config()
            .to_builder()
            .region(aws_sdk_ec2::config::Region::new(region.to_string()))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// The regions retention looks at: the function's own, then the copy regions, then any
    /// region a tagged instance's `ConsistentSnapshot:CopyRegions` adds.
    async fn retention_regions(&self) -> Result<Vec<String>, Error> {
        let mut regions: Vec<String> = std::iter::once(self.config.region.clone())
            .chain(self.config.copy_regions.iter().cloned())
            .collect();
        for instance in fleet::discover(&self.ec2, &self.config, None).await? {
            let extra =
                copy_regions_of(&instance.tags, &[], &self.config.region).unwrap_or_default();
            for region in extra {
                if !regions.contains(&region) {
                    regions.push(region);
                }
            }
        }
        Ok(regions)
    }

    /// Plans retention in every region.
    pub async fn plan_retention(&self) -> Result<Vec<RegionPlan>, Error> {
        let now = Utc::now();
        let regions = self.retention_regions().await?;
        let mut per_region: Vec<(String, Vec<SnapshotInfo>)> = Vec::new();
        for region in &regions {
            let ec2 = self.ec2_in(region);
            let mut snapshots = managed_snapshots(&ec2, region, &self.config.managed_by).await?;
            let images = images_by_snapshot(&ec2, region).await?;
            for s in &mut snapshots {
                s.used_by_images = images.get(&s.snapshot_id).cloned().unwrap_or_default();
            }
            per_region.push((region.clone(), snapshots));
        }
        // A source snapshot with a copy still pending anywhere is kept.
        let mut copying: BTreeMap<String, usize> = BTreeMap::new();
        for (_, snapshots) in per_region.iter().skip(1) {
            for copy in snapshots.iter().filter(|s| s.state == "pending") {
                if let Some(source) = copy.tags.get(TAG_SOURCE_SNAPSHOT) {
                    *copying.entry(source.to_string()).or_default() += 1;
                }
            }
        }
        if let Some((_, home)) = per_region.first_mut() {
            for s in home.iter_mut() {
                s.copies_in_progress = copying.get(&s.snapshot_id).copied().unwrap_or(0);
            }
        }
        let ids: BTreeSet<String> = per_region
            .iter()
            .flat_map(|(_, snapshots)| snapshots.iter())
            .filter_map(|s| s.tags.get(TAG_INSTANCE_ID).map(str::to_string))
            .collect();
        let facts = self
            .instances_named_on(ids.iter().map(String::as_str))
            .await?;
        let target = (
            self.config.target_tag_key.as_str(),
            self.config.target_tag_value.as_str(),
        );
        let mut plans = Vec::new();
        for (i, (region, snapshots)) in per_region.iter().enumerate() {
            let home = i == 0;
            let count = if home {
                self.config.retain_count
            } else {
                self.config.copy_retain_count
            };
            let policy = Policy {
                managed_by: self.config.managed_by.clone(),
                retain_count: count,
                retain_days: self.config.retain_days,
                keep_orphans: self.config.keep_orphaned_backups,
            };
            let instances = ids
                .iter()
                .map(|id| {
                    let state =
                        instance_state(facts.get(id), target, count, self.config.retain_days, home);
                    (id.clone(), state)
                })
                .collect();
            plans.push(retention::plan(region, snapshots, &instances, &policy, now));
        }
        Ok(plans)
    }

    /// Deletes what the plans say, one snapshot at a time, each logged with its reason.
    ///
    /// Deletions stop at `stop_at`: those left are counted in `unfinished`, for the next pass
    /// (deleting is slow at scale: EC2 allows about 5 DeleteSnapshot calls a second).
    pub async fn apply_retention(
        &self,
        plans: Vec<RegionPlan>,
        dry_run: bool,
        stop_at: DateTime<Utc>,
    ) -> RetentionOutcome {
        let mut outcome = RetentionOutcome {
            dry_run,
            ..RetentionOutcome::default()
        };
        let mut tried = 0usize;
        for plan in &plans {
            let ec2 = self.ec2_in(&plan.region);
            for (instance_id, set) in plan.deletions() {
                for snapshot_id in &set.snapshots {
                    let at = format!("{}/{snapshot_id}", plan.region);
                    if dry_run {
                        info!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, reason = %set.reason, "would delete (dry run)");
                        continue;
                    }
                    // At least one deletion a pass, however short: every pass makes progress.
                    if tried > 0 && Utc::now() >= stop_at {
                        outcome.unfinished += 1;
                        continue;
                    }
                    tried += 1;
                    match ec2.delete_snapshot().snapshot_id(snapshot_id).send().await {
                        Ok(_) => {
                            info!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, reason = %set.reason, "snapshot deleted");
                            outcome.deleted.push(at);
                        }
                        Err(err) => {
                            let code = err.as_service_error().and_then(|e| {
                                aws_sdk_ec2::error::ProvideErrorMetadata::code(e)
                                    .map(str::to_string)
                            });
                            match code.as_deref() {
                                Some("InvalidSnapshot.NotFound") => {
                                    info!(region = %plan.region, snapshot_id = %snapshot_id, "already deleted")
                                }
                                Some("InvalidSnapshot.InUse") => {
                                    warn!(region = %plan.region, instance_id, snapshot_id = %snapshot_id, "kept: in use (by an AMI)");
                                    outcome.kept.push(format!("{at}: in use"));
                                }
                                _ => {
                                    let err = aws(
                                        "DeleteSnapshot",
                                        format!(
                                            "{snapshot_id} of {instance_id} in {}",
                                            plan.region
                                        ),
                                        err,
                                    );
                                    warn!(error = %err, "snapshot not deleted");
                                    outcome.failed.push(format!("{at}: {err}"));
                                }
                            }
                        }
                    }
                }
            }
            for (instance_id, sets) in &plan.instances {
                for set in sets
                    .iter()
                    .filter(|s| s.action == Action::Keep && s.reason.contains("AMI"))
                {
                    warn!(region = %plan.region, instance_id, run_id = %set.run_id, reason = %set.reason, "set kept: used by an AMI");
                    outcome
                        .kept
                        .push(format!("{}/{}: {}", plan.region, set.run_id, set.reason));
                }
            }
        }
        outcome.plans = plans;
        outcome
    }

    /// `{"action":"retention","dry_run":…}`: the plan, and what was deleted.
    /// Deletions stop shortly before `deadline`; the answer says how many are left.
    pub(crate) async fn on_demand_retention(
        &self,
        dry_run: bool,
        deadline: DateTime<Utc>,
    ) -> Result<Value, Error> {
        let plans = self.plan_retention().await?;
        let stop_at = stop_time(deadline);
        let outcome = self.apply_retention(plans, dry_run, stop_at).await;
        if !dry_run {
            self.emit_metrics(&outcome.metric_counts(), &[("Event", "retention")]);
        }
        info!(dry_run, "{}", outcome.summary_line());
        Ok(outcome.to_bounded_json(ANSWER_SETS))
    }

    /// The run's last step: retention in every region, then the run's markers are released.
    /// One pass: plans, deletes until a few seconds before `deadline`, and if deletions are
    /// left, queues the next pass (which plans again, so nothing is deleted twice and nothing
    /// the next plan keeps is deleted). The run's retention is over with the last pass.
    pub(crate) async fn retention_job(
        &self,
        job: RetentionJob,
        deadline: DateTime<Utc>,
    ) -> Result<(), Error> {
        let plans = self.plan_retention().await?;
        let stop_at = stop_time(deadline);
        let mut outcome = self.apply_retention(plans, false, stop_at).await;
        outcome.deleted_before = job.deleted_before;
        if outcome.unfinished > 0 {
            info!(run_id = %job.run_id, deleted = outcome.deleted.len(), left = outcome.unfinished, "retention continues in the next pass");
            let deleted_before = job.deleted_before + outcome.deleted.len();
            return self
                .requeue(Job::Retention(RetentionJob {
                    deleted_before,
                    ..job
                }))
                .await;
        }
        if !outcome.failed.is_empty() {
            return Err(Error::Retention(format!(
                "run {}: {} deletion(s) failed: {}",
                job.run_id,
                outcome.failed.len(),
                outcome.failed.join("; ")
            )));
        }
        let store = RunMarkerStore::new(&self.ssm, &self.config.managed_by, &job.run_id);
        if store.mark_retained().await? {
            self.emit_metrics(
                &outcome.metric_counts(),
                &[("RunId", &job.run_id), ("Event", "retention")],
            );
            let summary = outcome.to_bounded_json(LOG_LINE_SETS).to_string();
            info!(run_id = %job.run_id, retention = %summary, "{}", outcome.summary_line());
        }
        self.release_markers(&store).await;
        Ok(())
    }
}

/// The tags retention and the fleet report read; a snapshot's other tags (`Name`, the VSS
/// document's `AwsVssConfig`, an operator's own) are not kept, which keeps a plan over
/// 100,000 snapshots small.
pub const TAGS_READ: [&str; 7] = [
    TAG_MANAGED_BY,
    TAG_INSTANCE_ID,
    crate::dispatch::TAG_RUN_ID,
    "AppConsistent",
    "Device",
    TAG_SOURCE_SNAPSHOT,
    crate::copy::TAG_SOURCE_REGION,
];

/// This deployment's snapshots in one region (owner self, tagged with its `ManagedBy`).
pub(crate) async fn managed_snapshots(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    managed_by: &str,
) -> Result<Vec<SnapshotInfo>, Error> {
    let subject = format!("{managed_by} in {region}");
    let mut interner = TagInterner::default();
    track::own_snapshots_tagged(ec2, TAG_MANAGED_BY, managed_by, &subject, |s| {
        Some(SnapshotInfo {
            snapshot_id: s.snapshot_id()?.to_string(),
            state: s
                .state()
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
            start_time: chrono::DateTime::from_timestamp(s.start_time()?.secs(), 0)
                .unwrap_or_default(),
            tags: interner.tags(
                s.tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?, t.value()?)))
                    .filter(|(k, _)| TAGS_READ.contains(k)),
            ),
            used_by_images: vec![],
            copies_in_progress: 0,
        })
    })
    .await
}

/// Which of the account's own AMIs use which snapshots, in one region.
async fn images_by_snapshot(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let mut pages = ec2
        .describe_images()
        .owners("self")
        .max_results(1000)
        .into_paginator()
        .send();
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws("DescribeImages", format!("own AMIs in {region}"), e))?;
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
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::{SetDecision, SetKind};

    fn outcome(instances: usize, sets: usize) -> RetentionOutcome {
        let set = |i: usize, k: usize| SetDecision {
            run_id: format!("run-{k:02}"),
            kind: SetKind::Consistent,
            started_at: Utc::now(),
            snapshots: vec![format!("snap-{i}-{k}")],
            action: if k >= 2 { Action::Delete } else { Action::Keep },
            reason: "older than the newest 2 consistent sets".into(),
        };
        let plan = RegionPlan {
            region: "us-east-1".into(),
            instances: (0..instances)
                .map(|i| (format!("i-{i:04}"), (0..sets).map(|k| set(i, k)).collect()))
                .collect(),
            unattributed: vec![],
        };
        RetentionOutcome {
            deleted: plan
                .deletions()
                .flat_map(|(_, s)| s.snapshots.iter().map(|id| format!("us-east-1/{id}")))
                .collect(),
            plans: vec![plan],
            ..RetentionOutcome::default()
        }
    }

    #[test]
    fn a_small_outcome_is_answered_whole() {
        let small = outcome(3, 4);
        assert_eq!(small.to_bounded_json(12), to_json(&small));
    }

    #[test]
    fn a_large_outcome_is_answered_with_counts_and_the_first_deletions() {
        // 100 instances × 4 sets, 2 of them to delete each: 200 sets to delete.
        let large = outcome(100, 4);
        let answer = large.to_bounded_json(50);
        assert!(answer.get("plans").is_none());
        assert_eq!(answer["plan_summary"][0]["sets"], json!(400));
        assert_eq!(answer["plan_summary"][0]["sets_to_delete"], json!(200));
        assert_eq!(answer["plan_summary"][0]["snapshots_to_delete"], json!(200));
        assert_eq!(answer["deletions"].as_array().map(Vec::len), Some(50));
        assert_eq!(answer["deletions_not_listed"], json!(150));
        assert_eq!(answer["deletions"][0]["instance_id"], json!("i-0000"));
        assert_eq!(answer["deleted_count"], json!(200));
        assert_eq!(answer["deleted"].as_array().map(Vec::len), Some(50));
        assert!(answer.to_string().len() < 20_000);
    }
}
