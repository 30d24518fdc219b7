//! Restores, as pure decisions: which set to restore, what each new volume looks like, and,
//! for `replace`, the next step towards the instance running on the restored volumes.
//!
//! A replace is a state machine over what EC2 says now, so that a restore interrupted at any
//! step is resumed (or rolled back) by calling again: `replace_step` looks at the instance and
//! the volumes at each device and names one step (create, stop, detach, attach, start, wait,
//! done); the edge (`restore_aws`) carries it out and looks again. Nothing is ever deleted: the
//! replaced volumes are detached, tagged, and kept.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{fnv1a32, RestoreMode};

/// On every volume a restore creates: the restore it belongs to.
pub const TAG_RESTORE_ID: &str = "ConsistentSnapshot:RestoreId";
/// On every volume a restore creates: the snapshot it was created from.
pub const TAG_RESTORED_FROM: &str = "ConsistentSnapshot:RestoredFrom";
/// `restore` or `verify`: verification volumes are deleted once measured, nothing else is.
pub const TAG_PURPOSE: &str = "ConsistentSnapshot:Purpose";
/// On a volume a `replace` detached: the restore that replaced it.
pub const TAG_REPLACED_BY: &str = "ConsistentSnapshot:ReplacedBy";
/// On a volume a `replace` detached: `<instance id> <device>` it was attached at.
pub const TAG_DETACHED_FROM: &str = "ConsistentSnapshot:DetachedFrom";

/// A snapshot of a set that may be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSnapshot {
    pub snapshot_id: String,
    pub run_id: String,
    pub device: String,
    pub state: String,
    pub app_consistent: bool,
    pub size_gib: Option<i32>,
    pub start_time: DateTime<Utc>,
}

/// The set chosen for a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenSet {
    pub run_id: String,
    pub consistent: bool,
    /// One per device, sorted by device.
    pub snapshots: Vec<SourceSnapshot>,
}

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
    let complete = |set: &[&SourceSnapshot]| set.iter().all(|s| s.state == "completed");
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
    if let Some(s) = set.iter().find(|s| s.state != "completed") {
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

/// A volume as EC2 describes it, plain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFacts {
    pub volume_id: String,
    /// `creating`, `available`, `in-use`, `error`…
    pub state: String,
    pub zone: String,
    pub volume_type: Option<String>,
    pub size_gib: Option<i32>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    /// Where it is attached: instance, device and attachment state.
    pub attachment: Option<(String, String, String)>,
    pub tags: BTreeMap<String, String>,
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
    pub attached: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceView {
    pub instance_id: String,
    /// `pending`, `running`, `stopping`, `stopped`…
    pub instance_state: String,
    pub devices: Vec<DeviceView>,
    /// The SSM agent's ping status (`None`: not registered): a replace is done when Windows
    /// is back, not when EC2 says running.
    pub agent: Option<String>,
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
    Done,
    Fail {
        why: String,
    },
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
    if let Some((d, t)) = targets.clone().find(|(_, t)| t.state == "error") {
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
        .filter(|(_, t)| t.state == "creating")
        .map(|(_, t)| t.volume_id.as_str())
        .collect();
    if !creating.is_empty() {
        return Step::Wait {
            for_what: format!("volume(s) {} to be created", creating.join(", ")),
        };
    }
    let in_place = |d: &DeviceView| match (&d.attached, &d.target) {
        (Some((volume, state)), Some(t)) => volume == &t.volume_id && state == "attached",
        _ => false,
    };
    let state = view.instance_state.as_str();
    if view.devices.iter().all(in_place) {
        return match state {
            "running" if view.agent.as_deref() == Some("Online") => Step::Done,
            "running" => Step::Wait {
                for_what: format!(
                    "Windows to be back: the SSM agent is {}",
                    view.agent.as_deref().unwrap_or("not registered")
                ),
            },
            "stopped" => Step::Start,
            other => Step::Wait {
                for_what: format!("the instance to be running (it is {other})"),
            },
        };
    }
    match state {
        "stopped" => {}
        "running" | "pending" => return Step::Stop,
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
                if state == "detaching" {
                    moving.push(format!("{volume} to detach"));
                } else {
                    detach.push((d.device.clone(), volume.clone()));
                }
            }
            Some((volume, state)) if state != "attached" => {
                moving.push(format!("{volume} to attach at {}", d.device))
            }
            Some(_) => {}
            None if target.state == "available" => {
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
            attached: attached.map(|(v, s)| (v.to_string(), s.to_string())),
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
}
