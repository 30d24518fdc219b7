"""The EBS snapshot archive tier with AWS's documented semantics, where moto's is instant and
never refuses anything: archiving takes a while (`archive_seconds`), only a completed snapshot in
the standard tier can be archived; an archived snapshot cannot be copied or made into a volume
until restored; a restore takes a while (`restore_seconds`, standing for AWS's up to 72 hours),
and a temporary one is archived again when its days end. Both durations come from `/_sim/ebs`.
DeleteSnapshot of an archived snapshot succeeds (AWS bills the rest of its 90 days)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_block_store import EBSBackend

from .model import utcnow

_original_describe_snapshots = EBSBackend.describe_snapshots
_original_describe_tier_status = EBSBackend.describe_snapshot_tier_status
_original_create_volume = None
_original_copy_snapshot = None


class Timing:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.archive_seconds = 0.5
        self.restore_seconds = 2.0
        self.restores = 0

    def configure(self, spec: dict[str, Any]) -> None:
        with self.lock:
            self.archive_seconds = float(spec.get("archive_seconds", self.archive_seconds))
            self.restore_seconds = float(spec.get("restore_seconds", self.restore_seconds))

    def reset(self) -> None:
        with self.lock:
            self.archive_seconds, self.restore_seconds, self.restores = 0.5, 2.0, 0


TIMING = Timing()


def settle(snapshot: Any, now: dt.datetime | None = None) -> None:
    """Moves a snapshot's tiering operation on once its time has come."""
    now = now or utcnow()
    done = getattr(snapshot, "tier_done_at", None)
    status = snapshot.last_tiering_operation_status
    if status == "archival-in-progress" and done and now >= done:
        snapshot.storage_tier = "archive"
        snapshot.last_tiering_operation_status = "archival-completed"
        snapshot.last_tiering_operation_status_detail = "Archival completed successfully"
        snapshot.last_tiering_progress = 100
        snapshot.archival_complete_time = done
    elif status == "temporary-restore-in-progress" and done and now >= done:
        snapshot.storage_tier = "standard"
        snapshot.last_tiering_operation_status = "temporary-restore-completed"
        snapshot.last_tiering_progress = 100
        snapshot.restore_expiry_time = done + dt.timedelta(days=snapshot.tier_restore_days)
    elif (
        status == "temporary-restore-completed"
        and snapshot.restore_expiry_time
        and now >= snapshot.restore_expiry_time
    ):
        snapshot.storage_tier = "archive"
        snapshot.last_tiering_operation_status = "archival-completed"
        snapshot.restore_expiry_time = None


def is_archived(snapshot: Any) -> bool:
    settle(snapshot)
    return snapshot.storage_tier == "archive"


def _modify_snapshot_tier(self: Any, snapshot_id: str, storage_tier: str) -> Any:
    snapshot = self.get_snapshot(snapshot_id)
    settle(snapshot)
    if storage_tier != "archive":
        raise EC2ClientError("InvalidParameterValue", f"StorageTier {storage_tier!r}: only archive")
    if snapshot.status != "completed":
        raise EC2ClientError(
            "IncorrectState", f"Snapshot {snapshot_id} is {snapshot.status}: only a completed snapshot can be archived"
        )
    if snapshot.storage_tier == "archive" or snapshot.last_tiering_operation_status in (
        "archival-in-progress", "temporary-restore-in-progress", "permanent-restore-in-progress"
    ):
        raise EC2ClientError(
            "IncorrectState",
            f"Snapshot {snapshot_id} is already archived or being moved between tiers",
        )
    now = utcnow()
    snapshot.last_tiering_start_time = now
    snapshot.last_tiering_progress = 0
    snapshot.last_tiering_operation_status = "archival-in-progress"
    snapshot.last_tiering_operation_status_detail = "Archival in progress"
    snapshot.tier_done_at = now + dt.timedelta(seconds=TIMING.archive_seconds)
    settle(snapshot, now)
    return snapshot


