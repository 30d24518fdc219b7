//! Restores, as pure decisions: which set to restore, what each new volume looks like, and,
//! for `replace`, the next step towards the instance running on the restored volumes.
//!
//! A replace is a state machine over what EC2 says now, so that a restore interrupted at any
//! step is resumed (or rolled back) by calling again: `replace_step` looks at the instance and
//! the volumes at each device and names one step (create, stop, detach, attach, start, wait,
//! done); the edge (`restore::step`) carries it out and looks again. Nothing is ever deleted: the
//! replaced volumes are detached, tagged, and kept.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use serde::Serialize;

use crate::jobs::{RestoreJob, VerifyItem};
use crate::model::fleet::InstanceView;
use crate::model::ids::fnv1a32;
use crate::model::requests::{RestoreMode, RestoreRequest};
use crate::model::restore::{ChosenSet, SourceSnapshot, VolumeFacts};
use crate::model::snapshot::{SnapshotFacts, TierStatus};
use crate::model::state::{AttachmentState, InstanceState, PingStatus, SnapshotState, VolumeState};
use crate::model::tags::{
    CONSISTENCY_FILE_SYSTEM, TAG_CONSISTENCY, TAG_DEVICE, TAG_MANAGED_BY, TAG_PURPOSE, TAG_RUN_ID,
};

/// Chooses the set to restore among an instance's snapshots (all of this deployment):
/// `latest` is the newest consistent set; a run id is that run's set. A set with a snapshot
/// that is not completed is never restored; a crash-consistent one only when allowed.
pub fn choose_set(
    snapshots: &[SourceSnapshot],
    wanted: &str,
    allow_crash_consistent: bool,
) -> Result<ChosenSet, String> {
    let mut sets: BTreeMap<&str, Vec<&SourceSnapshot>> = BTreeMap::new();
    for s in snapshots {
        sets.entry(s.run_id.as_str()).or_default().push(s);
    }
    let complete =
        |set: &[&SourceSnapshot]| set.iter().all(|s| s.state == SnapshotState::Completed);
    let consistent =
        |set: &[&SourceSnapshot]| complete(set) && set.iter().all(|s| s.app_consistent);
    let taken = |set: &[&SourceSnapshot]| set.iter().map(|s| s.start_time).min();
    let (run_id, set) = if wanted == "latest" {
        sets.iter()
            .filter(|(_, set)| consistent(set))
            .max_by_key(|(run, set)| (taken(set), **run))
            .map(|(run, set)| (*run, set.clone()))
            .ok_or_else(|| {
                if sets.is_empty() {
                    "no snapshot set of this instance exists".to_string()
                } else {
                    format!(
                        "none of its {} sets is consistent: name one with run_id and allow_crash_consistent",
                        sets.len()
                    )
                }
            })?
    } else {
        let set = sets
            .get(wanted)
            .ok_or_else(|| format!("no snapshot of this instance carries run id {wanted}"))?;
        (wanted, set.clone())
    };
    if let Some(s) = set.iter().find(|s| s.state != SnapshotState::Completed) {
        return Err(format!(
            "set {run_id} is incomplete: {} is {}, not completed",
            s.snapshot_id, s.state
        ));
    }
    let is_consistent = consistent(&set);
    if !is_consistent && !allow_crash_consistent {
        let crash: Vec<&str> = set
            .iter()
            .filter(|s| !s.app_consistent)
            .map(|s| s.snapshot_id.as_str())
            .collect();
        return Err(format!(
            "set {run_id} is crash-consistent (AppConsistent is not True on {}): pass \"allow_crash_consistent\": true to restore it anyway",
            crash.join(", ")
        ));
    }
    let mut by_device: BTreeMap<&str, &SourceSnapshot> = BTreeMap::new();
    for s in &set {
        if let Some(other) = by_device.insert(s.device.as_str(), s) {
            return Err(format!(
                "set {run_id} has two snapshots of device {} ({} and {})",
                s.device, other.snapshot_id, s.snapshot_id
            ));
        }
    }
    Ok(ChosenSet {
        run_id: run_id.to_string(),
        consistent: is_consistent,
        file_system_only: set.iter().any(|s| s.file_system_only),
        snapshots: by_device.into_values().cloned().collect(),
    })
}

/// The restore's id: the same call gives the same id, so calling again resumes it.
pub fn restore_id(
    instance_id: &str,
    run_id: &str,
    mode: RestoreMode,
    zone: &str,
    purpose: &str,
) -> String {
    let mode = match mode {
        RestoreMode::Volumes => "volumes",
        RestoreMode::Replace => "replace",
    };
    let key = format!("{instance_id}|{run_id}|{mode}|{zone}|{purpose}");
    format!("{purpose}-{instance_id}-{:08x}", fnv1a32(key.as_bytes()))
}

/// A restore not done by then is reported as failed (it can still be resumed by calling again).
pub const RESTORE_HOURS: i64 = 6;

