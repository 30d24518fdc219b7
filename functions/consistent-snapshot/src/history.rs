//! The SSM command history of the VSS documents, read before anything is sent.
//!
//! Dispatch is check-then-act: an instance this run already sent a command to is tracked, not
//! sent to again, and an instance with another VSS command in flight (another run, or one an
//! operator started by hand) is not frozen a second time: VSS takes one shadow copy at a time.
//! `plan_dispatch` is the pure decision; `read` is the SSM edge.

use std::collections::BTreeSet;

use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey};
use chrono::{DateTime, Utc};

use crate::dispatch::COMMENT_PREFIX;
use crate::error::{aws, Error};
use crate::fleet::{SkipReason, Target};
use crate::job::RunCommand;
use crate::outcome::is_final_status;

/// One VSS command from SSM's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastCommand {
    pub command_id: String,
    /// The run that sent it, read from its Comment; `None` for a command sent some other way.
    pub run_id: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub instance_ids: Vec<String>,
    pub exclude_boot_volume: bool,
    /// The command's status as SSM reports it (`Success`, `Failed`, `InProgress`, …).
    pub status: String,
    /// Whether the command as a whole has reached a final status.
    pub finished: bool,
    /// For an unfinished command of another run: the instances whose invocation is not final.
    /// `None` when not asked (every instance of an unfinished command then counts as busy).
    pub in_flight_on: Option<BTreeSet<String>>,
}

impl PastCommand {
    fn busy_on(&self, instance_id: &str) -> bool {
        if self.finished {
            return false;
        }
        match &self.in_flight_on {
            Some(busy) => busy.contains(instance_id),
            None => self.instance_ids.iter().any(|i| i == instance_id),
        }
    }
}

/// The run id a command's Comment carries, if this tool sent it.
pub fn run_id_of_comment(comment: &str) -> Option<&str> {
    comment
        .strip_prefix(COMMENT_PREFIX)
        .filter(|id| crate::event::is_run_id(id))
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
pub fn plan_dispatch(run_id: &str, targets: &[Target], history: &[PastCommand]) -> DispatchPlan {
    let mut ours: Vec<&PastCommand> = history
        .iter()
        .filter(|c| c.run_id.as_deref() == Some(run_id))
        .collect();
    // The first command of the run to reach an instance is the one tracked.
    ours.sort_by(|a, b| (a.requested_at, &a.command_id).cmp(&(b.requested_at, &b.command_id)));
    let mut plan = DispatchPlan {
        run_commands: ours
            .iter()
            .map(|c| RunCommand {
                command_id: c.command_id.clone(),
                exclude_boot_volume: c.exclude_boot_volume,
                instances: c.instance_ids.len(),
            })
            .collect(),
        run_instances: ours
            .iter()
            .flat_map(|c| c.instance_ids.iter().cloned())
            .collect(),
        ..DispatchPlan::default()
    };
    for target in targets {
        let id = target.instance_id.as_str();
        if let Some(command) = ours.iter().find(|c| c.instance_ids.iter().any(|i| i == id)) {
            plan.reuse
                .push((target.clone(), command.command_id.clone()));
            continue;
        }
        let running = history
            .iter()
            .filter(|c| c.run_id.as_deref() != Some(run_id) && c.busy_on(id))
            .min_by(|a, b| (a.requested_at, &a.command_id).cmp(&(b.requested_at, &b.command_id)));
        match running {
            Some(other) => plan.busy.push((
                target.clone(),
                SkipReason::VssInProgress {
                    command_id: other.command_id.clone(),
                    run_id: other.run_id.clone(),
                },
            )),
            None => plan.send.push(target.clone()),
        }
    }
    plan
}

/// Reads the commands of `documents` requested since `since`, and for unfinished commands of
/// other runs, which of their instances are still busy.
pub async fn read(
    ssm: &aws_sdk_ssm::Client,
    documents: &[&str],
    since: DateTime<Utc>,
    run_id: &str,
) -> Result<Vec<PastCommand>, Error> {
    let mut found = list(ssm, documents, since, &format!("run {run_id}")).await?;
    for command in found
        .iter_mut()
        .filter(|c| !c.finished && c.run_id.as_deref() != Some(run_id))
    {
        command.in_flight_on = Some(in_flight_instances(ssm, command).await?);
    }
    Ok(found)
}

/// The commands of `documents` requested since `since`, every page; `why` says in an error
/// what they were read for.
pub async fn list(
    ssm: &aws_sdk_ssm::Client,
    documents: &[&str],
    since: DateTime<Utc>,
    why: &str,
) -> Result<Vec<PastCommand>, Error> {
    let mut found = Vec::new();
    for document in documents {
        let mut pages = ssm
            .list_commands()
            .filters(
                CommandFilter::builder()
                    .key(CommandFilterKey::DocumentName)
                    .value(*document)
                    .build()
                    .map_err(|e| Error::Event(format!("ListCommands filter: {e}")))?,
            )
            .filters(
                CommandFilter::builder()
                    .key(CommandFilterKey::InvokedAfter)
                    .value(since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .build()
                    .map_err(|e| Error::Event(format!("ListCommands filter: {e}")))?,
            )
            .max_results(50)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                aws(
                    "ListCommands",
                    format!("{document} since {} ({why})", since.to_rfc3339()),
                    e,
                )
            })?;
            for command in page.commands() {
                let (Some(command_id), Some(requested)) =
                    (command.command_id(), command.requested_date_time())
                else {
                    continue;
                };
                let requested_at = DateTime::from_timestamp(requested.secs(), 0).unwrap_or(since);
                // The filters are the service's; checking them again costs nothing.
                if command.document_name() != Some(*document) || requested_at < since {
                    continue;
                }
                let status = command
                    .status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                let exclude_boot_volume = command
                    .parameters()
                    .and_then(|p| p.get("ExcludeBootVolume"))
                    .and_then(|v| v.first())
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                found.push(PastCommand {
                    command_id: command_id.to_string(),
                    run_id: command
                        .comment()
                        .and_then(run_id_of_comment)
                        .map(str::to_string),
                    requested_at,
                    instance_ids: command.instance_ids().to_vec(),
                    exclude_boot_volume,
                    finished: is_final_status(&status),
                    status,
                    in_flight_on: None,
                });
            }
        }
    }
    Ok(found)
}

