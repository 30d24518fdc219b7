"""Seeding the past: earlier nightly runs' sets (`/_sim/history`) and time passing
(`/_sim/age`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from .model import instances_by_id, utcnow
from .protection import PROTECTION

def seed_history(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Earlier nightly runs: `sets` consistent sets per instance, `hours_apart` apart, the newest
    `newest_hours` old, tagged as the function and the VSS document tag them (and copied into
    `copy_region`, tagged as the function tags its copies). Answers the sets made, for the
    harness to record in the catalog as the function recorded them on those nights."""
    known = {"region", "managed_by", "instance_ids", "sets", "hours_apart", "newest_hours",
             "copy_region", "crash_consistent"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown history field(s) {sorted(unknown)}")
    region = spec["region"]
    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    copy_region = spec.get("copy_region")
    copies = ec2_backends[DEFAULT_ACCOUNT_ID][copy_region] if copy_region else None
    # Whole seconds, as EC2 reports start times.
    now = utcnow().replace(microsecond=0)
    made: list[dict[str, Any]] = []
    crash = {int(k) for k in spec.get("crash_consistent", [])}
    instances = instances_by_id(ec2, set(spec["instance_ids"]))
    for k in range(int(spec["sets"])):
        taken = now - dt.timedelta(
            hours=float(spec["newest_hours"]) + k * float(spec["hours_apart"])
        )
        taken = taken.replace(microsecond=0)
        run_id = taken.strftime("%Y%m%dT%H%M%SZ") + "-0b0b0b0b"
        for instance_id in spec["instance_ids"]:
            instance = instances[instance_id]
            made_set: dict[str, Any] = {
                "run_id": run_id, "instance_id": instance_id,
                "taken": taken.strftime("%Y-%m-%dT%H:%M:%SZ"), "snapshots": [], "copies": [],
                "consistent": k not in crash,
            }
            made.append(made_set)
            for device, block in sorted(instance.block_device_mapping.items()):
                snapshot = ec2.create_snapshot(block.volume_id, f"history {run_id}")
                snapshot.start_time = taken
                tags = {
                    "ConsistentSnapshot:RunId": run_id,
                    "ConsistentSnapshot:ManagedBy": spec["managed_by"],
                    "ConsistentSnapshot:InstanceId": instance_id,
                    "Name": f"{instance_id} {device}",
                    "Device": device,
                    "AppConsistent": "False" if k in crash else "True",
                    "AwsVssConfig": "AwsVssComponents 2.5.0 (simulated)",
                }
                ec2.create_tags([snapshot.id], tags)
                made_set["snapshots"].append(
                    {"snapshot_id": snapshot.id, "volume_id": block.volume_id, "device": device}
                )
                if copies is None or k in crash:
                    # The function copies backups only.
                    continue
                copy = copies.copy_snapshot(snapshot.id, region, f"copy of {snapshot.id}", None)
                copy.start_time = taken
                tags["ConsistentSnapshot:SourceSnapshotId"] = snapshot.id
                tags["ConsistentSnapshot:SourceRegion"] = region
                copies.create_tags([copy.id], tags)
                made_set["copies"].append(
                    {"snapshot_id": copy.id, "source_snapshot_id": snapshot.id,
                     "region": copy_region}
                )
    return made


def age_snapshots(spec: dict[str, Any]) -> int:
    """Moves the start time of some snapshots back, as if they had been taken earlier (and
    their locks laid earlier: a lock's end comes that much sooner)."""
    unknown = set(spec) - {"account", "region", "snapshot_ids", "hours"}
    if unknown:
        raise ValueError(f"unknown age field(s) {sorted(unknown)}")
    account = spec.get("account", DEFAULT_ACCOUNT_ID)
    ec2 = ec2_backends[account][spec["region"]]
    delta = dt.timedelta(hours=float(spec["hours"]))
    aged = 0
    for snapshot_id in spec["snapshot_ids"]:
        snapshot = ec2.snapshots.get(snapshot_id)
        if snapshot is None:
            raise ValueError(f"no snapshot {snapshot_id} in {spec['region']}")
        snapshot.start_time = snapshot.start_time - delta
        origin = getattr(snapshot, "block_origin", None)
        if origin is not None:
            # A copy holds its source's blocks as they were then: that time moves back too.
            snapshot.block_origin = (origin[0], origin[1] - delta)
        aged += 1
        # Time passing for the snapshot passes for its lock too: it was laid that much earlier
        # and ends that much sooner, as the snapshot's own age says.
        with PROTECTION.lock:
            lock = PROTECTION.locks.get((account, spec["region"], snapshot_id))
            if lock is not None:
                lock.created -= delta
                lock.expires -= delta
    return aged


INSTANCE_PROFILE = "vss-instance"
# A profile whose role holds no permission at all (a role made without AWSEC2VssSnapshotPolicy).
BARE_PROFILE = "vss-instance-bare"


def landing_zone(spec: dict[str, Any]) -> dict[str, Any]:
    """The account as AWS makes it and as a VSS fleet needs it, where moto differs: the default
    VPC's main route table gets its internet gateway and 0.0.0.0/0 route (moto's has only the
    local route), and an instance profile for the fleet (`vss-instance`, its role holding
    AWSEC2VssSnapshotPolicy's document) exists, and one whose role holds nothing
    (`vss-instance-bare`). Idempotent; answers the profile's name."""
    from moto.iam.models import iam_backends

    unknown = set(spec) - {"region"}
    if unknown:
        raise ValueError(f"unknown landing-zone field(s) {sorted(unknown)}")
    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][spec["region"]]
    for vpc in list(ec2.vpcs.values()):
        if not vpc.is_default:
            continue
        tables = [t for t in ec2.route_tables.values() if t.vpc_id == vpc.id]
        main = next((t for t in tables if t.main_association_id), tables[0] if tables else None)
        if main is None or any(r.destination_cidr_block == "0.0.0.0/0"
                               for r in main.routes):
            continue
        gateway = ec2.create_internet_gateway()
        ec2.attach_internet_gateway(gateway.id, vpc.id)
        ec2.create_route(main.id, "0.0.0.0/0", gateway_id=gateway.id)
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    existing = {p.name for p in iam.get_instance_profiles()}
    for name, policy in ((INSTANCE_PROFILE, True), (BARE_PROFILE, False)):
        if name in existing:
            continue
        iam.create_role(
            role_name=name,
            assume_role_policy_document="{}",
            path="/",
            permissions_boundary=None,
            description="an instance role of the fleet",
            tags=[],
            max_session_duration=None,
        )
        if policy:
            # AWS's managed policy's document, as moto ships it, held by the role.
            from moto.iam.aws_managed_policies import aws_managed_policies_data

            document = json.loads(aws_managed_policies_data)["AWSEC2VssSnapshotPolicy"]["Document"]
            iam.put_role_policy(name, "AWSEC2VssSnapshotPolicy", json.dumps(document))
        iam.create_instance_profile(name, "/", [name], [])
    return {"instance_profile": INSTANCE_PROFILE, "bare_instance_profile": BARE_PROFILE}
