"""EC2 and EBS as AWS answers them, where this project depends on it: copy limits, volumes that
take time to create, instances that take time to stop and start, paged DescribeSnapshots and
DescribeInstances, and tags looked up by resource id."""

from __future__ import annotations

import re
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidVolumeIdError
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.elastic_block_store import EBSBackend, Volume
from moto.ec2.models.instances import Instance
from moto.ec2.models.tags import TagBackend
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2 import utils as ec2_utils
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, generic_filter, get_prefix

from .accounts import caller
from .keys import NOT_ACCESSIBLE, may_use
from .model import SIM

_original_is_filter_matching = ec2_utils.is_filter_matching
_WILDCARD = re.compile(r"[*?\[]")


def _is_filter_matching(obj: Any, name: str, values: Any) -> bool:
    """A text attribute against a list of values without wildcards: one membership test, as
    the values mean (moto: an fnmatch per value and object, which makes a filter of 200
    instance ids over 100,000 snapshots take seconds a page)."""
    if isinstance(values, list) and len(values) > 1 and not _WILDCARD.search("".join(values)):
        value = obj.get_filter_value(name)
        if isinstance(value, str):
            return value in values
    return _original_is_filter_matching(obj, name, values)


_original_copy_snapshot = EBSBackend.copy_snapshot
_original_create_tags = TagBackend.create_tags

# EC2's limits: a tag key of at most 128 characters, a value of at most 256, a snapshot's
# description at most 255 (moto: any length).
TAG_KEY_MAX, TAG_VALUE_MAX, DESCRIPTION_MAX = 128, 256, 255


def _create_tags(self: Any, resource_ids: list[str], tags: dict[str, str]) -> Any:
    for key, value in tags.items():
        if len(key) > TAG_KEY_MAX or len(value or "") > TAG_VALUE_MAX:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Tag {key[:40]!r}: a key may hold {TAG_KEY_MAX} characters and a value {TAG_VALUE_MAX}",
            )
    return _original_create_tags(self, resource_ids, tags)


def _copy_snapshot(self: Any, *args: Any, **kwargs: Any) -> Any:
    description = kwargs.get("description", args[2] if len(args) > 2 else None) or ""
    if len(description) > DESCRIPTION_MAX:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"The description may hold at most {DESCRIPTION_MAX} characters",
        )
    # EBS limits concurrent copies into a region (ResourceLimitExceeded): the harness sets the
    # limit, or makes the next copies into a region meet it.
    if SIM.refuse_copy(self.region_name):
        raise EC2ClientError(
            "ResourceLimitExceeded",
            "You have reached the limit for concurrent snapshot copies in this region.",
        )
    try:
        snapshot = _copy_shared(self, *args, **kwargs) or _original_copy_snapshot(
            self, *args, **kwargs
        )
    except Exception:
        SIM.release_copy(self.region_name)
        raise
    SIM.new_copy(snapshot, self.region_name)
    return snapshot


def _shared_source(account_id: str, region: str, snapshot_id: str) -> Any:
    """The snapshot `snapshot_id` of another account in `region`, if that account shares it
    with `account_id` (createVolumePermission for the account or for all)."""
    from moto.ec2.models import ec2_backends

    for other in list(ec2_backends.keys()):
        if other == account_id:
            continue
        source = ec2_backends[other][region].snapshots.get(snapshot_id)
        if source is not None and (
            account_id in source.create_volume_permission_userids
            or "all" in source.create_volume_permission_groups
        ):
            return source
    return None


