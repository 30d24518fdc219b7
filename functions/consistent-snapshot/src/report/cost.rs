//! `{"action":"cost","instance_ids"?}`: what each kept set costs, per instance and region,
//! from the EBS direct APIs (`model::cost` says how). The counts are kept in the catalog, so a
//! cost run counts only what is new since the last; a run that meets the invocation's end
//! answers what it has, says how many counts are left, and the next call goes on. Each
//! instance's totals are kept for the fleet report.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::app::{emit_metrics, App};
use crate::aws::ebs;
use crate::error::Error;
use crate::model::cost::{
    estimate, pairs_needed, CostCount, InstanceCost, LineageSnapshot, Pair, Prices,
};
use crate::model::state::SnapshotState;
use crate::model::stop_time;
use crate::model::tags::{TAG_DEVICE, TAG_INSTANCE_ID, TAG_RUN_ID};
use crate::retention::step::vouched_snapshots;

/// Sets listed per instance in an answer (the totals are whole).
const SETS_LISTED: usize = 100;
/// Pairs named in an answer among those that could not be counted.
const NOT_COUNTED_LISTED: usize = 50;

/// One set's cost in one region.
#[derive(Debug, Clone, Default, Serialize)]
struct SetCost {
    region: String,
    run_id: String,
    snapshots: usize,
    /// Billed in the standard tier.
    billed_bytes: u64,
    /// What deleting the set would free (an archived snapshot's whole size).
    unique_bytes: u64,
    /// Billed in the archive tier.
    archive_bytes: u64,
    archived: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    estimated: bool,
    monthly_cost: f64,
}

#[derive(Debug, Default)]
struct Tally {
    sets: BTreeMap<(String, String), SetCost>,
    snapshots: usize,
    costed: usize,
}

