//! The jobs on the tracking queue: what a message carries between two looks at the world.
//!
//! The whole state machine, on one screen. Every job is check-then-act and keyed by ids, so a
//! duplicated, re-delivered or late message converges on the same end state. Each row's
//! successor is queued *before* the marker that ends the row is written: a Lambda stopped
//! between the two leaves a redelivery that queues it again, never a run that stops.
//!
//! | job       | queued by                                   | waits for (backoff, ≤ 900 s)                          | writes                                                  | then                      |
//! |-----------|---------------------------------------------|-------------------------------------------------------|---------------------------------------------------------|---------------------------|
//! | watch     | a run's start, before it claims the run     | the claimant's lease to end (`check_at`)              | takes the dispatch over if not `dispatched`; closes it after 3 failures, `abandoned` after one more | itself while a lease lives |
//! | instance  | the dispatch, one per instance sent to      | the invocation to be final, then its snapshots        | the verified set (catalog), `InstanceId`/`Name` tags    | — (the run sums up)       |
//! | run       | the dispatch, after the instance jobs; an early one when the run's last instance ended | every invocation final and every snapshot completed (an early look does not wait) | sets not yet recorded, marker `reported`, the summary   | copy (queued first)       |
//! | ended     | EventBridge (SSM's status-change event); handed back while the run's manifest is not written | ≤ 5 times, 10 s doubling                  | the instance's final result (SSM's own answer)          | the run's early look, after its last instance |
//! | copy      | the run; each pass queues its successor     | copies pending; one message per pass (`copy-pass-n`)  | copies (the run's and earlier runs' not copied yet) and their records, `copy-lease-n`, `copied` | retention (queued first)  |
//! | retention | the copy step; a pass with deletions left   | nothing                                               | deletions by the plan, marker `retained`, release       | itself until done, or 3 passes delete nothing |
//! | restore   | an on-demand restore; each waiting pass     | volumes creating, the instance stopping or starting   | volumes created, tagged, detached, attached             | itself until done/failed  |
//! | verify    | an on-demand verification; each waiting look| the verification's volumes to be created             | marker `reported` (verify id), then its volumes deleted | itself until measured     |
//! | retry     | a run whose servers' VSS freeze timed out   | the pause (`VSS_RETRY_PAUSE_SECONDS`)                 | the retry's run (`<run>-vss<n>`), started as any run     | its watch, instance and run jobs |
//!
//! Markers are create-once items of the catalog (`model::markers`, `aws::catalog`). A message
//! is only a reference: the instance's command and volumes, the run's commands and skipped
//! instances, and a restore's set are read from the catalog, and a job naming something it
//! does not hold is refused (`app::refuse`), as is a message from any queue but the
//! deployment's own. The schema of the messages is versioned (`v`): a message of an unknown
//! version or shape is a poison message, reported and left to the queue's redrive policy,
//! never guessed at.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::fleet::{AttachedVolume, SkipReason};
use crate::model::ids::{is_command_id, is_instance_id};
use crate::model::is_zero;
use crate::model::requests::RestoreMode;
use crate::model::restore::ChosenSet;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    /// The id of the message this job first came in, carried when it is handed back untried
    /// (sent again, under a new id): the claims its first delivery took stay its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(flatten)]
    pub job: Job,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// One instance's snapshot set, from its command to completed, tagged snapshots.
    Instance(InstanceJob),
    /// The whole run, which ends with the run's summary once every instance is final.
    Run(RunJob),
    /// Queued before a run is claimed: once the claimant's lease is over, finishes a dispatch
    /// that its claimant did not (because that Lambda was stopped half-way).
    Watch(WatchJob),
    /// After the summary: copies of the run's sets to the copy regions, until all are final.
    Copy(CopyJob),
    /// The run's last step: retention in every region.
    Retention(RetentionJob),
    /// Beside the copy step, with a vault account: the run's consistent sets copied into the
    /// vault, until every copy there is final.
    Vault(VaultJob),
    /// A restore between two looks (volumes being created, the instance stopping…).
    Restore(RestoreJob),
    /// A restore test: waits for the volumes, measures, deletes them, reports.
    Verify(VerifyJob),
    /// After a run's summary, when a freeze timed out: starts the retry's run of those
    /// servers once the pause is over.
    Retry(RetryJob),
    /// SSM's event that an invocation ended, handed back because the dispatch had not yet
    /// recorded its command (the event itself comes as EventBridge puts it, `ended_event`).
    Ended(EndedJob),
}

