"""The simulated Windows side: instances with their SSM agents, the VSS document's invocations
on a timeline, and EBS's timings (pending snapshots, creating volumes, stopping instances).
The moto patches in `ssm`, `ec2` and `sqs` call into the one `SIM`."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from moto.ec2.models import ec2_backends
from moto.ssm.exceptions import SSMException as RESTError

from .events import publish_ended

VSS_DOCUMENTS = {"AWSEC2-CreateVssSnapshot", "AWSEC2-VssInstallAndSnapshot"}
RESERVED_TAG_KEYS = {"Device", "AppConsistent", "AwsVssConfig"}
# Characters the documents accept in their `tags` parameter.
TAG_PARAM_RE = re.compile(r"^[A-Za-z0-9()./\\\-\"'@_+:={} ]*$")
FINAL = {"Success", "Cancelled", "TimedOut", "Failed"}
DEFAULT_AGENT = "3.3.40.0"
# What the document prints when it fails before taking any snapshot (AWS's troubleshooting
# page: PowerShell not in FullLanguage, the instance role without AWSEC2VssSnapshotPolicy, no
# route to the EC2 API, AwsVssComponents not installed).
EARLY_FAILURES = {
    "language_mode": "Method invocation is supported only on core types in this language mode.",
    "missing_permission": (
        "An error occurred (UnauthorizedOperation) when calling the CreateSnapshots operation: "
        "You are not authorized to perform this operation."
    ),
    "no_ec2_route": (
        "Exception calling CreateSnapshots: Unable to connect to the remote server "
        "(https://ec2.{region}.amazonaws.com/)"
    ),
    "components_missing": (
        "ec2-vss-agent.exe could not be found: AwsVssComponents is not installed."
    ),
}


@dataclass
class SimInstance:
    ssm: str = "online"  # online | offline | unmanaged | deregistered
    agent_version: str = DEFAULT_AGENT
    # success | vss_failure | writer_failed | no_ebs | undeliverable, or a failure before any
    # snapshot: language_mode | missing_permission | no_ec2_route | components_missing
    outcome: str = "success"
    lag: float = 0.2  # seconds during which GetCommandInvocation says InvocationDoesNotExist
    duration: float = 0.3  # seconds InProgress before the document finishes
    delivery_timeout: float | None = None  # seconds before an undeliverable command times out
    # What the readiness probe finds besides what `outcome` implies (language mode, writers,
    # AwsVssComponents): disks with dynamic partitions, and the failover cluster the node is
    # in (`cluster_disks` shared disks, of which it owns all or none).
    dynamic_disks: int = 0
    # What SSM reports as the OS version (Windows Server 2022); the documents need 10.0+.
    windows_version: str = "10.0.20348"
    # The next this many VSS commands time out in the freeze (as `vss_failure`), then the
    # server's `outcome` holds again: a passing load spike.
    freeze_failures: int = 0
    cluster: str | None = None
    cluster_disks: int = 2
    owns_cluster_disks: bool = True


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
    probe: bool = False


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
        # Copies: each stays pending `copy_seconds` (else `pending_seconds`), and at most
        # `copy_limit` are in flight into one region (AWS: 20); what each region saw.
        self.copy_seconds = 0.0
        self.copy_limit = 0
        self.copies_in_flight: dict[str, list[float]] = {}
        self.copy_stats: dict[str, dict[str, int]] = {}
        # Copies into these regions end in `error` with this state message (a KMS key the
        # copy may not use: "Given key ID is not accessible").
        self.copy_errors: dict[str, str] = {}
        self.volume_seconds = 0.0
        self.instance_seconds = 0.0
        self.creating: dict[str, float] = {}
        self.transitions: list[tuple[float, Any, str, int]] = []
        # Invocations that became final since the last tick, whose status-change events SSM
        # publishes to EventBridge (`events.publish_ended`, outside the lock).
        self.ended: list[SimInvocation] = []

    def reset(self) -> None:
        with self.lock:
            self.instances.clear()
            self.invocations.clear()
            self.pending_seconds = 0.0
            self.copy_refusals.clear()
            self.pending.clear()
            self.copy_seconds = 0.0
            self.copy_limit = 0
            self.copies_in_flight.clear()
            self.copy_stats.clear()
            self.copy_errors.clear()
            self.volume_seconds = self.instance_seconds = 0.0
            self.creating.clear()
            self.transitions.clear()
            self.ended.clear()

    def configure_ebs(self, spec: dict[str, Any]) -> None:
        with self.lock:
            known = ("pending_seconds", "copy_refusals", "volume_seconds", "instance_seconds",
                     "copy_seconds", "copy_limit", "copy_errors", "archive_seconds",
                     "restore_seconds")
            for key in spec:
                if key not in known:
                    raise ValueError(f"unknown EBS simulation field {key!r}")
            self.pending_seconds = float(spec.get("pending_seconds", self.pending_seconds))
            self.volume_seconds = float(spec.get("volume_seconds", self.volume_seconds))
            self.instance_seconds = float(spec.get("instance_seconds", self.instance_seconds))
            self.copy_refusals.update({k: int(v) for k, v in spec.get("copy_refusals", {}).items()})
            self.copy_seconds = float(spec.get("copy_seconds", self.copy_seconds))
            self.copy_limit = int(spec.get("copy_limit", self.copy_limit))
            self.copy_errors.update({k: str(v) for k, v in spec.get("copy_errors", {}).items()})
            from .tiering import TIMING

            TIMING.configure(spec)

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
        """Whether a copy into `region` is refused with ResourceLimitExceeded: one of the next N
        the harness asked for, or one over the region's limit of copies in flight. A copy let
        through takes its slot at once, in the same lock as the check (as EBS counts it):
        concurrent CopySnapshot calls can never together go over the limit."""
        with self.lock:
            stats = self.copy_stats.setdefault(
                region, {"started": 0, "refused": 0, "max_in_flight": 0})
            left = self.copy_refusals.get(region, 0)
            if left > 0:
                self.copy_refusals[region] = left - 1
                stats["refused"] += 1
                return True
            now = time.monotonic()
            flying = [due for due in self.copies_in_flight.get(region, []) if due > now]
            self.copies_in_flight[region] = flying
            if self.copy_limit > 0 and len(flying) >= self.copy_limit:
                stats["refused"] += 1
                return True
            flying.append(now + (self.copy_seconds or self.pending_seconds))
            stats["max_in_flight"] = max(stats["max_in_flight"], len(flying))
            return False

    def release_copy(self, region: str) -> None:
        """A copy let through by `refuse_copy` that moto then refused: its slot is free again."""
        with self.lock:
            flying = self.copies_in_flight.get(region, [])
            if flying:
                flying.pop()

    def new_copy(self, snapshot: Any, region: str) -> None:
        """A copy just started into `region`: pending for `copy_seconds` (else as any new
        snapshot), and in flight there until then."""
        with self.lock:
            seconds = self.copy_seconds or self.pending_seconds
            due = time.monotonic() + seconds
            if region in self.copy_errors:
                snapshot.final_status = "error"
                snapshot.state_message = self.copy_errors[region]
            if seconds > 0:
                snapshot.status = "pending"
                self.pending.append((due, snapshot))
            else:
                snapshot.status = getattr(snapshot, "final_status", "completed")
            # Its slot was taken by `refuse_copy`.
            stats = self.copy_stats.setdefault(
                region, {"started": 0, "refused": 0, "max_in_flight": 0})
            stats["started"] += 1

    def copies(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {region: dict(stats) for region, stats in self.copy_stats.items()}

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
    def deregistered(self, instance_id: str) -> bool:
        with self.lock:
            sim = self.instances.get(instance_id)
            return sim is not None and sim.ssm == "deregistered"

    def on_send_command(self, command: Any, region: str, probe: bool = False) -> None:
        if command.document_name not in VSS_DOCUMENTS and not probe:
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
                    probe=probe,
                )
                if sim.ssm != "online":
                    # A command sent to an agent that is not connected is never delivered.
                    inv.sim.outcome = "undeliverable"
                elif not probe and sim.freeze_failures > 0:
                    inv.sim.outcome = "vss_failure"
                    sim.freeze_failures -= 1
                    self.instances[instance_id] = sim
                self.invocations[(command.command_id, instance_id)] = inv

    def tick(self) -> None:
        try:
            self._tick()
        finally:
            with self.lock:
                ended, self.ended = self.ended, []
            publish_ended(ended)

    def _tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            still = []
            for due, snapshot in self.pending:
                if due <= now:
                    snapshot.status = getattr(snapshot, "final_status", "completed")
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
                        self.ended.append(inv)
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
        if inv.probe:
            return self._run_probe(inv)
        ec2 = ec2_backends[inv.account_id][inv.region]
        params = {k: (v[0] if isinstance(v, list) and v else v) for k, v in inv.parameters.items()}
        tags, error = parse_tags_param(params.get("tags", ""))
        if error:
            return self._finish(inv, "Failed", 1, "", error)
        def on(name: str) -> bool:
            return str(params.get(name, "False")).lower() == "true"

        if on("NoWriters") and on("SaveVssMetadata"):
            # The documents refuse the two together (AWS's parameter reference).
            return self._finish(inv, "Failed", 1, "",
                                "NoWriters cannot be True when SaveVssMetadata is True.")
        instance = instances_by_id(ec2, {inv.instance_id}).get(inv.instance_id)
        if instance is None:
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
        if not inv.sim.windows_version.startswith("10."):
            return self._finish(
                inv, "Failed", 1, "",
                "AwsVssComponents requires Windows Server 2016 or later "
                f"(this server runs {inv.sim.windows_version}).",
            )
        if inv.sim.cluster and not inv.sim.owns_cluster_disks:
            # A failover cluster's shared disks are offline on the nodes that do not own them:
            # the document fails there (AWS: run it on the owner node only).
            return self._finish(
                inv, "Failed", 1, "",
                f"Exception: the shared disks of cluster {inv.sim.cluster} are offline on this "
                "node (owned by another node): nothing to snapshot here.",
            )
        early = EARLY_FAILURES.get(inv.sim.outcome)
        if early:
            return self._finish(inv, "Failed", 1, "", early.format(region=inv.region))
        consistent = inv.sim.outcome not in ("vss_failure", "writer_failed")
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
        if inv.sim.outcome == "writer_failed":
            why = ("Writer 'SqlServerWriter' failed: VSS_E_WRITERERROR_RETRYABLE; snapshots were "
                   "created without application consistency.")
        else:
            why = ("Thaw pipe connection timed out. error on thaw: the VSS writers did not thaw in "
                   "time; snapshots were created without application consistency.")
        return self._finish(inv, "Failed", 1, "\n".join(lines), why)

    def _run_probe(self, inv: SimInvocation) -> None:
        """The readiness probe's one line, as the template's script prints it on this server."""
        sim = inv.sim
        probe: dict[str, Any] = {
            "v": 1,
            "language_mode": "ConstrainedLanguage" if sim.outcome == "language_mode" else "FullLanguage",
            "writers": 9,
            "failed_writers": (["SqlServerWriter (Failed, Retryable error)"]
                               if sim.outcome == "writer_failed" else []),
            "components": None if sim.outcome == "components_missing" else "2.5.0.0",
            "dynamic_disks": sim.dynamic_disks,
            "cluster": None,
        }
        if sim.cluster:
            probe["cluster"] = {
                "name": sim.cluster,
                "disks": sim.cluster_disks,
                "owned_here": sim.cluster_disks if sim.owns_cluster_disks else 0,
            }
        line = "CSPROBE " + json.dumps(probe, separators=(",", ":"))
        return self._finish(inv, "Success", 0, line, "")

    def _finish(self, inv: SimInvocation, status: str, code: int, out: str, err: str) -> None:
        self.ended.append(inv)
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
                "PluginName": "probe" if inv.probe else "runPowerShellScript",
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
                            "Name": "probe" if inv.probe else "runPowerShellScript",
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
                    "ended": iso(inv.ended) if inv.ended and inv.status in FINAL else None,
                }
                for inv in self.invocations.values()
            ]


SIM = Simulation()


def instances_by_id(ec2: Any, wanted: set[str] | None = None) -> dict[str, Any]:
    """The region's instances by id (only `wanted`, if given), in one pass over its
    reservations: moto's `get_instance` walks (and copies) every reservation for each id, which
    makes a lookup per instance of a 20,000-server fleet quadratic."""
    found: dict[str, Any] = {}
    for reservation in list(ec2.reservations.values()):
        for instance in reservation.instances:
            if wanted is None or instance.id in wanted:
                found[instance.id] = instance
    return found


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
