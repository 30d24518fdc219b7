//! SSM Run Command as plain facts: the commands of the VSS documents in SSM's history, their
//! invocations, and the comment that ties a command to a run.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ids::is_run_id;
use crate::model::state::CommandStatus;

/// The Comment of every command this tool sends starts so, followed by the run id.
pub const COMMENT_PREFIX: &str = "ConsistentSnapshot run ";
/// SendCommand's Comment is at most 100 characters.
pub const MAX_COMMENT: usize = 100;

/// The command's Comment, which carries the run id (at most 100 characters).
pub fn comment(run_id: &str) -> String {
    let mut text = format!("{COMMENT_PREFIX}{run_id}");
    text.truncate(MAX_COMMENT);
    text
}

/// The run id a command's Comment carries, if this tool sent it.
pub fn run_id_of_comment(comment: &str) -> Option<&str> {
    comment
        .strip_prefix(COMMENT_PREFIX)
        .filter(|id| is_run_id(id))
}

/// One VSS command from SSM's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastCommand {
    pub command_id: String,
    /// The run that sent it, read from its Comment; `None` for a command sent some other way.
    pub run_id: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub instance_ids: Vec<String>,
    pub exclude_boot_volume: bool,
    /// Sent with `NoWriters=True`.
    pub no_writers: bool,
    /// The command's status as SSM reports it.
    pub status: CommandStatus,
    /// Whether the command as a whole has reached a final status.
    pub finished: bool,
    /// For an unfinished command of another run: the instances whose invocation is not final.
    /// `None` when not asked (every instance of an unfinished command then counts as busy).
    pub in_flight_on: Option<BTreeSet<String>>,
}

impl PastCommand {
    /// Whether this command may still be running VSS on the instance.
    pub fn busy_on(&self, instance_id: &str) -> bool {
        if self.finished {
            return false;
        }
        match &self.in_flight_on {
            Some(busy) => busy.contains(instance_id),
            None => self.instance_ids.iter().any(|i| i == instance_id),
        }
    }
}

/// One instance's invocation of a command, as `ListCommandInvocations` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub instance_id: String,
    pub status: CommandStatus,
    pub status_details: String,
    /// The plugins' output (first 2,500 characters each), when asked for with `details`.
    pub output: String,
}

/// A final SSM invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalInvocation {
    pub status: CommandStatus,
    pub status_details: String,
    pub output: String,
}

/// What SSM says of an invocation right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// Not final yet (`InvocationDoesNotExist` right after sending reads as `NotYet` too).
    NotYet {
        status: String,
    },
    Final(FinalInvocation),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_comments_this_tool_writes_name_a_run() {
        assert_eq!(
            run_id_of_comment("ConsistentSnapshot run 20261123T000000Z-ab12cd34"),
            Some("20261123T000000Z-ab12cd34")
        );
        assert_eq!(run_id_of_comment("nightly by hand"), None);
        assert_eq!(run_id_of_comment("ConsistentSnapshot run a;b"), None);
        assert_eq!(run_id_of_comment(&comment("r-7")), Some("r-7"));
    }

    #[test]
    fn the_comment_fits_and_carries_the_run_id() {
        assert_eq!(comment("r1"), "ConsistentSnapshot run r1");
        assert_eq!(comment(&"x".repeat(200)).len(), MAX_COMMENT);
    }
}
