//! Dispatch, as pure decisions: which instances go in which command with which parameters, and,
//! after reading SSM's history, which targets to send to, which to track (this run already
//! sent to them) and which to leave alone (another VSS command is running there: VSS takes one
//! shadow copy at a time, and an instance is not frozen twice).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::{Config, VSS_DOCUMENTS};
use crate::jobs::{Envelope, InstanceJob, Job, RunCommand, RunJob, Skipped, Unsent};
use crate::model::catalog::ManifestEntry;
use crate::model::command::PastCommand;
use crate::model::fleet::{AttachedVolume, SkipReason, Target, VssOptions};
use crate::model::tags::{sanitize_tag_text, TAG_MANAGED_BY, TAG_RUN_ID};

/// SendCommand takes at most 50 instance ids.
pub const MAX_INSTANCES_PER_COMMAND: usize = 50;

/// One SendCommand: instances that share the same parameters, at most 50 of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPlan {
    pub exclude_boot_volume: bool,
    pub options: VssOptions,
    pub targets: Vec<Target>,
}

/// Groups targets by the parameters they need (in a fixed order: the deployment's common case
/// first) and cuts each group into commands of at most 50.
pub fn plan_commands(targets: Vec<Target>) -> Vec<CommandPlan> {
    // The targets are moved, not copied: a dispatch of many thousand servers holds them once.
    let mut groups: BTreeMap<(bool, VssOptions), Vec<Target>> = BTreeMap::new();
    for target in targets {
        groups
            .entry((target.exclude_boot_volume, target.options))
            .or_default()
            .push(target);
    }
    let mut plans = Vec::new();
    for ((exclude_boot_volume, options), group) in groups {
        let mut group = group.into_iter();
        loop {
            let chunk: Vec<Target> = group.by_ref().take(MAX_INSTANCES_PER_COMMAND).collect();
            if chunk.is_empty() {
                break;
            }
            plans.push(CommandPlan {
                exclude_boot_volume,
                options,
                targets: chunk,
            });
        }
    }
    plans
}

/// SSM's code for a SendCommand refused because one of its instances is not a managed
/// instance it can reach (deregistered, terminated, not running): the whole call is refused and
/// the answer does not say which instance.
pub const INVALID_INSTANCE_CODE: &str = "InvalidInstanceId";

impl CommandPlan {
    /// A command refused with `INVALID_INSTANCE_CODE`, halved to find the instances at fault:
    /// each half is sent on its own, and a single instance refused is that instance's own
    /// failure. Finding k bad instances among 50 costs at most about 2·k·log2(50) calls, and
    /// the healthy ones are sent in the fewest commands the halving allows. `None` for one
    /// instance (or none): nothing left to split.
    pub fn halves(self) -> Option<(CommandPlan, CommandPlan)> {
        if self.targets.len() < 2 {
            return None;
        }
        let mut first = self.targets;
        let second = first.split_off(first.len() / 2);
        let half = |targets| CommandPlan {
            exclude_boot_volume: self.exclude_boot_volume,
            options: self.options,
            targets,
        };
        Some((half(first), half(second)))
    }
}

