//! The fleet report against AWS: the tagged fleet and its readiness, this deployment's
//! snapshots and copies, and the VSS commands that failed, read once and handed to
//! `report::plan::build`. `{"action":"report"}`, and the hourly report schedule; and the
//! fleet's readiness before the night (`{"action":"readiness"}`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{info, warn};

use crate::app::{emit_metrics, probe_servers, to_json, App};
use crate::aws::{commands, iam, instances};
use crate::copy::plan::copy_regions_of;
use crate::error::Error;
use crate::model::catalog::VaultRecord;
use crate::model::cost::InstanceCost;
use crate::model::fleet::SkipReason;
use crate::model::fleet::{AgentFacts, InstanceFacts, RouteFacts};
use crate::model::markers::KEEP_RUN_DAYS;
use crate::model::permissions::{denied, vss_document_needs, RoleFacts};
use crate::model::probe::{probe_targets, ProbeResult};
use crate::model::requests::ReadinessRequest;
use crate::model::state::{CommandStatus, InstanceState};
use crate::model::stop_time;
use crate::model::tags::{TAG_CLUSTER, TAG_INSTANCE_ID};
use crate::report::plan::{
    build, failed_invocations, failures_since, FailedInvocation, FleetReport, InstanceStatus,
    ReadinessBrief, ReportInput, RpoStatus, Secondary,
};
use crate::retention::step::vouched_snapshots;
use crate::run::plan::dispatch::vss_documents;
use crate::run::plan::preflight::preflight;
use crate::run::plan::readiness::{Readiness, Verdict as ReadinessVerdict};
use crate::run::plan::summary::RecordPage;