/// Where a restore's volumes are made: a `volumes` restore where asked (else the instance's
/// zone); a `replace` only in the instance's own zone, and only of an instance that exists.
pub fn restore_zone(
    request: &RestoreRequest,
    instance: Option<&InstanceView>,
) -> Result<String, String> {
    let instance_id = request.instance_id.as_str();
    match (request.mode, &request.availability_zone, instance) {
        (RestoreMode::Replace, _, None) => Err(format!(
            "{instance_id}: no such instance to replace the volumes of (restore into new volumes with \"mode\":\"volumes\" and an availability_zone)"
        )),
        (RestoreMode::Replace, Some(zone), Some(view)) if zone != &view.zone => Err(format!(
            "{instance_id} is in {}: a replace restores into the instance's own zone, not {zone} (use \"mode\":\"volumes\" for another zone)",
            view.zone
        )),
        (RestoreMode::Volumes, Some(zone), _) => Ok(zone.clone()),
        (_, _, Some(view)) => Ok(view.zone.clone()),
        (_, _, None) => Err(format!(
            "{instance_id}: the instance is gone; name the availability_zone to restore into"
        )),
    }
}

/// An instance's snapshots as restore sources: only this deployment's, and only those that
/// name their run and device.
pub fn source_snapshots(snapshots: Vec<SnapshotFacts>, managed_by: &str) -> Vec<SourceSnapshot> {
    snapshots
        .into_iter()
        .filter_map(|s| {
            if s.tags.get(TAG_MANAGED_BY).map(String::as_str) != Some(managed_by) {
                return None;
            }
            Some(SourceSnapshot {
                app_consistent: s.app_consistent(),
                file_system_only: s.tags.get(TAG_CONSISTENCY).map(String::as_str)
                    == Some(CONSISTENCY_FILE_SYSTEM),
                run_id: s.tags.get(TAG_RUN_ID)?.clone(),
                device: s.tags.get(TAG_DEVICE)?.clone(),
                start_time: s.start_time?,
                size_gib: s.size_gib,
                state: s.state,
                archived: s.archived,
                snapshot_id: s.snapshot_id,
            })
        })
        .collect()
}

/// The client token of a restored volume: a repeated CreateVolume (after a lost answer) is
/// the same volume.
pub fn volume_token(restore_id: &str, device: &str) -> String {
    let token = format!("{restore_id}-{:08x}", fnv1a32(device.as_bytes()));
    token.chars().take(64).collect()
}

/// The next step of a `volumes` restore: create what is missing, then wait until EBS has made
/// every volume.
pub fn volumes_step(job: &RestoreJob, restored: &BTreeMap<String, VolumeFacts>) -> Step {
    let missing: Vec<String> = job
        .set
        .snapshots
        .iter()
        .filter(|s| !restored.contains_key(&s.device))
        .map(|s| s.device.clone())
        .collect();
    if !missing.is_empty() {
        return Step::Create { devices: missing };
    }
    if let Some(v) = restored.values().find(|v| v.state == VolumeState::Error) {
        return Step::Fail {
            why: format!("volume {} failed to create", v.volume_id),
        };
    }
    let creating: Vec<&str> = restored
        .values()
        .filter(|v| v.state == VolumeState::Creating)
        .map(|v| v.volume_id.as_str())
        .collect();
    if creating.is_empty() {
        Step::Done
    } else {
        Step::Wait {
            for_what: format!("volume(s) {} to be created", creating.join(", ")),
        }
    }
}

/// What a restore is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreState {
    InProgress,
    Done,
    Failed,
}

/// Where a restore stands after the last step of a pass: done, failed (also when it still
/// waits past its deadline), or in progress with what it waits for.
pub fn restore_state(
    last: &Step,
    past_deadline: bool,
) -> (RestoreState, Option<String>, Option<String>) {
    match last {
        Step::Done => (RestoreState::Done, None, None),
        Step::Fail { why } => (RestoreState::Failed, None, Some(why.clone())),
        Step::Wait { for_what } if past_deadline => (
            RestoreState::Failed,
            None,
            Some(format!(
                "not done after {RESTORE_HOURS} h, still waiting for {for_what}; call again to resume"
            )),
        ),
        Step::Wait { for_what } => (RestoreState::InProgress, Some(for_what.clone()), None),
        _ => (
            RestoreState::InProgress,
            Some("the next pass".to_string()),
            None,
        ),
    }
}

/// Where a restore stands, as answered and logged.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreStatus {
    pub restore_id: String,
    pub instance_id: String,
    pub run_id: String,
    pub mode: RestoreMode,
    pub rollback: bool,
    pub consistent: bool,
    /// The set was taken with `NoWriters`: file-system consistent only, said at every answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub file_system_only: bool,
    pub availability_zone: String,
    pub status: RestoreState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every step this pass carried out.
    pub steps: Vec<Step>,
    /// The restored volumes, by device.
    pub volumes: Vec<RestoredVolume>,
    /// `replace`: what was swapped (the old volumes are kept, detached and tagged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<Swap>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoredVolume {
    pub device: String,
    pub snapshot_id: String,
    pub volume_id: String,
    pub state: VolumeState,
}

#[derive(Debug, Clone, Serialize)]
pub struct Swap {
    pub device: String,
    pub old_volume_id: String,
    pub new_volume_id: String,
}

