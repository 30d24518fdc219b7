//! The fleet report against AWS: the tagged fleet and its readiness, this deployment's
//! snapshots and copies, and the VSS commands that failed, read once and handed to
//! `fleet_report::build`. `{"action":"report"}`, and the hourly report schedule.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use serde_json::Value;
use tracing::{info, warn};

use crate::copy::copy_regions_of;
use crate::error::Error;
use crate::fleet::{self, preflight};
use crate::fleet_report::{build, FailedInvocation, FleetReport, ReportInput, RpoStatus};
use crate::handler::{to_json, App};
use crate::history;
use crate::outcome::{failure_reason, is_final_status};
use crate::retention_run::managed_snapshots;

/// SSM keeps command history for 30 days.
const SSM_HISTORY_DAYS: i64 = 30;

impl App {
    /// Reads the fleet and builds its report.
    pub async fn fleet_report(&self) -> Result<FleetReport, Error> {
        let now = Utc::now();
        let instances = fleet::discover(&self.ec2, &self.config, None).await?;
        let running: Vec<String> = instances
            .iter()
            .filter(|i| i.state == "running")
            .map(|i| i.instance_id.clone())
            .collect();
        let agents = fleet::agents(&self.ssm, &running).await?;
        let home = &self.config.region;
        let copy_regions: BTreeMap<String, Result<Vec<String>, String>> = instances
            .iter()
            .map(|i| {
                let regions = copy_regions_of(&i.tags, &self.config.copy_regions, home);
                (i.instance_id.clone(), regions)
            })
            .collect();
        let managed_by = self.config.managed_by.as_str();
        let snapshots = managed_snapshots(&self.ec2, home, managed_by).await?;
        let mut copies = BTreeMap::new();
        let regions = copy_regions.values().flat_map(|r| r.iter().flatten());
        for region in regions {
            if !copies.contains_key(region) {
                let found = managed_snapshots(&self.ec2_in(region), region, managed_by).await?;
                copies.insert(region.clone(), found);
            }
        }
        let failures = self.recent_failures(now).await?;
        let input = ReportInput {
            now,
            rpo_hours: self.config.rpo_hours,
            managed_by,
            instances: instances
                .iter()
                .map(|i| {
                    let skip = preflight(i, agents.get(&i.instance_id), &self.config).err();
                    (i, skip)
                })
                .collect(),
            snapshots: &snapshots,
            copy_regions,
            copies: &copies,
            failures: &failures,
        };
        Ok(build(&input))
    }

    /// The VSS commands of the last days (twice the RPO, at least a week, at most what SSM
    /// keeps) that did not succeed, per instance, with the document's own reason. Only failed
    /// commands are read in detail: one call each.
    async fn recent_failures(
        &self,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<FailedInvocation>, Error> {
        let hours = (2 * i64::from(self.config.rpo_hours)).clamp(24 * 7, 24 * SSM_HISTORY_DAYS);
        let since = now - Duration::hours(hours);
        let commands =
            history::list(&self.ssm, &self.vss_documents(), since, "fleet report").await?;
        let mut failures = Vec::new();
        for command in commands
            .iter()
            .filter(|c| c.finished && c.status != "Success")
        {
            let invocations =
                history::invocations(&self.ssm, &command.command_id, true, "fleet report").await?;
            for inv in invocations
                .into_iter()
                .filter(|i| is_final_status(&i.status) && i.status != "Success")
            {
                let reason = failure_reason(&inv.output)
                    .map(|r| format!("{}: {r}", inv.status))
                    .unwrap_or_else(|| format!("{} ({})", inv.status, inv.status_details));
                failures.push(FailedInvocation {
                    instance_id: inv.instance_id,
                    command_id: command.command_id.clone(),
                    run_id: command.run_id.clone(),
                    at: command.requested_at,
                    reason,
                });
            }
        }
        Ok(failures)
    }

    /// `{"action":"report"}`: the report as JSON, its summary line in the log, and the RPO
    /// metrics (the out-of-RPO alarm reads `InstancesOutOfRpo`).
    pub(crate) async fn on_demand_report(&self) -> Result<Value, Error> {
        let report = self.fleet_report().await?;
        let t = &report.totals;
        self.emit_metrics(
            &[
                ("InstancesReported", t.instances),
                ("InstancesOutOfRpo", t.out_of_rpo),
                ("InstancesNeverBackedUp", t.never_backed_up),
                ("CopiesMissing", t.copies_missing),
            ],
            &[("Event", "report")],
        );
        let line = report.summary_line();
        if t.out_of_rpo > 0 {
            let late: Vec<String> = report
                .instances
                .iter()
                .filter(|s| s.rpo != RpoStatus::WithinRpo)
                .map(|s| format!("{} ({})", s.name, s.instance_id))
                .collect();
            warn!(out_of_rpo = %late.join(", "), "{line}");
        } else {
            info!("{line}");
        }
        Ok(to_json(&report))
    }
}
