#!/usr/bin/env python3
"""Asserts the guarantees of template.yaml that an edit could silently drop: the IAM
conditions that keep the function to its own document, instances and snapshots, the catalog
table's protections (recovery, deletion protection, encryption, TTL, writes by the function
only), the queue policy, the alarms, and a written justification beside every skipped
checkov check.

Also vault.yaml (the vault account's side): its role never deletes, unlocks, shares or
archives, and its policy is the one the end-to-end tests use (tests/fixtures/).

Usage: check_template.py [template.yaml] [vault.yaml] [--write-fixtures]; exits 1 and
lists every broken guarantee.
"""

from __future__ import annotations

import sys
from typing import Any

from cfnlint.decode import decode_str

READ_ONLY_PREFIXES = ("Describe", "Get", "List")


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def statements(template: dict) -> list[dict]:
    """Every statement of the function's inline policies, through Fn::If branches."""
    found: list[dict] = []

    def walk(policy: Any) -> None:
        if isinstance(policy, dict) and "Fn::If" in policy:
            for branch in policy["Fn::If"][1:]:
                walk(branch)
        elif isinstance(policy, dict) and "Statement" in policy:
            for s in policy["Statement"]:
                # A statement under a condition: each branch that is one.
                branches = s["Fn::If"][1:] if isinstance(s, dict) and "Fn::If" in s else [s]
                found.extend(b for b in branches if isinstance(b, dict) and "Effect" in b)

    function = template["Resources"]["SnapshotFunction"]["Properties"]
    for policy in function.get("Policies", []):
        walk(policy)
    return found


def actions(statement: dict) -> list[str]:
    return [str(a) for a in as_list(statement.get("Action", []))]


def text(value: Any) -> str:
    return repr(value)


