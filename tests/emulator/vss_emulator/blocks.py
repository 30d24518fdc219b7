"""The EBS direct APIs' ListSnapshotBlocks and ListChangedBlocks over the snapshots EC2 made, which
moto's EBS backend does not know (it knows only snapshots made with StartSnapshot, and compares
only the first snapshot's blocks).

A volume's data is played by a fixed model, so that every answer follows from a snapshot's volume
and start time alone: its first `WRITTEN_BLOCKS` blocks of 512 KiB are written; of those, by a
stable hash of (volume, block), 2% are rewritten every day, 5% every week, 10% every 30 days, the
rest never, each at its own phase. A snapshot holds each block as it was at its start time; a
copy holds its source's (the source's volume and start time are kept on the copy when it is
made). Two snapshots differ in a block when it was rewritten between their start times."""

from __future__ import annotations

import datetime as dt
import zlib
from typing import Any

from moto.core.responses import ActionResult
from moto.ebs.responses import EBSResponse
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_block_store import EBSBackend as EC2EBSBackend

BLOCK_SIZE = 512 * 1024
WRITTEN_BLOCKS = 2048
DAY = 86_400
# (share of the written blocks in percent, seconds between rewrites)
CLASSES = ((2, DAY), (5, 7 * DAY), (10, 30 * DAY))
EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)

_original_copy_snapshot = None


def _hash(*parts: Any) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def period_of(volume: str, index: int) -> tuple[int, int] | None:
    """(seconds between rewrites, phase) of a block; None for a block never rewritten."""
    share = _hash(volume, index) % 100
    floor = 0
    for percent, seconds in CLASSES:
        if share < floor + percent:
            return seconds, _hash(volume, index, "phase") % seconds
        floor += percent
    return None


def version(volume: str, index: int, at: dt.datetime) -> int:
    period = period_of(volume, index)
    if period is None:
        return 0
    seconds, phase = period
    return int(((at - EPOCH).total_seconds() - phase) // seconds)


def origin(snapshot: Any) -> tuple[str, dt.datetime]:
    """The volume and time whose data a snapshot holds."""
    return getattr(snapshot, "block_origin", None) or (snapshot.volume.id, snapshot.start_time)


def changed(first: Any | None, second: Any) -> list[int]:
    volume, t2 = origin(second)
    if first is None:
        return list(range(WRITTEN_BLOCKS))
    first_volume, t1 = origin(first)
    if first_volume != volume:
        raise EC2ClientError(
            "ValidationException", "The snapshots must be of the same volume lineage"
        )
    return [i for i in range(WRITTEN_BLOCKS) if version(volume, i, t1) != version(volume, i, t2)]


def _snapshot(response: Any, snapshot_id: str) -> Any:
    ec2 = ec2_backends[response.current_account][response.region]
    snapshot = ec2.snapshots.get(snapshot_id)
    if snapshot is None:
        raise EC2ClientError("ResourceNotFoundException", f"Snapshot {snapshot_id} not found")
    if getattr(snapshot, "storage_tier", "standard") == "archive":
        raise EC2ClientError(
            "ValidationException", f"Snapshot {snapshot_id} is archived: restore it first"
        )
    return snapshot


def _page(response: Any, indexes: list[int], token_field: str) -> tuple[list[int], str | None]:
    start = int(response._get_param("NextToken") or response._get_param("StartingBlockIndex") or 0)
    size = int(response._get_param("MaxResults") or 10_000)
    if not 100 <= size <= 10_000:
        raise EC2ClientError("ValidationException", "MaxResults must be between 100 and 10000")
    left = [i for i in indexes if i >= start]
    page = left[:size]
    token = str(page[-1] + 1) if len(left) > len(page) else None
    return page, token


def _list_changed_blocks(self: Any) -> ActionResult:
    second = _snapshot(self, self._get_param("SecondSnapshotId"))
    first_id = self._get_param("FirstSnapshotId")
    first = _snapshot(self, first_id) if first_id else None
    page, token = _page(self, changed(first, second), "NextToken")
    result: dict[str, Any] = {
        "ChangedBlocks": [
            {"BlockIndex": i, "FirstBlockToken": f"f{i}", "SecondBlockToken": f"s{i}"}
            for i in page
        ],
        "VolumeSize": second.volume.size,
        "BlockSize": BLOCK_SIZE,
    }
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _list_snapshot_blocks(self: Any) -> ActionResult:
    snapshot = _snapshot(self, self._get_param("SnapshotId"))
    page, token = _page(self, changed(None, snapshot), "NextToken")
    result: dict[str, Any] = {
        "Blocks": [{"BlockIndex": i, "BlockToken": f"b{i}"} for i in page],
        "VolumeSize": snapshot.volume.size,
        "BlockSize": BLOCK_SIZE,
    }
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _copy_snapshot(self: Any, source_snapshot_id: str, source_region: str, *args: Any, **kwargs: Any) -> Any:
    copy = _original_copy_snapshot(self, source_snapshot_id, source_region, *args, **kwargs)
    source = ec2_backends[self.account_id][source_region].snapshots.get(source_snapshot_id)
    if source is not None:
        copy.block_origin = origin(source)
    return copy


#: Every behaviour this module adds, one line each.
REPLACES = (
    "ListSnapshotBlocks and ListChangedBlocks (EBS direct APIs) over EC2's snapshots and copies, from a fixed model of each volume's blocks, paged",
)


def install() -> None:
    """After `tiering.install`: wraps its CopySnapshot to keep a copy's block origin."""
    global _original_copy_snapshot
    _original_copy_snapshot = EC2EBSBackend.copy_snapshot
    EC2EBSBackend.copy_snapshot = _copy_snapshot
    EBSResponse.list_changed_blocks = _list_changed_blocks
    EBSResponse.list_snapshot_blocks = _list_snapshot_blocks


def block_versions(spec: dict[str, Any]) -> list[int]:
    """What a snapshot holds, for a test to compare: each written block's version."""
    unknown = set(spec) - {"region", "snapshot_id"}
    if unknown:
        raise ValueError(f"unknown blocks field(s) {sorted(unknown)}")
    from moto.core import DEFAULT_ACCOUNT_ID

    snapshot = ec2_backends[DEFAULT_ACCOUNT_ID][spec["region"]].snapshots.get(spec["snapshot_id"])
    if snapshot is None:
        raise ValueError(f"no snapshot {spec['snapshot_id']} in {spec['region']}")
    volume, at = origin(snapshot)
    return [version(volume, i, at) for i in range(WRITTEN_BLOCKS)]
