//! Starting a run: discover and preflight the fleet, claim the run, read the command history,
//! send what is not sent yet, and queue the tracking messages.
//!
//! Every step is check-then-act keyed by the run id, so a duplicated schedule, a duplicated or
//! re-delivered message and a Lambda stopped half-way all converge on one command per instance:
//! the claim (`run_claim`) keeps two live invocations from dispatching the same run, the watch
//! message finishes a dispatch whose invocation was stopped, and the history (`history`) keeps
//! the finishing invocation from sending what was already sent.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::config::VSS_DOCUMENTS;
use crate::dispatch::{self, plan_commands, SendFailure};
use crate::error::Error;
use crate::fleet::{self, preflight, AttachedVolume, Target};
use crate::handler::App;
use crate::history::{self, plan_dispatch};
use crate::job::{
    Envelope, InstanceJob, Job, RunCommand, RunJob, Skipped, Stage, Unsent, WatchJob,
};
use crate::run_claim::{self, Claim, RunMarkerStore};

/// How long past its invocation's deadline a lease still holds: a call sent just before the
/// Lambda was stopped has landed by then.
pub const LEASE_MARGIN_SECONDS: i64 = 10;
/// SendCommand attempts before the dispatch gives up and leaves the run to its watch.
const SEND_ATTEMPTS: u32 = 4;

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

/// What became of a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartStatus {
    /// This invocation sent the commands (or found them sent) and queued the tracking.
    Dispatched,
    /// Nothing was sent: the answer says what would be.
    DryRun,
    /// A duplicate: the run is already dispatched.
    AlreadyDispatched,
    /// A duplicate: the run is over and its summary written.
    AlreadyReported,
    /// A duplicate: another invocation is dispatching the run right now.
    HeldByAnother,
}

/// What a run did when it started: the answer to an on-demand call, and the log of a schedule.
#[derive(Debug, Clone, Serialize)]
pub struct RunStart {
    pub run_id: String,
    pub status: StartStatus,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
    pub dispatched: Vec<Dispatched>,
    pub skipped: Vec<Skipped>,
    pub unsent: Vec<Unsent>,
    pub commands: Vec<RunCommand>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dispatched {
    pub instance_id: String,
    pub name: String,
    pub volumes: Vec<AttachedVolume>,
    /// Absent in a dry run for an instance that would get a new command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// The command was sent earlier in this run (a duplicate delivery, or a takeover).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
}

impl RunStart {
    fn empty(run_id: &str, status: StartStatus, dry_run: bool) -> Self {
        RunStart {
            run_id: run_id.to_string(),
            status,
            dry_run,
            held_until: None,
            dispatched: vec![],
            skipped: vec![],
            unsent: vec![],
            commands: vec![],
        }
    }
}

/// The history a dispatch must read: back to the run's start, and at least as far back as a
/// VSS command can still be running.
pub fn history_since(
    started_at: DateTime<Utc>,
    now: DateTime<Utc>,
    in_flight: Duration,
) -> DateTime<Utc> {
    started_at.min(now - in_flight) - Duration::minutes(10)
}

fn dispatched(target: &Target, command_id: Option<&str>, reused: bool) -> Dispatched {
    Dispatched {
        instance_id: target.instance_id.clone(),
        name: target.name.clone(),
        volumes: target.volumes.clone(),
        command_id: command_id.map(str::to_string),
        reused,
    }
}

impl App {
    /// The longest a VSS command can be in flight on an instance.
    fn in_flight_window(&self) -> Duration {
        Duration::seconds(i64::from(self.config.command_delivery_timeout_seconds))
            + Duration::seconds(i64::from(self.config.vss_execution_timeout_seconds))
    }

    pub(crate) fn vss_documents(&self) -> Vec<&str> {
        let mut documents = vec![self.config.ssm_document.as_str()];
        documents.extend(
            VSS_DOCUMENTS
                .iter()
                .filter(|d| **d != self.config.ssm_document),
        );
        documents
    }