def check(template: dict) -> list[str]:
    problems: list[str] = []
    stmts = statements(template)
    if not stmts:
        return ["no inline policy statements found on SnapshotFunction"]

    for s in stmts:
        sid = s.get("Sid", "?")
        for action in actions(s):
            if action == "*" or action.endswith(":*"):
                problems.append(f"{sid}: wildcard action {action}")
            service, _, name = action.partition(":")
            if s.get("Resource") == "*" and not name.startswith(READ_ONLY_PREFIXES):
                if not (service == "kms" and "kms:ViaService" in text(s.get("Condition"))):
                    problems.append(f"{sid}: {action} on every resource")

    send = [s for s in stmts if "ssm:SendCommand" in actions(s)]
    if not any(":document/${SsmDocument}" in text(s.get("Resource")) for s in send):
        problems.append("ssm:SendCommand is not limited to the chosen document")
    instance = [s for s in send if ":instance/" in text(s.get("Resource"))]
    if not instance or not all("ssm:resourceTag/ConsistentSnapshot" in text(s.get("Condition")) for s in instance):
        problems.append("ssm:SendCommand on instances lacks the target tag condition")
    if any(":document/" not in text(s.get("Resource")) and ":instance/" not in text(s.get("Resource")) for s in send):
        problems.append("ssm:SendCommand is allowed on something other than the document and instances")
    # An account document the function may send must be the stack's own fixed script: no
    # parameters (nothing a caller could make it run), PowerShell steps only, no other document.
    resources = template.get("Resources", {})
    for s in send:
        for resource in as_list(s.get("Resource")):
            body = text(resource)
            if ":${AWS::AccountId}:document/" not in body:
                continue
            named = [n for n, r in resources.items()
                     if r.get("Type") == "AWS::SSM::Document" and "${" + n + "}" in body]
            if not named:
                problems.append(f"{s.get('Sid', '?')}: ssm:SendCommand on an account document the stack does not define")
            for name in named:
                content = resources[name].get("Properties", {}).get("Content", {})
                steps = content.get("mainSteps", []) if isinstance(content, dict) else []
                if not isinstance(content, dict) or content.get("parameters"):
                    problems.append(f"the readiness probe document {name} takes parameters")
                if not steps or any(st.get("action") != "aws:runPowerShellScript" for st in steps):
                    problems.append(f"the readiness probe document {name} runs something other than its own PowerShell script")

    # Deletes: this deployment's snapshots (ManagedBy), or its vault transit copies
    # (VaultTransit, with the same value).
    delete = [s for s in stmts if "ec2:DeleteSnapshot" in actions(s)]
    if not delete or not all(
        any(f"aws:ResourceTag/ConsistentSnapshot:{k}" in text(s.get("Condition"))
            for k in ("ManagedBy", "VaultTransit")) for s in delete
    ):
        problems.append("ec2:DeleteSnapshot is not limited to snapshots tagged with this deployment's ManagedBy")

    for s in (s for s in stmts if "ec2:CreateTags" in actions(s)):
        condition = text(s.get("Condition"))
        if not any(k in condition for k in ("ec2:CreateAction", "aws:ResourceTag/ConsistentSnapshot:ManagedBy", "aws:TagKeys")):
            problems.append(f"{s.get('Sid', '?')}: ec2:CreateTags without a CreateAction, ManagedBy or tag-key condition")

    # The crash-consistent fallback snapshots only tagged instances, into snapshots that carry
    # this deployment's tag from their creation.
    fallback = [s for s in stmts if "ec2:CreateSnapshots" in actions(s)]
    for s in fallback:
        resource, condition = text(s.get("Resource")), text(s.get("Condition"))
        if ":snapshot/" in resource and "aws:RequestTag/ConsistentSnapshot:ManagedBy" not in condition:
            problems.append(f"{s.get('Sid', '?')}: ec2:CreateSnapshots into snapshots without this deployment's tag")
        if ":instance/" in resource and "aws:ResourceTag/ConsistentSnapshot" not in condition:
            problems.append(f"{s.get('Sid', '?')}: ec2:CreateSnapshots of instances without the target tag condition")
    if fallback and not any(":snapshot/" in text(s.get("Resource")) for s in fallback):
        problems.append("ec2:CreateSnapshots has no statement for the snapshots it makes")

    for s in (s for s in stmts if "ec2:DeleteVolume" in actions(s)):
        condition = text(s.get("Condition"))
        if "aws:ResourceTag/ConsistentSnapshot:Purpose" not in condition or "aws:ResourceTag/ConsistentSnapshot:ManagedBy" not in condition:
            problems.append("ec2:DeleteVolume is not limited to this deployment's verification volumes")

    for s in (s for s in stmts if "ec2:CreateVolume" in actions(s)):
        resource, condition = text(s.get("Resource")), text(s.get("Condition"))
        if ":snapshot/" in resource:
            if "ec2:Owner" not in condition or "aws:ResourceTag/ConsistentSnapshot:ManagedBy" not in condition:
                problems.append(f"{s.get('Sid', '?')}: ec2:CreateVolume from snapshots not of this account or without this deployment's tag")
            if ":volume/" in resource:
                problems.append(f"{s.get('Sid', '?')}: ec2:CreateVolume on volumes and snapshots in one statement")
        elif "aws:RequestTag/ConsistentSnapshot:ManagedBy" not in condition:
            problems.append("ec2:CreateVolume does not require this deployment's ManagedBy tag")
    if not any(":snapshot/" in text(s.get("Resource")) for s in stmts if "ec2:CreateVolume" in actions(s)):
        problems.append("ec2:CreateVolume has no statement for its source snapshots")

    for s in stmts:
        if any(a.startswith("ebs:") for a in actions(s)):
            if any(a in ("ebs:*", "ebs:GetSnapshotBlock", "ebs:PutSnapshotBlock") for a in actions(s)):
                problems.append(f"{s.get('Sid', '?')}: reads or writes snapshot data (only block lists are needed)")
            if "aws:ResourceTag/ConsistentSnapshot:ManagedBy" not in text(s.get("Condition")):
                problems.append(f"{s.get('Sid', '?')}: EBS direct APIs on snapshots not tagged with this deployment's ManagedBy")
        if {"ec2:ModifySnapshotTier", "ec2:RestoreSnapshotTier"} & set(actions(s)):
            if "aws:ResourceTag/ConsistentSnapshot:ManagedBy" not in text(s.get("Condition")):
                problems.append(f"{s.get('Sid', '?')}: snapshot tiers changed on snapshots not tagged with this deployment's ManagedBy")

    # Snapshot Lock: laid only on this deployment's snapshots, for a bounded duration; nothing
    # of the function may unlock a snapshot or touch a Recycle Bin rule (an abused role could
    # otherwise undo the protection it lays).
    lockers = [s for s in stmts if "ec2:LockSnapshot" in actions(s)]
    if not lockers:
        problems.append("ec2:LockSnapshot is not allowed (LockMode could lay no lock)")
    for s in lockers:
        condition = text(s.get("Condition"))
        if "aws:ResourceTag/ConsistentSnapshot:ManagedBy" not in condition:
            problems.append(f"{s.get('Sid', '?')}: ec2:LockSnapshot on snapshots not tagged with this deployment's ManagedBy")
        if "ec2:SnapshotLockDuration" not in text(s.get("Condition", {}).get("NumericLessThanEquals")):
            problems.append(f"{s.get('Sid', '?')}: ec2:LockSnapshot without a bound on ec2:SnapshotLockDuration")
    for s in stmts:
        for action in actions(s):
            if action == "ec2:UnlockSnapshot" or action.startswith("rbin:"):
                problems.append(f"{s.get('Sid', '?')}: {action} (the function never removes the protection it lays)")
    rules = [r for r in template["Resources"].values() if r.get("Type") == "AWS::Rbin::Rule"]
    if not rules:
        problems.append("no Recycle Bin rule (RecycleBinDays could keep nothing)")
    for r in rules:
        props = r.get("Properties", {})
        if r.get("Condition") != "RecycleBinGiven":
            problems.append("the Recycle Bin rule is made whether RecycleBinDays is given or not")
        if props.get("ResourceType") != "EBS_SNAPSHOT" or "ConsistentSnapshot:ManagedBy" not in text(props.get("ResourceTags")):
            problems.append("the Recycle Bin rule does not keep this deployment's snapshots by their ManagedBy tag")
        if "RecycleBinDays" not in text(props.get("RetentionPeriod")):
            problems.append("the Recycle Bin rule does not keep them for RecycleBinDays")

    # The catalog replaced Parameter Store: no parameter may be written any more.
    for s in stmts:
        for action in actions(s):
            if action.startswith("ssm:") and "Parameter" in action:
                problems.append(f"{s.get('Sid', '?')}: {action} (runs are claimed in the catalog, not in Parameter Store)")
            if action.startswith("dynamodb:") and "-catalog" not in text(s.get("Resource")):
                problems.append(f"{s.get('Sid', '?')}: {action} beyond the catalog table")

    # Every catalog call the function makes is allowed (a call IAM refuses fails only on AWS:
    # the emulator does not evaluate the function's own policy).
    allowed = {a for s in stmts if s.get("Effect") == "Allow" for a in actions(s) if a.startswith("dynamodb:")}
    for call in sorted(catalog_calls()):
        if f"dynamodb:{call}" not in allowed:
            problems.append(f"the catalog calls {call}, which the function's policy does not allow")

    resources = template["Resources"]
    catalog = resources.get("CatalogTable", {})
    props = catalog.get("Properties", {})
    if catalog.get("Type") != "AWS::DynamoDB::Table":
        problems.append("no CatalogTable (AWS::DynamoDB::Table)")
    else:
        if not props.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
            problems.append("CatalogTable: point-in-time recovery is off")
        if not props.get("DeletionProtectionEnabled"):
            problems.append("CatalogTable: deletion protection is off")
        if not props.get("SSESpecification", {}).get("SSEEnabled"):
            problems.append("CatalogTable: encryption (SSESpecification) is off")
        if props.get("TimeToLiveSpecification", {}).get("AttributeName") != "expires_at":
            problems.append("CatalogTable: no TTL on expires_at")
        if catalog.get("DeletionPolicy") != "Retain":
            problems.append("CatalogTable: a stack deletion would delete the catalog (DeletionPolicy)")
        policy = text(props.get("ResourcePolicy"))
        if "Deny" not in policy or "dynamodb:PutItem" not in policy or "SnapshotFunctionRole" not in policy:
            problems.append("CatalogTable: the resource policy does not deny writes to all but the function's role")
    managed_by = text(resources.get("SnapshotFunction", {}).get("Properties", {}).get("Environment", {}).get("Variables", {}).get("MANAGED_BY"))
    if "AWS::Region" not in managed_by or "AWS::AccountId" not in managed_by:
        problems.append("MANAGED_BY's default is not unique per stack, region and account")
    queue_policies = [r for r in resources.values() if r.get("Type") == "AWS::SQS::QueuePolicy"]
    if not any(
        "TrackingQueue" in text(r.get("Properties", {}).get("Queues"))
        and "Deny" in text(r["Properties"].get("PolicyDocument"))
        and "sqs:SendMessage" in text(r["Properties"].get("PolicyDocument"))
        and "SnapshotFunctionRole" in text(r["Properties"].get("PolicyDocument"))
        for r in queue_policies
    ):
        problems.append("TrackingQueue: no queue policy denying sqs:SendMessage to all but the function's role")
    # Besides the function's role, only EventBridge delivering for the completion events rule
    # may send to the tracking queue, and that rule passes on SSM's events of the VSS document.
    for r in queue_policies:
        if "TrackingQueue" not in text(r.get("Properties", {}).get("Queues")):
            continue
        for st in as_list(r["Properties"].get("PolicyDocument", {}).get("Statement")):
            if st.get("Effect") != "Allow":
                continue
            if st.get("Principal") != {"Service": "events.amazonaws.com"} or text(
                st.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn")
            ) != text({"Fn::GetAtt": ["CompletionEventsRule", "Arn"]}):
                problems.append(f"TrackingQueue {st.get('Sid', '?')}: allows senders other than the completion events rule")
        for st in as_list(r["Properties"].get("PolicyDocument", {}).get("Statement")):
            if st.get("Effect") == "Deny":
                keys = st.get("Condition", {}).get("ArnNotEquals", {})
                if set(keys) - {"aws:PrincipalArn", "aws:SourceArn"} or (
                    "aws:SourceArn" in keys
                    and text(keys["aws:SourceArn"]) != text({"Fn::GetAtt": ["CompletionEventsRule", "Arn"]})
                ):
                    problems.append(f"TrackingQueue {st.get('Sid', '?')}: the deny lets through more than the function and the completion events rule")
    rule = resources.get("CompletionEventsRule", {}).get("Properties", {})
    if rule:
        pattern = rule.get("EventPattern", {})
        if pattern.get("source") != ["aws.ssm"] or pattern.get("detail-type") != [
            "EC2 Command Invocation Status-change Notification"
        ] or pattern.get("detail", {}).get("document-name") != [{"Ref": "SsmDocument"}]:
            problems.append("CompletionEventsRule: passes on events other than SSM's for the VSS document")
        if any("TrackingQueue" not in text(t.get("Arn")) for t in rule.get("Targets", [])):
            problems.append("CompletionEventsRule: a target other than the tracking queue")
        env = resources.get("SnapshotFunction", {}).get("Properties", {}).get("Environment", {}).get("Variables", {})
        if str(env.get("COMPLETION_EVENTS")).lower() != "true":
            problems.append("CompletionEventsRule exists but COMPLETION_EVENTS is not \"true\"")
        problems.extend(fixture_problems(
            EVENTS_FIXTURE, resolved(pattern, template.get("Parameters", {})), "CompletionEventsRule's pattern"))

    for s in (s for s in stmts if {"ec2:StopInstances", "ec2:StartInstances"} & set(actions(s))):
        if "aws:ResourceTag/ConsistentSnapshot" not in text(s.get("Condition")):
            problems.append(f"{s.get('Sid', '?')}: instances stopped or started without the target tag condition")

    for s in (s for s in stmts if any(a.startswith("kms:") for a in actions(s))):
        if "kms:ViaService" not in text(s.get("Condition")):
            problems.append(f"{s.get('Sid', '?')}: KMS use not limited to EC2 (kms:ViaService)")

    for s in (s for s in stmts if "sns:Publish" in actions(s)):
        if s.get("Resource") not in (
            {"Ref": "NotificationTopic"},
            {"Fn::If": ["TopicGiven", {"Ref": "NotificationTopicArn"}, {"Ref": "NotificationTopic"}]},
        ):
            problems.append("sns:Publish is not limited to the stack's notification topic")

    alarms = {
        name: r["Properties"]
        for name, r in template["Resources"].items()
        if r.get("Type") == "AWS::CloudWatch::Alarm"
    }
    wanted = {
        "NotConsistent": "failures in a run",
        "InstancesOutOfRpo": "instances out of RPO",
        "ApproximateNumberOfMessagesVisible": "a dead-letter queue that is not empty",
        "JobsRefused": "forged or unknown jobs refused",
        "ForeignSnapshots": "snapshots tagged as this deployment's that it did not record",
        "CopiesFailed": "copies in error, or refused for good by a copy region",
        "CopiesTimedOut": "copies not final by the copy step's deadline",
        "RegionsUnreadable": "a region retention could not read",
        "DeletionsFailed": "snapshots retention planned to delete and could not",
        "InstancesLostTag": "servers with backups that lost their tag",
        "CopiesNotStarted": "copies never started by the copy step's deadline",
        "DeletionsHeldBack": "retention held back by what uses a snapshot",
        "RestoreFailures": "restore tests that failed",
        "NotificationsFailed": "notifications the topic refused",
        "HistoryUnreadable": "the command history refused for good",
        "ApiThrottled": "AWS throttling the function's calls",
        "RunsAbandoned": "a run whose dispatch failed for good",
        "RestoresFailed": "on-demand restores that failed",
        "DeletionsUnfinished": "a run's retention that stopped with deletions left",
        "SnapshotsDeletedOutside": "recorded backups deleted by someone else",
    }
    for metric, what in wanted.items():
        if not any(a.get("MetricName") == metric for a in alarms.values()):
            problems.append(f"no alarm on {metric} ({what})")
    # Alarms on what AWS measures of the stack's own parts: (metric, the resource it watches).
    watched = {
        ("ApproximateAgeOfOldestMessage", "TrackingQueue"): "the tracking queue's oldest message",
        ("Errors", "SnapshotFunction"): "the function's failed invocations",
        ("Throttles", "SnapshotFunction"): "the function throttled",
        ("ApproximateNumberOfMessagesVisible", "ScheduleDeadLetterQueue"): "the schedules' dead-letter queue",
    }
    for (metric, resource), what in watched.items():
        if not any(
            a.get("MetricName") == metric and resource in text(a.get("Dimensions"))
            for a in alarms.values()
        ):
            problems.append(f"no alarm on {metric} of {resource} ({what})")
    # Each new dead-letter incident notifies: an alarm on the growth of the DLQ, not only on
    # its being non-empty (which stays in ALARM, silent, while old messages wait).
    if not any(
        "DIFF(" in text(a.get("Metrics")) and "TrackingDeadLetterQueue" in text(a.get("Metrics"))
        for a in alarms.values()
    ):
        problems.append("no alarm on new messages in the tracking dead-letter queue (DIFF)")
    # Every schedule, the optional restore tests' included, keeps what it could not deliver.
    for name, r in template["Resources"].items():
        if r.get("Type") == "AWS::Scheduler::Schedule":
            if "ScheduleDeadLetterQueue" not in text(r["Properties"].get("Target", {}).get("DeadLetterConfig")):
                problems.append(f"{name}: no dead-letter queue for the events it cannot deliver")
        for event_name, event in r.get("Properties", {}).get("Events", {}).items():
            if event.get("Type") == "ScheduleV2" and "ScheduleDeadLetterQueue" not in text(
                event.get("Properties", {}).get("DeadLetterConfig")
            ):
                problems.append(f"{name}.{event_name}: no dead-letter queue for the events it cannot deliver")
    dashboards = [
        r["Properties"] for r in template["Resources"].values()
        if r.get("Type") == "AWS::CloudWatch::Dashboard"
    ]
    if not dashboards:
        problems.append("no CloudWatch dashboard")
    else:
        body = text(dashboards[0].get("DashboardBody"))
        for metric in ("InstancesOutOfRpo", "InstancesLostTag", "Consistent",
                       "SnapshotsCopied", "SnapshotsDeleted", "RestoresVerified"):
            if f'"{metric}"' not in body:
                problems.append(f"the dashboard does not show {metric}")
        if "instance finished" not in body:
            problems.append("the dashboard has no table of the last runs' servers that are not consistent")
    outputs = template.get("Outputs", {})
    if "NO NOTIFICATION TARGET" not in text(outputs.get("Notifications")):
        problems.append("the outputs do not say when the alarms notify nobody")
    for name, a in alarms.items():
        if a.get("MetricName") == "InstancesOutOfRpo" and a.get("TreatMissingData") != "breaching":
            problems.append(f"{name}: a report that stops must alarm (TreatMissingData: breaching)")
        if "NotificationTopic" not in text(a.get("AlarmActions")):
            problems.append(f"{name}: does not notify the optional topic")

    # The vault: snapshots shared with the vault account only, and only its role assumed.
    for s in stmts:
        if "ec2:ModifySnapshotAttribute" in actions(s):
            cond = s.get("Condition", {})
            adds = cond.get("ForAllValues:StringEquals", {})
            if text(adds.get("ec2:Add/userId")) != text([{"Ref": "VaultAccountId"}]):
                problems.append(f"{s.get('Sid')}: may share snapshots with accounts other than the vault")
            if "ec2:Add/group" not in cond.get("Null", {}):
                problems.append(f"{s.get('Sid')}: may make snapshots public (no Null ec2:Add/group)")
            tagged = cond.get("StringEquals", {})
            if not any(f"aws:ResourceTag/ConsistentSnapshot:{k}" in tagged for k in ("ManagedBy", "VaultTransit")):
                problems.append(f"{s.get('Sid')}: may share snapshots of other deployments")
        if "sts:AssumeRole" in actions(s) and s.get("Resource") != {"Ref": "VaultRoleArn"}:
            problems.append(f"{s.get('Sid')}: may assume roles other than the vault's")

    # The transit key: the vault account may only decrypt with it, through EC2.
    transit = template["Resources"].get("VaultTransitKey", {}).get("Properties", {})
    for st in transit.get("KeyPolicy", {}).get("Statement", []):
        if "VaultAccountId" in text(st.get("Principal")):
            if set(actions(st)) - {"kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncryptFrom"}:
                problems.append(f"VaultTransitKey {st.get('Sid')}: the vault account may do more than decrypt with it")
            if "kms:ViaService" not in text(st.get("Condition")):
                problems.append(f"VaultTransitKey {st.get('Sid')}: the vault account may use it outside EC2")
    if transit:
        policy = resolved(transit.get("KeyPolicy", {}), template.get("Parameters", {}),
                          {"AWS::AccountId": "123456789012", "VaultAccountId": "222222222222"})
        problems.extend(fixture_problems(TRANSIT_KEY_FIXTURE, policy, "VaultTransitKey's key policy"))

    for name, resource in template["Resources"].items():
        skips = resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
        for skip in skips:
            if len(str(skip.get("comment", "")).strip()) < 40:
                problems.append(f"{name}: checkov skip {skip.get('id')} has no written justification")
    return problems