/// Reads the fleet and builds its report.
pub async fn fleet_report(app: &App) -> Result<FleetReport, Error> {
    let now = Utc::now();
    let fleet = instances::discover(&app.aws.ec2, &app.config, None).await?;
    let agents = commands::running_agents(&app.aws.ssm, &fleet).await?;
    let home = &app.config.region;
    let copy_regions: BTreeMap<String, Result<Vec<String>, String>> = fleet
        .iter()
        .map(|i| {
            let regions = copy_regions_of(
                &i.tags,
                &app.config.copy_regions,
                &app.config.copy_regions_allowed,
                home,
            );
            (i.instance_id.clone(), regions)
        })
        .collect();
    let managed_by = app.config.managed_by.as_str();
    // Only what the catalog vouches for counts as a backup: a forged or re-tagged snapshot
    // never puts a server within its RPO.
    let index = app.aws.catalog.index().await?;
    let (home_snapshots, _) = vouched_snapshots(app, home, &index, false).await?;
    // A copy region that cannot be read is named with its code; the others are reported.
    let mut copies = BTreeMap::new();
    let mut regions_unreadable = BTreeMap::new();
    let regions = copy_regions.values().flat_map(|r| r.iter().flatten());
    for region in regions {
        if copies.contains_key(region) || regions_unreadable.contains_key(region) {
            continue;
        }
        match vouched_snapshots(app, region, &index, false).await {
            Ok((found, _)) => {
                copies.insert(region.clone(), found);
            }
            Err(err) => {
                let code = err.aws_code().unwrap_or("Unknown").to_string();
                warn!(region = %region, code = %code, error = %err, "copy region not readable: its copies are reported as unknown");
                regions_unreadable.insert(region.clone(), code);
            }
        }
    }
    // Servers with backups that are alive but no longer tagged (the tag removed or mistyped):
    // named, so that they do not vanish from the report as they did from discovery.
    let tagged: HashSet<&str> = fleet.iter().map(|i| i.instance_id.as_str()).collect();
    let backed_up: BTreeSet<&str> = home_snapshots
        .iter()
        .filter_map(|s| s.tags.get(TAG_INSTANCE_ID))
        .filter(|id| !tagged.contains(id))
        .collect();
    let untagged = if backed_up.is_empty() {
        HashMap::new()
    } else {
        instances::by_id(&app.aws.ec2, &app.config, backed_up.iter().copied())
            .await
            .unwrap_or_else(|err| {
                warn!(code = err.aws_code().unwrap_or("Unknown"), error = %err, "instances with backups not readable: servers that lost their tag are not reported");
                HashMap::new()
            })
    };
    let mut lost_tag: Vec<&InstanceFacts> = untagged
        .values()
        .filter(|i| {
            !matches!(
                i.state,
                InstanceState::Terminated | InstanceState::ShuttingDown
            )
        })
        .collect();
    lost_tag.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    // The failures' reasons only explain; without them the report still stands.
    let failures = recent_failures(app, now).await.unwrap_or_else(|err| {
        warn!(code = err.aws_code().unwrap_or("Unknown"), error = %err, "failed commands not readable: the report gives no reasons from SSM");
        Vec::new()
    });
    // The vault copies the catalog records: without them, no coverage is shown (and why).
    let vault = match &app.config.vault {
        Some(vault) => {
            let mut copies: BTreeMap<String, Vec<VaultRecord>> = BTreeMap::new();
            match app
                .aws
                .catalog
                .scan_vault_copies(|c| copies.entry(c.instance_id.clone()).or_default().push(c))
                .await
            {
                Ok(()) => Some((vault.regions.clone(), copies)),
                Err(err) => {
                    warn!(code = err.aws_code().unwrap_or("Unknown"), error = %err, "vault copies not readable from the catalog: the report shows no vault coverage");
                    None
                }
            }
        }
        None => None,
    };
    let input = ReportInput {
        now,
        rpo_hours: app.config.rpo_hours,
        managed_by,
        instances: fleet
            .iter()
            .map(|i| {
                let skip = preflight(i, agents.get(&i.instance_id), &app.config).err();
                (i, skip)
            })
            .collect(),
        snapshots: &home_snapshots,
        copy_regions,
        copies: &copies,
        failures: &failures,
        regions_unreadable: &regions_unreadable,
        lost_tag,
        target_key: &app.config.target_tag_key,
        secondaries: BTreeMap::new(),
        vault: vault
            .as_ref()
            .map(|(regions, copies)| (regions.as_slice(), copies)),
    };
    let mut report = build(&input);
    // Cluster secondaries out of RPO: were they left out by their owner's newest run?
    let secondaries = cluster_secondaries(app, &fleet, &report).await;
    if !secondaries.is_empty() {
        let input = ReportInput {
            secondaries,
            ..input
        };
        report = build(&input);
    }
    // Each server's readiness; without the routes, their check reads unknown.
    let routes = instances::ec2_routes(&app.aws.ec2, &fleet, home)
        .await
        .unwrap_or_else(|err| {
            warn!(code = err.aws_code().unwrap_or("Unknown"), error = %err, "routes not readable: readiness reports the route to EC2 as unknown");
            RouteFacts::default()
        });
    let by_id: HashMap<&str, &InstanceFacts> =
        fleet.iter().map(|i| (i.instance_id.as_str(), i)).collect();
    for status in &mut report.instances {
        if let Some(facts) = by_id.get(status.instance_id.as_str()) {
            let checked = crate::run::plan::readiness::readiness(
                facts,
                agents.get(&status.instance_id),
                &routes,
                None,
                None,
                &app.config,
            );
            status.readiness = Some(ReadinessBrief::of(&checked));
        }
    }
    Ok(report)
}

/// At most this many clusters' runs are read per report.
const MAX_CLUSTERS_READ: usize = 100;

