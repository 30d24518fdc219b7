//! The fleet report against AWS: the tagged fleet and its readiness, this deployment's
//! snapshots and copies, and the VSS commands that failed, read once and handed to
//! `report::plan::build`. `{"action":"report"}`, and the hourly report schedule; and the
//! fleet's readiness before the night (`{"action":"readiness"}`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures_util::future::{join, join_all};
use serde_json::Value;
use tracing::{info, warn};

use crate::app::{emit_metrics, probe_servers, to_json, App};
use crate::aws::snapshots::FILTER_VALUES;
use crate::aws::{commands, iam, instances};
use crate::copy::plan::copy_regions_of;
use crate::error::Error;
use crate::model::catalog::{CatalogIndex, VaultRecord};
use crate::model::cost::InstanceCost;
use crate::model::fleet::SkipReason;
use crate::model::fleet::{AgentFacts, InstanceFacts, RouteFacts};
use crate::model::markers::KEEP_RUN_DAYS;
use crate::model::permissions::{denied, vss_document_needs, RoleFacts};
use crate::model::probe::{probe_targets, ProbeResult};
use crate::model::requests::ReadinessRequest;
use crate::model::snapshot::SnapshotInfo;
use crate::model::state::{CommandStatus, InstanceState};
use crate::model::stop_time;
use crate::model::tags::TAG_INSTANCE_ID;
use crate::report::plan::{
    build, clusters_of, failed_invocations, failures_since, report_parts, FailedInvocation,
    FleetReport, Gathered, InstanceStatus, ReadinessBrief, ReportInput, RpoStatus, Secondary,
    VaultInput, REPORT_LISTED,
};
use crate::retention::step::{part_snapshots, vouched_snapshots};
use crate::run::plan::dispatch::vss_documents;
use crate::run::plan::preflight::preflight;
use crate::run::plan::readiness::{Readiness, Verdict as ReadinessVerdict};
use crate::run::plan::summary::RecordPage;

/// What every part of a report reads once: the tagged fleet and what it says of each server.
struct Fleet<'a> {
    now: DateTime<Utc>,
    by_id: HashMap<&'a str, &'a InstanceFacts>,
    agents: &'a HashMap<String, AgentFacts>,
    copy_regions: &'a BTreeMap<String, Result<Vec<String>, String>>,
    failures: &'a [FailedInvocation],
    vault: Option<VaultInput<'a>>,
}

/// What one part of the report reads of AWS: its servers' snapshots that the catalog vouches
/// for, at home and in each of their copy regions, and those of its servers that have backups
/// but are no longer tagged.
struct PartReads {
    home: Vec<SnapshotInfo>,
    copies: BTreeMap<String, Vec<SnapshotInfo>>,
    lost_tag: Vec<InstanceFacts>,
}