/// What EventBridge names SSM's event for one instance's invocation changing status.
pub const COMMAND_EVENT: &str = "EC2 Command Invocation Status-change Notification";

/// SSM's word that the invocation of `command_id` on `instance_id` ended: a hint only. The
/// command must be one the catalog holds for this deployment's run, and the outcome is SSM's
/// own answer to `GetCommandInvocation`, never the event's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedJob {
    pub command_id: String,
    pub instance_id: String,
    /// The status the event named, for logs.
    pub status: String,
    /// Times handed back already (the event came before the dispatch recorded its command).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

/// How often an event that came before its run's manifest is handed back, and the first wait
/// (doubling: 10, 20, 40, 80, 160 s, five minutes in all); then the instance's own polling
/// look, which never stops for want of an event, finds its end.
pub const ENDED_ATTEMPTS: u32 = 5;
pub const ENDED_WAIT_SECONDS: u32 = 10;

fn text(value: Option<&serde_json::Value>) -> &str {
    value.and_then(serde_json::Value::as_str).unwrap_or("")
}

/// Reads a message body as the SSM event an EventBridge rule puts on the queue. `None`: the
/// body is not an EventBridge event (no `detail-type`); an error says why an event is not
/// taken (another event, another account or region, a malformed field).
pub fn ended_event(body: &str, account: &str, region: &str) -> Option<Result<EndedJob, String>> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let detail_type = value.get("detail-type")?;
    Some((|| {
        if detail_type.as_str() != Some(COMMAND_EVENT) || text(value.get("source")) != "aws.ssm" {
            return Err(format!(
                "event {:?} from {:?}: only SSM's {COMMAND_EVENT:?} is taken from the queue",
                text(Some(detail_type)),
                text(value.get("source"))
            ));
        }
        let (from, at) = (text(value.get("account")), text(value.get("region")));
        if from != account || at != region {
            return Err(format!(
                "event of account {from:?} in {at:?}: only this deployment's ({account}, {region}) are taken"
            ));
        }
        let detail = value.get("detail");
        let field = |name: &str| text(detail.and_then(|d| d.get(name)));
        let (command_id, instance_id) = (field("command-id"), field("instance-id"));
        if !is_command_id(command_id) {
            return Err(format!(
                "detail.command-id {command_id:?} is not an SSM command id"
            ));
        }
        if !is_instance_id(instance_id) {
            return Err(format!(
                "detail.instance-id {instance_id:?} is not an EC2 instance id"
            ));
        }
        Ok(EndedJob {
            command_id: command_id.to_string(),
            instance_id: instance_id.to_string(),
            status: field("status").chars().take(32).collect(),
            attempt: 0,
        })
    })())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryJob {
    /// The run whose servers' freeze timed out.
    pub parent_run_id: String,
    /// The retry's own run (`<run>-vss<n>`).
    pub run_id: String,
    /// The servers to try again (each checked against the parent's sets in the catalog).
    pub instance_ids: Vec<String>,
    /// When the retry starts (the end of the pause); also its run's start time, so that a
    /// redelivered message is the same run.
    pub start_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceJob {
    pub run_id: String,
    pub instance_id: String,
    pub name: String,
    pub command_id: String,
    /// The volumes the set must contain (the boot volume left out when it was excluded).
    pub volumes: Vec<AttachedVolume>,
    /// When the command's invocation must be final (delivery and execution timeouts).
    pub stage_deadline: DateTime<Utc>,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCommand {
    pub command_id: String,
    pub exclude_boot_volume: bool,
    /// How many instances the command was sent to: right after SendCommand, SSM may list fewer
    /// invocations, and the run must not end with an instance silently missing.
    pub instances: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub instance_id: String,
    pub name: String,
    pub reason: SkipReason,
}

/// An instance whose command could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsent {
    pub instance_id: String,
    pub name: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunJob {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub commands: Vec<RunCommand>,
    pub skipped: Vec<Skipped>,
    pub unsent: Vec<Unsent>,
    pub attempt: u32,
    /// A look queued when the run's last instance ended (`tracking::count_final`), not on the
    /// backoff: it finishes the run if it can, and otherwise leaves it to the backoff's looks.
    #[serde(default, skip_serializing_if = "is_false")]
    pub early: bool,
}

impl RunJob {
    /// The run's message: its id and attempt only; the commands, skipped and unsent
    /// instances are the catalog's (`aws::catalog::Catalog::run`), so a message can neither
    /// grow past SQS's 256 KiB nor say what the run was.
    pub fn as_reference(&self) -> RunJob {
        RunJob {
            commands: Vec::new(),
            skipped: Vec::new(),
            unsent: Vec::new(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchJob {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    /// The instances an on-demand run asked for (`None`: the whole fleet).
    pub instance_ids: Option<Vec<String>>,
    /// When to look: just after the lease it watches ends.
    pub check_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyJob {
    pub run_id: String,
    /// Copies not final by then are reported as timed out.
    pub deadline: DateTime<Utc>,
    pub attempt: u32,
    /// Queued by a pass that left copies it could start sooner (a region at its limit of
    /// copies in flight, throttled, or time up): delivered after three first waits, at most
    /// `COPY_LOOK_AGAIN_SECONDS`, not on the doubling backoff.
    #[serde(default, skip_serializing_if = "is_false")]
    pub soon: bool,
    /// Earlier runs whose consistent sets are not all copied (`copy::plan::Backlog`), found by
    /// the first pass: this step copies them too. Only references: each run's sets are read
    /// from the catalog and confirmed against EC2 like the step's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backlog: Vec<String>,
}

/// How soon a copy pass that left startable copies is followed: a region's copies in flight
/// end one by one, and a free slot should not wait for the doubling backoff (up to 900 s).
pub const COPY_LOOK_AGAIN_SECONDS: u32 = 90;

fn is_false(b: &bool) -> bool {
    !*b
}

impl CopyJob {
    /// The first pass of a run's copy step: copies not final `completion_timeout_seconds`
    /// after `now` are reported as timed out.
    pub fn first(run_id: &str, now: DateTime<Utc>, completion_timeout_seconds: u32) -> Self {
        CopyJob {
            run_id: run_id.to_string(),
            deadline: now + chrono::Duration::seconds(i64::from(completion_timeout_seconds)),
            attempt: 0,
            soon: false,
            backlog: Vec::new(),
        }
    }

    /// The same step, one look later.
    pub fn next(self) -> Self {
        CopyJob {
            attempt: self.attempt + 1,
            soon: false,
            ..self
        }
    }

    /// The next look, soon: see `soon`.
    pub fn next_soon(self) -> Self {
        CopyJob {
            soon: true,
            ..self.next()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultJob {
    pub run_id: String,
    /// Vault copies not final by then are reported as timed out, and the sets unshared.
    pub deadline: DateTime<Utc>,
    pub attempt: u32,
    /// Earlier runs whose backups are not all in the vault (found by the first pass, as the
    /// copy step's backlog): this step copies them too. Only references, read and confirmed
    /// like the step's own run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backlog: Vec<String>,
}

impl VaultJob {
    /// The first pass of a run's vault step (the same deadline as its copy step's).
    pub fn first(run_id: &str, now: DateTime<Utc>, completion_timeout_seconds: u32) -> Self {
        VaultJob {
            run_id: run_id.to_string(),
            deadline: now + chrono::Duration::seconds(i64::from(completion_timeout_seconds)),
            attempt: 0,
            backlog: Vec::new(),
        }
    }

    /// The same step, one look later.
    pub fn next(self) -> Self {
        VaultJob {
            attempt: self.attempt + 1,
            ..self
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionJob {
    pub run_id: String,
    /// This pass's number (0 for the first): one message takes each (`retention-pass-<n>`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pass: u32,
    /// Snapshots deleted by the earlier passes of this run's retention (a large fleet's
    /// deletions take more than one invocation).
    #[serde(default)]
    pub deleted_before: usize,
    /// Passes already queued again because deletions failed for a reason that may pass
    /// (throttling, a 5xx, no answer); at `RETENTION_RETRIES` the failures are reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Passes in a row that deleted nothing though deletions were left (planning alone took
    /// the invocation's time); at `RETENTION_STALLED_PASSES` the run's retention ends and
    /// reports what it left for the next run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stalled: u32,
    /// Locks laid or extended by the earlier passes.
    #[serde(default)]
    pub locked_before: usize,
    /// Recorded backups the first pass found deleted by someone else; `None` before the first
    /// pass. Only the first pass looks for them: one in the Recycle Bin stays recorded and
    /// would be counted again by every pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_outside_before: Option<usize>,
    /// The pass before stopped deleting in a region because EC2 throttled it (the account's
    /// DeleteSnapshot budget there was spent): this pass waits for the budget to refill.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub throttled: bool,
    /// The pass before planned and applied the fleet's parts up to this instance (in id
    /// order) and ran out of time: this pass begins after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
    /// Snapshots deleted by someone else were looked for up to this instance: this pass looks
    /// only after it (one in the Recycle Bin stays recorded, and would be counted again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_through: Option<String>,
    /// What the earlier passes did and saw that no later pass does or sees again.
    #[serde(default, skip_serializing_if = "EarlierPasses::is_empty")]
    pub earlier: EarlierPasses,
    /// The pass before (this number) ran out of time with deletions it had planned and not
    /// done, and recorded them in the catalog under its number: this pass does them first,
    /// without planning again. Only a pointer: what is deleted comes from the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_from: Option<u32>,
}

/// What the earlier passes of a run's retention did and saw that a later pass neither does nor
/// sees again, for the last pass's summary and metrics: an alarm watches `DeletionsFailed`, so a
/// deletion refused by the first of many passes must reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarlierPasses {
    /// Deleted into the Recycle Bin, and moved to the archive tier: done, never planned again.
    pub recoverable: usize,
    pub archived: usize,
    /// Seen in the parts of the fleet those passes planned and applied whole, which the later
    /// passes of the retention do not plan again (a retry of failures plans every part again,
    /// and sees them again): deletions that failed, were held back (an AMI, in use) or were
    /// held by a lock; locks and archivings that failed.
    pub failed: usize,
    /// The first of those failed deletions (`region/snapshot: error`), for the summary.
    pub first_failed: Option<String>,
    pub held_back: usize,
    pub locked: usize,
    pub lock_failed: usize,
    pub archive_failed: usize,
    /// The regions (`region (AWS code)`) those parts could not be read in: their deletions
    /// there wait for the next run, which `RegionsUnreadable` must say.
    pub regions_unreadable: Vec<String>,
    /// The sets those parts hold, and in how many regions (the most of any pass): the run's
    /// summary counts what its retention planned, not only what its last pass did.
    pub sets: usize,
    pub regions: usize,
}

impl EarlierPasses {
    pub fn is_empty(&self) -> bool {
        *self == EarlierPasses::default()
    }

    /// These counts and `later`'s, the first failure the earliest (destructured: a field
    /// added cannot be left out).
    pub fn and(&self, later: &EarlierPasses) -> EarlierPasses {
        let EarlierPasses {
            recoverable,
            archived,
            failed,
            first_failed,
            held_back,
            locked,
            lock_failed,
            archive_failed,
            regions_unreadable,
            sets,
            regions,
        } = later;
        let mut unreadable = self.regions_unreadable.clone();
        for region in regions_unreadable {
            if !unreadable.contains(region) {
                unreadable.push(region.clone());
            }
        }
        EarlierPasses {
            recoverable: self.recoverable + recoverable,
            archived: self.archived + archived,
            failed: self.failed + failed,
            first_failed: self.first_failed.clone().or_else(|| first_failed.clone()),
            held_back: self.held_back + held_back,
            locked: self.locked + locked,
            lock_failed: self.lock_failed + lock_failed,
            archive_failed: self.archive_failed + archive_failed,
            regions_unreadable: unreadable,
            sets: self.sets + sets,
            regions: self.regions.max(*regions),
        }
    }
}

impl RetentionJob {
    /// A run's retention, before its first pass.
    pub fn first(run_id: &str) -> Self {
        RetentionJob {
            run_id: run_id.to_string(),
            pass: 0,
            deleted_before: 0,
            retries: 0,
            stalled: 0,
            locked_before: 0,
            deleted_outside_before: None,
            throttled: false,
            resume_after: None,
            missing_through: None,
            earlier: EarlierPasses::default(),
            left_from: None,
        }
    }
}

/// How long a retention pass waits after one that EC2 throttled: EC2's DeleteSnapshot bucket
/// holds 100 calls and refills 5 a second, so 20 s refill it whole.
pub const RETENTION_THROTTLED_WAIT_SECONDS: i32 = 20;

/// How many more passes a run's retention makes for deletions that failed for a reason that
/// may pass, before it reports them failed (the next run tries them again).
pub const RETENTION_RETRIES: u32 = 3;
/// How many passes in a row may delete nothing before the run's retention stops going on.
pub const RETENTION_STALLED_PASSES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    pub restore_id: String,
    pub instance_id: String,
    pub name: String,
    pub mode: RestoreMode,
    pub rollback: bool,
    pub zone: String,
    pub set: ChosenSet,
    pub deadline: DateTime<Utc>,
    pub attempt: u32,
}

/// One instance of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyItem {
    pub instance_id: String,
    pub name: String,
    /// The restore that made its volumes (none when it could not start).
    pub restore_id: Option<String>,
    pub run_id: Option<String>,
    pub volumes: usize,
    /// Why it could not be restored, when it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyJob {
    pub verify_id: String,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub items: Vec<VerifyItem>,
    pub attempt: u32,
}

impl Job {
    /// The job's kind as its message names it (`"kind"`), for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::Instance(_) => "instance",
            Job::Run(_) => "run",
            Job::Watch(_) => "watch",
            Job::Copy(_) => "copy",
            Job::Retention(_) => "retention",
            Job::Vault(_) => "vault",
            Job::Restore(_) => "restore",
            Job::Verify(_) => "verify",
            Job::Retry(_) => "retry",
            Job::Ended(_) => "ended",
        }
    }

    pub fn run_id(&self) -> &str {
        match self {
            Job::Instance(j) => &j.run_id,
            Job::Run(j) => &j.run_id,
            Job::Watch(j) => &j.run_id,
            Job::Copy(j) => &j.run_id,
            Job::Retention(j) => &j.run_id,
            Job::Vault(j) => &j.run_id,
            Job::Restore(j) => &j.restore_id,
            Job::Verify(j) => &j.verify_id,
            Job::Retry(j) => &j.run_id,
            Job::Ended(j) => &j.command_id,
        }
    }

    /// How long the queue holds this job before delivering it (SQS allows at most 900 s).
    pub fn delay_seconds(&self, now: DateTime<Utc>, initial: u32, max: u32) -> i32 {
        match self {
            Job::Instance(j) => backoff_seconds(j.attempt, initial, max),
            // A run's early look is the moment its last instance ended: at once.
            Job::Run(j) if j.early && j.attempt == 0 => 0,
            Job::Run(j) => backoff_seconds(j.attempt, initial, max),
            Job::Watch(j) => (j.check_at - now).num_seconds().clamp(0, 900) as i32,
            Job::Copy(j) if j.soon => {
                let soon = initial.saturating_mul(3).min(COPY_LOOK_AGAIN_SECONDS);
                backoff_seconds(j.attempt, initial, max.min(soon))
            }
            Job::Copy(j) => backoff_seconds(j.attempt, initial, max),
            Job::Retention(j) if j.throttled => RETENTION_THROTTLED_WAIT_SECONDS,
            Job::Retention(_) => 0,
            Job::Vault(j) => backoff_seconds(j.attempt, initial, max),
            Job::Restore(j) => backoff_seconds(j.attempt, initial, max),
            Job::Verify(j) => backoff_seconds(j.attempt, initial, max),
            Job::Retry(j) => (j.start_at - now).num_seconds().clamp(0, 900) as i32,
            Job::Ended(j) => backoff_seconds(j.attempt.saturating_sub(1), ENDED_WAIT_SECONDS, 900),
        }
    }
}

impl Envelope {
    pub fn new(job: Job) -> Self {
        Envelope {
            v: SCHEMA_VERSION,
            origin: None,
            job,
        }
    }

    /// The body that hands message `message_id` back: the same job, naming the message it
    /// first came in. A body that is not a job goes back as it came.
    pub fn handed_back(body: &str, message_id: &str) -> String {
        match Envelope::from_body(body) {
            Ok(mut envelope) => {
                if envelope.origin.is_none() && !message_id.is_empty() {
                    envelope.origin = Some(message_id.to_string());
                }
                envelope.to_body()
            }
            Err(_) => body.to_string(),
        }
    }

    /// The id this job's claims (a run's look, a copy pass) are taken under, when delivered
    /// in message `message_id`: that of the message it first came in.
    pub fn claim_id<'a>(&'a self, message_id: &'a str) -> &'a str {
        self.origin.as_deref().unwrap_or(message_id)
    }

    pub fn to_body(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a message body; the error says why it is poison.
    pub fn from_body(body: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
        match value.get("v").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "schema version {v} is not understood (this function reads {SCHEMA_VERSION})"
                ))
            }
            None => return Err("field `v` (schema version) is missing".into()),
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("field `{path}`: {}", e.into_inner())
        })
    }
}

/// The delay before the next look: doubling from `initial`, capped at `max` (SQS allows 900 s).
pub fn backoff_seconds(attempt: u32, initial: u32, max: u32) -> i32 {
    let delay = u64::from(initial).saturating_mul(1_u64 << attempt.min(16));
    delay.min(u64::from(max)).min(900) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance_job() -> InstanceJob {
        InstanceJob {
            run_id: "r".into(),
            instance_id: "i-1".into(),
            name: "sql01".into(),
            command_id: "c".into(),
            volumes: vec![AttachedVolume {
                volume_id: "vol-1".into(),
                device: "xvdf".into(),
            }],
            stage_deadline: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            attempt: 0,
        }
    }

    #[test]
    fn a_job_survives_the_queue() {
        let envelope = Envelope::new(Job::Instance(instance_job()));
        assert_eq!(
            Envelope::from_body(&envelope.to_body()),
            Ok(envelope.clone())
        );
        // Logs name a job as its message does.
        let kind = envelope.job.kind();
        assert!(envelope.to_body().contains(&format!("\"kind\":\"{kind}\"")));
    }

    #[test]
    fn a_handed_back_job_keeps_the_id_of_the_message_it_first_came_in() {
        let body = Envelope::new(Job::Instance(instance_job())).to_body();
        let first = Envelope::from_body(&body).expect("job");
        assert_eq!(first.claim_id("m-1"), "m-1");
        // Handed back from m-1, delivered as m-2, handed back again, delivered as m-3.
        let again = Envelope::handed_back(&body, "m-1");
        let second = Envelope::from_body(&again).expect("job");
        assert_eq!(second.claim_id("m-2"), "m-1");
        assert_eq!(second.job, first.job);
        let third = Envelope::from_body(&Envelope::handed_back(&again, "m-2")).expect("job");
        assert_eq!(third.claim_id("m-3"), "m-1");
        // Not a job: back as it came.
        assert_eq!(Envelope::handed_back("not json", "m-1"), "not json");
    }

    #[test]
    fn poison_messages_say_what_is_wrong() {
        let body = Envelope::new(Job::Instance(instance_job())).to_body();
        assert!(Envelope::from_body("not json")
            .unwrap_err()
            .contains("not JSON"));
        assert!(Envelope::from_body(&body.replace("\"v\":1", "\"v\":9"))
            .unwrap_err()
            .contains("version 9"));
        assert!(Envelope::from_body(&body.replace("\"v\":1,", ""))
            .unwrap_err()
            .contains("`v`"));
        assert!(
            Envelope::from_body(&body.replace("\"command_id\"", "\"cmd\""))
                .unwrap_err()
                .contains("command_id")
        );
        assert!(
            Envelope::from_body(&body.replace("\"instance\"", "\"volume\""))
                .unwrap_err()
                .contains("volume")
        );
        // A field of the wrong type, an empty body, a JSON value that is not an object, and
        // a watch without its run id.
        let wrong_type =
            Envelope::from_body(&body.replace("\"attempt\":0", "\"attempt\":\"zero\""));
        assert!(
            wrong_type.as_ref().is_err_and(|e| e.contains("zero")),
            "{wrong_type:?}"
        );
        assert!(Envelope::from_body("").unwrap_err().contains("not JSON"));
        assert!(Envelope::from_body("[1,2]").unwrap_err().contains("`v`"));
        assert!(Envelope::from_body(
            r#"{"v":1,"kind":"watch","started_at":"2026-11-23T00:00:00Z","check_at":"2026-11-23T00:00:00Z"}"#
        )
        .unwrap_err()
        .contains("run_id"));
    }

    #[test]
    fn a_watch_is_delivered_when_its_lease_ends_within_what_sqs_allows() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let watch = |secs| {
            Job::Watch(WatchJob {
                run_id: "r".into(),
                started_at: now,
                instance_ids: None,
                check_at: now + chrono::Duration::seconds(secs),
            })
        };
        assert_eq!(watch(42).delay_seconds(now, 30, 900), 42);
        assert_eq!(watch(-5).delay_seconds(now, 30, 900), 0);
        assert_eq!(watch(5_000).delay_seconds(now, 30, 900), 900);
        let job = Job::Instance(InstanceJob {
            attempt: 2,
            ..instance_job()
        });
        assert_eq!(job.delay_seconds(now, 30, 900), 120);
        let body = Envelope::new(watch(42)).to_body();
        assert_eq!(Envelope::from_body(&body).map(|e| e.job), Ok(watch(42)));
    }

    #[test]
    fn a_copy_pass_that_left_startable_copies_is_followed_soon() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let late = CopyJob {
            attempt: 9,
            ..CopyJob::first("r", now, 3_600)
        };
        assert_eq!(
            Job::Copy(late.clone().next()).delay_seconds(now, 30, 900),
            900
        );
        let soon = late.next_soon();
        assert!(soon.soon);
        assert_eq!(Job::Copy(soon.clone()).delay_seconds(now, 30, 900), 90);
        assert_eq!(Job::Copy(soon.clone()).delay_seconds(now, 60, 900), 90);
        assert_eq!(Job::Copy(soon.clone()).delay_seconds(now, 1, 20), 3);
        // Never later than the configured cap, and its own successor is on the backoff.
        assert_eq!(Job::Copy(soon.clone()).delay_seconds(now, 1, 2), 2);
        assert!(!soon.next().soon);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_seconds(0, 30, 900), 30);
        assert_eq!(backoff_seconds(1, 30, 900), 60);
        assert_eq!(backoff_seconds(5, 30, 900), 900);
        assert_eq!(backoff_seconds(40, 30, 120), 120);
        assert_eq!(backoff_seconds(3, 1, 2), 2);
    }

    fn ssm_event(change: impl FnOnce(&mut serde_json::Value)) -> String {
        // As EventBridge puts SSM's event on a queue (AWS's example, this deployment's ids).
        let mut event = serde_json::json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "EC2 Command Invocation Status-change Notification",
            "source": "aws.ssm",
            "account": "123456789012",
            "time": "2026-12-06T02:00:31Z",
            "region": "us-east-1",
            "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"],
            "detail": {
                "command-id": "e8d3c0e4-71f7-4491-898f-c9b35bee5f3b",
                "document-name": "AWSEC2-CreateVssSnapshot",
                "instance-id": "i-0123456789abcdef0",
                "requested-date-time": "2026-12-06T02:00:00.049Z",
                "status": "Success"
            }
        });
        change(&mut event);
        event.to_string()
    }

    fn read(body: &str) -> Option<Result<EndedJob, String>> {
        ended_event(body, "123456789012", "us-east-1")
    }

    #[test]
    fn ssm_s_event_is_read_as_the_end_of_one_invocation() {
        let ended = read(&ssm_event(|_| {})).expect("an event").expect("taken");
        assert_eq!(
            ended,
            EndedJob {
                command_id: "e8d3c0e4-71f7-4491-898f-c9b35bee5f3b".into(),
                instance_id: "i-0123456789abcdef0".into(),
                status: "Success".into(),
                attempt: 0,
            }
        );
        // Handed back, it is a job like any other, delayed 10, 20, 40… s.
        let again = Envelope::new(Job::Ended(EndedJob {
            attempt: 1,
            ..ended.clone()
        }));
        assert_eq!(Envelope::from_body(&again.to_body()), Ok(again.clone()));
        let now = Utc::now();
        assert_eq!(again.job.delay_seconds(now, 30, 900), 10);
        let third = Job::Ended(EndedJob {
            attempt: 3,
            ..ended
        });
        assert_eq!(third.delay_seconds(now, 30, 900), 40);
        // A job's own body is not an event.
        assert!(read(&again.to_body()).is_none());
        assert!(read("not json").is_none());
    }

    #[test]
    fn an_event_of_another_kind_account_or_region_or_with_bad_ids_is_not_taken() {
        let refused: Vec<(&str, String)> = vec![
            (
                "another detail-type",
                ssm_event(|e| e["detail-type"] = "Scheduled Event".into()),
            ),
            (
                "another source",
                ssm_event(|e| e["source"] = "my.app".into()),
            ),
            (
                "another account",
                ssm_event(|e| e["account"] = "210987654321".into()),
            ),
            (
                "another region",
                ssm_event(|e| e["region"] = "eu-west-1".into()),
            ),
            (
                "no account",
                ssm_event(|e| {
                    e.as_object_mut().map(|o| o.remove("account"));
                }),
            ),
            (
                "a command id that is not one",
                ssm_event(|e| e["detail"]["command-id"] = "../x".into()),
            ),
            (
                "no instance",
                ssm_event(|e| e["detail"]["instance-id"] = serde_json::Value::Null),
            ),
            (
                "an instance id that is not one",
                ssm_event(|e| e["detail"]["instance-id"] = "i-XYZ".into()),
            ),
        ];
        for (what, body) in refused {
            match read(&body) {
                Some(Err(why)) => assert!(!why.is_empty(), "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_run_s_early_look_is_delivered_at_once_and_its_next_on_the_backoff() {
        let run = RunJob {
            run_id: "r".into(),
            started_at: Utc::now(),
            deadline: Utc::now(),
            commands: vec![],
            skipped: vec![],
            unsent: vec![],
            attempt: 0,
            early: true,
        };
        let now = Utc::now();
        assert_eq!(Job::Run(run.clone()).delay_seconds(now, 30, 900), 0);
        let next = RunJob {
            attempt: 1,
            ..run.clone()
        };
        assert_eq!(Job::Run(next).delay_seconds(now, 30, 900), 60);
        let regular = RunJob {
            early: false,
            ..run
        };
        assert_eq!(Job::Run(regular.clone()).delay_seconds(now, 30, 900), 30);
        // A message of a regular look does not say `early` (older messages read the same).
        assert!(!Envelope::new(Job::Run(regular)).to_body().contains("early"));
    }
}
