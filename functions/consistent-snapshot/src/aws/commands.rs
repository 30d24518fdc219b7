//! SSM: the VSS document sent to instances, the command history read before anything is sent,
//! one look at an invocation, and SSM's view of the agents.

use std::collections::{BTreeSet, HashMap};

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey, InstanceInformationStringFilter};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};

use crate::aws::{aws, each_page, utc};
use crate::config::Config;
use crate::error::{is_throttling, Error};
use crate::model::command::{
    comment, run_id_of_comment, FinalInvocation, Invocation, Look, PastCommand,
};
use crate::model::fleet::{AgentFacts, InstanceFacts};
use crate::model::state::{CommandStatus, InstanceState};

/// One SendCommand as planned: the instances and the document's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest<'a> {
    pub run_id: &'a str,
    pub instance_ids: Vec<String>,
    /// The document's parameters, each a single string.
    pub parameters: Vec<(&'static str, String)>,
}

/// Why a SendCommand did not answer a command id.
#[derive(Debug)]
pub enum SendFailure {
    /// Throttled: the command was not sent; try again after a pause.
    Throttled(Error),
    /// Refused for good (bad parameters, access denied): the command was not sent.
    Refused(Error),
    /// No answer, or a server error: the command may or may not have been sent. Only the
    /// command history can tell, so it must be read before sending again.
    Unknown(Error),
}

impl SendFailure {
    pub fn error(&self) -> &Error {
        match self {
            SendFailure::Throttled(e) | SendFailure::Refused(e) | SendFailure::Unknown(e) => e,
        }
    }

    pub fn into_error(self) -> Error {
        match self {
            SendFailure::Throttled(e) | SendFailure::Refused(e) | SendFailure::Unknown(e) => e,
        }
    }
}

/// Sends one planned command once; answers its command id.
///
/// SendCommand is not idempotent (SSM takes no client token), so the SDK must not retry it
/// blindly: a retry after a lost answer would freeze every instance a second time. Retries
/// are left to the caller, which reads the history first when the outcome is unknown.
pub async fn send(
    ssm: &aws_sdk_ssm::Client,
    config: &Config,
    request: CommandRequest<'_>,
) -> Result<String, SendFailure> {
    let subject = format!(
        "{} instances from {} (run {})",
        request.instance_ids.len(),
        request
            .instance_ids
            .first()
            .map(String::as_str)
            .unwrap_or("-"),
        request.run_id
    );
    let mut call = ssm
        .send_command()
        .document_name(&config.ssm_document)
        .set_instance_ids(Some(request.instance_ids))
        .comment(comment(request.run_id))
        .timeout_seconds(config.command_delivery_timeout_seconds as i32);
    for (name, value) in request.parameters {
        call = call.parameters(name, vec![value]);
    }
    sent(call, subject).await
}

/// Sends the deployment's readiness probe (a fixed, read-only document without parameters)
/// to these instances once; answers its command id. Like the VSS command, never retried by
/// the SDK: a probe the caller does not know was sent is reported as not answered.
pub async fn send_probe(
    ssm: &aws_sdk_ssm::Client,
    document: &str,
    instance_ids: &[String],
    timeout_seconds: u32,
) -> Result<String, SendFailure> {
    let subject = format!(
        "readiness probe {document} to {} instances from {}",
        instance_ids.len(),
        instance_ids.first().map(String::as_str).unwrap_or("-")
    );
    let call = ssm
        .send_command()
        .document_name(document)
        .set_instance_ids(Some(instance_ids.to_vec()))
        .comment(PROBE_COMMENT)
        .timeout_seconds(timeout_seconds as i32);
    sent(call, subject).await
}

/// The Comment of a readiness probe's command (never a run's: see `run_id_of_comment`).
pub const PROBE_COMMENT: &str = "ConsistentSnapshot readiness probe (read-only)";

