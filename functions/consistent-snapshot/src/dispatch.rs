//! Sending the VSS document: which instances go in which command, with which parameters.
//!
//! `plan_commands`, `tags_parameter` and `sanitize_tag_text` are pure; `send` is the AWS edge.

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::Client as SsmClient;

use crate::config::Config;
use crate::error::{aws, is_throttling, Error};
use crate::fleet::Target;

/// SendCommand takes at most 50 instance ids.
pub const MAX_INSTANCES_PER_COMMAND: usize = 50;
/// SendCommand's Comment is at most 100 characters.
pub const MAX_COMMENT: usize = 100;

pub const TAG_RUN_ID: &str = "ConsistentSnapshot:RunId";
pub const TAG_INSTANCE_ID: &str = "ConsistentSnapshot:InstanceId";
pub const TAG_MANAGED_BY: &str = "ConsistentSnapshot:ManagedBy";
/// The Comment of every command this tool sends starts so, followed by the run id.
pub const COMMENT_PREFIX: &str = "ConsistentSnapshot run ";

/// One SendCommand: instances that share the same parameters, at most 50 of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPlan {
    pub exclude_boot_volume: bool,
    pub targets: Vec<Target>,
}

/// Groups targets by the parameters they need and cuts each group into commands of at most 50.
pub fn plan_commands(targets: &[Target]) -> Vec<CommandPlan> {
    let mut plans = Vec::new();
    for exclude in [false, true] {
        let group: Vec<Target> = targets
            .iter()
            .filter(|t| t.exclude_boot_volume == exclude)
            .cloned()
            .collect();
        for chunk in group.chunks(MAX_INSTANCES_PER_COMMAND) {
            plans.push(CommandPlan {
                exclude_boot_volume: exclude,
                targets: chunk.to_vec(),
            });
        }
    }
    plans
}

/// Keeps only the characters the VSS documents accept in a tag (letters, digits, space and
/// `( ) . / \ - " ' @ _ + : = { }`); anything else, `;` and `,` included, becomes `_`.
pub fn sanitize_tag_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ().\\/-\"'@_+:={}".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
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

/// The command's Comment, which carries the run id (at most 100 characters).
pub fn comment(run_id: &str) -> String {
    let mut text = format!("{COMMENT_PREFIX}{run_id}");
    text.truncate(MAX_COMMENT);
    text
}

pub fn description(run_id: &str, managed_by: &str) -> String {
    sanitize_tag_text(&format!(
        "Consistent VSS snapshot, run {run_id}, by {managed_by}"
    ))
}

fn flag(value: bool) -> String {
    if value { "True" } else { "False" }.to_string()
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
}

/// Sends one planned command once; answers its command id.
///
/// SendCommand is not idempotent (SSM takes no client token), so the SDK must not retry it
/// blindly: a retry after a lost answer would freeze every instance a second time. Retries
/// are left to the caller, which reads the history first when the outcome is unknown.
pub async fn send(
    ssm: &SsmClient,
    config: &Config,
    run_id: &str,
    plan: &CommandPlan,
) -> Result<String, SendFailure> {
    let ids: Vec<String> = plan.targets.iter().map(|t| t.instance_id.clone()).collect();
    let subject = format!(
        "{} instances from {} (run {run_id})",
        ids.len(),
        ids.first().map(String::as_str).unwrap_or("-")
    );
    let result = ssm
        .send_command()
        .document_name(&config.ssm_document)
        .set_instance_ids(Some(ids))
        .comment(comment(run_id))
        .timeout_seconds(config.command_delivery_timeout_seconds as i32)
        .parameters("ExcludeBootVolume", vec![flag(plan.exclude_boot_volume)])
        .parameters("CopyOnly", vec![flag(config.vss_copy_only)])
        .parameters(
            "executionTimeout",
            vec![config.vss_execution_timeout_seconds.to_string()],
        )
        .parameters("description", vec![description(run_id, &config.managed_by)])
        .parameters("tags", vec![tags_parameter(run_id, &config.managed_by)])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::AttachedVolume;

    fn target(i: usize, exclude: bool) -> Target {
        Target {
            instance_id: format!("i-{i:017x}"),
            name: format!("web{i}"),
            exclude_boot_volume: exclude,
            volumes: vec![AttachedVolume {
                volume_id: format!("vol-{i}"),
                device: "xvdf".into(),
            }],
        }
    }

    #[test]
    fn commands_hold_at_most_fifty_instances_of_one_parameter_set() {
        let targets: Vec<Target> = (0..120).map(|i| target(i, i % 4 == 0)).collect();
        let plans = plan_commands(&targets);
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
        assert!(plan_commands(&[]).is_empty());
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

    #[test]
    fn the_comment_fits_and_carries_the_run_id() {
        assert_eq!(comment("r1"), "ConsistentSnapshot run r1");
        assert_eq!(comment(&"x".repeat(200)).len(), MAX_COMMENT);
    }
}
