"""EBS Snapshot Lock and the Recycle Bin, which moto does not have, with AWS's documented
semantics: a locked snapshot cannot be deleted until its lock expires; a snapshot deleted while a
Recycle Bin retention rule matches it leaves DescribeSnapshots but stays in the bin (still
billed, recoverable) until the rule's retention ends.

Locks are made with EC2's own `LockSnapshot`; Recycle Bin rules (a separate service, `rbin`) are
given through `/_sim/recycle-bin`."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidSnapshotIdError
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

from .model import utcnow

LOCK_MODES = {"governance", "compliance"}
LOCK_STATES = {"compliance-cooloff", "governance", "compliance", "expired"}
# The code this emulator answers for a delete refused by a lock. The function never relies on
# it: after any refused delete it reads the snapshot's lock again.
LOCKED_CODE = "SnapshotLocked"


@dataclass
class Lock:
    mode: str
    created: dt.datetime
    expires: dt.datetime
    duration_days: int | None
    cool_off_hours: int | None

    def state(self, now: dt.datetime) -> str:
        if now >= self.expires:
            return "expired"
        if self.mode == "compliance" and self.cool_off_hours:
            if now < self.created + dt.timedelta(hours=self.cool_off_hours):
                return "compliance-cooloff"
        return self.mode

    def describe(self, snapshot_id: str, owner: str, now: dt.datetime) -> dict[str, Any]:
        info: dict[str, Any] = {
            "OwnerId": owner,
            "SnapshotId": snapshot_id,
            "LockState": self.state(now),
            "LockCreatedOn": self.created,
            "LockDurationStartTime": self.created,
            "LockExpiresOn": self.expires,
        }
        if self.duration_days is not None:
            info["LockDuration"] = self.duration_days
        if self.cool_off_hours:
            info["CoolOffPeriod"] = self.cool_off_hours
            info["CoolOffPeriodExpiresOn"] = self.created + dt.timedelta(hours=self.cool_off_hours)
        return info


@dataclass
class Binned:
    snapshot: Any
    entered: dt.datetime
    exits: dt.datetime


def _key(response: Any, snapshot_id: str) -> tuple[str, str, str]:
    """Locks and the bin are an account's, in one region."""
    backend = response.ec2_backend
    return (backend.account_id, backend.region_name, snapshot_id)


class Protection:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        # By (account, region, snapshot id), as every structure here.
        self.locks: dict[tuple[str, str, str], Lock] = {}
        # Per account and region: (retention days, resource tags matched; none: every snapshot).
        self.rules: dict[tuple[str, str], list[tuple[int, list[tuple[str, str | None]]]]] = {}
        self.bin: dict[tuple[str, str, str], Binned] = {}

    def reset(self) -> None:
        with self.lock:
            self.locks.clear()
            self.rules.clear()
            self.bin.clear()

    def add_rule(self, spec: dict[str, Any]) -> None:
        unknown = set(spec) - {"account", "region", "retention_days", "resource_tags"}
        if unknown:
            raise ValueError(f"unknown recycle-bin field(s) {sorted(unknown)}")
        days = int(spec["retention_days"])
        if not 1 <= days <= 365:
            raise ValueError("a snapshot rule keeps 1 to 365 days")
        tags = [(t["key"], t.get("value")) for t in spec.get("resource_tags", [])]
        with self.lock:
            where = (spec.get("account", DEFAULT_ACCOUNT_ID), spec["region"])
            self.rules.setdefault(where, []).append((days, tags))

    def retention_days(self, where: tuple[str, str], tags: dict[str, str]) -> int | None:
        """The longest retention of the rules of the account and region `where` that match a
        snapshot with `tags`."""
        matching = [
            days
            for days, wanted in self.rules.get(where, [])
            if not wanted
            or any(key in tags and (value is None or tags[key] == value) for key, value in wanted)
        ]
        return max(matching, default=None)


PROTECTION = Protection()
_original_delete_snapshot = EBSBackend.delete_snapshot


def _delete_snapshot(self: Any, snapshot_id: str) -> Any:
    now = utcnow()
    with PROTECTION.lock:
        lock = PROTECTION.locks.get((self.account_id, self.region_name, snapshot_id))
        if lock is not None and snapshot_id in self.snapshots and lock.state(now) != "expired":
            raise EC2ClientError(
                LOCKED_CODE,
                f"The snapshot '{snapshot_id}' is locked ({lock.state(now)}) until "
                f"{lock.expires.isoformat()} and cannot be deleted.",
            )
        tags = dict(self.tags.get(snapshot_id, {}))
        snapshot = _original_delete_snapshot(self, snapshot_id)
        days = PROTECTION.retention_days((self.account_id, self.region_name), tags)
        if days is not None:
            PROTECTION.bin[(self.account_id, self.region_name, snapshot_id)] = Binned(
                snapshot, now, now + dt.timedelta(days=days)
            )
        return snapshot


