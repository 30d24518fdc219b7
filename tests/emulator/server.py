"""Local AWS emulator for the end-to-end tests and the demo.

moto's server (pinned in requirements.txt) runs in this process on 127.0.0.1, extended so that it
behaves like AWS where this project depends on it:

* SSM plays the Windows side. moto runs no document: it marks every invocation Success at once.
  Here each invocation of a VSS snapshot document on a simulated instance follows a timeline
  (InvocationDoesNotExist for a moment, Pending/InProgress, then a final status) and, when it
  "runs", creates one EBS snapshot per attached volume with the document's tags plus
  `AppConsistent` and `Device`, as AWSEC2-CreateVssSnapshot does.
* SSM's view of the fleet: DescribeInstanceInformation and ListCommandInvocations, which moto
  does not implement, answer from the simulated agents; ListCommands gets the filters, paging
  and per-command status moto leaves out.
* PutParameter without Overwrite is made atomic, as it is in AWS.
* DescribeSnapshots honours MaxResults and NextToken (moto answers everything in one page), and
  a DescribeInstances page holds at most MaxResults instances (moto counts reservations), so a
  paginated read costs the calls, and holds the memory, that it does against AWS.
* SendMessage no longer counts every message of the queue for each message sent (moto builds
  all the queue's attributes to read one), which made sending 10,000 messages quadratic.
* A resource's tags are looked up by its id (moto scans every tag of the region for each
  resource, which makes a tag-filtered describe quadratic: minutes with 100,000 snapshots).
* moto's SendCommand sends to every instance when `Targets` is empty; here it sends to exactly
  the given InstanceIds, as AWS does.

The Rust code under test only talks AWS APIs over HTTP and sees what AWS would say. The harness
steers the simulation through plain HTTP under /_sim/ on the same port:

  POST /_sim/instances  {"i-...": {"ssm": "online"|"offline"|"unmanaged",
                                    "agent_version": "3.3.40.0",
                                    "outcome": "success"|"vss_failure"|"no_ebs"|"undeliverable",
                                    "lag": 0.2, "duration": 0.3, "delivery_timeout": 2.0}}
  POST /_sim/ebs        {"pending_seconds": 2.0, "copy_refusals": {"us-west-2": 3},
                         "volume_seconds": 1.5, "instance_seconds": 1.5}: new snapshots and
                        copies stay pending that long; the next N copies into a region answer
                        ResourceLimitExceeded; new volumes stay `creating` (and cannot be
                        attached) that long; instances stay `stopping`/`pending` that long
  POST /_sim/age        {"region": "us-east-1", "snapshot_ids": ["snap-..."], "hours": 30}: those
                        snapshots were started that many hours earlier (time passing, for RPO)
  POST /_sim/history    {"region", "managed_by", "instance_ids", "sets", "hours_apart",
                         "newest_hours", "copy_region"?}: earlier nightly runs' consistent sets
                        of these instances (one snapshot per attached volume, tagged as the
                        function tags them; copies in copy_region), the newest `newest_hours`
                        old; answers how many snapshots it made
  GET  /_sim/invocations   every simulated invocation (command id, instance, document, status)
  POST /_sim/reset         forget the simulation (moto's own state: POST /moto-api/reset)

Usage: python server.py [--port 0]; prints "READY <port>" on stdout once it listens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_block_store import EBSBackend, Volume
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.instances import Instance
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.instances import InstanceResponse
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sqs.models import Queue as SqsQueue
from moto.sqs.models import SQSBackend
from moto.ssm import models as ssm_models
from moto.ssm import responses as ssm_responses
from moto.ssm.exceptions import SSMException as RESTError

VSS_DOCUMENTS = {"AWSEC2-CreateVssSnapshot", "AWSEC2-VssInstallAndSnapshot"}
RESERVED_TAG_KEYS = {"Device", "AppConsistent", "AwsVssConfig"}
# Characters the documents accept in their `tags` parameter.
TAG_PARAM_RE = re.compile(r"^[A-Za-z0-9()./\\\-\"'@_+:={} ]*$")
FINAL = {"Success", "Cancelled", "TimedOut", "Failed"}
DEFAULT_AGENT = "3.3.40.0"


@dataclass
class SimInstance:
    ssm: str = "online"  # online | offline | unmanaged
    agent_version: str = DEFAULT_AGENT
    outcome: str = "success"  # success | vss_failure | no_ebs | undeliverable
    lag: float = 0.2  # seconds during which GetCommandInvocation says InvocationDoesNotExist
    duration: float = 0.3  # seconds InProgress before the document finishes
    delivery_timeout: float | None = None  # seconds before an undeliverable command times out


@dataclass
class SimInvocation:
    command_id: str
    instance_id: str
    document_name: str
    comment: str
    parameters: dict[str, list[str]]
    account_id: str
    region: str
    sent_at: float
    sim: SimInstance
    timeout_seconds: int
    status: str = "Pending"
    status_details: str = "Pending"
    response_code: int = -1
    stdout: str = ""
    stderr: str = ""
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    snapshots: list[str] = field(default_factory=list)


class Simulation:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.instances: dict[str, SimInstance] = {}
        self.invocations: dict[tuple[str, str], SimInvocation] = {}
        # EBS: how long new snapshots stay pending, copies refused per destination region,
        # and the snapshots still pending with the time they complete.
        self.pending_seconds = 0.0
        self.copy_refusals: dict[str, int] = {}
        self.pending: list[tuple[float, Any]] = []
        self.volume_seconds = 0.0
        self.instance_seconds = 0.0
        self.creating: dict[str, float] = {}
        self.transitions: list[tuple[float, Any, str, int]] = []

    def reset(self) -> None:
        with self.lock:
            self.instances.clear()
            self.invocations.clear()
            self.pending_seconds = 0.0
            self.copy_refusals.clear()
            self.pending.clear()
            self.volume_seconds = self.instance_seconds = 0.0
            self.creating.clear()
            self.transitions.clear()

    def configure_ebs(self, spec: dict[str, Any]) -> None:
        with self.lock:
            known = ("pending_seconds", "copy_refusals", "volume_seconds", "instance_seconds")
            for key in spec:
                if key not in known:
                    raise ValueError(f"unknown EBS simulation field {key!r}")
            self.pending_seconds = float(spec.get("pending_seconds", self.pending_seconds))
            self.volume_seconds = float(spec.get("volume_seconds", self.volume_seconds))
            self.instance_seconds = float(spec.get("instance_seconds", self.instance_seconds))
            self.copy_refusals.update({k: int(v) for k, v in spec.get("copy_refusals", {}).items()})

    def new_snapshot(self, snapshot: Any) -> None:
        """A snapshot (or copy) just made: pending for a while, as EBS keeps it."""
        with self.lock:
            if self.pending_seconds > 0:
                snapshot.status = "pending"
                self.pending.append((time.monotonic() + self.pending_seconds, snapshot))

    def new_volume(self, volume_id: str) -> None:
        """A volume just created: `creating` for a while, as EBS keeps it."""
        with self.lock:
            if self.volume_seconds > 0:
                self.creating[volume_id] = time.monotonic() + self.volume_seconds

    def is_creating(self, volume_id: str) -> bool:
        with self.lock:
            due = self.creating.get(volume_id)
            if due is None:
                return False
            if time.monotonic() >= due:
                del self.creating[volume_id]
                return False
            return True

    def transition(self, instance: Any, passing: tuple[str, int], final: tuple[str, int]) -> None:
        """An instance that was just stopped or started: in `passing` for a while, then `final`."""
        with self.lock:
            if self.instance_seconds > 0:
                instance._state.name, instance._state.code = passing
                self.transitions.append(
                    (time.monotonic() + self.instance_seconds, instance, *final)
                )

    def refuse_copy(self, region: str) -> bool:
        with self.lock:
            left = self.copy_refusals.get(region, 0)
            if left > 0:
                self.copy_refusals[region] = left - 1
                return True
            return False

    def configure(self, spec: dict[str, dict[str, Any]]) -> None:
        with self.lock:
            for instance_id, fields in spec.items():
                current = self.instances.get(instance_id, SimInstance())
                for key, value in fields.items():
                    if not hasattr(current, key):
                        raise ValueError(f"unknown simulation field {key!r} for {instance_id}")
                    setattr(current, key, value)
                self.instances[instance_id] = current

    # --- the Windows side --------------------------------------------------------------
    def on_send_command(self, command: Any, region: str) -> None:
        if command.document_name not in VSS_DOCUMENTS:
            return
        now = time.monotonic()
        with self.lock:
            for instance_id in command.instance_ids:
                sim = self.instances.get(instance_id, SimInstance())
                inv = SimInvocation(
                    command_id=command.command_id,
                    instance_id=instance_id,
                    document_name=command.document_name,
                    comment=command.comment,
                    parameters=dict(command.parameters or {}),
                    account_id=command.account_id,
                    region=region,
                    sent_at=now,
                    sim=SimInstance(**sim.__dict__),
                    timeout_seconds=int(command.timeout_seconds or 3600),
                )
                if sim.ssm != "online":
                    # A command sent to an agent that is not connected is never delivered.
                    inv.sim.outcome = "undeliverable"
                self.invocations[(command.command_id, instance_id)] = inv

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            still = []
            for due, snapshot in self.pending:
                if due <= now:
                    snapshot.status = "completed"
                else:
                    still.append((due, snapshot))
            self.pending = still
            moving = []
            for due, instance, name, code in self.transitions:
                if due <= now:
                    instance._state.name, instance._state.code = name, code
                else:
                    moving.append((due, instance, name, code))
            self.transitions = moving
            for inv in self.invocations.values():
                if inv.status in FINAL:
                    continue
                elapsed = now - inv.sent_at
                if inv.sim.outcome == "undeliverable":
                    limit = inv.sim.delivery_timeout
                    if limit is None:
                        limit = float(inv.timeout_seconds)
                    if elapsed >= limit:
                        inv.status, inv.status_details = "TimedOut", "DeliveryTimedOut"
                    continue
                if elapsed < inv.sim.lag:
                    continue
                if inv.status == "Pending":
                    inv.status = inv.status_details = "InProgress"
                    inv.started = utcnow()
                if elapsed >= inv.sim.lag + inv.sim.duration:
                    self._run_document(inv)

    def _run_document(self, inv: SimInvocation) -> None:
        inv.ended = utcnow()
        ec2 = ec2_backends[inv.account_id][inv.region]
        params = {k: (v[0] if isinstance(v, list) and v else v) for k, v in inv.parameters.items()}
        tags, error = parse_tags_param(params.get("tags", ""))
        if error:
            return self._finish(inv, "Failed", 1, "", error)
        try:
            instance = ec2.get_instance(inv.instance_id)
        except Exception:  # noqa: BLE001 - the instance is gone
            return self._finish(inv, "Failed", 1, "", f"Instance {inv.instance_id} not found")
        exclude_boot = str(params.get("ExcludeBootVolume", "False")).lower() == "true"
        devices = [
            (device, block.volume_id)
            for device, block in instance.block_device_mapping.items()
            if block.volume_id and not (exclude_boot and device == instance.root_device_name)
        ]
        if inv.sim.outcome == "no_ebs" or not devices:
            return self._finish(
                inv,
                "Failed",
                1,
                "",
                "Exception: No EBS volumes are attached to this instance, nothing to snapshot.",
            )
        consistent = inv.sim.outcome != "vss_failure"
        lines = []
        description = params.get("description", "")
        for device, volume_id in sorted(devices):
            snapshot = ec2.create_snapshot(volume_id, description)
            self.new_snapshot(snapshot)
            all_tags = dict(tags)
            all_tags["Device"] = device
            all_tags["AppConsistent"] = "True" if consistent else "False"
            all_tags["AwsVssConfig"] = "AwsVssComponents 2.5.0 (simulated)"
            if not all_tags.get("Name"):
                all_tags.pop("Name", None)
            ec2.create_tags([snapshot.id], all_tags)
            inv.snapshots.append(snapshot.id)
            lines.append(f"Created {snapshot.id} from {volume_id} device: {device}")
        if consistent:
            lines.append("Tagging snapshots completed. VSS snapshot set is application-consistent.")
            return self._finish(inv, "Success", 0, "\n".join(lines), "")
        return self._finish(
            inv,
            "Failed",
            1,
            "\n".join(lines),
            "Thaw pipe connection timed out. error on thaw: the VSS writers did not thaw in "
            "time; snapshots were created without application consistency.",
        )

    def _finish(self, inv: SimInvocation, status: str, code: int, out: str, err: str) -> None:
        inv.status = status
        inv.status_details = status
        inv.response_code = code
        inv.stdout = out[:24000]
        inv.stderr = err[:8000]
        if inv.started is None:
            inv.started = utcnow()
        inv.ended = inv.ended or utcnow()

    # --- what SSM answers --------------------------------------------------------------
    def invocation_view(self, command_id: str, instance_id: str) -> dict[str, Any] | None:
        with self.lock:
            inv = self.invocations.get((command_id, instance_id))
            if inv is None:
                return None
            if inv.sim.outcome != "undeliverable" and time.monotonic() - inv.sent_at < inv.sim.lag:
                # Right after SendCommand AWS does not know the invocation yet.
                raise RESTError("InvocationDoesNotExist", "")
            return {
                "CommandId": inv.command_id,
                "InstanceId": inv.instance_id,
                "Comment": inv.comment,
                "DocumentName": inv.document_name,
                "PluginName": "runPowerShellScript",
                "ResponseCode": inv.response_code,
                "ExecutionStartDateTime": iso(inv.started),
                "ExecutionElapsedTime": "",
                "ExecutionEndDateTime": iso(inv.ended),
                "Status": inv.status,
                "StatusDetails": inv.status_details,
                "StandardOutputContent": inv.stdout,
                "StandardOutputUrl": "",
                "StandardErrorContent": inv.stderr,
                "StandardErrorUrl": "",
            }

    def list_view(self, command_id: str | None, instance_id: str | None, details: bool) -> list:
        with self.lock:
            rows = []
            now = time.monotonic()
            for (cid, iid), inv in self.invocations.items():
                if command_id and cid != command_id:
                    continue
                if inv.sim.outcome != "undeliverable" and now - inv.sent_at < inv.sim.lag:
                    # Right after SendCommand AWS does not list the invocation yet either.
                    continue
                if instance_id and iid != instance_id:
                    continue
                row = {
                    "CommandId": cid,
                    "InstanceId": iid,
                    "Comment": inv.comment,
                    "DocumentName": inv.document_name,
                    "RequestedDateTime": 0,
                    "Status": inv.status,
                    "StatusDetails": inv.status_details,
                    "CommandPlugins": [],
                }
                if details:
                    output = (inv.stdout + ("\n----------ERROR-------\n" + inv.stderr if inv.stderr else ""))
                    row["CommandPlugins"] = [
                        {
                            "Name": "runPowerShellScript",
                            "Status": inv.status,
                            "StatusDetails": inv.status_details,
                            "ResponseCode": inv.response_code,
                            # ListCommandInvocations cuts plugin output at 2,500 characters.
                            "Output": output[:2500],
                        }
                    ]
                rows.append(row)
            return rows

    def command_statuses(self, command_id: str) -> list[str]:
        with self.lock:
            return [
                inv.status for (cid, _), inv in self.invocations.items() if cid == command_id
            ]

    def snapshot_of_invocations(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    "command_id": inv.command_id,
                    "instance_id": inv.instance_id,
                    "document_name": inv.document_name,
                    "comment": inv.comment,
                    "parameters": inv.parameters,
                    "status": inv.status,
                    "snapshots": inv.snapshots,
                }
                for inv in self.invocations.values()
            ]


SIM = Simulation()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else ""


def parse_tags_param(text: str) -> tuple[dict[str, str], str | None]:
    """Parses `Key=k,Value=v;Key=k2,Value=v2` the way the VSS documents do, with their checks."""
    tags: dict[str, str] = {"Name": ""}
    if not text:
        return tags, None
    if not TAG_PARAM_RE.match(text.replace(";", "").replace(",", "")):
        return tags, f"Invalid characters in tags parameter: {text!r}"
    for item in text.split(";"):
        if not item:
            continue
        match = re.fullmatch(r"Key=([^,]*),Value=([^,]*)", item)
        if not match:
            return tags, f"Invalid tag format {item!r}: expected Key=<key>,Value=<value>"
        key, value = match.group(1), match.group(2)
        if key in RESERVED_TAG_KEYS:
            return tags, f"Tag key {key} is reserved and cannot be specified"
        tags[key] = value
    return tags, None


# --- moto patches ------------------------------------------------------------------------
_original_targets = ssm_models.Command._get_instance_ids_from_targets


def _targets_only_when_given(self: Any) -> list[str]:
    # moto reads an empty target list as "every instance of the region"; AWS sends to exactly
    # the InstanceIds given.
    if not self.targets:
        return []
    return _original_targets(self)


ssm_models.Command._get_instance_ids_from_targets = _targets_only_when_given

_original_send = ssm_models.SimpleSystemManagerBackend.send_command


def _send_command(self: Any, **kwargs: Any) -> Any:
    command = _original_send(self, **kwargs)
    SIM.on_send_command(command, self.region_name)
    if command.document_name in VSS_DOCUMENTS:
        command.status = "Pending"
        command.status_details = "Pending"
        command.completed_count = 0
    return command


ssm_models.SimpleSystemManagerBackend.send_command = _send_command

_original_get_invocation = ssm_models.SimpleSystemManagerBackend.get_command_invocation


def _get_command_invocation(self: Any, command_id: str, instance_id: str, plugin_name: Any) -> Any:
    view = SIM.invocation_view(command_id, instance_id)
    if view is None:
        return _original_get_invocation(self, command_id, instance_id, plugin_name)
    return view


ssm_models.SimpleSystemManagerBackend.get_command_invocation = _get_command_invocation


def _paginate(rows: list, token: str | None, page_size: int) -> tuple[list, str | None]:
    start = int(token) if token else 0
    end = start + page_size
    return rows[start:end], (str(end) if end < len(rows) else None)


def _describe_instance_information(self: Any) -> ActionResult:
    wanted: set[str] | None = None
    for flt in self._get_param("Filters", []) or []:
        if flt.get("Key") in ("InstanceIds", "InstanceId"):
            wanted = set(flt.get("Values", []))
    for flt in self._get_param("InstanceInformationFilterList", []) or []:
        if flt.get("key") == "InstanceIds":
            wanted = set(flt.get("valueSet", []))
    if wanted is not None and len(wanted) > 50:
        raise RESTError("InvalidFilterValue", "At most 50 values are allowed for InstanceIds")
    max_results = int(self._get_param("MaxResults") or 50)
    if not 5 <= max_results <= 50:
        raise RESTError("ValidationException", "MaxResults must be between 5 and 50")
    rows = []
    ec2 = ec2_backends[self.current_account][self.region]
    with SIM.lock:
        for instance_id, sim in sorted(SIM.instances.items()):
            if sim.ssm == "unmanaged" or (wanted is not None and instance_id not in wanted):
                continue
            try:
                instance = ec2.get_instance(instance_id)
            except Exception:  # noqa: BLE001 - not an instance of this region
                continue
            tags = {t["key"]: t["value"] for t in instance.get_tags()}
            name = tags.get("Name", instance_id)
            windows = str(getattr(instance, "platform", "") or "").lower() == "windows"
            rows.append(
                {
                    "InstanceId": instance_id,
                    "PingStatus": "Online" if sim.ssm == "online" else "ConnectionLost",
                    "LastPingDateTime": time.time(),
                    "AgentVersion": sim.agent_version,
                    "IsLatestVersion": False,
                    "PlatformType": "Windows" if windows else "Linux",
                    "PlatformName": "Microsoft Windows Server 2022 Datacenter"
                    if windows
                    else "Amazon Linux",
                    "PlatformVersion": "10.0.20348" if windows else "2023",
                    "ResourceType": "EC2Instance",
                    "ComputerName": str(name),
                }
            )
    page, token = _paginate(rows, self._get_param("NextToken"), max_results)
    result: dict[str, Any] = {"InstanceInformationList": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _list_command_invocations(self: Any) -> ActionResult:
    max_results = int(self._get_param("MaxResults") or 50)
    if not 1 <= max_results <= 50:
        raise RESTError("ValidationException", "MaxResults must be between 1 and 50")
    rows = SIM.list_view(
        self._get_param("CommandId"),
        self._get_param("InstanceId"),
        bool(self._get_param("Details", False)),
    )
    page, token = _paginate(rows, self._get_param("NextToken"), max_results)
    result: dict[str, Any] = {"CommandInvocations": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _naive_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _list_commands(self: Any) -> ActionResult:
    """ListCommands with the Filters and paging moto leaves out, and a status per command that
    follows its simulated invocations (moto reports every command Success at once)."""
    max_results = int(self._get_param("MaxResults") or 50)
    if not 1 <= max_results <= 50:
        raise RESTError("ValidationException", "MaxResults must be between 1 and 50")
    commands = self.ssm_backend.list_commands(
        self._get_param("CommandId"), self._get_param("InstanceId")
    )
    rows = []
    for command in commands:
        row = command.response_object()
        statuses = SIM.command_statuses(command.command_id)
        if statuses:
            row["Status"] = row["StatusDetails"] = command_status(statuses)
            row["CompletedCount"] = sum(1 for s in statuses if s in FINAL)
            row["ErrorCount"] = sum(1 for s in statuses if s in FINAL and s != "Success")
        rows.append(row)
    for flt in self._get_param("Filters", []) or []:
        key, value = flt.get("key") or flt.get("Key"), flt.get("value") or flt.get("Value")
        if key == "DocumentName":
            rows = [r for r in rows if r["DocumentName"] == value]
        elif key in ("InvokedAfter", "InvokedBefore"):
            when = _naive_utc(dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")))
            after = key == "InvokedAfter"
            rows = [
                r
                for r in rows
                if (_naive_utc(r["RequestedDateTime"]) >= when) == after
            ]
        elif key == "Status":
            rows = [r for r in rows if r["Status"] == value]
        else:
            raise RESTError("InvalidFilterKey", f"filter key {key!r} is not supported here")
    page, token = _paginate(rows, self._get_param("NextToken"), max_results)
    result: dict[str, Any] = {"Commands": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def command_status(statuses: list[str]) -> str:
    if any(s not in FINAL for s in statuses):
        return "Pending" if all(s == "Pending" for s in statuses) else "InProgress"
    for status in ("TimedOut", "Cancelled", "Failed"):
        if status in statuses:
            return status
    return "Success"


ssm_responses.SimpleSystemManagerResponse.describe_instance_information = (
    _describe_instance_information
)
ssm_responses.SimpleSystemManagerResponse.list_command_invocations = _list_command_invocations
ssm_responses.SimpleSystemManagerResponse.list_commands = _list_commands

# PutParameter without Overwrite is an atomic create in AWS (the function claims runs with it);
# moto checks and then appends, so two threads could both create. One lock makes it atomic.
_PARAMETER_LOCK = threading.Lock()
_original_put_parameter = ssm_models.SimpleSystemManagerBackend.put_parameter


def _put_parameter(self: Any, *args: Any, **kwargs: Any) -> Any:
    with _PARAMETER_LOCK:
        return _original_put_parameter(self, *args, **kwargs)


ssm_models.SimpleSystemManagerBackend.put_parameter = _put_parameter


_original_copy_snapshot = EBSBackend.copy_snapshot


def _copy_snapshot(self: Any, *args: Any, **kwargs: Any) -> Any:
    # EBS limits concurrent copies into a region (ResourceLimitExceeded); the harness can make
    # the first copies into a region meet that limit.
    if SIM.refuse_copy(self.region_name):
        raise EC2ClientError(
            "ResourceLimitExceeded",
            "You have reached the limit for concurrent snapshot copies in this region.",
        )
    snapshot = _original_copy_snapshot(self, *args, **kwargs)
    SIM.new_snapshot(snapshot)
    return snapshot


EBSBackend.copy_snapshot = _copy_snapshot

_original_create_volume = EBSBackend.create_volume
_original_attach_volume = EBSBackend.attach_volume
_original_volume_status = Volume.status


def _create_volume(self: Any, *args: Any, **kwargs: Any) -> Any:
    volume = _original_create_volume(self, *args, **kwargs)
    SIM.new_volume(volume.id)
    return volume


def _attach_volume(self: Any, volume_id: str, *args: Any, **kwargs: Any) -> Any:
    # EBS refuses to attach a volume that is still being created.
    if SIM.is_creating(volume_id):
        raise EC2ClientError("IncorrectState", f"Volume '{volume_id}' is not 'available'.")
    return _original_attach_volume(self, volume_id, *args, **kwargs)


def _volume_status(self: Any) -> str:
    if SIM.is_creating(self.id):
        return "creating"
    return _original_volume_status.fget(self)


EBSBackend.create_volume = _create_volume
EBSBackend.attach_volume = _attach_volume
Volume.status = property(_volume_status)

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


Instance.stop = _stop
Instance.start = _start


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


ElasticBlockStore.describe_snapshots = _describe_snapshots

def _get_tags(self: Any) -> list[dict[str, str]]:
    if not self.id:
        return []
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    return [
        {"resource_id": self.id, "key": key, "value": value, "resource_type": kind}
        for key, value in self.ec2_backend.tags.get(self.id, {}).items()
    ]


TaggedEC2Resource.get_tags = _get_tags

_SENDING = threading.local()
_original_queue_attributes = SqsQueue.attributes


def _queue_attributes(self: Any) -> dict[str, Any]:
    if getattr(_SENDING, "on", False):
        # All SendMessage reads; the full attributes count every message of the queue.
        if self.fifo_queue:
            dedup = bool(getattr(self, "content_based_deduplication", False))
            return {"ContentBasedDeduplication": str(dedup).lower()}
        return {}
    return _original_queue_attributes.fget(self)


SqsQueue.attributes = property(_queue_attributes)
_original_sqs_send = SQSBackend.send_message


def _sqs_send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
    _SENDING.on = True
    try:
        return _original_sqs_send(self, *args, **kwargs)
    finally:
        _SENDING.on = False


SQSBackend.send_message = _sqs_send_message

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


InstanceResponse.describe_instances = _describe_instances


def seed_history(spec: dict[str, Any]) -> int:
    """Earlier nightly runs: `sets` consistent sets per instance, `hours_apart` apart, the newest
    `newest_hours` old, tagged as the function and the VSS document tag them (and copied into
    `copy_region`, tagged as the function tags its copies)."""
    known = {"region", "managed_by", "instance_ids", "sets", "hours_apart", "newest_hours",
             "copy_region"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown history field(s) {sorted(unknown)}")
    region = spec["region"]
    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    copy_region = spec.get("copy_region")
    copies = ec2_backends[DEFAULT_ACCOUNT_ID][copy_region] if copy_region else None
    now = utcnow()
    made = 0
    for k in range(int(spec["sets"])):
        taken = now - dt.timedelta(
            hours=float(spec["newest_hours"]) + k * float(spec["hours_apart"])
        )
        run_id = taken.strftime("%Y%m%dT%H%M%SZ") + "-0b0b0b0b"
        for instance_id in spec["instance_ids"]:
            instance = ec2.get_instance(instance_id)
            for device, block in sorted(instance.block_device_mapping.items()):
                snapshot = ec2.create_snapshot(block.volume_id, f"history {run_id}")
                snapshot.start_time = taken
                tags = {
                    "ConsistentSnapshot:RunId": run_id,
                    "ConsistentSnapshot:ManagedBy": spec["managed_by"],
                    "ConsistentSnapshot:InstanceId": instance_id,
                    "Name": f"{instance_id} {device}",
                    "Device": device,
                    "AppConsistent": "True",
                    "AwsVssConfig": "AwsVssComponents 2.5.0 (simulated)",
                }
                ec2.create_tags([snapshot.id], tags)
                made += 1
                if copies is None:
                    continue
                copy = copies.copy_snapshot(snapshot.id, region, f"copy of {snapshot.id}", None)
                copy.start_time = taken
                tags["ConsistentSnapshot:SourceSnapshotId"] = snapshot.id
                tags["ConsistentSnapshot:SourceRegion"] = region
                copies.create_tags([copy.id], tags)
                made += 1
    return made


class QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # one line per call is noise here
        pass


def age_snapshots(spec: dict[str, Any]) -> int:
    """Moves the start time of some snapshots back, as if they had been taken earlier."""
    unknown = set(spec) - {"region", "snapshot_ids", "hours"}
    if unknown:
        raise ValueError(f"unknown age field(s) {sorted(unknown)}")
    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][spec["region"]]
    delta = dt.timedelta(hours=float(spec["hours"]))
    aged = 0
    for snapshot_id in spec["snapshot_ids"]:
        snapshot = ec2.snapshots.get(snapshot_id)
        if snapshot is None:
            raise ValueError(f"no snapshot {snapshot_id} in {spec['region']}")
        snapshot.start_time = snapshot.start_time - delta
        aged += 1
    return aged


# --- the server --------------------------------------------------------------------------
class App:
    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_sim/"):
            return self.moto(environ, start_response)
        request = Request(environ)
        try:
            if path == "/_sim/instances" and request.method == "POST":
                SIM.configure(json.loads(request.get_data() or b"{}"))
                body: Any = {"ok": True}
            elif path == "/_sim/ebs" and request.method == "POST":
                SIM.configure_ebs(json.loads(request.get_data() or b"{}"))
                body = {"ok": True}
            elif path == "/_sim/age" and request.method == "POST":
                body = {"aged": age_snapshots(json.loads(request.get_data() or b"{}"))}
            elif path == "/_sim/history" and request.method == "POST":
                body = {"snapshots": seed_history(json.loads(request.get_data() or b"{}"))}
            elif path == "/_sim/invocations":
                body = SIM.snapshot_of_invocations()
            elif path == "/_sim/reset" and request.method == "POST":
                SIM.reset()
                body = {"ok": True}
            else:
                return Response("not found", status=404)(environ, start_response)
        except (ValueError, TypeError) as err:
            return Response(json.dumps({"error": str(err)}), status=400)(environ, start_response)
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


def ticker(stop: threading.Event) -> None:
    while not stop.wait(0.05):
        try:
            SIM.tick()
        except Exception as err:  # noqa: BLE001 - keep simulating, but say why
            print(f"simulation error: {err!r}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the emulator only listens on loopback")
    server = make_server(
        args.host, args.port, App(), threaded=True, request_handler=QuietHandler
    )
    stop = threading.Event()
    threading.Thread(target=ticker, args=(stop,), daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        stop.set()


if __name__ == "__main__":
    main()
