//! Starting a run: discover and preflight the fleet, claim the run, read the command history,
//! send what is not sent yet, and queue the tracking messages.
//!
//! Every step is check-then-act keyed by the run id, so a duplicated schedule, a duplicated or
//! re-delivered message and a Lambda stopped half-way all converge on one command per instance:
//! the claim (`run::plan::claim`) keeps two live invocations from dispatching the same run, the
//! watch message finishes a dispatch whose invocation was stopped, and the history
//! (`run::plan::dispatch`) keeps the finishing invocation from sending what was already sent.

use std::collections::{HashSet, VecDeque};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use futures_util::future::join_all;
use tracing::{error, info, warn};

use crate::app::{emit_metrics, enqueue, enqueue_each, probe_servers, refuse, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::commands::{self, CommandRequest, SendFailure};
use crate::aws::instances;
use crate::error::Error;
use crate::jobs::{Envelope, Job, RunCommand, Skipped, Unsent, WatchJob};
use crate::model::catalog::CopyTargets;
use crate::model::fleet::{SkipReason, Target};
use crate::model::stop_time;
use crate::model::tags::copy_regions_of;
use crate::run::plan::claim::{self, Claim, DispatchMode};
use crate::run::plan::cluster::{leave_out_secondaries, plan_clusters, ClusterPlan};
use crate::run::plan::dispatch::{
    claimed_start, command_parameters, dispatched, dispatched_from, dry_run_start, history_since,
    in_flight_window, instance_jobs, manifest, plan_commands, plan_dispatch, run_job,
    vss_documents, CommandPlan, RunStart, StartStatus, INVALID_INSTANCE_CODE,
};
use crate::run::plan::preflight::preflight;
use crate::run::step::tracking;

/// How long past its invocation's deadline a lease still holds: a call sent just before the
/// Lambda was stopped has landed by then.
pub const LEASE_MARGIN_SECONDS: i64 = 10;
/// SendCommand attempts before the dispatch gives up and leaves the run to its watch.
const SEND_ATTEMPTS: u32 = 4;
/// SendCommand calls in flight at once: a dispatch of 20,000 servers sends 400 commands,
/// which one after another take 400 of SSM's round trips. SSM publishes no rate for it; the
/// SDK retries what it throttles, and a throttled command was not sent.
const SENDS_AT_ONCE: usize = 4;

/// What starts a run: a schedule, an on-demand call, or a watch taking over.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub run_id: String,
    pub instance_ids: Option<Vec<String>>,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    /// Until when this invocation can hold the run: its own deadline plus the margin.
    pub lease_until: DateTime<Utc>,
}

/// What the dispatch read of the fleet: the targets, every other instance with the reason it
/// is skipped, and where each instance's sets are to be copied.
struct Preflight {
    targets: Vec<Target>,
    skipped: Vec<Skipped>,
    copies: Vec<CopyTargets>,
}