/// The failover cluster nodes out of RPO that the run of their cluster's newest set left out
/// as secondaries (that run's record in the catalog says so, naming the owner): one read of a
/// run per cluster, at most `MAX_CLUSTERS_READ`. A run not readable leaves its nodes as they
/// are (out of RPO), never covered.
async fn cluster_secondaries(
    app: &App,
    fleet: &[InstanceFacts],
    report: &FleetReport,
) -> BTreeMap<String, Secondary> {
    let status: HashMap<&str, &InstanceStatus> = report
        .instances
        .iter()
        .map(|s| (s.instance_id.as_str(), s))
        .collect();
    let mut clusters: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for instance in fleet {
        if let Some(name) = instance.tags.get(TAG_CLUSTER) {
            clusters
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(&instance.instance_id);
        }
    }
    let mut found = BTreeMap::new();
    let needing = clusters.into_values().filter(|nodes| {
        nodes.len() > 1
            && nodes
                .iter()
                .any(|n| status.get(n).is_some_and(|s| s.rpo != RpoStatus::WithinRpo))
    });
    for nodes in needing.take(MAX_CLUSTERS_READ) {
        // The node with the newest set: its run is the one that would have left the others out.
        let Some((owner, run_id)) = nodes
            .iter()
            .filter_map(|n| {
                let set = status.get(n)?.latest_consistent.as_ref()?;
                Some((*n, set.run_id.clone(), set.taken_at))
            })
            .max_by_key(|(_, _, at)| *at)
            .map(|(n, run, _)| (n, run))
        else {
            continue;
        };
        let run = match app.aws.catalog.run(&run_id).await {
            Ok(Some(run)) => run,
            Ok(None) => continue,
            Err(err) => {
                warn!(run_id = %run_id, code = err.aws_code().unwrap_or("Unknown"), error = %err, "run record not readable: its cluster's secondaries are reported out of RPO");
                continue;
            }
        };
        for skipped in &run.skipped {
            if let SkipReason::ClusterSecondary { cluster, owner: by } = &skipped.reason {
                if by == owner && nodes.contains(&skipped.instance_id.as_str()) {
                    found.insert(
                        skipped.instance_id.clone(),
                        Secondary {
                            cluster: cluster.clone(),
                            owner: by.clone(),
                            run_id: run_id.clone(),
                        },
                    );
                }
            }
        }
    }
    found
}

/// At most this many instance profiles are simulated per readiness call (IAM's simulator is
/// rate limited; a fleet has few roles): the others' role reads `unknown`.
const MAX_PROFILES_SIMULATED: usize = 50;

/// What IAM's simulator says of each instance profile's role in the fleet: the calls the VSS
/// document makes, asked once per profile (of its first instance). A profile or simulation
/// not readable is that profile's unknown, with AWS's code, not the call's error.
async fn instance_roles<'a>(app: &App, fleet: &'a [InstanceFacts]) -> HashMap<&'a str, RoleFacts> {
    let mut first_of: BTreeMap<&str, &str> = BTreeMap::new();
    for instance in fleet {
        if let Some(profile) = instance.host.instance_profile.as_deref() {
            first_of.entry(profile).or_insert(&instance.instance_id);
        }
    }
    let mut roles = HashMap::new();
    for (n, (profile, instance_id)) in first_of.into_iter().enumerate() {
        let facts = if n >= MAX_PROFILES_SIMULATED {
            RoleFacts::Unknown(format!(
                "more than {MAX_PROFILES_SIMULATED} instance profiles in the fleet"
            ))
        } else {
            role_facts(app, profile, instance_id).await
        };
        if let RoleFacts::Unknown(why) = &facts {
            warn!(profile, why = %why, "instance role not simulated");
        }
        roles.insert(profile, facts);
    }
    roles
}

async fn role_facts(app: &App, profile: &str, instance_id: &str) -> RoleFacts {
    let Some(question) = vss_document_needs(instance_id, &app.config.region, profile) else {
        return RoleFacts::Unknown(format!("{profile} is not an instance profile ARN"));
    };
    let role = match iam::role_of_profile(&app.aws.iam, profile).await {
        Ok(Some(role)) => role,
        Ok(None) => {
            return RoleFacts::Simulated {
                role: format!("{profile} (no role)"),
                denied: vec!["every call: the profile holds no role".into()],
            }
        }
        Err(err) => return RoleFacts::Unknown(err.to_string()),
    };
    match iam::simulate(&app.aws.iam, &role, &question).await {
        Ok(decisions) => RoleFacts::Simulated {
            denied: denied(&question, &decisions),
            role,
        },
        Err(err) => RoleFacts::Unknown(err.to_string()),
    }
}

/// Runs the readiness probe on the fleet's reachable servers, within `PROBE_WAIT_SECONDS`
/// and the invocation's deadline. Every server gets a result.
async fn probe(
    app: &App,
    document: &str,
    fleet: &[InstanceFacts],
    agents: &HashMap<String, AgentFacts>,
    deadline: DateTime<Utc>,
) -> HashMap<String, ProbeResult> {
    let started = Utc::now();
    let wait = chrono::Duration::seconds(i64::from(app.config.probe_wait_seconds));
    let until = std::cmp::min(started + wait, stop_time(started, deadline));
    let (targets, mut results) = probe_targets(fleet, agents);
    results.extend(probe_servers(app, document, &targets, until).await);
    results
}