/// The volumes of a restore as reported: each snapshot's restored volume, and for a `replace`
/// what was swapped at each device.
pub fn restored_and_swapped(
    job: &RestoreJob,
    restored: &BTreeMap<String, VolumeFacts>,
    replaced: &BTreeMap<String, VolumeFacts>,
) -> (Vec<RestoredVolume>, Vec<Swap>) {
    let volumes = job
        .set
        .snapshots
        .iter()
        .filter_map(|s| {
            restored.get(&s.device).map(|v| RestoredVolume {
                device: s.device.clone(),
                snapshot_id: s.snapshot_id.clone(),
                volume_id: v.volume_id.clone(),
                state: v.state.clone(),
            })
        })
        .collect();
    let swaps = replaced
        .iter()
        .map(|(device, volume)| Swap {
            device: device.clone(),
            old_volume_id: volume.volume_id.clone(),
            new_volume_id: restored
                .get(device)
                .map(|v| v.volume_id.clone())
                .unwrap_or_default(),
        })
        .collect();
    (volumes, swaps)
}

/// A rotating sample: `n` of `ids`, a different mix each day, every instance in turn.
pub fn sample(ids: &[String], n: usize, day: &str) -> Vec<String> {
    let mut ranked: Vec<(u32, &String)> = ids
        .iter()
        .map(|id| (fnv1a32(format!("{day}|{id}").as_bytes()), id))
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(n)
        .map(|(_, id)| id.clone())
        .collect()
}

/// One instance's verification result.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub instance_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub restorable: bool,
    pub volumes: usize,
    /// From the request to every volume available, as seen by the job's looks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One instance's verification, from the volumes its restore made: restorable when every
/// volume of the set exists and is available.
pub fn evaluate_verification(
    item: &VerifyItem,
    volumes: &BTreeMap<String, VolumeFacts>,
    seconds: i64,
) -> Verified {
    let mut error = item.error.clone();
    if error.is_none() {
        if volumes.len() < item.volumes {
            error = Some(format!(
                "{} of {} volumes found",
                volumes.len(),
                item.volumes
            ));
        } else if let Some(v) = volumes.values().find(|v| v.state != VolumeState::Available) {
            error = Some(format!("volume {} is {}", v.volume_id, v.state));
        }
    }
    Verified {
        instance_id: item.instance_id.clone(),
        name: item.name.clone(),
        run_id: item.run_id.clone(),
        restorable: error.is_none(),
        volumes: volumes.len(),
        seconds: error.is_none().then_some(seconds),
        error,
    }
}

/// The verification volumes that may be deleted: only this verification's own
/// (`Purpose=verify`), and never one that is attached.
pub fn deletable_verify_volumes<'a>(
    volumes: impl IntoIterator<Item = &'a VolumeFacts>,
) -> impl Iterator<Item = &'a VolumeFacts> {
    volumes.into_iter().filter(|v| {
        v.tags.get(TAG_PURPOSE).map(String::as_str) == Some("verify") && v.attachment.is_none()
    })
}

/// A new volume to create from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSpec {
    pub device: String,
    pub snapshot_id: String,
    pub zone: String,
    pub volume_type: Option<String>,
    pub size_gib: Option<i32>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
}

/// The new volume of each snapshot: the type, IOPS and throughput of the volume now at that
/// device where known (io1/io2/gp3 carry IOPS, gp3 throughput); the snapshot's own size, never
/// less than it.
pub fn volume_specs(
    set: &ChosenSet,
    zone: &str,
    current: &BTreeMap<String, VolumeFacts>,
) -> Vec<VolumeSpec> {
    set.snapshots
        .iter()
        .map(|s| {
            let now = current.get(&s.device);
            let volume_type = now.and_then(|v| v.volume_type.clone());
            let kind = volume_type.as_deref().unwrap_or_default();
            VolumeSpec {
                device: s.device.clone(),
                snapshot_id: s.snapshot_id.clone(),
                zone: zone.to_string(),
                iops: now
                    .and_then(|v| v.iops)
                    .filter(|_| matches!(kind, "io1" | "io2" | "gp3")),
                throughput: now.and_then(|v| v.throughput).filter(|_| kind == "gp3"),
                size_gib: s.size_gib,
                volume_type,
            }
        })
        .collect()
}

/// What a `replace` sees at one device of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub device: String,
    /// The volume that must end up attached there: the restored one (or, rolling back, the
    /// one the restore replaced); `None` when it does not exist (yet).
    pub target: Option<VolumeFacts>,
    /// The volume attached there now, with its attachment state.
    pub attached: Option<(String, AttachmentState)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceView {
    pub instance_id: String,
    pub instance_state: InstanceState,
    pub devices: Vec<DeviceView>,
    /// The SSM agent's ping status (`None`: not registered): a replace is done when Windows
    /// is back, not when EC2 says running.
    pub agent: Option<PingStatus>,
}