/// Discovers the fleet (or the instances asked for) and preflights it, a page of EC2's
/// answer at a time: a page's descriptions are dropped once its instances are preflighted, so
/// that a dispatch holds the fleet's targets, not its descriptions. The copy regions are
/// decided here from the tags the dispatch read (and recorded with the run), so that the
/// run's copy step need not read the fleet again; none without copy regions configured.
async fn preflight_fleet(
    app: &App,
    run_id: &str,
    ids: Option<&[String]>,
) -> Result<Preflight, Error> {
    let config = &app.config;
    let copying = !(config.copy_regions.is_empty() && config.copy_regions_allowed.is_empty());
    let mut pages = instances::discover_pages(&app.aws.ec2, config, ids);
    let mut targets: Vec<Target> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut copies: Vec<CopyTargets> = Vec::new();
    let mut tagged = 0usize;
    let mut next = pages.next_page().await?;
    while let Some(page) = next {
        // SSM's view of this page's agents is read while EC2 answers the next page: two
        // pages' descriptions are held at most.
        let (agents, following) = tokio::join!(
            commands::running_agents(&app.aws.ssm, &page),
            pages.next_page()
        );
        let agents = agents?;
        next = following?;
        tagged += page.len();
        if copying {
            copies.extend(page.iter().map(|i| {
                let regions = copy_regions_of(
                    &i.tags,
                    &config.copy_regions,
                    &config.copy_regions_allowed,
                    &config.region,
                );
                CopyTargets::new(&i.instance_id, regions)
            }));
        }
        for instance in page {
            match preflight(&instance, agents.get(&instance.instance_id), config) {
                Ok(target) => targets.push(target),
                Err(reason) => {
                    info!(run_id, instance_id = %instance.instance_id, reason = %reason, "skipped");
                    skipped.push(Skipped {
                        instance_id: instance.instance_id.clone(),
                        name: instance.display_name().to_string(),
                        reason,
                    });
                }
            }
        }
    }
    // In instance id order, whatever order EC2's pages came in.
    targets.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    skipped.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    copies.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    if let Some(ids) = ids {
        let not_targeted = ids.iter().filter(|id| !pages.found(id)).map(|id| Skipped {
            instance_id: id.clone(),
            name: id.clone(),
            reason: SkipReason::NotTargeted,
        });
        skipped.splice(0..0, not_targeted);
    }
    info!(
        run_id,
        tagged,
        targets = targets.len(),
        skipped = skipped.len(),
        "preflight done"
    );
    Ok(Preflight {
        targets,
        skipped,
        copies,
    })
}

/// Starts a run, or recognises a duplicate of one; see the module documentation.
pub async fn start_run(app: &App, request: &RunRequest) -> Result<RunStart, Error> {
    let run_id = request.run_id.as_str();
    let now = Utc::now();
    let Preflight {
        targets,
        skipped,
        copies,
    } = preflight_fleet(app, run_id, request.instance_ids.as_deref()).await?;
    let since = history_since(request.started_at, now, in_flight_window(&app.config));
    let documents = vss_documents(&app.config.ssm_document);

    if request.dry_run {
        let past = commands::read(&app.aws.ssm, &documents, since, run_id).await?;
        let plan = plan_dispatch(run_id, targets, &past);
        info!(
            run_id,
            would_send = plan.send.len(),
            already_sent = plan.reuse.len(),
            "dry run: nothing sent"
        );
        return Ok(dry_run_start(run_id, plan, skipped));
    }

    let store = RunMarkerStore::new(&app.aws.catalog, run_id);
    let markers = store.read().await?;
    let epoch = match claim::decide(&markers, now) {
        Claim::Take { epoch } => epoch,
        Claim::Held { epoch, until } => {
            info!(run_id, epoch, held_until = %until.to_rfc3339(), "duplicate start: another invocation is dispatching this run");
            let mut start = RunStart::empty(run_id, StartStatus::HeldByAnother, false);
            start.held_until = Some(until);
            return Ok(start);
        }
        Claim::Dispatched => {
            info!(run_id, "duplicate start: the run is already dispatched");
            return Ok(RunStart::empty(
                run_id,
                StartStatus::AlreadyDispatched,
                false,
            ));
        }
        Claim::Reported => {
            info!(run_id, "duplicate start: the run is already over");
            return Ok(RunStart::empty(run_id, StartStatus::AlreadyReported, false));
        }
        Claim::Abandoned { reason } => {
            info!(run_id, reason = %reason, "duplicate start: the run was abandoned");
            return Ok(abandoned(run_id, reason));
        }
    };
    let closing = match claim::dispatch_mode(&markers, epoch) {
        DispatchMode::Send => None,
        DispatchMode::Close { reason } => Some(reason),
        DispatchMode::Abandon { reason } => {
            // No watch is queued: this is where the takeovers end.
            return abandon(app, &store, epoch, reason).await;
        }
    };
    // The watch goes first: whichever step this invocation is stopped at from here on, the
    // watch finds the lease over and the run not dispatched, and takes over.
    enqueue(
        app,
        &[Envelope::new(Job::Watch(WatchJob {
            run_id: run_id.to_string(),
            started_at: request.started_at,
            instance_ids: request.instance_ids.clone(),
            check_at: request.lease_until + Duration::seconds(1),
        }))],
    )
    .await?;
    if !store.take_lease(epoch, request.lease_until).await? {
        info!(
            run_id,
            epoch, "duplicate start: another invocation claimed this run first"
        );
        return Ok(RunStart::empty(run_id, StartStatus::HeldByAnother, false));
    }
    info!(run_id, epoch, lease_until = %request.lease_until.to_rfc3339(), "run claimed");
    let (targets, skipped) =
        settle_clusters(app, run_id, targets, skipped, request.lease_until).await;
    let dispatch = Dispatch {
        request,
        targets,
        skipped,
        copies,
        since,
        documents: &documents,
        closing,
    };
    match dispatch_claimed(app, &store, dispatch).await {
        Ok(start) => Ok(start),
        Err(err) => {
            // Counted towards the dispatch's cap, and named by the run's closing.
            let text: String = err.to_string().chars().take(1_000).collect();
            store.record_dispatch_error(epoch, &text).await;
            Err(err)
        }
    }
}