VAULT_NEVER = ("ec2:DeleteSnapshot", "ec2:UnlockSnapshot", "ec2:ModifySnapshotAttribute",
               "ec2:ModifySnapshotTier")
VAULT_FIXTURE = "tests/fixtures/vault-access-policy.json"
TRANSIT_KEY_FIXTURE = "tests/fixtures/vault-transit-key-policy.json"
EVENTS_FIXTURE = "tests/fixtures/completion-events-pattern.json"
VAULT_DECRYPT = ("kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncryptFrom")
#: What `!Sub` makes of the pseudo parameters and of those without a default, in the fixture:
#: the end-to-end tests' partition and fleet account.
FIXTURE_VALUES = {"AWS::Partition": "aws", "FleetAccountId": "123456789012"}


def resolved(value: Any, parameters: dict, values: dict | None = None) -> Any:
    """The policy with each `Ref` to a parameter replaced by its default, as CloudFormation
    gives it (a string, whatever the parameter's type): as the tests use it."""
    if isinstance(value, dict):
        if set(value) == {"Ref"} and value["Ref"] in parameters:
            return str(parameters[value["Ref"]].get("Default"))
        if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
            import re

            def one(m: "re.Match[str]") -> str:
                name = m.group(1)
                given = FIXTURE_VALUES | (values or {})
                if name in given:
                    return given[name]
                return str(parameters.get(name, {}).get("Default", m.group(0)))

            return re.sub(r"\$\{([^}]+)\}", one, value["Fn::Sub"])
        return {k: resolved(v, parameters, values) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v, parameters, values) for v in value]
    return value


