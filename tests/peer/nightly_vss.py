"""The peer: the same night scripted the way an operator would write it without this project,
as one Python Lambda with boto3, after AWS's own samples for AWSEC2-CreateVssSnapshot.

`make bench` runs it against the same emulator and the same fleet as the function, through the
same counting proxy, started as Lambda starts a function (a runtime API on loopback), and sets
the two side by side. It is a yardstick, not part of the product: it trusts every tag, checks
nothing, keeps no record, and does all its work in one invocation.

One invocation:
1. the tagged, running instances (DescribeInstances, 1,000 a page);
2. AWSEC2-CreateVssSnapshot, one SendCommand per 50 instances, the snapshots tagged with the run;
3. every 5 s, GetCommandInvocation for each instance not yet final, until all are or time is short;
4. for each instance that succeeded, its snapshots (DescribeSnapshots by its volumes and the run);
5. each snapshot copied to the copy region (CopySnapshot, tags carried over);
6. in both regions, a full scan of the managed snapshots, and every one older than RETAIN_DAYS
   deleted (DeleteSnapshot).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.request
from typing import Any

import boto3

HOME = os.environ.get("AWS_REGION", "us-east-1")
COPY_REGION = os.environ.get("COPY_REGIONS", "")
TARGET_KEY = os.environ.get("TARGET_TAG_KEY", "ConsistentSnapshot")
TARGET_VALUE = os.environ.get("TARGET_TAG_VALUE", "WindowsVSS")
MANAGED_BY = os.environ.get("MANAGED_BY", "consistent-snapshot")
RETAIN_DAYS = float(os.environ.get("RETAIN_DAYS", "7"))
POLL_SECONDS = float(os.environ.get("POLL_SECONDS", "5"))
PER_COMMAND = 50
FINAL = {"Success", "Failed", "Cancelled", "TimedOut", "DeliveryTimedOut", "ExecutionTimedOut",
         "Undeliverable", "Terminated", "InvalidPlatform", "AccessDenied"}
MANAGED_TAG = "ConsistentSnapshot:ManagedBy"

ec2 = boto3.client("ec2", region_name=HOME)
ssm = boto3.client("ssm", region_name=HOME)
copy_ec2 = boto3.client("ec2", region_name=COPY_REGION) if COPY_REGION else None


def handler(event: dict[str, Any], deadline_ms: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    run = now.strftime("%Y%m%dT%H%M%SZ")

    volumes: dict[str, list[str]] = {}
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{TARGET_KEY}", "Values": [TARGET_VALUE]},
                 {"Name": "instance-state-name", "Values": ["running"]}],
        PaginationConfig={"PageSize": 1000},
    )
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                volumes[instance["InstanceId"]] = [
                    m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", [])
                    if "Ebs" in m
                ]

    pending: dict[tuple[str, str], None] = {}
    ids = sorted(volumes)
    tags = f"Key={MANAGED_TAG},Value={MANAGED_BY};Key=BackupRun,Value={run}"
    for start in range(0, len(ids), PER_COMMAND):
        chunk = ids[start:start + PER_COMMAND]
        command = ssm.send_command(
            InstanceIds=chunk,
            DocumentName="AWSEC2-CreateVssSnapshot",
            Parameters={"ExcludeBootVolume": ["False"], "tags": [tags]},
            TimeoutSeconds=600,
        )["Command"]["CommandId"]
        for instance_id in chunk:
            pending[(command, instance_id)] = None

    statuses: dict[str, str] = {}
    while pending and time.time() * 1000 < deadline_ms - 120_000:
        time.sleep(POLL_SECONDS)
        for command, instance_id in list(pending):
            status = ssm.get_command_invocation(CommandId=command, InstanceId=instance_id)["Status"]
            if status in FINAL:
                statuses[instance_id] = status
                del pending[(command, instance_id)]

    copied = 0
    for instance_id, status in sorted(statuses.items()):
        if status != "Success":
            continue
        snapshots = ec2.describe_snapshots(
            OwnerIds=["self"],
            Filters=[{"Name": "volume-id", "Values": volumes[instance_id]},
                     {"Name": "tag:BackupRun", "Values": [run]}],
        )["Snapshots"]
        if copy_ec2 is None:
            continue
        for snapshot in snapshots:
            copy_ec2.copy_snapshot(
                SourceRegion=HOME,
                SourceSnapshotId=snapshot["SnapshotId"],
                Description=f"copy of {snapshot['SnapshotId']}",
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": snapshot.get("Tags", [])}],
            )
            copied += 1

    cutoff = now - dt.timedelta(days=RETAIN_DAYS)
    deleted = 0
    for client in [ec2] + ([copy_ec2] if copy_ec2 is not None else []):
        old = []
        pages = client.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{MANAGED_TAG}", "Values": [MANAGED_BY]}],
            PaginationConfig={"PageSize": 1000},
        )
        for page in pages:
            old += [s["SnapshotId"] for s in page["Snapshots"] if s["StartTime"] < cutoff]
        for snapshot_id in old:
            client.delete_snapshot(SnapshotId=snapshot_id)
            deleted += 1

    succeeded = sum(1 for s in statuses.values() if s == "Success")
    return {"run": run, "instances": len(ids), "succeeded": succeeded,
            "not_final": len(pending), "copied": copied, "deleted": deleted}


def main() -> None:
    """The runtime loop of a Lambda function (the runtime API's `next`, then `response`)."""
    base = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime/invocation"
    while True:
        with urllib.request.urlopen(f"{base}/next") as response:
            request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
            deadline_ms = int(response.headers["Lambda-Runtime-Deadline-Ms"])
            event = json.loads(response.read())
        try:
            answer, outcome = handler(event, deadline_ms), "response"
        except Exception as error:  # noqa: BLE001 - reported to the runtime, as Lambda does
            answer = {"errorType": type(error).__name__, "errorMessage": str(error)}
            outcome = "error"
        request = urllib.request.Request(
            f"{base}/{request_id}/{outcome}", data=json.dumps(answer).encode(), method="POST"
        )
        urllib.request.urlopen(request).close()


if __name__ == "__main__":
    main()