def _restore_snapshot_tier(
    self: Any,
    snapshot_id: str,
    temporary_restore_days: int | None = None,
    permanent_restore: bool = False,
) -> Any:
    snapshot = self.get_snapshot(snapshot_id)
    settle(snapshot)
    if snapshot.storage_tier != "archive":
        raise EC2ClientError("IncorrectState", f"Snapshot {snapshot_id} is not archived")
    if snapshot.last_tiering_operation_status in (
        "temporary-restore-in-progress", "permanent-restore-in-progress"
    ):
        raise EC2ClientError("IncorrectState", f"Snapshot {snapshot_id} is already being restored")
    if not permanent_restore and not temporary_restore_days:
        raise EC2ClientError(
            "InvalidParameterCombination", "TemporaryRestoreDays or PermanentRestore is required"
        )
    now = utcnow()
    with TIMING.lock:
        TIMING.restores += 1
    snapshot.restore_start_time = now
    snapshot.last_tiering_start_time = now
    snapshot.last_tiering_progress = 0
    snapshot.tier_done_at = now + dt.timedelta(seconds=TIMING.restore_seconds)
    if permanent_restore:
        snapshot.last_tiering_operation_status = "permanent-restore-in-progress"
    else:
        snapshot.last_tiering_operation_status = "temporary-restore-in-progress"
        snapshot.tier_restore_days = int(temporary_restore_days)
    return snapshot


def _describe_snapshots(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
    snapshots = _original_describe_snapshots(self, *args, **kwargs)
    now = utcnow()
    for snapshot in snapshots:
        settle(snapshot, now)
    return snapshots


def _describe_snapshot_tier_status(self: Any, filters: Any = None) -> list[Any]:
    snapshots = _original_describe_tier_status(self, filters)
    now = utcnow()
    for snapshot in snapshots:
        settle(snapshot, now)
    return snapshots


def _create_volume(self: Any, *args: Any, **kwargs: Any) -> Any:
    snapshot_id = kwargs.get("snapshot_id")
    if snapshot_id and snapshot_id in self.snapshots and is_archived(self.snapshots[snapshot_id]):
        raise EC2ClientError(
            "IncorrectState",
            f"Snapshot {snapshot_id} is in the archive tier: restore it before creating a volume",
        )
    return _original_create_volume(self, *args, **kwargs)


def _copy_snapshot(self: Any, source_snapshot_id: str, source_region: str, *args: Any, **kwargs: Any) -> Any:
    from moto.ec2.models import ec2_backends

    source = ec2_backends[self.account_id][source_region].snapshots.get(source_snapshot_id)
    if source is not None and is_archived(source):
        raise EC2ClientError(
            "IncorrectState", f"Snapshot {source_snapshot_id} is in the archive tier and cannot be copied"
        )
    return _original_copy_snapshot(self, source_snapshot_id, source_region, *args, **kwargs)


#: Every behaviour this module adds, one line each.
REPLACES = (
    "ModifySnapshotTier: archival takes archive_seconds; refused (IncorrectState) for a snapshot not completed, archived or moving",
    "RestoreSnapshotTier: takes restore_seconds; a temporary restore is archived again when its days end; refused unless archived",
    "CreateVolume and CopySnapshot from an archived snapshot refused (IncorrectState)",
)


def install() -> None:
    """After `ec2.install`: wraps its CreateVolume and CopySnapshot."""
    global _original_create_volume, _original_copy_snapshot
    _original_create_volume = EBSBackend.create_volume
    _original_copy_snapshot = EBSBackend.copy_snapshot
    EBSBackend.modify_snapshot_tier = _modify_snapshot_tier
    EBSBackend.restore_snapshot_tier = _restore_snapshot_tier
    EBSBackend.describe_snapshots = _describe_snapshots
    EBSBackend.describe_snapshot_tier_status = _describe_snapshot_tier_status
    EBSBackend.create_volume = _create_volume
    EBSBackend.copy_snapshot = _copy_snapshot