/// The one next step of a `replace` (or of its rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Create the restored volumes of these devices.
    Create {
        devices: Vec<String>,
    },
    Stop,
    /// Tag and detach these volumes (device, volume).
    Detach {
        volumes: Vec<(String, String)>,
    },
    /// Attach these volumes (device, volume).
    Attach {
        volumes: Vec<(String, String)>,
    },
    Start,
    Wait {
        for_what: String,
    },
    /// Restore these snapshots from the archive tier, temporarily.
    Thaw {
        snapshots: Vec<String>,
    },
    Done,
    Fail {
        why: String,
    },
}

/// How long a restore of an archived set may take: AWS restores from the archive tier within
/// 72 hours, then the volumes are made.
pub const ARCHIVE_RESTORE_HOURS: i64 = 80;
/// Days a snapshot restored from the archive tier stays restored before AWS archives it again:
/// long enough to make the volumes and to restore again from it.
pub const THAW_DAYS: i32 = 7;

/// Before any volume is made from a set that was in the archive tier: restore from it the
/// snapshots of `wanted` (those of devices still without a volume) that are archived and not
/// being restored, or wait for those being restored (AWS: up to 72 hours). `None` once every
/// one of them is out of the archive tier.
pub fn thaw_step(wanted: &[String], statuses: &BTreeMap<String, TierStatus>) -> Option<Step> {
    let archived: Vec<(&String, &TierStatus)> = wanted
        .iter()
        .filter_map(|id| statuses.get(id).map(|s| (id, s)))
        .filter(|(_, s)| s.archived())
        .collect();
    let to_start: Vec<String> = archived
        .iter()
        .filter(|(_, s)| !s.restoring())
        .map(|(id, _)| (*id).clone())
        .collect();
    if !to_start.is_empty() {
        return Some(Step::Thaw {
            snapshots: to_start,
        });
    }
    if archived.is_empty() {
        return None;
    }
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let when = match archived.iter().filter_map(|(_, s)| s.last_started).min() {
        Some(since) => format!(
            "since {} (AWS takes up to 72 hours: expected by {})",
            time(since),
            time(since + Duration::hours(72))
        ),
        None => "(AWS takes up to 72 hours)".to_string(),
    };
    Some(Step::Wait {
        for_what: format!(
            "{} snapshot(s) being restored from the archive tier {when}",
            archived.len()
        ),
    })
}