    /// Discovers the fleet (or the instances asked for) and preflights it: the targets, and
    /// every other instance with the reason it is skipped.
    async fn preflight_fleet(
        &self,
        run_id: &str,
        ids: Option<&[String]>,
    ) -> Result<(Vec<Target>, Vec<Skipped>), Error> {
        let instances = fleet::discover(&self.ec2, &self.config, ids).await?;
        let mut skipped: Vec<Skipped> = Vec::new();
        if let Some(ids) = ids {
            for id in ids
                .iter()
                .filter(|id| !instances.iter().any(|i| &i.instance_id == *id))
            {
                skipped.push(Skipped {
                    instance_id: id.clone(),
                    name: id.clone(),
                    reason: fleet::SkipReason::NotTargeted,
                });
            }
        }
        // Ask SSM only about running instances: no other state can pass preflight. Platform is
        // not filtered here, since SSM's PlatformType is one way Windows is recognised.
        let candidates: Vec<String> = instances
            .iter()
            .filter(|i| i.state == "running")
            .map(|i| i.instance_id.clone())
            .collect();
        let agents = fleet::agents(&self.ssm, &candidates).await?;
        let mut targets: Vec<Target> = Vec::new();
        for instance in &instances {
            match preflight(instance, agents.get(&instance.instance_id), &self.config) {
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
        info!(
            run_id,
            tagged = instances.len(),
            targets = targets.len(),
            skipped = skipped.len(),
            "preflight done"
        );
        Ok((targets, skipped))
    }

    /// Starts a run, or recognises a duplicate of one; see the module documentation.
    pub async fn start_run(&self, request: &RunRequest) -> Result<RunStart, Error> {
        let run_id = request.run_id.as_str();
        let now = Utc::now();
        let (targets, mut skipped) = self
            .preflight_fleet(run_id, request.instance_ids.as_deref())
            .await?;
        let since = history_since(request.started_at, now, self.in_flight_window());
        let documents = self.vss_documents();

        if request.dry_run {
            let past = history::read(&self.ssm, &documents, since, run_id).await?;
            let plan = plan_dispatch(run_id, &targets, &past);
            let mut start = RunStart::empty(run_id, StartStatus::DryRun, true);
            start.dispatched = plan
                .reuse
                .iter()
                .map(|(t, c)| dispatched(t, Some(c), true))
                .chain(plan.send.iter().map(|t| dispatched(t, None, false)))
                .collect();
            skipped.extend(plan.busy.into_iter().map(|(t, reason)| Skipped {
                instance_id: t.instance_id,
                name: t.name,
                reason,
            }));
            start.skipped = skipped;
            info!(
                run_id,
                would_send = plan.send.len(),
                already_sent = plan.reuse.len(),
                "dry run: nothing sent"
            );
            return Ok(start);
        }

        let store = RunMarkerStore::new(&self.ssm, &self.config.managed_by, run_id);
        let epoch = match run_claim::decide(&store.read().await?, now) {
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
        };
        // The watch goes first: whichever step this invocation is stopped at from here on, the
        // watch finds the lease over and the run not dispatched, and takes over.
        self.enqueue(&[Envelope::new(Job::Watch(WatchJob {
            run_id: run_id.to_string(),
            started_at: request.started_at,
            instance_ids: request.instance_ids.clone(),
            check_at: request.lease_until + Duration::seconds(1),
        }))])
        .await?;
        if !store.take_lease(epoch, request.lease_until).await? {
            info!(
                run_id,
                epoch, "duplicate start: another invocation claimed this run first"
            );
            return Ok(RunStart::empty(run_id, StartStatus::HeldByAnother, false));
        }
        info!(run_id, epoch, lease_until = %request.lease_until.to_rfc3339(), "run claimed");

        let past = history::read(&self.ssm, &documents, since, run_id).await?;
        let plan = plan_dispatch(run_id, &targets, &past);
        if !plan.reuse.is_empty() {
            info!(
                run_id,
                already_sent = plan.reuse.len(),
                commands = plan.run_commands.len(),
                "this run already sent commands: tracking them, not sending again"
            );
        }
        // Instances a command of this run went to are accounted for by that command.
        skipped.retain(|s| !plan.run_instances.contains(&s.instance_id));
        let mut start = RunStart::empty(run_id, StartStatus::Dispatched, false);
        start.commands = plan.run_commands.clone();
        start.dispatched = plan
            .reuse
            .iter()
            .map(|(t, c)| dispatched(t, Some(c), true))
            .collect();
        for (target, reason) in plan.busy {
            warn!(run_id, instance_id = %target.instance_id, reason = %reason, "skipped: not frozen twice");
            skipped.push(Skipped {
                instance_id: target.instance_id,
                name: target.name,
                reason,
            });
        }
        start.skipped = skipped;
        self.send_all(&mut start, plan.send, since).await?;

        let command_deadline = Utc::now() + self.in_flight_window() + Duration::minutes(5);
        let mut jobs: Vec<Envelope> = start
            .dispatched
            .iter()
            .filter_map(|d| {
                Some(Envelope::new(Job::Instance(InstanceJob {
                    run_id: run_id.to_string(),
                    instance_id: d.instance_id.clone(),
                    name: d.name.clone(),
                    command_id: d.command_id.clone()?,
                    volumes: d.volumes.clone(),
                    stage: Stage::Command,
                    stage_deadline: command_deadline,
                    attempt: 0,
                })))
            })
            .collect();
        jobs.push(Envelope::new(Job::Run(RunJob {
            run_id: run_id.to_string(),
            started_at: request.started_at,
            deadline: command_deadline
                + Duration::seconds(i64::from(self.config.snapshot_completion_timeout_seconds))
                + Duration::minutes(5),
            commands: start.commands.clone(),
            skipped: start.skipped.clone(),
            unsent: start.unsent.clone(),
            attempt: 0,
        })));
        self.enqueue(&jobs).await?;
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

    /// Sends the command to `targets`, at most 50 a call. A throttled call is tried again after
    /// a pause; a call whose outcome is unknown is tried again only for the instances the
    /// history does not show it reached. If calls still fail, the error ends the invocation
    /// and the run's watch finishes the dispatch once this invocation's lease is over.
    async fn send_all(
        &self,
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
            for plan in plan_commands(&targets) {
                match dispatch::send(&self.ssm, &self.config, &run_id, &plan).await {
                    Ok(command_id) => {
                        info!(run_id = %run_id, command_id = %command_id, instances = plan.targets.len(), exclude_boot_volume = plan.exclude_boot_volume, "command sent");
                        start.commands.push(RunCommand {
                            command_id: command_id.clone(),
                            exclude_boot_volume: plan.exclude_boot_volume,
                            instances: plan.targets.len(),
                        });
                        start.dispatched.extend(
                            plan.targets
                                .iter()
                                .map(|t| dispatched(t, Some(&command_id), false)),
                        );
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
            let Some(failure) = last_error else { break };
            attempt += 1;
            if attempt >= SEND_ATTEMPTS {
                error!(run_id = %run_id, instances = again.len(), "dispatch interrupted: the run's watch takes over when this invocation's lease ends");
                return Err(match failure {
                    SendFailure::Throttled(e)
                    | SendFailure::Refused(e)
                    | SendFailure::Unknown(e) => e,
                });
            }
            tokio::time::sleep(StdDuration::from_millis(250 << attempt)).await;
            if !unknown {
                targets = again;
                continue;
            }
            // Whether the unanswered calls went through, only the history can say.
            let past = history::read(&self.ssm, &self.vss_documents(), since, &run_id).await?;
            let plan = plan_dispatch(&run_id, &again, &past);
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

    /// A watch message: nothing to do if the run is dispatched; look again when a live lease
    /// ends; take the run over when its lease ended without a dispatch.
    pub(crate) async fn watch_run(
        &self,
        job: WatchJob,
        lease_until: DateTime<Utc>,
    ) -> Result<(), Error> {
        let store = RunMarkerStore::new(&self.ssm, &self.config.managed_by, &job.run_id);
        match run_claim::decide(&store.read().await?, Utc::now()) {
            Claim::Dispatched | Claim::Reported => {
                info!(run_id = %job.run_id, "watch: the run is dispatched");
                Ok(())
            }
            Claim::Held { until, .. } => {
                info!(run_id = %job.run_id, held_until = %until.to_rfc3339(), "watch: the run is still being dispatched");
                self.requeue(Job::Watch(WatchJob {
                    check_at: until + Duration::seconds(1),
                    ..job
                }))
                .await
            }
            Claim::Take { epoch } => {
                warn!(run_id = %job.run_id, epoch, "watch: the run's dispatch was interrupted; taking over");
                self.start_run(&RunRequest {
                    run_id: job.run_id,
                    instance_ids: job.instance_ids,
                    dry_run: false,
                    started_at: job.started_at,
                    lease_until,
                })
                .await
                .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_reaches_back_to_the_run_and_to_any_command_still_running() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let window = Duration::minutes(25);
        // A fresh run: the in-flight window decides.
        assert_eq!(history_since(now, now, window), now - Duration::minutes(35));
        // A takeover of a run that started two hours ago: the run's start decides.
        let started = now - Duration::hours(2);
        assert_eq!(
            history_since(started, now, window),
            started - Duration::minutes(10)
        );
    }
}
