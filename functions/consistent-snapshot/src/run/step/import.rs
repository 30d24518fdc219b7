//! `{"action":"import","dry_run":…,"managed_by":…}`: records the sets a deployment made before
//! the catalog (found by their `ManagedBy` tag in the home region and the copy regions) as
//! *imported* (`run::plan::import`). A dry run answers what it would record.

use chrono::Utc;
use serde_json::{json, Value};
use tracing::info;

use crate::app::App;
use crate::aws::snapshots;
use crate::error::Error;
use crate::model::requests::ImportRequest;
use crate::model::tags::TAG_MANAGED_BY;
use crate::run::plan::import::plan_import;

/// The most sets and left-out snapshots an answer names (it counts them all).
const ANSWER_ITEMS: usize = 200;

pub async fn on_demand(app: &App, request: ImportRequest) -> Result<Value, Error> {
    let dry_run = request.dry_run.unwrap_or(app.config.dry_run);
    let managed_by = request
        .managed_by
        .clone()
        .unwrap_or_else(|| app.config.managed_by.clone());
    let index = app.aws.catalog.index().await?;
    let home = app.config.region.as_str();
    let tag = (TAG_MANAGED_BY, managed_by.as_str());
    let subject = format!("{managed_by} in {home}");
    let home_snapshots = snapshots::own_tagged(&app.aws.ec2, tag, None, &subject, Some).await?;
    let mut copy_snapshots = Vec::new();
    for region in &app.config.copy_regions {
        let subject = format!("{managed_by} in {region}");
        let found =
            snapshots::own_tagged(&app.aws.ec2_in(region), tag, None, &subject, Some).await?;
        copy_snapshots.push((region.clone(), found));
    }
    let plan = plan_import((home, &home_snapshots), &copy_snapshots, &index, Utc::now());
    if !dry_run {
        app.aws.catalog.put_sets(&plan.sets, &plan.copies).await?;
    }
    info!(dry_run, managed_by = %managed_by, sets = plan.sets.len(), copies = plan.copies.len(), left_out = plan.left_out.len(), "import: {} set(s) and {} copies {}", plan.sets.len(), plan.copies.len(), if dry_run { "would be recorded" } else { "recorded as imported" });
    let named: Vec<Value> = plan
        .sets
        .iter()
        .take(ANSWER_ITEMS)
        .map(|s| {
            json!({
                "instance_id": s.instance_id,
                "run_id": s.run_id,
                "snapshots": s.snapshots.iter().map(|r| &r.snapshot_id).collect::<Vec<_>>(),
                "reason": s.reason,
            })
        })
        .collect();
    Ok(json!({
        "dry_run": dry_run,
        "managed_by": managed_by,
        "sets": plan.sets.len(),
        "copies": plan.copies.len(),
        "imported": named,
        "left_out": plan.left_out.iter().take(ANSWER_ITEMS).collect::<Vec<_>>(),
        "left_out_count": plan.left_out.len(),
    }))
}