def _copy_shared(self: Any, source_snapshot_id: str, source_region: str, description: str,
                 kms_key_id: str | None) -> Any:
    """CopySnapshot of a snapshot another account shares with this one (moto looks in the
    caller's own account only); `None` when the source is the caller's own."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.elastic_block_store import Snapshot
    from moto.ec2.utils import random_snapshot_id

    if source_snapshot_id in ec2_backends[self.account_id][source_region].snapshots:
        return None
    source = _shared_source(self.account_id, source_region, source_snapshot_id)
    if source is None:
        return None
    snapshot_id = random_snapshot_id()
    snapshot = Snapshot(self, snapshot_id, volume=source.volume, description=description,
                        encrypted=source.encrypted or kms_key_id is not None,
                        kms_key_id=kms_key_id)
    # The source's key must be one this account may use (`keys`): else the copy fails.
    role_arn, statements = caller()
    if source.encrypted and not may_use(source.kms_key_id or "", self.account_id,
                                        self.region_name, statements, role_arn):
        snapshot.final_status = "error"
        snapshot.state_message = NOT_ACCESSIBLE
    self.snapshots[snapshot_id] = snapshot
    return snapshot


_original_create_volume = EBSBackend.create_volume
_original_attach_volume = EBSBackend.attach_volume
_original_volume_status = Volume.status


def _create_volume(self: Any, *args: Any, **kwargs: Any) -> Any:
    # A volume from a snapshot another account shares with this one (moto: own snapshots only);
    # the share lends the snapshot to this one call, nothing else of this account sees it.
    snapshot_id = kwargs.get("snapshot_id", args[2] if len(args) > 2 else None)
    shared = None
    if snapshot_id and snapshot_id not in self.snapshots:
        shared = _shared_source(self.account_id, self.region_name, snapshot_id)
    if shared is not None:
        self.snapshots[snapshot_id] = shared
    try:
        volume = _original_create_volume(self, *args, **kwargs)
    finally:
        if shared is not None:
            self.snapshots.pop(snapshot_id, None)
    SIM.new_volume(volume.id)
    return volume


def _attach_volume(self: Any, volume_id: str, *args: Any, **kwargs: Any) -> Any:
    # EBS refuses to attach a volume that is still being created.
    if SIM.is_creating(volume_id):
        raise EC2ClientError("IncorrectState", f"Volume '{volume_id}' is not 'available'.")
    return _original_attach_volume(self, volume_id, *args, **kwargs)


_original_describe_volumes = EBSBackend.describe_volumes


def _describe_volumes(self: Any, volume_ids: Any = None, filters: Any = None) -> Any:
    """Volumes asked by id are looked up by id (moto: walks every volume of the region for
    each call, and RunInstances calls it once per new volume, so seeding 20,000 servers of
    three volumes took over 30 s a RunInstances call by its end)."""
    if not volume_ids:
        return _original_describe_volumes(self, volume_ids, filters)
    wanted = list(dict.fromkeys(volume_ids))
    unknown = [v for v in wanted if v not in self.volumes]
    if unknown:
        raise InvalidVolumeIdError(", ".join(unknown))
    matches = [self.volumes[v] for v in wanted]
    return generic_filter(filters, matches) if filters else matches


def _volume_status(self: Any) -> str:
    if SIM.is_creating(self.id):
        return "creating"
    return _original_volume_status.fget(self)


_original_stop = Instance.stop
_original_start = Instance.start


def _stop(self: Any) -> Any:
    previous = _original_stop(self)
    SIM.transition(self, ("stopping", 64), ("stopped", 80))
    return previous


def _start(self: Any) -> Any:
    previous = _original_start(self)
    SIM.transition(self, ("pending", 0), ("running", 16))
    return previous


def _describe_snapshots(self: Any) -> ActionResult:
    """DescribeSnapshots with AWS's paging: MaxResults 5-1000 (not with SnapshotIds), NextToken."""
    filters = self._filters_from_querystring()
    snapshot_ids = self._get_param("SnapshotIds", [])
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    if max_results is not None:
        if snapshot_ids:
            raise EC2ClientError(
                "InvalidParameterCombination", "MaxResults cannot be used with SnapshotIds"
            )
        if not 5 <= int(max_results) <= 1000:
            raise EC2ClientError("InvalidParameterValue", "MaxResults must be between 5 and 1000")
    snapshots = self.ec2_backend.describe_snapshots(snapshot_ids=snapshot_ids, filters=filters)
    if max_results is None and not token:
        return ActionResult({"Snapshots": snapshots})
    # Ordered by id, the token being the last id answered: stable while snapshots come and go.
    snapshots = sorted(snapshots, key=lambda snap: snap.id)
    if token:
        snapshots = [snap for snap in snapshots if snap.id > token]
    page = snapshots[: int(max_results or 1000)]
    result: dict[str, Any] = {"Snapshots": page}
    if len(snapshots) > len(page):
        result["NextToken"] = page[-1].id
    return ActionResult(result)