def _lock_snapshot(self: Any) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    mode = self._get_param("LockMode")
    if mode not in LOCK_MODES:
        raise EC2ClientError("InvalidParameterValue", "LockMode is governance or compliance")
    if snapshot_id not in self.ec2_backend.snapshots:
        raise InvalidSnapshotIdError()
    duration = self._get_param("LockDuration")
    expiration = self._get_param("ExpirationDate")
    cool_off = self._get_param("CoolOffPeriod")
    if (duration is None) == (expiration is None):
        raise EC2ClientError(
            "InvalidParameterCombination", "Give exactly one of LockDuration and ExpirationDate"
        )
    if cool_off is not None and (mode != "compliance" or not 1 <= int(cool_off) <= 72):
        raise EC2ClientError(
            "InvalidParameterValue", "CoolOffPeriod is 1 to 72 hours, in compliance mode only"
        )
    now = utcnow()
    if duration is not None:
        if not 1 <= int(duration) <= 36500:
            raise EC2ClientError("InvalidParameterValue", "LockDuration is 1 to 36,500 days")
        expires = now + dt.timedelta(days=int(duration))
    else:
        expires = dt.datetime.fromisoformat(str(expiration).replace("Z", "+00:00"))
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.timezone.utc)
    key = _key(self, snapshot_id)
    with PROTECTION.lock:
        held = PROTECTION.locks.get(key)
        final = held is not None and held.state(now) == "compliance"
        if final and (expires < held.expires or mode != "compliance"):
            raise EC2ClientError(
                "InvalidParameterValue",
                "A compliance-mode lock past its cooling-off period can only be extended",
            )
        if final and cool_off is not None:
            raise EC2ClientError(
                "InvalidParameterCombination",
                "Omit CoolOffPeriod when extending a compliance-mode lock past its cooling-off "
                "period",
            )
        lock = Lock(
            mode, now, expires, int(duration) if duration is not None else None,
            int(cool_off) if cool_off is not None else None,
        )
        PROTECTION.locks[key] = lock
    return ActionResult(lock.describe(snapshot_id, self.current_account, now))


def _unlock_snapshot(self: Any) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    key = _key(self, snapshot_id)
    now = utcnow()
    with PROTECTION.lock:
        lock = PROTECTION.locks.get(key)
        if lock is None:
            raise EC2ClientError("SnapshotNotLocked", f"The snapshot '{snapshot_id}' is not locked")
        if lock.state(now) == "compliance":
            raise EC2ClientError(
                "UnauthorizedOperation",
                "A compliance-mode lock past its cooling-off period cannot be removed",
            )
        del PROTECTION.locks[key]
    return ActionResult({"SnapshotId": snapshot_id})


def _page(self: Any, items: list[Any], key: Any) -> tuple[list[Any], str | None]:
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    if max_results is not None and not 5 <= int(max_results) <= 1000:
        raise EC2ClientError("InvalidParameterValue", "MaxResults must be between 5 and 1000")
    items = sorted(items, key=key)
    if token:
        items = [item for item in items if key(item) > token]
    page = items[: int(max_results or 1000)]
    return page, (key(page[-1]) if len(items) > len(page) else None)


def _describe_locked_snapshots(self: Any) -> ActionResult:
    where = _key(self, "")[:2]
    ids = set(self._get_param("SnapshotIds", []) or [])
    states: set[str] = set()
    for f in self._filters_from_querystring().items():
        if f[0] != "lock-state":
            raise EC2ClientError("InvalidParameterValue", f"Unknown filter {f[0]!r}")
        states.update(f[1])
    now = utcnow()
    with PROTECTION.lock:
        found = [
            lock.describe(snapshot_id, self.current_account, now)
            for (*at, snapshot_id), lock in PROTECTION.locks.items()
            if tuple(at) == where and (not ids or snapshot_id in ids)
        ]
    found = [info for info in found if not states or info["LockState"] in states]
    page, token = _page(self, found, lambda info: info["SnapshotId"])
    result: dict[str, Any] = {"Snapshots": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _list_snapshots_in_recycle_bin(self: Any) -> ActionResult:
    where = _key(self, "")[:2]
    ids = set(self._get_param("SnapshotIds", []) or [])
    now = utcnow()
    with PROTECTION.lock:
        for key in [k for k, b in PROTECTION.bin.items() if b.exits <= now]:
            del PROTECTION.bin[key]
        found = [
            {
                "SnapshotId": snapshot_id,
                "RecycleBinEnterTime": binned.entered,
                "RecycleBinExitTime": binned.exits,
                "Description": binned.snapshot.description,
                "VolumeId": binned.snapshot.volume.id,
            }
            for (*at, snapshot_id), binned in PROTECTION.bin.items()
            if tuple(at) == where and (not ids or snapshot_id in ids)
        ]
    page, token = _page(self, found, lambda info: info["SnapshotId"])
    result: dict[str, Any] = {"Snapshots": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _restore_snapshot_from_recycle_bin(self: Any) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    with PROTECTION.lock:
        binned = PROTECTION.bin.pop(_key(self, snapshot_id), None)
        if binned is None:
            raise InvalidSnapshotIdError()
        self.ec2_backend.snapshots[snapshot_id] = binned.snapshot
    return ActionResult({"SnapshotId": snapshot_id, "State": "completed"})


#: Every behaviour this module adds, one line each.
REPLACES = (
    f"LockSnapshot, UnlockSnapshot, DescribeLockedSnapshots; DeleteSnapshot of a locked snapshot refused ({LOCKED_CODE})",
    "Recycle Bin rules (/_sim/recycle-bin): a deleted snapshot they match stays listed by ListSnapshotsInRecycleBin until the rule's retention ends",
    "RestoreSnapshotFromRecycleBin puts a binned snapshot back",
)


def install() -> None:
    EBSBackend.delete_snapshot = _delete_snapshot
    ElasticBlockStore.lock_snapshot = _lock_snapshot
    ElasticBlockStore.unlock_snapshot = _unlock_snapshot
    ElasticBlockStore.describe_locked_snapshots = _describe_locked_snapshots
    ElasticBlockStore.list_snapshots_in_recycle_bin = _list_snapshots_in_recycle_bin
    ElasticBlockStore.restore_snapshot_from_recycle_bin = _restore_snapshot_from_recycle_bin