/// How long a run's dispatch waits for its cluster nodes' probes, at most.
const CLUSTER_PROBE_SECONDS: u32 = 30;

/// The failover clusters among the targets (`run::plan::cluster`): their nodes are probed and
/// the secondaries left out, each skipped as such, when every node agrees on the owner. With
/// no probe document, or no agreement, every node stays a target.
async fn settle_clusters(
    app: &App,
    run_id: &str,
    targets: Vec<Target>,
    mut skipped: Vec<Skipped>,
    lease_until: DateTime<Utc>,
) -> (Vec<Target>, Vec<Skipped>) {
    let nodes: Vec<String> = targets
        .iter()
        .filter(|t| t.cluster.is_some())
        .map(|t| t.instance_id.clone())
        .collect();
    if nodes.is_empty() {
        return (targets, skipped);
    }
    let Some(document) = app.config.probe_document.as_deref() else {
        warn!(run_id, nodes = nodes.len(), "cluster nodes are tagged, but no probe document is configured (PROBE_DOCUMENT): every node gets the VSS command");
        return (targets, skipped);
    };
    let now = Utc::now();
    let wait = Duration::seconds(i64::from(
        app.config.probe_wait_seconds.min(CLUSTER_PROBE_SECONDS),
    ));
    let deadline = lease_until - Duration::seconds(LEASE_MARGIN_SECONDS);
    let until = std::cmp::min(now + wait, stop_time(now, deadline));
    let probes = probe_servers(app, document, &nodes, until).await;
    let plans = plan_clusters(&targets, &probes);
    for plan in &plans {
        match plan {
            ClusterPlan::Owner {
                cluster,
                owner,
                secondaries,
            } => {
                info!(run_id, cluster = %cluster, owner = %owner, secondaries = secondaries.len(), "failover cluster: the VSS command goes to the node that owns its disks")
            }
            ClusterPlan::Every { cluster, why } => {
                warn!(run_id, cluster = %cluster, why = %why, "failover cluster: its disks' owner is not established; every node gets the VSS command")
            }
        }
    }
    let (kept, left) = leave_out_secondaries(targets, &plans);
    skipped.extend(left.into_iter().map(|(t, reason)| Skipped {
        instance_id: t.instance_id,
        name: t.name,
        reason,
    }));
    (kept, skipped)
}

/// Marks the run abandoned: logged, counted and alarmed once, however often it is asked.
async fn abandon(
    app: &App,
    store: &RunMarkerStore<'_>,
    epoch: u32,
    reason: String,
) -> Result<RunStart, Error> {
    let run_id = store.run_id;
    if store.mark_abandoned(&reason).await? {
        error!(run_id, epoch, reason = %reason, "run {run_id} abandoned: its dispatch failed for good; no server it had not reached is backed up by it");
        emit_metrics(
            app,
            &[("RunsAbandoned", 1)],
            &[("RunId", run_id), ("Event", "dispatch")],
        );
    }
    Ok(abandoned(run_id, reason))
}