/// The cost run.
pub async fn on_demand(
    app: &App,
    only: Option<&[String]>,
    deadline: DateTime<Utc>,
) -> Result<Value, Error> {
    let stop_at = stop_time(Utc::now(), deadline);
    let prices = Prices {
        standard: f64::from(app.config.cost_micros_per_gb_month) / 1e6,
        archive: f64::from(app.config.archive_cost_micros_per_gb_month) / 1e6,
    };
    let regions: Vec<String> = std::iter::once(app.config.region.clone())
        .chain(app.config.copy_regions.iter().cloned())
        .collect();
    let index = app.aws.catalog.index().await?;
    let wanted: Option<BTreeSet<&str>> = only.map(|ids| ids.iter().map(String::as_str).collect());
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let (mut counted, mut reused, mut left, mut calls) = (0usize, 0usize, 0usize, 0usize);
    let mut not_counted: Vec<String> = Vec::new();
    let mut unreadable: Vec<String> = Vec::new();
    for region in &regions {
        let snapshots = match vouched_snapshots(app, region, &index, false).await {
            Ok((snapshots, _)) => snapshots,
            Err(err) => {
                warn!(region = %region, code = err.aws_code().unwrap_or("Unknown"), error = %err, "region not readable: its sets are not costed");
                unreadable.push(format!(
                    "{region} ({})",
                    err.aws_code().unwrap_or("Unknown")
                ));
                continue;
            }
        };
        // instance -> lineage (the volume's device) -> its completed snapshots.
        let mut lineages: BTreeMap<String, BTreeMap<String, Vec<LineageSnapshot>>> =
            BTreeMap::new();
        for s in snapshots
            .iter()
            .filter(|s| s.state == SnapshotState::Completed)
        {
            let (Some(instance), Some(run), Some(device)) =
                (s.tag(TAG_INSTANCE_ID), s.tag(TAG_RUN_ID), s.tag(TAG_DEVICE))
            else {
                continue;
            };
            if wanted.as_ref().is_some_and(|w| !w.contains(instance)) {
                continue;
            }
            lineages
                .entry(instance.to_string())
                .or_default()
                .entry(device.to_string())
                .or_default()
                .push(LineageSnapshot {
                    snapshot_id: s.snapshot_id.clone(),
                    run_id: run.to_string(),
                    start_time: s.start_time,
                    archived: s.archived,
                });
        }
        drop(snapshots);
        let ebs_client = app.aws.ebs_in(region);
        for (instance, mut devices) in lineages {
            let cached = app.aws.catalog.cost_counts(region, &instance).await?;
            let mut new: Vec<CostCount> = Vec::new();
            let tally = tallies.entry(instance.clone()).or_default();
            for lineage in devices.values_mut() {
                lineage.sort_by(|a, b| {
                    (a.start_time, &a.snapshot_id).cmp(&(b.start_time, &b.snapshot_id))
                });
                for pair in pairs_needed(lineage) {
                    if cached.contains_key(&pair) {
                        reused += 1;
                        continue;
                    }
                    if Utc::now() >= stop_at {
                        left += 1;
                        continue;
                    }
                    match ebs::count(&ebs_client, &pair).await {
                        Ok(c) => {
                            calls += c.calls;
                            counted += 1;
                            new.push(CostCount {
                                pair,
                                blocks: c.blocks,
                                block_size: c.block_size,
                            });
                        }
                        Err(err) => {
                            warn!(region = %region, instance_id = %instance, code = err.aws_code().unwrap_or("Unknown"), error = %err, "blocks not counted");
                            if !ebs::uncountable(&err) {
                                left += 1;
                            }
                            if not_counted.len() < NOT_COUNTED_LISTED {
                                not_counted.push(format!("{region}: {err}"));
                            }
                        }
                    }
                }
            }
            if !new.is_empty() {
                app.aws
                    .catalog
                    .put_cost_counts(region, &instance, &new)
                    .await?;
            }
            let block_size = new
                .first()
                .or_else(|| cached.values().next())
                .map(|c| c.block_size)
                .unwrap_or(512 * 1024);
            let counts: BTreeMap<Pair, u64> = cached
                .into_values()
                .chain(new)
                .map(|c| (c.pair, c.blocks))
                .collect();
            for lineage in devices.values() {
                tally.snapshots += lineage.len();
                for cost in estimate(lineage, &counts, block_size, prices) {
                    tally.costed += 1;
                    let set = tally
                        .sets
                        .entry((region.clone(), cost.run_id.clone()))
                        .or_insert_with(|| SetCost {
                            region: region.clone(),
                            run_id: cost.run_id.clone(),
                            ..SetCost::default()
                        });
                    set.snapshots += 1;
                    set.billed_bytes += cost.billed_bytes;
                    set.unique_bytes += cost.unique_bytes;
                    if cost.archived {
                        set.archive_bytes += cost.unique_bytes;
                    }
                    set.archived |= cost.archived;
                    set.estimated |= cost.estimated;
                    set.monthly_cost += cost.monthly_cost;
                }
            }
        }
    }
    let now = Utc::now();
    let mut instances: Vec<Value> = Vec::new();
    for (instance_id, tally) in tallies {
        let sets: Vec<&SetCost> = tally.sets.values().collect();
        let summary = InstanceCost {
            instance_id: instance_id.clone(),
            computed_at: now,
            standard_bytes: sets.iter().map(|s| s.billed_bytes).sum(),
            archive_bytes: sets.iter().map(|s| s.archive_bytes).sum(),
            monthly_cost: sets.iter().map(|s| s.monthly_cost).sum(),
            complete: tally.costed == tally.snapshots,
        };
        if let Err(err) = app.aws.catalog.put_instance_cost(&summary).await {
            warn!(instance_id = %instance_id, error = %err, "instance cost not recorded for the fleet report");
        }
        let mut listed: Vec<&SetCost> = sets.clone();
        listed.sort_by(|a, b| b.run_id.cmp(&a.run_id).then(a.region.cmp(&b.region)));
        instances.push(json!({
            "instance_id": instance_id,
            "standard_bytes": summary.standard_bytes,
            "archive_bytes": summary.archive_bytes,
            "monthly_cost": summary.monthly_cost,
            "complete": summary.complete,
            "sets_not_listed": listed.len().saturating_sub(SETS_LISTED),
            "sets": listed.into_iter().take(SETS_LISTED).collect::<Vec<_>>(),
        }));
    }
    emit_metrics(
        app,
        &[("CostPairsCounted", counted), ("CostPairsLeft", left)],
        &[("Event", "cost")],
    );
    info!(instances = instances.len(), counted, reused, left, calls, "cost estimated: {counted} block counts made ({calls} calls), {reused} reused from earlier runs, {left} left for the next call");
    Ok(json!({
        "prices_per_gb_month": {"standard": prices.standard, "archive": prices.archive},
        "instances": instances,
        "counted": counted,
        "reused": reused,
        "left": left,
        "not_counted": not_counted,
        "regions_unreadable": unreadable,
    }))
}