def fixture_problems(relative: str, value: Any, what: str) -> list[str]:
    """`value` (a policy as a template makes it, for the tests' accounts) must equal the
    fixture the end-to-end tests give the emulator; `--write-fixtures` rewrites it."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / relative
    if "--write-fixtures" in sys.argv:
        path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
        return []
    if not path.exists() or json.loads(path.read_text(encoding="utf-8")) != value:
        return [f"{what} differs from {relative} (the tests' copy): rewrite it with "
                "scripts/check_template.py template.yaml vault.yaml --write-fixtures"]
    return []


def check_vault(template: dict) -> list[str]:
    """vault.yaml: its role may copy, tag, describe and lock (bounded), never delete, unlock,
    share or archive (an explicit Deny, whatever else is attached to it later); and its policy
    is the one the end-to-end tests give the emulator's vault role."""
    import json
    from pathlib import Path

    problems: list[str] = []
    role = template["Resources"].get("VaultAccessRole", {}).get("Properties", {})
    documents = [p.get("PolicyDocument", {}) for p in role.get("Policies", [])]
    if role.get("ManagedPolicyArns"):
        problems.append("VaultAccessRole: managed policies attached (only its inline policy may grant)")
    stmts = [s for d in documents for s in d.get("Statement", [])]
    for s in stmts:
        granted = actions(s)
        if s.get("Effect") == "Allow":
            # KMS: only decrypting the fleet account's keys, through EC2 (a shared set).
            fleet_keys_only = "FleetAccountId" in text(s.get("Resource")) and ":key/" in text(s.get("Resource")) \
                and "*" != s.get("Resource") and "kms:ViaService" in text(s.get("Condition"))
            for action in granted:
                if action in VAULT_DECRYPT and fleet_keys_only:
                    continue
                if action in VAULT_NEVER or "*" in action or action.startswith(("iam:", "kms:", "dynamodb:")):
                    problems.append(f"VaultAccessRole {s.get('Sid')}: allows {action}")
            if "ec2:LockSnapshot" in granted and "ec2:SnapshotLockDuration" not in text(s.get("Condition")):
                problems.append(f"VaultAccessRole {s.get('Sid')}: locks without a bounded duration")
    denied = {a for s in stmts if s.get("Effect") == "Deny" for a in actions(s)}
    for action in VAULT_NEVER:
        if action not in denied:
            problems.append(f"VaultAccessRole: {action} is not explicitly denied")
    trust = text(role.get("AssumeRolePolicyDocument"))
    if "FleetAccountId" not in trust or "aws:PrincipalArn" not in trust:
        problems.append("VaultAccessRole: trusts more than the fleet account's function role")
    # The vault's own function: the only deleter there, of the fleet's copies only; it shares
    # only with the named recovery accounts, never publicly.
    function = template["Resources"].get("VaultFunction", {}).get("Properties", {})
    if function.get("Environment", {}).get("Variables", {}).get("MODE") != "vault":
        problems.append("VaultFunction: not in vault mode (MODE=vault)")
    found: list[dict] = []
    for policy in function.get("Policies", []):
        for st in policy.get("Statement", []) if isinstance(policy, dict) else []:
            found.extend(st["Fn::If"][1:2] if isinstance(st, dict) and "Fn::If" in st else [st])
    for st in found:
        if "ec2:DeleteSnapshot" in actions(st) and "FleetManagedBy" not in text(st.get("Condition")):
            problems.append(f"VaultFunction {st.get('Sid')}: deletes snapshots that are not the fleet's copies")
        if "ec2:ModifySnapshotAttribute" in actions(st):
            cond = text(st.get("Condition"))
            if "RecoveryAccounts" not in cond or "ec2:Add/group" not in cond:
                problems.append(f"VaultFunction {st.get('Sid')}: may share with others than the recovery accounts")
    # Its own catalog, which only it writes, and its alarms.
    resources = template["Resources"]
    table = resources.get("VaultCatalog", {}).get("Properties", {})
    if function.get("Environment", {}).get("Variables", {}).get("CATALOG_TABLE") != {"Ref": "VaultCatalog"}:
        problems.append("VaultFunction: CATALOG_TABLE is not the vault's own catalog (VaultCatalog)")
    if not table.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") \
            or not table.get("DeletionProtectionEnabled") or not table.get("SSESpecification", {}).get("SSEEnabled"):
        problems.append("VaultCatalog: needs point-in-time recovery, deletion protection and encryption")
    if "VaultFunctionRole" not in text(table.get("ResourcePolicy")):
        problems.append("VaultCatalog: others than the vault function may write it (resource policy)")
    watched = {r.get("Properties", {}).get("MetricName") for r in resources.values()
               if r.get("Type") == "AWS::CloudWatch::Alarm"}
    for metric in ("VaultCopiesDeletedOutside", "VaultIntruders", "VaultServersStale"):
        if metric not in watched:
            problems.append(f"no alarm watches {metric}")
    policy = resolved(documents[0] if documents else {}, template.get("Parameters", {}))
    problems.extend(fixture_problems(VAULT_FIXTURE, policy, "VaultAccessRole's policy"))
    return problems