fn abandoned(run_id: &str, reason: String) -> RunStart {
    let mut start = RunStart::empty(run_id, StartStatus::Abandoned, false);
    start.reason = Some(reason);
    start
}

/// What a claimed dispatch works from.
struct Dispatch<'a> {
    request: &'a RunRequest,
    targets: Vec<Target>,
    skipped: Vec<Skipped>,
    copies: Vec<CopyTargets>,
    since: DateTime<Utc>,
    documents: &'a [&'a str],
    /// Why the dispatch is closed (`DispatchMode::Close`): nothing more is sent.
    closing: Option<String>,
}

/// The claimed part of a start: read the history, send what it does not show sent (or, when
/// the dispatch is closed, record it unsent), then the manifest, the run and its messages.
async fn dispatch_claimed(
    app: &App,
    store: &RunMarkerStore<'_>,
    dispatch: Dispatch<'_>,
) -> Result<RunStart, Error> {
    let Dispatch {
        request,
        targets,
        skipped,
        copies,
        since,
        documents,
        closing,
    } = dispatch;
    let run_id = request.run_id.as_str();
    let past = commands::read(&app.aws.ssm, documents, since, run_id).await?;
    let plan = plan_dispatch(run_id, targets, &past);
    if !plan.reuse.is_empty() {
        info!(
            run_id,
            already_sent = plan.reuse.len(),
            commands = plan.run_commands.len(),
            "this run already sent commands: tracking them, not sending again"
        );
    }
    for (target, reason) in &plan.busy {
        warn!(run_id, instance_id = %target.instance_id, reason = %reason, "skipped: not frozen twice");
    }
    let mut start = claimed_start(run_id, &plan, skipped);
    match closing {
        Some(reason) => {
            warn!(run_id, unsent = plan.send.len(), reason = %reason, "dispatch closed: nothing more is sent; the run ends with what was sent");
            start.unsent.extend(plan.send.iter().map(|t| Unsent {
                instance_id: t.instance_id.clone(),
                name: t.name.clone(),
                error: format!("not sent: {reason}"),
            }));
        }
        None => send_all(app, &mut start, plan.send, since).await?,
    }

    let command_deadline = Utc::now() + in_flight_window(&app.config) + Duration::minutes(5);
    let completion = Duration::seconds(i64::from(app.config.snapshot_completion_timeout_seconds));
    // The catalog first: every tracking message is a reference to what it records. Entries,
    // items and messages are made a batch at a time, so that a dispatch of many thousand
    // servers holds one batch of them, not all.
    let now = Utc::now();
    app.aws
        .catalog
        .put_manifest(manifest(&start, request.started_at), now)
        .await?;
    let run = run_job(&start, request.started_at, command_deadline, completion);
    app.aws.catalog.put_run(&run, now).await?;
    record_copy_targets(app, &start, copies).await;
    // The instances' ends are counted as they are recorded; should they all be already (SSM's
    // events came during the dispatch), the run's look is queued now.
    let due = start
        .dispatched
        .iter()
        .filter(|d| d.command_id.is_some())
        .count();
    match app.aws.catalog.expect_finals(run_id, due).await {
        Ok(finals) if finals.complete() => tracking::queue_early_look(app, run_id).await,
        Ok(_) => {}
        Err(err) => {
            warn!(run_id, error = %err, code = err.aws_code().unwrap_or(""), "the run's count of ends not set: its own looks finish it");
        }
    }
    let last = Envelope::new(Job::Run(run.as_reference()));
    enqueue_each(
        app,
        instance_jobs(&start, command_deadline).chain(std::iter::once(last)),
    )
    .await?;
    store.mark_dispatched().await?;
    info!(
        run_id,
        dispatched = start.dispatched.len(),
        reused = start.dispatched.iter().filter(|d| d.reused).count(),
        skipped = start.skipped.len(),
        unsent = start.unsent.len(),
        commands = start.commands.len(),
        "run dispatched"
    );
    Ok(start)
}