/// One instance's invocation of a command, as `ListCommandInvocations` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub instance_id: String,
    pub status: String,
    pub status_details: String,
    /// The plugins' output (first 2,500 characters each), when asked for with `details`.
    pub output: String,
}

/// Every invocation of a command, every page; with `details`, their output too.
pub async fn invocations(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    details: bool,
    why: &str,
) -> Result<Vec<Invocation>, Error> {
    let mut pages = ssm
        .list_command_invocations()
        .command_id(command_id)
        .details(details)
        .max_results(50)
        .into_paginator()
        .send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            aws(
                "ListCommandInvocations",
                format!("command {command_id} ({why})"),
                e,
            )
        })?;
        for inv in page.command_invocations() {
            let Some(instance_id) = inv.instance_id() else {
                continue;
            };
            found.push(Invocation {
                instance_id: instance_id.to_string(),
                status: inv
                    .status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                status_details: inv.status_details().unwrap_or_default().to_string(),
                output: inv
                    .command_plugins()
                    .iter()
                    .filter_map(|p| p.output())
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
    }
    Ok(found)
}

/// The instances of an unfinished command whose invocation is not final. An instance SSM does
/// not list yet (right after sending) counts as busy.
async fn in_flight_instances(
    ssm: &aws_sdk_ssm::Client,
    command: &PastCommand,
) -> Result<BTreeSet<String>, Error> {
    let mut busy: BTreeSet<String> = command.instance_ids.iter().cloned().collect();
    for inv in invocations(ssm, &command.command_id, false, "is it still running").await? {
        if is_final_status(&inv.status) {
            busy.remove(&inv.instance_id);
        } else {
            busy.insert(inv.instance_id);
        }
    }
    Ok(busy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::AttachedVolume;
    use chrono::Duration;

    fn target(n: u32) -> Target {
        Target {
            instance_id: format!("i-{n:08x}"),
            name: format!("sql{n}"),
            exclude_boot_volume: false,
            volumes: vec![AttachedVolume {
                volume_id: format!("vol-{n}"),
                device: "xvdf".into(),
            }],
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
            status: "InProgress".into(),
            finished: false,
            in_flight_on: None,
        }
    }

    #[test]
    fn with_no_history_every_target_is_sent() {
        let targets = [target(1), target(2)];
        let plan = plan_dispatch("r1", &targets, &[]);
        assert_eq!(plan.send, targets.to_vec());
        assert!(plan.reuse.is_empty() && plan.busy.is_empty() && plan.run_commands.is_empty());
    }

    #[test]
    fn a_duplicate_of_the_run_reuses_its_first_command_and_sends_only_the_rest() {
        let history = [
            command("c-late", Some("r1"), 1, &[1]),
            command("c-early", Some("r1"), 2, &[1, 2]),
        ];
        let plan = plan_dispatch("r1", &[target(1), target(2), target(3)], &history);
        assert_eq!(plan.send, vec![target(3)]);
        assert_eq!(
            plan.reuse,
            vec![
                (target(1), "c-early".to_string()),
                (target(2), "c-early".to_string())
            ]
        );
        assert_eq!(plan.run_commands.len(), 2);
        assert_eq!(plan.run_commands[0].command_id, "c-early");
        assert_eq!(plan.run_commands[0].instances, 2);
        assert_eq!(plan.run_instances.len(), 2);
    }

    #[test]
    fn another_command_in_flight_makes_the_instance_busy_until_it_is_final() {
        let mut other = command("c-other", Some("r0"), 5, &[1, 2]);
        other.in_flight_on = Some([format!("i-{:08x}", 1)].into());
        let mut manual = command("c-manual", None, 3, &[3]);
        let plan = plan_dispatch(
            "r1",
            &[target(1), target(2), target(3)],
            &[other, manual.clone()],
        );
        assert_eq!(plan.send, vec![target(2)]);
        assert_eq!(
            plan.busy,
            vec![
                (
                    target(1),
                    SkipReason::VssInProgress {
                        command_id: "c-other".into(),
                        run_id: Some("r0".into())
                    }
                ),
                (
                    target(3),
                    SkipReason::VssInProgress {
                        command_id: "c-manual".into(),
                        run_id: None
                    }
                )
            ]
        );
        manual.finished = true;
        let plan = plan_dispatch("r1", &[target(3)], &[manual]);
        assert_eq!(plan.send, vec![target(3)]);
    }

    #[test]
    fn only_comments_this_tool_writes_name_a_run() {
        assert_eq!(
            run_id_of_comment("ConsistentSnapshot run 20261123T000000Z-ab12cd34"),
            Some("20261123T000000Z-ab12cd34")
        );
        assert_eq!(run_id_of_comment("nightly by hand"), None);
        assert_eq!(run_id_of_comment("ConsistentSnapshot run a;b"), None);
        assert_eq!(
            run_id_of_comment(&crate::dispatch::comment("r-7")),
            Some("r-7")
        );
    }
}