/// The document's `tags` parameter: the run-wide contract tags. The document itself adds
/// `Device`, `AppConsistent` and `AwsVssConfig`; per-instance tags are added by the tracker.
pub fn tags_parameter(run_id: &str, managed_by: &str) -> String {
    [(TAG_RUN_ID, run_id), (TAG_MANAGED_BY, managed_by)]
        .iter()
        .map(|(k, v)| {
            format!(
                "Key={},Value={}",
                sanitize_tag_text(k),
                sanitize_tag_text(v)
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

pub fn description(run_id: &str, managed_by: &str) -> String {
    sanitize_tag_text(&format!(
        "Consistent VSS snapshot, run {run_id}, by {managed_by}"
    ))
}

/// The document's parameters for one planned command. `SaveVssMetadata`,
/// `CollectDiagnosticLogs` and `NoWriters` are sent only when on: off is the document's own default, and a
/// deployment that uses neither sends what it always did.
pub fn command_parameters(
    plan: &CommandPlan,
    config: &Config,
    run_id: &str,
) -> Vec<(&'static str, String)> {
    let mut parameters = vec![
        ("ExcludeBootVolume", flag(plan.exclude_boot_volume)),
        ("CopyOnly", flag(plan.options.copy_only)),
    ];
    if plan.options.save_vss_metadata {
        parameters.push(("SaveVssMetadata", flag(true)));
    }
    if plan.options.collect_diagnostic_logs {
        parameters.push(("CollectDiagnosticLogs", flag(true)));
    }
    if plan.options.no_writers {
        parameters.push(("NoWriters", flag(true)));
    }
    parameters.extend([
        (
            "executionTimeout",
            config.vss_execution_timeout_seconds.to_string(),
        ),
        ("description", description(run_id, &config.managed_by)),
        ("tags", tags_parameter(run_id, &config.managed_by)),
    ]);
    parameters
}

/// A boolean as the VSS documents spell it.
fn flag(value: bool) -> String {
    if value { "True" } else { "False" }.to_string()
}

/// What a dispatch does with each target after reading the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchPlan {
    /// Targets that get the command now.
    pub send: Vec<Target>,
    /// Targets this run already sent a command to, with that command: tracked, not re-sent.
    pub reuse: Vec<(Target, String)>,
    /// Targets with another VSS command in flight: reported, not frozen twice.
    pub busy: Vec<(Target, SkipReason)>,
    /// Every command this run already sent, so that the run's summary covers all of them.
    pub run_commands: Vec<RunCommand>,
    /// Every instance those commands went to (whatever preflight says of it now).
    pub run_instances: BTreeSet<String>,
}

/// Decides, for each target, whether to send, to track what this run already sent, or to
/// leave the instance to the VSS command already running there.
pub fn plan_dispatch(run_id: &str, targets: Vec<Target>, history: &[PastCommand]) -> DispatchPlan {
    let mut ours: Vec<&PastCommand> = history
        .iter()
        .filter(|c| c.run_id.as_deref() == Some(run_id))
        .collect();
    // The first command of the run to reach an instance is the one tracked.
    ours.sort_by(|a, b| (a.requested_at, &a.command_id).cmp(&(b.requested_at, &b.command_id)));
    // Each instance's first command of the run, found by id: a takeover of a large run looks
    // up thousands of instances among hundreds of commands.
    let mut first: HashMap<&str, &PastCommand> = HashMap::new();
    for command in &ours {
        for id in &command.instance_ids {
            first.entry(id.as_str()).or_insert(command);
        }
    }
    let mut plan = DispatchPlan {
        run_commands: ours
            .iter()
            .map(|c| RunCommand {
                command_id: c.command_id.clone(),
                exclude_boot_volume: c.exclude_boot_volume,
                instances: c.instance_ids.len(),
            })
            .collect(),
        run_instances: first.keys().map(|id| id.to_string()).collect(),
        ..DispatchPlan::default()
    };
    for mut target in targets {
        let id = target.instance_id.as_str();
        if let Some(command) = first.get(id) {
            // What the command was sent with, not what the tags say now: the manifest records
            // whether its set can be application consistent.
            target.options.no_writers = command.no_writers;
            plan.reuse.push((target, command.command_id.clone()));
            continue;
        }
        let running = history
            .iter()
            .filter(|c| c.run_id.as_deref() != Some(run_id) && c.busy_on(id))
            .min_by(|a, b| (a.requested_at, &a.command_id).cmp(&(b.requested_at, &b.command_id)));
        match running {
            Some(other) => {
                let reason = SkipReason::VssInProgress {
                    command_id: other.command_id.clone(),
                    run_id: other.run_id.clone(),
                };
                plan.busy.push((target, reason));
            }
            None => plan.send.push(target),
        }
    }
    plan
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

/// The longest a VSS command can be in flight on an instance: delivery, then execution.
pub fn in_flight_window(config: &Config) -> Duration {
    Duration::seconds(i64::from(config.command_delivery_timeout_seconds))
        + Duration::seconds(i64::from(config.vss_execution_timeout_seconds))
}

/// The VSS documents whose history a dispatch reads: the configured one first, then the other
/// (a command of either freezes the instance).
pub fn vss_documents(configured: &str) -> Vec<&str> {
    let mut documents = vec![configured];
    documents.extend(VSS_DOCUMENTS.iter().filter(|d| **d != configured));
    documents
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
    /// The run's dispatch failed for good: `reason` says why; nothing more is tried.
    Abandoned,
}

/// What a run did when it started: the answer to an on-demand call, and the log of a schedule.
#[derive(Debug, Clone, Serialize)]
pub struct RunStart {
    pub run_id: String,
    pub status: StartStatus,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
    /// Why the run was abandoned (`Abandoned`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub dispatched: Vec<Dispatched>,
    pub skipped: Vec<Skipped>,
    pub unsent: Vec<Unsent>,
    pub commands: Vec<RunCommand>,
    /// Set by `bounded`: how many entries each list had, when one was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_out: Option<LeftOut>,
}

/// How many entries of each list an answer left out (the whole run is in the catalog and its
/// summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub dispatched: usize,
    pub skipped: usize,
    pub unsent: usize,
    pub commands: usize,
}

/// The most entries of each list an answer holds: Lambda answers at most 6 MB, and the
/// commands are sent before the answer is, so an answer too large to send would fail a call
/// whose retry freezes the fleet again (the retry would find the run dispatched, but the
/// caller would have seen an error).
pub const ANSWER_ENTRIES: usize = 1_000;

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
    /// Recorded in the manifest; not part of the answer.
    #[serde(skip)]
    pub cost_tags: Vec<(String, String)>,
    /// Sent with `NoWriters=True` (recorded in the manifest).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_writers: bool,
}

impl RunStart {
    pub fn empty(run_id: &str, status: StartStatus, dry_run: bool) -> Self {
        RunStart {
            run_id: run_id.to_string(),
            status,
            dry_run,
            held_until: None,
            reason: None,
            dispatched: vec![],
            skipped: vec![],
            unsent: vec![],
            commands: vec![],
            left_out: None,
        }
    }

    /// The start with each list cut to `max` entries, and `left_out` saying what was cut.
    pub fn bounded(mut self, max: usize) -> Self {
        fn cut<T>(list: &mut Vec<T>, max: usize) -> usize {
            let left = list.len().saturating_sub(max);
            list.truncate(max);
            left
        }
        let left_out = LeftOut {
            dispatched: cut(&mut self.dispatched, max),
            skipped: cut(&mut self.skipped, max),
            unsent: cut(&mut self.unsent, max),
            commands: cut(&mut self.commands, max),
        };
        if left_out
            != (LeftOut {
                dispatched: 0,
                skipped: 0,
                unsent: 0,
                commands: 0,
            })
        {
            self.left_out = Some(left_out);
        }
        self
    }
}

pub fn dispatched(target: &Target, command_id: Option<&str>, reused: bool) -> Dispatched {
    dispatched_from(target.clone(), command_id, reused)
}

/// As `dispatched`, moving the target's names and volumes rather than copying them.
pub fn dispatched_from(target: Target, command_id: Option<&str>, reused: bool) -> Dispatched {
    Dispatched {
        instance_id: target.instance_id,
        name: target.name,
        volumes: target.volumes,
        command_id: command_id.map(str::to_string),
        reused,
        cost_tags: target.cost_tags,
        no_writers: target.options.no_writers,
    }
}

/// The answer of a dry run: what this run would send, and what it already sent.
pub fn dry_run_start(run_id: &str, plan: DispatchPlan, mut skipped: Vec<Skipped>) -> RunStart {
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
    start
}

/// A claimed run before it sends: the commands it already sent are tracked, the instances
/// they went to are accounted for by them (not skipped), and the busy ones are skipped.
pub fn claimed_start(run_id: &str, plan: &DispatchPlan, mut skipped: Vec<Skipped>) -> RunStart {
    skipped.retain(|s| !plan.run_instances.contains(&s.instance_id));
    let mut start = RunStart::empty(run_id, StartStatus::Dispatched, false);
    start.commands = plan.run_commands.clone();
    start.dispatched = plan
        .reuse
        .iter()
        .map(|(t, c)| dispatched(t, Some(c), true))
        .collect();
    skipped.extend(plan.busy.iter().map(|(target, reason)| Skipped {
        instance_id: target.instance_id.clone(),
        name: target.name.clone(),
        reason: reason.clone(),
    }));
    start.skipped = skipped;
    start
}

/// The tracking messages of a dispatched run, one per instance a command went to, each made
/// only when it is sent.
pub fn instance_jobs(
    start: &RunStart,
    command_deadline: DateTime<Utc>,
) -> impl Iterator<Item = Envelope> + '_ {
    start.dispatched.iter().filter_map(move |d| {
        Some(Envelope::new(Job::Instance(InstanceJob {
            run_id: start.run_id.clone(),
            instance_id: d.instance_id.clone(),
            name: d.name.clone(),
            command_id: d.command_id.clone()?,
            volumes: d.volumes.clone(),
            stage_deadline: command_deadline,
            attempt: 0,
        })))
    })
}

/// The run's own message, sent after the instances' ones: its deadline leaves the snapshots
/// `completion_timeout` to complete.
pub fn run_job(
    start: &RunStart,
    started_at: DateTime<Utc>,
    command_deadline: DateTime<Utc>,
    completion_timeout: Duration,
) -> RunJob {
    RunJob {
        run_id: start.run_id.clone(),
        started_at,
        deadline: command_deadline + completion_timeout + Duration::minutes(5),
        commands: start.commands.clone(),
        skipped: start.skipped.clone(),
        unsent: start.unsent.clone(),
        attempt: 0,
        early: false,
    }
}

/// The run's manifest: what it dispatched, one entry per instance a command went to, each
/// made only when it is written.
pub fn manifest(
    start: &RunStart,
    started_at: DateTime<Utc>,
) -> impl Iterator<Item = ManifestEntry> + '_ {
    start.dispatched.iter().filter_map(move |d| {
        Some(ManifestEntry {
            run_id: start.run_id.clone(),
            instance_id: d.instance_id.clone(),
            name: d.name.clone(),
            command_id: d.command_id.clone()?,
            volumes: d.volumes.clone(),
            started_at,
            cost_tags: d.cost_tags.clone(),
            no_writers: d.no_writers,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_holds_at_most_so_many_entries_a_list_and_says_what_it_left_out() {
        let mut start = RunStart::empty("r", StartStatus::Dispatched, false);
        start.dispatched = (0..2_500)
            .map(|n| Dispatched {
                instance_id: format!("i-{n:017x}"),
                name: format!("web{n}"),
                volumes: vec![],
                command_id: Some("c".into()),
                reused: false,
                cost_tags: vec![],
                no_writers: false,
            })
            .collect();
        start.unsent = vec![Unsent {
            instance_id: "i-1".into(),
            name: "x".into(),
            error: "AccessDenied".into(),
        }];
        let small = start.clone().bounded(ANSWER_ENTRIES);
        assert_eq!(small.dispatched.len(), ANSWER_ENTRIES);
        assert_eq!(small.unsent.len(), 1);
        assert_eq!(
            small.left_out,
            Some(LeftOut {
                dispatched: 1_500,
                skipped: 0,
                unsent: 0,
                commands: 0
            })
        );
        let json = serde_json::to_string(&small).unwrap_or_default();
        assert!(json.len() < 6 * 1024 * 1024 && json.contains("\"left_out\""));
        // A run that fits is answered whole, without the field.
        start.dispatched.truncate(10);
        let whole = start.bounded(ANSWER_ENTRIES);
        assert!(whole.left_out.is_none());
        assert!(!serde_json::to_string(&whole)
            .unwrap_or_default()
            .contains("left_out"));
    }
    use crate::model::fleet::AttachedVolume;

    fn target(i: usize, exclude: bool) -> Target {
        Target {
            instance_id: format!("i-{i:017x}"),
            name: format!("web{i}"),
            exclude_boot_volume: exclude,
            options: VssOptions::default(),
            volumes: vec![AttachedVolume {
                volume_id: format!("vol-{i}"),
                device: "xvdf".into(),
            }],
            cost_tags: vec![],
            cluster: None,
        }
    }

    #[test]
    fn commands_hold_at_most_fifty_instances_of_one_parameter_set() {
        let targets: Vec<Target> = (0..120).map(|i| target(i, i % 4 == 0)).collect();
        let plans = plan_commands(targets.clone());
        assert!(plans
            .iter()
            .all(|p| !p.targets.is_empty() && p.targets.len() <= 50));
        assert!(plans.iter().all(|p| p
            .targets
            .iter()
            .all(|t| t.exclude_boot_volume == p.exclude_boot_volume)));
        let total: usize = plans.iter().map(|p| p.targets.len()).sum();
        assert_eq!(total, 120);
        // 90 keep the boot volume (2 commands), 30 exclude it (1 command).
        assert_eq!(plans.len(), 3);
        assert!(plan_commands(Vec::new()).is_empty());
    }

    #[test]
    fn each_parameter_set_is_its_own_command_and_sends_only_the_options_it_turns_on() {
        let with = |i: usize, options: VssOptions| Target {
            options,
            ..target(i, false)
        };
        let copy_only = VssOptions {
            copy_only: true,
            ..VssOptions::default()
        };
        let metadata = VssOptions {
            save_vss_metadata: true,
            collect_diagnostic_logs: true,
            ..VssOptions::default()
        };
        let targets = vec![
            with(0, VssOptions::default()),
            with(1, copy_only),
            with(2, metadata),
            with(3, copy_only),
            with(4, VssOptions::default()),
        ];
        let plans = plan_commands(targets.clone());
        assert_eq!(plans.len(), 3, "{plans:#?}");
        assert!(plans
            .iter()
            .all(|p| p.targets.iter().all(|t| t.options == p.options)));
        let config = Config::from_lookup(|n| match n {
            "QUEUE_URL" => Some("q".to_string()),
            "QUEUE_ARN" => Some("arn:aws:sqs:eu-west-1:123456789012:q".to_string()),
            "CATALOG_TABLE" => Some("catalog".to_string()),
            _ => None,
        })
        .expect("config");
        let names = |plan: &CommandPlan| -> Vec<(&str, String)> {
            command_parameters(plan, &config, "r1")
                .into_iter()
                .filter(|(k, _)| !matches!(*k, "description" | "tags" | "executionTimeout"))
                .collect()
        };
        let of = |options: VssOptions| {
            plans
                .iter()
                .find(|p| p.options == options)
                .map(names)
                .unwrap_or_default()
        };
        assert_eq!(
            of(VssOptions::default()),
            vec![
                ("ExcludeBootVolume", "False".to_string()),
                ("CopyOnly", "False".to_string())
            ]
        );
        assert_eq!(
            of(copy_only),
            vec![
                ("ExcludeBootVolume", "False".to_string()),
                ("CopyOnly", "True".to_string())
            ]
        );
        assert_eq!(
            of(metadata),
            vec![
                ("ExcludeBootVolume", "False".to_string()),
                ("CopyOnly", "False".to_string()),
                ("SaveVssMetadata", "True".to_string()),
                ("CollectDiagnosticLogs", "True".to_string())
            ]
        );
    }

    #[test]
    fn halving_a_refused_command_isolates_the_bad_instances_in_few_calls() {
        for bad in [vec![17], vec![0, 49], vec![3, 4, 30]] {
            let plan = CommandPlan {
                exclude_boot_volume: false,
                options: VssOptions::default(),
                targets: (0..50).map(|i| target(i, false)).collect(),
            };
            let is_bad = |t: &Target| {
                bad.iter()
                    .any(|b| t.instance_id == target(*b, false).instance_id)
            };
            let (mut calls, mut sent, mut refused) = (0, Vec::new(), Vec::new());
            let mut queue = std::collections::VecDeque::from([plan]);
            while let Some(plan) = queue.pop_front() {
                calls += 1;
                if !plan.targets.iter().any(is_bad) {
                    sent.extend(plan.targets);
                    continue;
                }
                match plan.clone().halves() {
                    Some((a, b)) => queue.extend([a, b]),
                    None => refused.extend(plan.targets),
                }
            }
            assert_eq!(sent.len(), 50 - bad.len(), "{bad:?}");
            assert!(!sent.iter().any(is_bad));
            assert_eq!(refused.len(), bad.len());
            // At most 2·log2(50) ≈ 12 calls per bad instance, plus the first.
            assert!(calls <= 1 + 12 * bad.len(), "{bad:?}: {calls} calls");
        }
        assert!(CommandPlan {
            exclude_boot_volume: true,
            options: VssOptions::default(),
            targets: vec![target(1, true)]
        }
        .halves()
        .is_none());
    }

    #[test]
    fn tags_are_sanitised_for_the_document() {
        assert_eq!(sanitize_tag_text("SQL;prod,eu #1"), "SQL_prod_eu _1");
        assert_eq!(
            sanitize_tag_text("a(b).c/d\\e-f\"g'h@i_j+k:l=m{n}"),
            "a(b).c/d\\e-f\"g'h@i_j+k:l=m{n}"
        );
        assert_eq!(
            tags_parameter("20261123T000000Z-ab12", "prod;vss"),
            "Key=ConsistentSnapshot:RunId,Value=20261123T000000Z-ab12;Key=ConsistentSnapshot:ManagedBy,Value=prod_vss"
        );
    }

    fn history_target(n: u32) -> Target {
        Target {
            instance_id: format!("i-{n:08x}"),
            name: format!("sql{n}"),
            exclude_boot_volume: false,
            options: VssOptions::default(),
            volumes: vec![AttachedVolume {
                volume_id: format!("vol-{n}"),
                device: "xvdf".into(),
            }],
            cost_tags: vec![],
            cluster: None,
        }
    }

    fn command(id: &str, run: Option<&str>, minutes_ago: i64, on: &[u32]) -> PastCommand {
        PastCommand {
            command_id: id.into(),
            run_id: run.map(str::to_string),
            requested_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
                - Duration::minutes(minutes_ago),
            instance_ids: on.iter().map(|n| format!("i-{n:08x}")).collect(),
            exclude_boot_volume: false,
            no_writers: false,
            status: "InProgress".into(),
            finished: false,
            in_flight_on: None,
        }
    }

    #[test]
    fn with_no_history_every_target_is_sent() {
        let targets = [history_target(1), history_target(2)];
        let plan = plan_dispatch("r1", targets.to_vec(), &[]);
        assert_eq!(plan.send, targets.to_vec());
        assert!(plan.reuse.is_empty() && plan.busy.is_empty() && plan.run_commands.is_empty());
    }

    #[test]
    fn a_duplicate_of_the_run_reuses_its_first_command_and_sends_only_the_rest() {
        let history = [
            command("c-late", Some("r1"), 1, &[1]),
            command("c-early", Some("r1"), 2, &[1, 2]),
        ];
        let plan = plan_dispatch(
            "r1",
            vec![history_target(1), history_target(2), history_target(3)],
            &history,
        );
        assert_eq!(plan.send, vec![history_target(3)]);
        assert_eq!(
            plan.reuse,
            vec![
                (history_target(1), "c-early".to_string()),
                (history_target(2), "c-early".to_string())
            ]
        );
        assert_eq!(plan.run_commands.len(), 2);
        assert_eq!(plan.run_commands[0].command_id, "c-early");
        assert_eq!(plan.run_commands[0].instances, 2);
        assert_eq!(plan.run_instances.len(), 2);
    }

    /// A takeover records what the command it reuses was sent with: a NoWriters tag added or
    /// removed since does not change what its set can be.
    #[test]
    fn a_reused_command_s_no_writers_is_what_was_sent_not_what_the_tag_says_now() {
        let mut sent = command("c-1", Some("r1"), 2, &[1, 2]);
        sent.no_writers = true;
        let mut tagged_since = history_target(2);
        tagged_since.options.no_writers = false;
        let plan = plan_dispatch("r1", vec![history_target(1), tagged_since], &[sent]);
        assert!(plan.reuse.iter().all(|(t, _)| t.options.no_writers));
        let plain = command("c-2", Some("r2"), 2, &[1]);
        let mut untagged_since = history_target(1);
        untagged_since.options.no_writers = true;
        let plan = plan_dispatch("r2", vec![untagged_since], &[plain]);
        assert!(!plan.reuse[0].0.options.no_writers);
    }

    #[test]
    fn another_command_in_flight_makes_the_instance_busy_until_it_is_final() {
        let mut other = command("c-other", Some("r0"), 5, &[1, 2]);
        other.in_flight_on = Some([format!("i-{:08x}", 1)].into());
        let mut manual = command("c-manual", None, 3, &[3]);
        let plan = plan_dispatch(
            "r1",
            vec![history_target(1), history_target(2), history_target(3)],
            &[other, manual.clone()],
        );
        assert_eq!(plan.send, vec![history_target(2)]);
        assert_eq!(
            plan.busy,
            vec![
                (
                    history_target(1),
                    SkipReason::VssInProgress {
                        command_id: "c-other".into(),
                        run_id: Some("r0".into())
                    }
                ),
                (
                    history_target(3),
                    SkipReason::VssInProgress {
                        command_id: "c-manual".into(),
                        run_id: None
                    }
                )
            ]
        );
        manual.finished = true;
        let plan = plan_dispatch("r1", vec![history_target(3)], &[manual]);
        assert_eq!(plan.send, vec![history_target(3)]);
    }

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

    #[test]
    fn a_dry_run_answers_what_it_would_send_and_what_was_sent_and_sends_nothing() {
        let history = [command("c-early", Some("r1"), 2, &[1])];
        let mut busy = command("c-other", Some("r0"), 5, &[3]);
        busy.in_flight_on = Some([format!("i-{:08x}", 3)].into());
        let history = [history[0].clone(), busy];
        let targets = [history_target(1), history_target(2), history_target(3)];
        let plan = plan_dispatch("r1", targets.to_vec(), &history);
        let start = dry_run_start("r1", plan, vec![]);
        assert_eq!((start.status, start.dry_run), (StartStatus::DryRun, true));
        let sent: Vec<(&str, Option<&str>, bool)> = start
            .dispatched
            .iter()
            .map(|d| (d.instance_id.as_str(), d.command_id.as_deref(), d.reused))
            .collect();
        assert_eq!(
            sent,
            [
                ("i-00000001", Some("c-early"), true),
                ("i-00000002", None, false)
            ]
        );
        assert_eq!(start.skipped.len(), 1, "the busy one is skipped");
        assert!(start.commands.is_empty() && start.unsent.is_empty());
    }

    #[test]
    fn a_claimed_run_tracks_what_it_sent_and_no_longer_skips_those_instances() {
        let history = [command("c-early", Some("r1"), 2, &[1])];
        let plan = plan_dispatch("r1", vec![history_target(2)], &history);
        // i-00000001 is now stopped, so preflight skips it; but this run's command reached it.
        let skipped = vec![Skipped {
            instance_id: "i-00000001".into(),
            name: "sql1".into(),
            reason: SkipReason::NotRunning {
                state: "stopped".into(),
            },
        }];
        let start = claimed_start("r1", &plan, skipped);
        assert_eq!(start.status, StartStatus::Dispatched);
        assert!(start.skipped.is_empty(), "{:?}", start.skipped);
        assert_eq!(start.commands.len(), 1);
        assert!(
            start.dispatched.is_empty(),
            "i-00000002 is still to be sent"
        );
    }

    #[test]
    fn every_instance_sent_to_gets_a_tracking_job_and_a_manifest_entry_and_the_run_one() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut start = RunStart::empty("r1", StartStatus::Dispatched, false);
        start.dispatched = vec![
            dispatched(&history_target(1), Some("c1"), false),
            dispatched(&history_target(2), None, false),
        ];
        start.commands = vec![RunCommand {
            command_id: "c1".into(),
            exclude_boot_volume: false,
            instances: 1,
        }];
        let jobs: Vec<Envelope> = instance_jobs(&start, at + Duration::minutes(30)).collect();
        assert_eq!(jobs.len(), 1, "no job for an instance without a command");
        let Job::Instance(first) = &jobs[0].job else {
            panic!("{:?}", jobs[0])
        };
        assert_eq!(
            (first.command_id.as_str(), first.stage_deadline),
            ("c1", at + Duration::minutes(30))
        );
        let entries: Vec<ManifestEntry> = manifest(&start, at).collect();
        assert_eq!(entries.len(), 1, "no manifest entry without a command");
        assert_eq!(entries[0].command_id, "c1");
        let run = run_job(&start, at, at + Duration::minutes(30), Duration::hours(24));
        assert_eq!(
            run.deadline,
            at + Duration::minutes(35) + Duration::hours(24)
        );
        assert_eq!(run.commands.len(), 1);
    }
}