/// The VSS commands of the last days (`failures_since`) that did not succeed, per instance,
/// with the document's own reason. Only failed commands are read in detail: one call each.
async fn recent_failures(app: &App, now: DateTime<Utc>) -> Result<Vec<FailedInvocation>, Error> {
    let since = failures_since(now, app.config.rpo_hours);
    let documents = vss_documents(&app.config.ssm_document);
    let commands = commands::list(&app.aws.ssm, &documents, since, "fleet report").await?;
    let mut failures = Vec::new();
    for command in commands
        .iter()
        .filter(|c| c.finished && c.status != CommandStatus::Success)
    {
        let invocations =
            commands::invocations(&app.aws.ssm, &command.command_id, true, "fleet report").await?;
        failures.extend(failed_invocations(command, invocations));
    }
    Ok(failures)
}

/// `{"action":"report"}`: the report as JSON, its summary line in the log, and the RPO
/// metrics (the out-of-RPO alarm reads `InstancesOutOfRpo`).
pub async fn on_demand(app: &App) -> Result<Value, Error> {
    let report = fleet_report(app).await?;
    let t = &report.totals;
    emit_metrics(
        app,
        &[
            ("InstancesReported", t.instances),
            ("InstancesOutOfRpo", t.out_of_rpo),
            ("InstancesNeverBackedUp", t.never_backed_up),
            ("CopiesMissing", t.copies_missing),
            ("RegionsUnreadable", t.regions_unreadable),
            ("InstancesLostTag", t.lost_tag),
            ("InstancesNotInVault", t.vault_missing),
        ],
        &[("Event", "report")],
    );
    let line = report.summary_line();
    if t.out_of_rpo > 0 || t.regions_unreadable > 0 || t.lost_tag > 0 {
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
    let mut answer = to_json(&report);
    attach_costs(app, &mut answer).await;
    Ok(answer)
}

/// What the last cost run (`{"action":"cost"}`) found of each instance, on its report entry
/// (`cost`), and the fleet's monthly total; nothing when no cost run has been made.
async fn attach_costs(app: &App, answer: &mut Value) {
    let costs = match app.aws.catalog.instance_costs().await {
        Ok(costs) if !costs.is_empty() => costs,
        Ok(_) => return,
        Err(err) => {
            warn!(error = %err, "instance costs not readable: the report shows none");
            return;
        }
    };
    let total: f64 = costs.iter().map(|c| c.monthly_cost).sum();
    let by_id: BTreeMap<&str, &InstanceCost> =
        costs.iter().map(|c| (c.instance_id.as_str(), c)).collect();
    if let Some(entries) = answer["instances"].as_array_mut() {
        for entry in entries {
            let id = entry["instance_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(cost) = by_id.get(id.as_str()) {
                entry["cost"] = serde_json::to_value(cost).unwrap_or_default();
            }
        }
    }
    if let Some(totals) = answer["totals"].as_object_mut() {
        totals.insert("monthly_cost".into(), serde_json::json!(total));
    }
}

/// `{"action":"report","run_id":…,"page":n}`: page `n` of a finished run's full record, as the
/// catalog holds it (the run's log event lists at most 500 outcomes, this every one of them).
pub async fn run_record(app: &App, run_id: &str, page: usize) -> Result<Value, Error> {
    if let Some(record) = app
        .aws
        .catalog
        .run_record::<RecordPage>(run_id, page)
        .await?
    {
        return Ok(to_json(&record));
    }
    // Page 0 exists for every finished run: without it, say why there is nothing to show.
    let why = match app.aws.catalog.run_record::<RecordPage>(run_id, 0).await? {
        Some(first) => format!(
            "field `page`: run {run_id} has {} page(s) of outcomes (0 to {})",
            first.pages,
            first.pages.saturating_sub(1)
        ),
        None => format!(
            "field `run_id`: the catalog holds no record of run {run_id} (not a run of this deployment, not finished yet, or older than {KEEP_RUN_DAYS} days)"
        ),
    };
    Err(Error::Event(why))
}

/// How many servers a readiness answer lists (those that fail first); the counts are whole.
const READINESS_LISTED: usize = 1_000;

/// `{"action":"readiness","instance_ids"?,"probe"?}`: before the night, each tagged server's
/// checklist (`run::plan::readiness`), those that will fail first, and the counts; logged as
/// one line. With `probe: true`, the deployment's read-only probe runs on the servers whose
/// agent is online first, within `PROBE_WAIT_SECONDS` and the invocation's deadline.
pub async fn readiness(
    app: &App,
    request: ReadinessRequest,
    deadline: DateTime<Utc>,
) -> Result<Value, Error> {
    let probing = request.probe.unwrap_or(false);
    let probe_document = match (&app.config.probe_document, probing) {
        (None, true) => {
            return Err(Error::Event(
                "readiness with probe: no probe document is configured (PROBE_DOCUMENT, the stack's ReadinessProbeDocument)".into(),
            ))
        }
        (document, _) => document.as_deref().filter(|_| probing),
    };
    let mut fleet =
        instances::discover(&app.aws.ec2, &app.config, request.instance_ids.as_deref()).await?;
    if let Err(err) = instances::with_instance_store(&app.aws.ec2, &mut fleet).await {
        warn!(code = err.aws_code().unwrap_or("Unknown"), error = %err, "instance types not readable: readiness reports instance-store volumes as unknown");
    }
    let ids: Vec<String> = fleet.iter().map(|i| i.instance_id.clone()).collect();
    let agents = commands::agents(&app.aws.ssm, &ids).await?;
    let routes = instances::ec2_routes(&app.aws.ec2, &fleet, &app.config.region).await?;
    let probes = match probe_document {
        Some(document) => Some(probe(app, document, &fleet, &agents, deadline).await),
        None => None,
    };
    let roles = instance_roles(app, &fleet).await;
    let mut servers: Vec<Readiness> = fleet
        .iter()
        .map(|i| {
            crate::run::plan::readiness::readiness(
                i,
                agents.get(&i.instance_id),
                &routes,
                probes.as_ref().and_then(|p| p.get(&i.instance_id)),
                i.host
                    .instance_profile
                    .as_ref()
                    .and_then(|p| roles.get(p.as_str())),
                &app.config,
            )
        })
        .collect();
    servers.sort_by(|a, b| (b.verdict, &a.name).cmp(&(a.verdict, &b.name)));
    let count = |v: ReadinessVerdict| servers.iter().filter(|s| s.verdict == v).count();
    let (fail, warn, pass) = (
        count(ReadinessVerdict::Fail),
        count(ReadinessVerdict::Warn),
        count(ReadinessVerdict::Pass),
    );
    let failing: Vec<String> = servers
        .iter()
        .filter(|s| s.verdict == ReadinessVerdict::Fail)
        .take(20)
        .map(|s| {
            let checks: Vec<&str> = s
                .checks
                .iter()
                .filter(|c| c.result == ReadinessVerdict::Fail)
                .map(|c| c.check)
                .collect();
            format!("{} ({}: {})", s.name, s.instance_id, checks.join(", "))
        })
        .collect();
    let line = format!(
        "readiness: {} servers, {fail} will fail, {warn} with warnings, {pass} ready{}",
        servers.len(),
        if failing.is_empty() {
            String::new()
        } else {
            format!("; failing: {}", failing.join("; "))
        }
    );
    if fail > 0 {
        warn!("{line}");
    } else {
        info!("{line}");
    }
    emit_metrics(
        app,
        &[("ServersNotReady", fail), ("ServersWithWarnings", warn)],
        &[("Event", "readiness")],
    );
    let left_out = servers.len().saturating_sub(READINESS_LISTED);
    servers.truncate(READINESS_LISTED);
    Ok(serde_json::json!({
        "summary": line,
        "servers": fleet.len(),
        "fail": fail,
        "warn": warn,
        "pass": pass,
        "instances": servers,
        "left_out": left_out,
        // With a probe: how many servers answered it (the others' on-instance checks are
        // unknown, each saying why).
        "probe_answered": probes.as_ref().map(|p| p
            .values()
            .filter(|r| matches!(r, ProbeResult::Answered(_)))
            .count()),
    }))
}