/// Reads the fleet and builds its report, a part of the fleet at a time
/// (`RETENTION_PART_SNAPSHOTS` recorded snapshots at most, as retention): a part's snapshots
/// are read, its servers' statuses built and counted, and only the first `REPORT_LISTED` kept,
/// so the report's memory is a part's and what it lists, not the catalog's.
pub async fn fleet_report(app: &App) -> Result<FleetReport, Error> {
    let now = Utc::now();
    let started = std::time::Instant::now();
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
    // Only what the catalog vouches for counts as a backup: a forged or re-tagged snapshot
    // never puts a server within its RPO.
    let part_snapshots = app.config.retention_part_snapshots;
    let (recorded, whole) = app.aws.catalog.recorded(part_snapshots).await?;
    let clusters = clusters_of(&fleet);
    let parts = report_parts(
        recorded.instances(),
        &clusters,
        fleet.iter().map(|i| i.instance_id.as_str()),
        (part_snapshots, FILTER_VALUES),
    );
    drop(recorded);
    // The whole catalog in one part (most deployments): its index serves it, and each region
    // is listed once by the deployment's tag.
    let mut whole = whole.filter(|_| parts.len() <= 1);
    let context = Fleet {
        now,
        by_id: fleet.iter().map(|i| (i.instance_id.as_str(), i)).collect(),
        agents: &agents,
        copy_regions: &copy_regions,
        failures: &failures,
        vault: vault
            .as_ref()
            .map(|(regions, copies)| (regions.as_slice(), copies)),
    };
    let mut gathered = Gathered::new(REPORT_LISTED);
    let mut unreadable = BTreeMap::new();
    let mut clusters_left = MAX_CLUSTERS_READ;
    for (n, part) in parts.iter().enumerate() {
        let reads = read_part(app, part, &context, whole.take(), &mut unreadable).await?;
        let report =
            part_report(app, part, &context, &reads, &unreadable, &mut clusters_left).await;
        drop(reads);
        gathered.add(report);
        if parts.len() > 1 {
            info!(
                part = n + 1,
                parts = parts.len(),
                instances = part.len(),
                "fleet report: part read"
            );
        }
    }
    let mut report = gathered.finish(now, app.config.rpo_hours, &unreadable);
    // Each listed server's readiness; without the routes, their check reads unknown.
    let listed: Vec<InstanceFacts> = report
        .instances
        .iter()
        .filter_map(|s| {
            context
                .by_id
                .get(s.instance_id.as_str())
                .map(|f| (*f).clone())
        })
        .collect();
    let routes = instances::ec2_routes(&app.aws.ec2, &listed, home)
        .await
        .unwrap_or_else(|err| {
            warn!(code = err.aws_code().unwrap_or("Unknown"), error = %err, "routes not readable: readiness reports the route to EC2 as unknown");
            RouteFacts::default()
        });
    for status in &mut report.instances {
        if let Some(facts) = context.by_id.get(status.instance_id.as_str()) {
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
    info!(
        parts = parts.len(),
        instances = report.totals.instances,
        listed = report.instances.len(),
        total_ms = started.elapsed().as_millis(),
        "fleet report built"
    );
    Ok(report)
}

/// Reads one part of the report (`part`, instance ids): what the catalog records of it (by its
/// keys, unless `whole` holds the whole catalog's index), its snapshots at home and in its
/// servers' copy regions, all at once, and its servers with backups that lost their tag. A copy
/// region that cannot be read is named in `unreadable` with its code and not read again by
/// later parts; the home region not readable fails the report.
async fn read_part(
    app: &App,
    part: &[String],
    fleet: &Fleet<'_>,
    whole: Option<CatalogIndex>,
    unreadable: &mut BTreeMap<String, String>,
) -> Result<PartReads, Error> {
    let listed_whole = whole.is_some();
    let index = match whole {
        Some(index) => index,
        None => app.aws.catalog.index_of(part).await?,
    };
    let home = app.config.region.as_str();
    let copy_regions: BTreeSet<&str> = part
        .iter()
        .filter_map(|id| fleet.copy_regions.get(id))
        .flat_map(|regions| regions.iter().flatten())
        .map(String::as_str)
        .filter(|region| !unreadable.contains_key(*region))
        .collect();
    let read = |region: &str| {
        let (index, region) = (&index, region.to_string());
        async move {
            let listed = if listed_whole {
                Some(vouched_snapshots(app, &region, index, false).await?.0)
            } else {
                None
            };
            part_snapshots(app, &region, (part, listed, false), index, None)
                .await
                .map(|(snapshots, _, _)| snapshots)
        }
    };
    let (home_read, copy_reads) = join(
        read(home),
        join_all(copy_regions.iter().map(|region| read(region))),
    )
    .await;
    let home_snapshots = home_read?;
    let mut copies = BTreeMap::new();
    for (region, read) in copy_regions.iter().zip(copy_reads) {
        match read {
            Ok(found) => {
                copies.insert(region.to_string(), found);
            }
            Err(err) => {
                let code = err.aws_code().unwrap_or("Unknown").to_string();
                warn!(region = %region, code = %code, error = %err, "copy region not readable: its copies are reported as unknown");
                unreadable.insert(region.to_string(), code);
            }
        }
    }
    // Servers with backups that are alive but no longer tagged (the tag removed or mistyped):
    // named, so that they do not vanish from the report as they did from discovery.
    let backed_up: BTreeSet<&str> = home_snapshots
        .iter()
        .filter_map(|s| s.tags.get(TAG_INSTANCE_ID))
        .filter(|id| !fleet.by_id.contains_key(id))
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
    let lost_tag = untagged
        .into_values()
        .filter(|i| {
            !matches!(
                i.state,
                InstanceState::Terminated | InstanceState::ShuttingDown
            )
        })
        .collect();
    Ok(PartReads {
        home: home_snapshots,
        copies,
        lost_tag,
    })
}

/// One part's report: each of its tagged servers against the RPO, from what `read_part` read;
/// its cluster secondaries out of RPO stand on their owner's set where that run left them out.
async fn part_report(
    app: &App,
    part: &[String],
    fleet: &Fleet<'_>,
    reads: &PartReads,
    unreadable: &BTreeMap<String, String>,
    clusters_left: &mut usize,
) -> FleetReport {
    let tagged: Vec<&InstanceFacts> = part
        .iter()
        .filter_map(|id| fleet.by_id.get(id.as_str()).copied())
        .collect();
    let mut lost_tag: Vec<&InstanceFacts> = reads.lost_tag.iter().collect();
    lost_tag.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let input = ReportInput {
        now: fleet.now,
        rpo_hours: app.config.rpo_hours,
        managed_by: app.config.managed_by.as_str(),
        instances: tagged
            .iter()
            .map(|i| {
                let skip = preflight(i, fleet.agents.get(&i.instance_id), &app.config).err();
                (*i, skip)
            })
            .collect(),
        snapshots: &reads.home,
        copy_regions: part
            .iter()
            .filter_map(|id| Some((id.clone(), fleet.copy_regions.get(id)?.clone())))
            .collect(),
        copies: &reads.copies,
        failures: fleet.failures,
        regions_unreadable: unreadable,
        lost_tag,
        target_key: &app.config.target_tag_key,
        secondaries: BTreeMap::new(),
        vault: fleet.vault,
    };
    let report = build(&input);
    // Cluster secondaries out of RPO: were they left out by their owner's newest run? (A
    // cluster's nodes are in one part.)
    let secondaries = cluster_secondaries(app, &tagged, &report, clusters_left).await;
    if secondaries.is_empty() {
        return report;
    }
    build(&ReportInput {
        secondaries,
        ..input
    })
}

/// At most this many clusters' runs are read per report.
const MAX_CLUSTERS_READ: usize = 100;

/// The failover cluster nodes out of RPO that the run of their cluster's newest set left out
/// as secondaries (that run's record in the catalog says so, naming the owner): one read of a
/// run per cluster, at most `clusters_left` (of `MAX_CLUSTERS_READ` a report). A run not
/// readable leaves its nodes as they are (out of RPO), never covered.
async fn cluster_secondaries(
    app: &App,
    fleet: &[&InstanceFacts],
    report: &FleetReport,
    clusters_left: &mut usize,
) -> BTreeMap<String, Secondary> {
    let status: HashMap<&str, &InstanceStatus> = report
        .instances
        .iter()
        .map(|s| (s.instance_id.as_str(), s))
        .collect();
    let mut found = BTreeMap::new();
    let needing: Vec<Vec<&str>> = clusters_of(fleet.iter().copied())
        .into_values()
        .filter(|nodes| {
            nodes
                .iter()
                .any(|n| status.get(n).is_some_and(|s| s.rpo != RpoStatus::WithinRpo))
        })
        .collect();
    for nodes in needing {
        if *clusters_left == 0 {
            break;
        }
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
        *clusters_left -= 1;
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
