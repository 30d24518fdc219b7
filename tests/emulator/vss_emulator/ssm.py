"""SSM as AWS answers it, where this project depends on it: the VSS documents run on the simulated
instances, SSM's view of the fleet, ListCommands' filters and paging, and an atomic
PutParameter."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ssm import models as ssm_models
from moto.ssm import responses as ssm_responses
from moto.ssm.exceptions import SSMException as RESTError

from .model import FINAL, SIM, VSS_DOCUMENTS, instances_by_id

_original_targets = ssm_models.Command._get_instance_ids_from_targets


def _targets_only_when_given(self: Any) -> list[str]:
    # moto reads an empty target list as "every instance of the region"; AWS sends to exactly
    # the InstanceIds given.
    if not self.targets:
        return []
    return _original_targets(self)


_original_send = ssm_models.SimpleSystemManagerBackend.send_command


def _send_command(self: Any, **kwargs: Any) -> Any:
    # SendCommand refuses the whole call, with InvalidInstanceId, when one of its instances is
    # not a managed instance SSM can reach (deregistered, terminated): nothing is sent.
    refused = [i for i in kwargs.get("instance_ids") or [] if SIM.deregistered(i)]
    if refused:
        raise RESTError(
            "InvalidInstanceId",
            "Instances not in a valid state for account",
        )
    document = kwargs.get("document_name") or ""
    probe = False
    if document not in VSS_DOCUMENTS and not document.startswith(("AWS-", "AWSEC2-", "Amazon")):
        # An account's own document must exist (AWS: InvalidDocument); the readiness probe is
        # the one whose script prints the `CSPROBE` line.
        documents = self._documents.get(document)
        if documents is None:
            raise RESTError("InvalidDocument", f"Document {document} does not exist")
        content = documents.get_default_version().content
        probe = "CSPROBE" in (content if isinstance(content, str) else str(content))
    command = _original_send(self, **kwargs)
    SIM.on_send_command(command, self.region_name, probe=probe)
    if command.document_name in VSS_DOCUMENTS or probe:
        command.status = "Pending"
        command.status_details = "Pending"
        command.completed_count = 0
    return command


_original_get_invocation = ssm_models.SimpleSystemManagerBackend.get_command_invocation


def _get_command_invocation(self: Any, command_id: str, instance_id: str, plugin_name: Any) -> Any:
    view = SIM.invocation_view(command_id, instance_id)
    if view is None:
        return _original_get_invocation(self, command_id, instance_id, plugin_name)
    return view


def _paginate(rows: list, token: str | None, page_size: int) -> tuple[list, str | None]:
    start = int(token) if token else 0
    end = start + page_size
    return rows[start:end], (str(end) if end < len(rows) else None)


WINDOWS_NAMES = {
    "10.": "Microsoft Windows Server 2022 Datacenter",
    "6.3": "Microsoft Windows Server 2012 R2 Datacenter",
    "6.1": "Microsoft Windows Server 2008 R2 Datacenter",
}


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
        simulated = (
            sorted(SIM.instances.items())
            if wanted is None
            else sorted((i, SIM.instances[i]) for i in wanted if i in SIM.instances)
        )
        here = instances_by_id(ec2, {i for i, _ in simulated})
        for instance_id, sim in simulated:
            instance = here.get(instance_id)
            if sim.ssm == "unmanaged" or instance is None:
                # Unmanaged, or not an instance of this region.
                continue
            tags = {t["key"]: t["value"] for t in instance.get_tags()}
            name = tags.get("Name", instance_id)
            windows = str(getattr(instance, "platform", "") or "").lower() == "windows"
            rows.append(
                {
                    "InstanceId": instance_id,
                    # A deregistered agent's last ping still says Online (SSM's view is stale).
                    "PingStatus": "Online"
                    if sim.ssm in ("online", "deregistered")
                    else "ConnectionLost",
                    "LastPingDateTime": time.time(),
                    "AgentVersion": sim.agent_version,
                    "IsLatestVersion": False,
                    "PlatformType": "Windows" if windows else "Linux",
                    "PlatformName": WINDOWS_NAMES.get(sim.windows_version[:3], "Microsoft Windows Server")
                    if windows
                    else "Amazon Linux",
                    "PlatformVersion": sim.windows_version if windows else "2023",
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


# PutParameter without Overwrite is an atomic create in AWS (the function claims runs with it);
# moto checks and then appends, so two threads could both create. One lock makes it atomic.
_PARAMETER_LOCK = threading.Lock()
_original_put_parameter = ssm_models.SimpleSystemManagerBackend.put_parameter


def _put_parameter(self: Any, *args: Any, **kwargs: Any) -> Any:
    with _PARAMETER_LOCK:
        return _original_put_parameter(self, *args, **kwargs)


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "SendCommand with InstanceIds and no Targets sends to those instances only (moto: every instance of the region)",
    "SendCommand of a VSS document starts a simulated invocation per instance (moto: Success at once, no snapshot)",
    "GetCommandInvocation answers the simulated invocation: InvocationDoesNotExist, Pending, InProgress, final",
    "DescribeInstanceInformation answers from the simulated agents (moto: not implemented)",
    "ListCommandInvocations answers the simulated invocations, paged (moto: not implemented)",
    "ListCommands honours Filters and paging; a command's status follows its invocations (moto: Success at once)",
    "PutParameter without Overwrite is an atomic create (moto: check, then append)",
    "SendCommand naming a deregistered agent (still listed Online) is refused whole: InvalidInstanceId",
    "SendCommand of an account document that does not exist is refused: InvalidDocument (moto: sent)",
    "SendCommand of the readiness probe (a document printing CSPROBE) runs it on the simulated servers",
)


def install() -> None:
    """Patches moto as `REPLACES` lists. Idempotent only in the sense that it is called once."""
    ssm_models.Command._get_instance_ids_from_targets = _targets_only_when_given
    ssm_models.SimpleSystemManagerBackend.send_command = _send_command
    ssm_models.SimpleSystemManagerBackend.get_command_invocation = _get_command_invocation
    ssm_responses.SimpleSystemManagerResponse.describe_instance_information = _describe_instance_information
    ssm_responses.SimpleSystemManagerResponse.list_command_invocations = _list_command_invocations
    ssm_responses.SimpleSystemManagerResponse.list_commands = _list_commands
    ssm_models.SimpleSystemManagerBackend.put_parameter = _put_parameter