def _get_tags(self: Any) -> list[dict[str, str]]:
    if not self.id:
        return []
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    return [
        {"resource_id": self.id, "key": key, "value": value, "resource_type": kind}
        for key, value in self.ec2_backend.tags.get(self.id, {}).items()
    ]


_original_describe_instances = InstanceResponse.describe_instances


def _describe_instances(self: Any) -> ActionResult:
    """DescribeInstances pages of at most MaxResults instances (whole reservations, at least
    one), where moto counts MaxResults in reservations."""
    if self._get_param("InstanceIds", []) or "MaxResults" not in self.data:
        return _original_describe_instances(self)
    self.error_on_dryrun()
    reservations = self.ec2_backend.describe_instances(filters=self._filters_from_querystring())
    token = self._get_param("NextToken")
    ids = [reservation.id for reservation in reservations]
    start = ids.index(token) + 1 if token in ids else 0
    max_results = int(self._get_param("MaxResults"))
    page, held = [], 0
    for reservation in reservations[start:]:
        if page and held + len(reservation.instances) > max_results:
            break
        page.append(reservation)
        held += len(reservation.instances)
    next_token = page[-1].id if start + len(page) < len(reservations) else None
    return ActionResult({"Reservations": page, "NextToken": next_token})


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "CopySnapshot of a snapshot another account shares with the caller (moto: own snapshots only)",
    "CreateVolume from a snapshot another account shares with the caller (moto: own snapshots only)",
    "CopySnapshot answers ResourceLimitExceeded for the next N copies into a region when asked (/_sim/ebs)",
    "copies take copy_seconds, at most copy_limit in flight into a region, the rest refused with ResourceLimitExceeded (moto: no limit, done at once)",
    "copies into a region named in copy_errors end in state error with that StateMessage, as a KMS key the copy may not use makes them (moto: always completed)",
    "new snapshots and copies stay pending for a while when asked (moto: completed at once)",
    "CreateVolume: the volume stays creating for a while when asked (moto: available at once)",
    "AttachVolume refuses a volume still being created (IncorrectState)",
    "StopInstances/StartInstances: stopping/pending for a while when asked (moto: stopped/running at once)",
    "DescribeSnapshots honours MaxResults and NextToken (moto: one page, everything)",
    "CreateTags and CopySnapshot refuse tags and descriptions past EC2's lengths (moto: any length)",
    "a resource's tags are looked up by its id (moto: scans every tag of the region per resource)",
    "a DescribeInstances page holds at most MaxResults instances (moto: counts reservations)",
    "a filter of many literal values is one membership test per object (moto: an fnmatch per value)",
    "DescribeVolumes by id looks each id up (moto: walks every volume of the region per call)",
)


def install() -> None:
    """Patches moto as `REPLACES` lists. Idempotent only in the sense that it is called once."""
    EBSBackend.copy_snapshot = _copy_snapshot
    TagBackend.create_tags = _create_tags
    EBSBackend.create_volume = _create_volume
    EBSBackend.attach_volume = _attach_volume
    Volume.status = property(_volume_status)
    EBSBackend.describe_volumes = _describe_volumes
    Instance.stop = _stop
    Instance.start = _start
    ElasticBlockStore.describe_snapshots = _describe_snapshots
    TaggedEC2Resource.get_tags = _get_tags
    InstanceResponse.describe_instances = _describe_instances
    ec2_utils.is_filter_matching = _is_filter_matching