def catalog_calls() -> set[str]:
    """The DynamoDB operations the function's catalog code calls (`.put_item()` → PutItem)."""
    import re
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent / "functions/consistent-snapshot/src/aws/catalog.rs"
    ops = ("get_item", "put_item", "update_item", "delete_item", "query", "scan", "batch_write_item",
           "batch_get_item", "transact_write_items", "transact_get_items")
    found = set()
    for name in re.findall(r"\.(\w+)\(\)", source.read_text(encoding="utf-8")):
        if name in ops:
            found.add("".join(part.capitalize() for part in name.split("_")))
    return found


def main() -> int:
    paths = [a for a in sys.argv[1:] if not a.startswith("--")] or ["template.yaml"]
    failed = False
    for path in paths:
        with open(path, encoding="utf-8") as f:
            template, errors = decode_str(f.read())
        if errors or template is None:
            print(f"{path}: cannot be read: {errors}")
            failed = True
            continue
        vault = "VaultAccessRole" in template.get("Resources", {})
        problems = check_vault(template) if vault else check(template)
        for problem in problems:
            print(f"{path}: {problem}")
        if not problems:
            print(f"{path}: " + ("the vault role copies, tags, describes and locks, never deletes"
                                 if vault else "IAM conditions, alarms and checkov justifications in place"))
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