/// One SendCommand call, without the SDK's retries; its failure classified.
async fn sent(
    call: aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder,
    subject: String,
) -> Result<String, SendFailure> {
    let result = call
        .customize()
        .config_override(
            aws_sdk_ssm::config::Builder::default().retry_config(RetryConfig::disabled()),
        )
        .send()
        .await;
    let output = match result {
        Ok(output) => output,
        Err(err) => {
            let kind = match &err {
                SdkError::ServiceError(ctx) if is_throttling(ctx.err().code()) => {
                    SendFailure::Throttled
                }
                SdkError::ServiceError(ctx) if ctx.raw().status().is_server_error() => {
                    SendFailure::Unknown
                }
                SdkError::ServiceError(_) | SdkError::ConstructionFailure(_) => {
                    SendFailure::Refused
                }
                _ => SendFailure::Unknown,
            };
            return Err(kind(aws("SendCommand", subject, err)));
        }
    };
    output
        .command()
        .and_then(|c| c.command_id())
        .map(str::to_string)
        .ok_or_else(|| {
            SendFailure::Unknown(Error::Aws {
                call: "SendCommand",
                subject,
                code: "NoCommandId".into(),
                message: "the answer carried no command id".into(),
            })
        })
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
    let filter = |key, value: String| {
        CommandFilter::builder()
            .key(key)
            .value(value)
            .build()
            .map_err(|e| Error::Event(format!("ListCommands filter: {e}")))
    };
    let mut found = Vec::new();
    for document in documents {
        let pages = ssm
            .list_commands()
            .filters(filter(
                CommandFilterKey::DocumentName,
                document.to_string(),
            )?)
            .filters(filter(
                CommandFilterKey::InvokedAfter,
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )?)
            .max_results(50)
            .into_paginator()
            .send();
        let subject = format!("{document} since {} ({why})", since.to_rfc3339());
        each_page(pages, "ListCommands", &subject, |page| {
            for command in page.commands() {
                let (Some(command_id), Some(requested)) =
                    (command.command_id(), command.requested_date_time())
                else {
                    continue;
                };
                let requested_at = utc(requested).unwrap_or(since);
                // The filters are the service's; checking them again costs nothing.
                if command.document_name() != Some(*document) || requested_at < since {
                    continue;
                }
                let status =
                    CommandStatus::from(command.status().map(|s| s.as_str()).unwrap_or_default());
                let flag = |name: &str| {
                    command
                        .parameters()
                        .and_then(|p| p.get(name))
                        .and_then(|v| v.first())
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                };
                let (exclude_boot_volume, no_writers) =
                    (flag("ExcludeBootVolume"), flag("NoWriters"));
                found.push(PastCommand {
                    command_id: command_id.to_string(),
                    run_id: command
                        .comment()
                        .and_then(run_id_of_comment)
                        .map(str::to_string),
                    requested_at,
                    instance_ids: command.instance_ids().to_vec(),
                    exclude_boot_volume,
                    no_writers,
                    finished: status.is_final(),
                    status,
                    in_flight_on: None,
                });
            }
        })
        .await?;
    }
    Ok(found)
}