/// The next step towards every device carrying its target and the instance running.
pub fn replace_step(view: &ReplaceView, rollback: bool) -> Step {
    let missing: Vec<String> = view
        .devices
        .iter()
        .filter(|d| d.target.is_none())
        .map(|d| d.device.clone())
        .collect();
    if !missing.is_empty() {
        if rollback {
            return Step::Fail {
                why: format!(
                    "no replaced volume of device(s) {} to put back (was this restore started?)",
                    missing.join(", ")
                ),
            };
        }
        return Step::Create { devices: missing };
    }
    let targets = view
        .devices
        .iter()
        .filter_map(|d| d.target.as_ref().map(|t| (d, t)));
    if let Some((d, t)) = targets.clone().find(|(_, t)| t.state == VolumeState::Error) {
        return Step::Fail {
            why: format!("volume {} for {} failed to create", t.volume_id, d.device),
        };
    }
    if let Some((d, t)) = targets.clone().find(|(d, t)| match &t.attachment {
        Some((instance, device, _)) => instance != &view.instance_id || device != &d.device,
        None => false,
    }) {
        let (instance, device, _) = t.attachment.clone().unwrap_or_default();
        return Step::Fail {
            why: format!(
                "volume {} for {} is attached to {instance} at {device}",
                t.volume_id, d.device
            ),
        };
    }
    let creating: Vec<&str> = targets
        .clone()
        .filter(|(_, t)| t.state == VolumeState::Creating)
        .map(|(_, t)| t.volume_id.as_str())
        .collect();
    if !creating.is_empty() {
        return Step::Wait {
            for_what: format!("volume(s) {} to be created", creating.join(", ")),
        };
    }
    let in_place = |d: &DeviceView| match (&d.attached, &d.target) {
        (Some((volume, state)), Some(t)) => {
            volume == &t.volume_id && *state == AttachmentState::Attached
        }
        _ => false,
    };
    let state = &view.instance_state;
    if view.devices.iter().all(in_place) {
        return match state {
            InstanceState::Running if view.agent == Some(PingStatus::Online) => Step::Done,
            InstanceState::Running => Step::Wait {
                for_what: format!(
                    "Windows to be back: the SSM agent is {}",
                    view.agent
                        .as_ref()
                        .map_or("not registered", PingStatus::as_str)
                ),
            },
            InstanceState::Stopped => Step::Start,
            other => Step::Wait {
                for_what: format!("the instance to be running (it is {other})"),
            },
        };
    }
    match state {
        InstanceState::Stopped => {}
        InstanceState::Running | InstanceState::Pending => return Step::Stop,
        other => {
            return Step::Wait {
                for_what: format!("the instance to stop (it is {other})"),
            }
        }
    }
    let mut detach = Vec::new();
    let mut attach = Vec::new();
    let mut moving = Vec::new();
    for d in &view.devices {
        let Some(target) = &d.target else { continue };
        match &d.attached {
            Some((volume, state)) if volume != &target.volume_id => {
                if *state == AttachmentState::Detaching {
                    moving.push(format!("{volume} to detach"));
                } else {
                    detach.push((d.device.clone(), volume.clone()));
                }
            }
            Some((volume, state)) if *state != AttachmentState::Attached => {
                moving.push(format!("{volume} to attach at {}", d.device))
            }
            Some(_) => {}
            None if target.state == VolumeState::Available => {
                attach.push((d.device.clone(), target.volume_id.clone()))
            }
            None => moving.push(format!("{} to be available", target.volume_id)),
        }
    }
    if !detach.is_empty() {
        Step::Detach { volumes: detach }
    } else if !attach.is_empty() {
        Step::Attach { volumes: attach }
    } else {
        Step::Wait {
            for_what: moving.join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + hours * 3600, 0).unwrap_or_default()
    }

    fn snap(id: &str, run: &str, device: &str, consistent: bool, hours: i64) -> SourceSnapshot {
        SourceSnapshot {
            snapshot_id: id.into(),
            run_id: run.into(),
            device: device.into(),
            state: "completed".into(),
            app_consistent: consistent,
            size_gib: Some(30),
            start_time: at(hours),
            file_system_only: false,
            archived: false,
        }
    }

    #[test]
    fn latest_is_the_newest_consistent_set_and_crash_sets_need_consent() {
        let snapshots = [
            snap("s1", "r1", "/dev/sda1", true, 0),
            snap("s2", "r1", "xvdf", true, 0),
            snap("s3", "r2", "/dev/sda1", true, 24),
            snap("s4", "r2", "xvdf", false, 24),
        ];
        let latest = choose_set(&snapshots, "latest", false).expect("latest");
        assert_eq!(
            latest.run_id, "r1",
            "r2 is crash-consistent: not the latest consistent"
        );
        assert_eq!(
            latest
                .snapshots
                .iter()
                .map(|s| s.device.as_str())
                .collect::<Vec<_>>(),
            ["/dev/sda1", "xvdf"]
        );
        let refused = choose_set(&snapshots, "r2", false).expect_err("crash-consistent");
        assert!(
            refused.contains("crash-consistent") && refused.contains("s4"),
            "{refused}"
        );
        let allowed = choose_set(&snapshots, "r2", true).expect("allowed");
        assert!(!allowed.consistent);
        assert!(choose_set(&snapshots, "r9", true)
            .expect_err("unknown")
            .contains("r9"));
        let mut pending = snapshots.to_vec();
        pending[0].state = "pending".into();
        assert!(choose_set(&pending, "r1", true)
            .expect_err("incomplete")
            .contains("incomplete"));
        assert!(choose_set(&[], "latest", false)
            .expect_err("none")
            .contains("no snapshot set"));
    }

    #[test]
    fn restore_ids_are_stable_and_differ_by_what_is_restored() {
        let a = restore_id("i-1", "r1", RestoreMode::Replace, "us-east-1a", "restore");
        assert_eq!(
            a,
            restore_id("i-1", "r1", RestoreMode::Replace, "us-east-1a", "restore")
        );
        assert_ne!(
            a,
            restore_id("i-1", "r1", RestoreMode::Volumes, "us-east-1a", "restore")
        );
        assert_ne!(
            a,
            restore_id("i-1", "r2", RestoreMode::Replace, "us-east-1a", "restore")
        );
        assert!(a.starts_with("restore-i-1-"));
    }

    #[test]
    fn new_volumes_keep_the_type_and_performance_of_the_device() {
        let set = choose_set(
            &[
                snap("s1", "r1", "/dev/sda1", true, 0),
                snap("s2", "r1", "xvdf", true, 0),
            ],
            "r1",
            false,
        )
        .expect("set");
        let current = BTreeMap::from([(
            "xvdf".to_string(),
            VolumeFacts {
                volume_id: "vol-1".into(),
                volume_type: Some("gp3".into()),
                iops: Some(6000),
                throughput: Some(250),
                ..VolumeFacts::default()
            },
        )]);
        let specs = volume_specs(&set, "us-east-1b", &current);
        assert_eq!(specs[0].volume_type, None, "unknown: EC2's default");
        assert_eq!(
            (
                specs[1].volume_type.as_deref(),
                specs[1].iops,
                specs[1].throughput,
                specs[1].size_gib
            ),
            (Some("gp3"), Some(6000), Some(250), Some(30))
        );
        assert!(specs.iter().all(|s| s.zone == "us-east-1b"));
    }

    fn volume(id: &str, state: &str) -> VolumeFacts {
        VolumeFacts {
            volume_id: id.into(),
            state: state.into(),
            ..VolumeFacts::default()
        }
    }

    fn device(
        name: &str,
        target: Option<VolumeFacts>,
        attached: Option<(&str, &str)>,
    ) -> DeviceView {
        DeviceView {
            device: name.into(),
            target,
            attached: attached.map(|(v, s)| (v.to_string(), s.into())),
        }
    }

    fn view(state: &str, devices: Vec<DeviceView>) -> ReplaceView {
        ReplaceView {
            instance_id: "i-1".into(),
            instance_state: state.into(),
            devices,
            agent: Some("Online".into()),
        }
    }

    #[test]
    fn a_replace_is_done_when_the_agent_is_back() {
        let swapped = || {
            vec![device(
                "/dev/sda1",
                Some(volume("new", "in-use")),
                Some(("new", "attached")),
            )]
        };
        let mut v = view("running", swapped());
        v.agent = Some("ConnectionLost".into());
        assert_eq!(
            replace_step(&v, false),
            Step::Wait {
                for_what: "Windows to be back: the SSM agent is ConnectionLost".into()
            }
        );
        v.agent = None;
        assert!(
            matches!(replace_step(&v, false), Step::Wait { for_what } if for_what.contains("not registered"))
        );
        v.agent = Some("Online".into());
        assert_eq!(replace_step(&v, false), Step::Done);
    }

    #[test]
    fn a_replace_walks_create_stop_detach_attach_start_done() {
        let root = |target, attached| device("/dev/sda1", target, attached);
        let steps = [
            (
                view("running", vec![root(None, Some(("old", "attached")))]),
                Step::Create {
                    devices: vec!["/dev/sda1".into()],
                },
            ),
            (
                view(
                    "running",
                    vec![root(
                        Some(volume("new", "creating")),
                        Some(("old", "attached")),
                    )],
                ),
                Step::Wait {
                    for_what: "volume(s) new to be created".into(),
                },
            ),
            (
                view(
                    "running",
                    vec![root(
                        Some(volume("new", "available")),
                        Some(("old", "attached")),
                    )],
                ),
                Step::Stop,
            ),
            (
                view(
                    "stopping",
                    vec![root(
                        Some(volume("new", "available")),
                        Some(("old", "attached")),
                    )],
                ),
                Step::Wait {
                    for_what: "the instance to stop (it is stopping)".into(),
                },
            ),
            (
                view(
                    "stopped",
                    vec![root(
                        Some(volume("new", "available")),
                        Some(("old", "attached")),
                    )],
                ),
                Step::Detach {
                    volumes: vec![("/dev/sda1".into(), "old".into())],
                },
            ),
            (
                view(
                    "stopped",
                    vec![root(
                        Some(volume("new", "available")),
                        Some(("old", "detaching")),
                    )],
                ),
                Step::Wait {
                    for_what: "old to detach".into(),
                },
            ),
            (
                view(
                    "stopped",
                    vec![root(Some(volume("new", "available")), None)],
                ),
                Step::Attach {
                    volumes: vec![("/dev/sda1".into(), "new".into())],
                },
            ),
            (
                view(
                    "stopped",
                    vec![root(
                        Some(volume("new", "in-use")),
                        Some(("new", "attaching")),
                    )],
                ),
                Step::Wait {
                    for_what: "new to attach at /dev/sda1".into(),
                },
            ),
            (
                view(
                    "stopped",
                    vec![root(
                        Some(volume("new", "in-use")),
                        Some(("new", "attached")),
                    )],
                ),
                Step::Start,
            ),
            (
                view(
                    "pending",
                    vec![root(
                        Some(volume("new", "in-use")),
                        Some(("new", "attached")),
                    )],
                ),
                Step::Wait {
                    for_what: "the instance to be running (it is pending)".into(),
                },
            ),
            (
                view(
                    "running",
                    vec![root(
                        Some(volume("new", "in-use")),
                        Some(("new", "attached")),
                    )],
                ),
                Step::Done,
            ),
        ];
        for (v, expected) in steps {
            assert_eq!(replace_step(&v, false), expected, "{v:?}");
        }
    }

    #[test]
    fn a_replace_never_steals_a_volume_and_a_rollback_never_creates() {
        let mut elsewhere = volume("new", "in-use");
        elsewhere.attachment = Some(("i-2".into(), "xvdf".into(), "attached".into()));
        let step = replace_step(
            &view("stopped", vec![device("xvdf", Some(elsewhere), None)]),
            false,
        );
        assert!(matches!(step, Step::Fail { why } if why.contains("attached to i-2")));
        let step = replace_step(
            &view(
                "stopped",
                vec![device("xvdf", None, Some(("new", "attached")))],
            ),
            true,
        );
        assert!(matches!(step, Step::Fail { why } if why.contains("no replaced volume")));
        let step = replace_step(
            &view(
                "running",
                vec![device("xvdf", Some(volume("new", "error")), None)],
            ),
            false,
        );
        assert!(matches!(step, Step::Fail { why } if why.contains("failed to create")));
    }

    #[test]
    fn devices_are_swapped_together_while_stopped() {
        let devices = vec![
            device(
                "/dev/sda1",
                Some(volume("n1", "available")),
                Some(("o1", "attached")),
            ),
            device("xvdf", Some(volume("n2", "available")), None),
        ];
        assert_eq!(
            replace_step(&view("stopped", devices), false),
            Step::Detach {
                volumes: vec![("/dev/sda1".into(), "o1".into())]
            },
            "detach everything first, then attach"
        );
        let devices = vec![
            device("/dev/sda1", Some(volume("n1", "available")), None),
            device("xvdf", Some(volume("n2", "available")), None),
        ];
        assert_eq!(
            replace_step(&view("stopped", devices), false),
            Step::Attach {
                volumes: vec![
                    ("/dev/sda1".into(), "n1".into()),
                    ("xvdf".into(), "n2".into())
                ]
            }
        );
    }

    #[test]
    fn the_sample_rotates_by_day_and_covers_the_fleet() {
        let ids: Vec<String> = (0..10).map(|i| format!("i-{i:08x}")).collect();
        let today = sample(&ids, 3, "2026-11-23");
        assert_eq!(today.len(), 3);
        assert_eq!(today, sample(&ids, 3, "2026-11-23"), "stable within a day");
        let mut seen = std::collections::BTreeSet::new();
        for day in 1..=28 {
            seen.extend(sample(&ids, 3, &format!("2026-11-{day:02}")));
        }
        assert_eq!(
            seen.len(),
            10,
            "every instance is verified within four weeks"
        );
        assert_eq!(sample(&ids, 20, "d").len(), 10);
    }

    fn restore_job(devices: &[&str]) -> RestoreJob {
        RestoreJob {
            restore_id: "restore-i-1-0000".into(),
            instance_id: "i-1".into(),
            name: "sql01".into(),
            mode: RestoreMode::Volumes,
            rollback: false,
            zone: "us-east-1a".into(),
            set: ChosenSet {
                run_id: "r1".into(),
                consistent: true,
                file_system_only: false,
                snapshots: devices
                    .iter()
                    .map(|d| snap(&format!("snap-{d}"), "r1", d, true, 0))
                    .collect(),
            },
            deadline: at(6),
            attempt: 0,
        }
    }

    #[test]
    fn a_volumes_restore_creates_what_is_missing_then_waits_until_every_volume_is_made() {
        let job = restore_job(&["/dev/sda1", "xvdf"]);
        assert_eq!(
            volumes_step(&job, &BTreeMap::new()),
            Step::Create {
                devices: vec!["/dev/sda1".into(), "xvdf".into()]
            }
        );
        let one: BTreeMap<String, VolumeFacts> =
            [("/dev/sda1".to_string(), volume("v1", "available"))].into();
        assert_eq!(
            volumes_step(&job, &one),
            Step::Create {
                devices: vec!["xvdf".into()]
            }
        );
        let mut both = one.clone();
        both.insert("xvdf".into(), volume("v2", "creating"));
        assert!(
            matches!(volumes_step(&job, &both), Step::Wait { ref for_what } if for_what.contains("v2"))
        );
        both.insert("xvdf".into(), volume("v2", "error"));
        assert!(matches!(volumes_step(&job, &both), Step::Fail { ref why } if why.contains("v2")));
        both.insert("xvdf".into(), volume("v2", "available"));
        assert_eq!(volumes_step(&job, &both), Step::Done);
    }

    fn request(mode: RestoreMode, zone: Option<&str>) -> RestoreRequest {
        RestoreRequest {
            instance_id: "i-1".into(),
            run_id: "latest".into(),
            availability_zone: zone.map(str::to_string),
            mode,
            allow_crash_consistent: None,
            rollback: None,
        }
    }

    #[test]
    fn the_zone_of_a_restore_follows_its_mode() {
        let here = InstanceView {
            zone: "us-east-1a".into(),
            ..InstanceView::default()
        };
        let zone = |mode, asked, instance| restore_zone(&request(mode, asked), instance);
        // Volumes: where asked, else the instance's zone; a gone instance needs a zone.
        assert_eq!(
            zone(RestoreMode::Volumes, Some("us-east-1b"), Some(&here)),
            Ok("us-east-1b".into())
        );
        assert_eq!(
            zone(RestoreMode::Volumes, None, Some(&here)),
            Ok("us-east-1a".into())
        );
        assert_eq!(
            zone(RestoreMode::Volumes, Some("us-east-1b"), None),
            Ok("us-east-1b".into())
        );
        assert!(zone(RestoreMode::Volumes, None, None)
            .is_err_and(|e| e.contains("name the availability_zone")));
        // Replace: only into the instance's own zone, only of an instance that exists.
        assert_eq!(
            zone(RestoreMode::Replace, None, Some(&here)),
            Ok("us-east-1a".into())
        );
        assert_eq!(
            zone(RestoreMode::Replace, Some("us-east-1a"), Some(&here)),
            Ok("us-east-1a".into())
        );
        assert!(zone(RestoreMode::Replace, Some("us-east-1b"), Some(&here))
            .is_err_and(|e| e.contains("own zone")));
        assert!(
            zone(RestoreMode::Replace, None, None).is_err_and(|e| e.contains("no such instance"))
        );
    }

    #[test]
    fn a_restore_is_failed_when_it_still_waits_past_its_deadline() {
        let wait = Step::Wait {
            for_what: "v1 to be created".into(),
        };
        assert_eq!(
            restore_state(&wait, false),
            (
                RestoreState::InProgress,
                Some("v1 to be created".into()),
                None
            )
        );
        let (state, waiting, error) = restore_state(&wait, true);
        assert_eq!((state, waiting), (RestoreState::Failed, None));
        assert!(error.is_some_and(|e| e.contains("call again to resume")));
        assert_eq!(restore_state(&Step::Done, true).0, RestoreState::Done);
        assert_eq!(
            restore_state(&Step::Stop, false).0,
            RestoreState::InProgress
        );
        let status = serde_json::to_value(RestoreState::InProgress).unwrap_or_default();
        assert_eq!(status, "in_progress");
    }

    #[test]
    fn only_this_deployments_snapshots_with_a_run_and_a_device_are_restore_sources() {
        let facts = |id: &str, by: &str, device: Option<&str>| SnapshotFacts {
            snapshot_id: id.into(),
            state: "completed".into(),
            start_time: Some(at(0)),
            size_gib: Some(30),
            tags: [
                Some(("ConsistentSnapshot:ManagedBy", by)),
                Some(("ConsistentSnapshot:RunId", "r1")),
                Some(("AppConsistent", "True")),
                device.map(|d| ("Device", d)),
            ]
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..SnapshotFacts::default()
        };
        let sources = source_snapshots(
            vec![
                facts("s1", "prod", Some("xvdf")),
                facts("s2", "other", Some("xvdf")),
                facts("s3", "prod", None),
            ],
            "prod",
        );
        assert_eq!(sources.len(), 1);
        assert_eq!(
            (
                sources[0].snapshot_id.as_str(),
                sources[0].device.as_str(),
                sources[0].app_consistent
            ),
            ("s1", "xvdf", true)
        );
    }

    #[test]
    fn a_verification_is_restorable_only_with_every_volume_available() {
        let item = VerifyItem {
            instance_id: "i-1".into(),
            name: "sql01".into(),
            restore_id: Some("verify-i-1-0".into()),
            run_id: Some("r1".into()),
            volumes: 2,
            error: None,
        };
        let one: BTreeMap<String, VolumeFacts> =
            [("xvdf".to_string(), volume("v1", "available"))].into();
        let verified = evaluate_verification(&item, &one, 40);
        assert!(!verified.restorable && verified.seconds.is_none());
        assert_eq!(verified.error.as_deref(), Some("1 of 2 volumes found"));
        let mut both = one.clone();
        both.insert("xvdg".into(), volume("v2", "creating"));
        assert_eq!(
            evaluate_verification(&item, &both, 40).error.as_deref(),
            Some("volume v2 is creating")
        );
        both.insert("xvdg".into(), volume("v2", "available"));
        let ok = evaluate_verification(&item, &both, 40);
        assert!(ok.restorable && ok.seconds == Some(40) && ok.error.is_none());
        // Only this verification's own, detached volumes are ever deleted.
        let mut own = volume("v3", "available");
        own.tags.insert(TAG_PURPOSE.into(), "verify".into());
        let mut attached = own.clone();
        attached.attachment = Some(("i-1".into(), "xvdf".into(), "attached".into()));
        let mut restored = volume("v4", "available");
        restored.tags.insert(TAG_PURPOSE.into(), "restore".into());
        let all = [own, attached, restored];
        let deletable: Vec<&str> = deletable_verify_volumes(all.iter())
            .map(|v| v.volume_id.as_str())
            .collect();
        assert_eq!(deletable, ["v3"]);
    }

    #[test]
    fn an_archived_set_is_restored_from_the_archive_tier_before_its_volumes_are_made() {
        let status = |tier: &str, op: Option<&str>| TierStatus {
            storage_tier: tier.into(),
            last_operation: op.map(str::to_string),
            restore_expiry: None,
            last_started: Some(at(1)),
        };
        let wanted = vec!["snap-a".to_string(), "snap-b".to_string()];
        let statuses: BTreeMap<String, TierStatus> = [
            (
                "snap-a".to_string(),
                status("archive", Some("archival-completed")),
            ),
            (
                "snap-b".to_string(),
                status("archive", Some("temporary-restore-in-progress")),
            ),
        ]
        .into();
        // The one not being restored is restored; the other is waited for.
        assert_eq!(
            thaw_step(&wanted, &statuses),
            Some(Step::Thaw {
                snapshots: vec!["snap-a".into()]
            })
        );
        let mut restoring = statuses.clone();
        restoring.insert(
            "snap-a".into(),
            status("archive", Some("temporary-restore-in-progress")),
        );
        let Some(Step::Wait { for_what }) = thaw_step(&wanted, &restoring) else {
            panic!("waits for the restore");
        };
        assert!(
            for_what.contains("2 snapshot(s)") && for_what.contains("expected by"),
            "{for_what}"
        );
        // Restored (temporarily: back in the standard tier): the volumes come next.
        let restored: BTreeMap<String, TierStatus> = wanted
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    status("standard", Some("temporary-restore-completed")),
                )
            })
            .collect();
        assert_eq!(thaw_step(&wanted, &restored), None);
    }
}