/// Records where the dispatched instances' sets are to be copied, as decided from the tags
/// the dispatch read. Should it fail, the copy step decides them itself (reading the fleet).
async fn record_copy_targets(app: &App, start: &RunStart, copies: Vec<CopyTargets>) {
    let sent: HashSet<&str> = start
        .dispatched
        .iter()
        .filter(|d| d.command_id.is_some())
        .map(|d| d.instance_id.as_str())
        .collect();
    let copies: Vec<CopyTargets> = copies
        .into_iter()
        .filter(|c| sent.contains(c.instance_id.as_str()))
        .collect();
    if copies.is_empty() {
        return;
    }
    let run_id = start.run_id.as_str();
    if let Err(err) = app.aws.catalog.record_copy_targets(run_id, &copies).await {
        warn!(run_id, instances = copies.len(), error = %err, code = err.aws_code().unwrap_or(""), "copy regions not recorded: the copy step decides them");
    }
}

/// Sends the command to `targets`, at most 50 a call, `SENDS_AT_ONCE` calls at a time (their
/// answers taken in order, so that a halved call's halves go next). A throttled call is tried
/// again after a pause; a call whose outcome is unknown is tried again only for the instances
/// the history does not show it reached. If calls still fail, the error ends the invocation
/// and the run's watch finishes the dispatch once this invocation's lease is over.
async fn send_all(
    app: &App,
    start: &mut RunStart,
    mut targets: Vec<Target>,
    since: DateTime<Utc>,
) -> Result<(), Error> {
    let run_id = start.run_id.clone();
    let mut attempt = 0;
    while !targets.is_empty() {
        let mut again: Vec<Target> = Vec::new();
        let mut unknown = false;
        let mut last_error = None;
        let mut queue: VecDeque<CommandPlan> = plan_commands(std::mem::take(&mut targets)).into();
        while !queue.is_empty() {
            // A few commands at a time; their answers are then taken in order.
            let wave: Vec<CommandPlan> = queue.drain(..queue.len().min(SENDS_AT_ONCE)).collect();
            let answers = join_all(wave.into_iter().map(|plan| async {
                let sent = send_one(app, &run_id, &plan).await;
                (plan, sent)
            }))
            .await;
            for (plan, sent) in answers {
                match sent {
                    Ok(command_id) => {
                        start.commands.push(RunCommand {
                            command_id: command_id.clone(),
                            exclude_boot_volume: plan.exclude_boot_volume,
                            instances: plan.targets.len(),
                        });
                        start.dispatched.extend(
                            plan.targets
                                .into_iter()
                                .map(|t| dispatched_from(t, Some(&command_id), false)),
                        );
                    }
                    Err(SendFailure::Refused(err))
                        if err.aws_code() == Some(INVALID_INSTANCE_CODE)
                            && plan.targets.len() > 1 =>
                    {
                        // One instance SSM cannot reach refuses the whole call: halve it, so that
                        // only the instances at fault stay unsent.
                        warn!(run_id = %run_id, instances = plan.targets.len(), code = INVALID_INSTANCE_CODE, "command refused for one of its instances: sending it in halves");
                        if let Some((first, second)) = plan.halves() {
                            queue.push_front(second);
                            queue.push_front(first);
                        }
                    }
                    Err(SendFailure::Refused(err)) => {
                        error!(run_id = %run_id, error = %err, "command refused");
                        start.unsent.extend(plan.targets.iter().map(|t| Unsent {
                            instance_id: t.instance_id.clone(),
                            name: t.name.clone(),
                            error: err.to_string(),
                        }));
                    }
                    Err(failure) => {
                        unknown |= matches!(failure, SendFailure::Unknown(_));
                        warn!(run_id = %run_id, error = %failure.error(), attempt, "command not confirmed");
                        again.extend(plan.targets);
                        last_error = Some(failure);
                    }
                }
            }
        }
        let Some(failure) = last_error else { break };
        attempt += 1;
        if attempt >= SEND_ATTEMPTS {
            error!(run_id = %run_id, instances = again.len(), "dispatch interrupted: the run's watch takes over when this invocation's lease ends");
            return Err(failure.into_error());
        }
        tokio::time::sleep(StdDuration::from_millis(250 << attempt)).await;
        if !unknown {
            targets = again;
            continue;
        }
        // Whether the unanswered calls went through, only the history can say.
        let past = commands::read(
            &app.aws.ssm,
            &vss_documents(&app.config.ssm_document),
            since,
            &run_id,
        )
        .await?;
        let plan = plan_dispatch(&run_id, again, &past);
        for (target, command_id) in &plan.reuse {
            info!(run_id = %run_id, instance_id = %target.instance_id, command_id = %command_id, "unanswered command did reach the instance");
            start
                .dispatched
                .push(dispatched(target, Some(command_id), true));
        }
        for command in plan.run_commands {
            if !start
                .commands
                .iter()
                .any(|c| c.command_id == command.command_id)
            {
                start.commands.push(command);
            }
        }
        for (target, reason) in plan.busy {
            start.skipped.push(Skipped {
                instance_id: target.instance_id,
                name: target.name,
                reason,
            });
        }
        targets = plan.send;
    }
    Ok(())
}

