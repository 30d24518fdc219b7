//! Restores as plain facts: the snapshots a set can be restored from, the set chosen, and the
//! volumes EC2 describes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::state::{AttachmentState, SnapshotState, VolumeState};

/// A snapshot of a set that may be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSnapshot {
    pub snapshot_id: String,
    pub run_id: String,
    pub device: String,
    pub state: SnapshotState,
    pub app_consistent: bool,
    pub size_gib: Option<i32>,
    pub start_time: DateTime<Utc>,
    /// Labelled `ConsistentSnapshot:Consistency=FileSystem` (taken with `NoWriters`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_system_only: bool,
    /// In the archive tier when the restore was asked: restored from it first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
}

/// The set chosen for a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenSet {
    pub run_id: String,
    pub consistent: bool,
    /// Taken with `NoWriters`: file-system consistent, the application writers left out (a
    /// database restored from it recovers as after a crash).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_system_only: bool,
    /// One per device, sorted by device.
    pub snapshots: Vec<SourceSnapshot>,
}

/// A volume as EC2 describes it, plain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFacts {
    pub volume_id: String,
    pub state: VolumeState,
    pub zone: String,
    pub volume_type: Option<String>,
    pub size_gib: Option<i32>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    /// Where it is attached: instance, device and attachment state.
    pub attachment: Option<(String, String, AttachmentState)>,
    pub tags: BTreeMap<String, String>,
}