/// Every invocation of a command, every page; with `details`, their output too.
pub async fn invocations(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    details: bool,
    why: &str,
) -> Result<Vec<Invocation>, Error> {
    let pages = ssm
        .list_command_invocations()
        .command_id(command_id)
        .details(details)
        .max_results(50)
        .into_paginator()
        .send();
    let mut found = Vec::new();
    let subject = format!("command {command_id} ({why})");
    each_page(pages, "ListCommandInvocations", &subject, |page| {
        for inv in page.command_invocations() {
            let Some(instance_id) = inv.instance_id() else {
                continue;
            };
            found.push(Invocation {
                instance_id: instance_id.to_string(),
                status: inv.status().map(|s| s.as_str()).unwrap_or_default().into(),
                status_details: inv.status_details().unwrap_or_default().to_string(),
                output: inv
                    .command_plugins()
                    .iter()
                    .filter_map(|p| p.output())
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
    })
    .await?;
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
        if inv.status.is_final() {
            busy.remove(&inv.instance_id);
        } else {
            busy.insert(inv.instance_id);
        }
    }
    Ok(busy)
}

/// One look at an invocation through GetCommandInvocation.
pub async fn look(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    instance_id: &str,
) -> Result<Look, Error> {
    match ssm
        .get_command_invocation()
        .command_id(command_id)
        .instance_id(instance_id)
        .send()
        .await
    {
        Ok(out) => {
            let status = CommandStatus::from(out.status().map(|s| s.as_str()).unwrap_or_default());
            if !status.is_final() {
                return Ok(Look::NotYet {
                    status: status.to_string(),
                });
            }
            let stdout = out.standard_output_content().unwrap_or_default();
            let stderr = out.standard_error_content().unwrap_or_default();
            Ok(Look::Final(FinalInvocation {
                status,
                status_details: out.status_details().unwrap_or_default().to_string(),
                output: format!("{stdout}\n{stderr}"),
            }))
        }
        Err(err) => {
            let is_not_yet = err
                .as_service_error()
                .is_some_and(|e| e.is_invocation_does_not_exist());
            if is_not_yet {
                Ok(Look::NotYet {
                    status: "not yet registered".into(),
                })
            } else {
                Err(aws(
                    "GetCommandInvocation",
                    format!("{instance_id} (command {command_id})"),
                    err,
                ))
            }
        }
    }
}

/// SSM's view of the agents of the running ones of these instances: no other state can pass
/// preflight or be reported ready. Platform is not filtered, since SSM's PlatformType is one
/// way Windows is recognised.
pub async fn running_agents(
    ssm: &aws_sdk_ssm::Client,
    instances: &[InstanceFacts],
) -> Result<HashMap<String, AgentFacts>, Error> {
    let running: Vec<String> = instances
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .map(|i| i.instance_id.clone())
        .collect();
    agents(ssm, &running).await
}

/// DescribeInstanceInformation calls `agents` keeps in flight (each names at most 50
/// instances: a fleet of 20,000 takes 400 of them). SSM publishes no rate for it; the SDK
/// retries what it throttles.
const AGENT_READS_AT_ONCE: usize = 4;

/// SSM's view of the agents of these instances; an instance missing from the map is not
/// registered with SSM.
pub async fn agents(
    ssm: &aws_sdk_ssm::Client,
    instance_ids: &[String],
) -> Result<HashMap<String, AgentFacts>, Error> {
    let mut agents = HashMap::new();
    // The InstanceIds filter takes at most 50 values.
    let mut reads = stream::iter(instance_ids.chunks(50))
        .map(|chunk| agents_of(ssm, chunk))
        .buffer_unordered(AGENT_READS_AT_ONCE);
    while let Some(read) = reads.next().await {
        agents.extend(read?);
    }
    Ok(agents)
}

/// SSM's view of the agents of at most 50 instances.
async fn agents_of(
    ssm: &aws_sdk_ssm::Client,
    chunk: &[String],
) -> Result<Vec<(String, AgentFacts)>, Error> {
    let filter = InstanceInformationStringFilter::builder()
        .key("InstanceIds")
        .set_values(Some(chunk.to_vec()))
        .build()
        .map_err(|e| Error::Event(format!("building the SSM filter: {e}")))?;
    let pages = ssm
        .describe_instance_information()
        .filters(filter)
        .max_results(50)
        .into_paginator()
        .send();
    let subject = format!(
        "{} instances from {}",
        chunk.len(),
        chunk.first().map(String::as_str).unwrap_or("-")
    );
    let mut agents = Vec::new();
    each_page(pages, "DescribeInstanceInformation", &subject, |page| {
        for info in page.instance_information_list() {
            let Some(id) = info.instance_id() else {
                continue;
            };
            agents.push((
                id.to_string(),
                AgentFacts {
                    ping_status: info
                        .ping_status()
                        .map(|p| p.as_str())
                        .unwrap_or_default()
                        .into(),
                    agent_version: info.agent_version().unwrap_or_default().to_string(),
                    platform_type: info.platform_type().map(|p| p.as_str().to_string()),
                    platform_version: info.platform_version().map(str::to_string),
                },
            ));
        }
    })
    .await?;
    Ok(agents)
}