/// Sends one planned command and records it for SSM's events.
async fn send_one(app: &App, run_id: &str, plan: &CommandPlan) -> Result<String, SendFailure> {
    let request = CommandRequest {
        run_id,
        instance_ids: plan.targets.iter().map(|t| t.instance_id.clone()).collect(),
        parameters: command_parameters(plan, &app.config, run_id),
    };
    let command_id = commands::send(&app.aws.ssm, &app.config, request).await?;
    info!(run_id, command_id = %command_id, instances = plan.targets.len(), exclude_boot_volume = plan.exclude_boot_volume, "command sent");
    // What SSM's events about the command are matched by (they name only the command);
    // without it, the instances' polling looks find their end.
    if let Err(err) = app.aws.catalog.put_command(&command_id, run_id).await {
        warn!(run_id, command_id = %command_id, error = %err, code = err.aws_code().unwrap_or(""), "command not recorded for SSM's events");
    }
    Ok(command_id)
}

/// A watch message: nothing to do if the run is dispatched; look again when a live lease
/// ends; take the run over when its lease ended without a dispatch.
pub async fn watch_run(app: &App, job: WatchJob, lease_until: DateTime<Utc>) -> Result<(), Error> {
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    let markers = store.read().await?;
    if markers.names.is_empty() {
        // A watch is queued right before its run's first lease is taken, and a finished run
        // keeps its `reported` marker: a watch that finds no marker at all either lost that
        // race (the start failed before claiming: its caller sees the error) or names a run
        // nobody started, such as tomorrow's.
        return Err(refuse(
            app,
            format!(
                "watch job for run {}: the catalog holds no claim of that run",
                job.run_id
            ),
        ));
    }
    match claim::decide(&markers, Utc::now()) {
        Claim::Dispatched | Claim::Reported => {
            info!(run_id = %job.run_id, "watch: the run is dispatched");
            Ok(())
        }
        Claim::Abandoned { reason } => {
            info!(run_id = %job.run_id, reason = %reason, "watch: the run was abandoned");
            Ok(())
        }
        Claim::Held { until, .. } => {
            info!(run_id = %job.run_id, held_until = %until.to_rfc3339(), "watch: the run is still being dispatched");
            requeue(
                app,
                Job::Watch(WatchJob {
                    check_at: until + Duration::seconds(1),
                    ..job
                }),
            )
            .await
        }
        Claim::Take { epoch } => {
            warn!(run_id = %job.run_id, epoch, "watch: the run's dispatch was interrupted; taking over");
            start_run(
                app,
                &RunRequest {
                    run_id: job.run_id,
                    instance_ids: job.instance_ids,
                    dry_run: false,
                    started_at: job.started_at,
                    lease_until,
                },
            )
            .await
            .map(|_| ())
        }
    }
}
