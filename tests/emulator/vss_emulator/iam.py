"""IAM as AWS answers it where this project depends on it and moto has nothing:
SimulatePrincipalPolicy of a role, evaluated over the role's inline and attached policies with
IAM's documented logic (an explicit Deny wins, else an Allow whose action, resource and every
condition match, else an implicit deny), policy variables (`${ec2:InstanceId}`) taken from the
context entries. The condition operators the fleet's policies use are played; any other is
refused with an error rather than guessed."""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

from moto.core.responses import ActionResult
from moto.iam import responses as iam_responses
from moto.iam.exceptions import NotFoundException

PLAYED_OPERATORS = {"StringEquals", "StringLike", "ArnLike", "ArnEquals", "StringNotEquals",
                    "NumericLessThanEquals"}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _like(pattern: str, value: str, case: bool = True) -> bool:
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _substitute(text: str, context: dict[str, list[str]]) -> str:
    def one(m: re.Match) -> str:
        values = context.get(m.group(1).lower())
        return values[0] if values else m.group(0)

    return re.sub(r"\$\{([^}]+)\}", one, text)


def _operator(op: str, value: str, expected: str) -> bool:
    if op == "StringEquals":
        return value == expected
    if op == "StringNotEquals":
        return value != expected
    if op in ("StringLike", "ArnLike", "ArnEquals"):
        return _like(expected, value)
    if op == "NumericLessThanEquals":
        try:
            return float(value) <= float(expected)
        except ValueError:
            return False
    raise ValueError(f"condition operator {op} is not played by the emulator")


def _condition_holds(condition: dict, context: dict[str, list[str]]) -> bool:
    for op, pairs in condition.items():
        quantifier, _, base = op.rpartition(":")
        if base not in PLAYED_OPERATORS:
            raise ValueError(f"condition operator {op} is not played by the emulator")
        for key, expected in pairs.items():
            wanted = [_substitute(str(e), context) for e in _as_list(expected)]
            values = context.get(key.lower())
            if quantifier == "ForAllValues":
                # True when the key is absent; else every value matches one wanted.
                if values and not all(any(_operator(base, v, w) for w in wanted) for v in values):
                    return False
            elif quantifier == "ForAnyValue" or not quantifier:
                if not values or not any(_operator(base, v, w) for v in values for w in wanted):
                    return False
            else:
                raise ValueError(f"condition quantifier {quantifier} is not played by the emulator")
    return True


def evaluate(statements: list[dict], action: str, resource: str,
             context: dict[str, list[str]]) -> str:
    """`allowed`, `explicitDeny` or `implicitDeny`, as IAM's policy evaluation decides."""
    allowed = False
    for statement in statements:
        actions = _as_list(statement.get("Action", []))
        resources = _as_list(statement.get("Resource", []))
        if not any(_like(a, action, case=False) for a in actions):
            continue
        if not any(_like(_substitute(r, context), resource) for r in resources):
            continue
        if not _condition_holds(statement.get("Condition", {}), context):
            continue
        if statement.get("Effect") == "Deny":
            return "explicitDeny"
        allowed = True
    return "allowed" if allowed else "implicitDeny"


def _role_statements(backend: Any, role_arn: str) -> list[dict]:
    name = role_arn.rsplit("/", 1)[-1]
    role = backend.get_role(name)
    documents = list(role.policies.values())
    for policy in role.managed_policies.values():
        documents.append(policy.default_version.document if hasattr(policy, "default_version")
                         else policy.document)
    statements: list[dict] = []
    for document in documents:
        parsed = json.loads(document) if isinstance(document, str) else document
        statements.extend(_as_list(parsed.get("Statement", [])))
    return statements


def _members(querystring: dict[str, list[str]], prefix: str) -> list[str]:
    found = []
    for key, values in querystring.items():
        m = re.fullmatch(re.escape(prefix) + r"\.member\.(\d+)", key)
        if m:
            found.append((int(m.group(1)), values[0]))
    return [v for _, v in sorted(found)]


def _context(querystring: dict[str, list[str]]) -> dict[str, list[str]]:
    context: dict[str, list[str]] = {}
    for i in range(1, 100):
        name = querystring.get(f"ContextEntries.member.{i}.ContextKeyName")
        if not name:
            break
        values = _members(querystring, f"ContextEntries.member.{i}.ContextKeyValues")
        context[name[0].lower()] = values
    return context


def _simulate_principal_policy(self: Any) -> ActionResult:
    source = self._get_param("PolicySourceArn")
    actions = _members(self.querystring, "ActionNames")
    resources = _members(self.querystring, "ResourceArns") or ["*"]
    context = _context(self.querystring)
    if ":role/" not in source:
        raise NotFoundException(f"the emulator simulates roles only, not {source}")
    statements = _role_statements(self.backend, source)
    results = []
    for action in actions:
        per_resource = [
            {"EvalResourceName": r, "EvalResourceDecision": evaluate(statements, action, r, context)}
            for r in resources
        ]
        decisions = {d["EvalResourceDecision"] for d in per_resource}
        overall = ("explicitDeny" if "explicitDeny" in decisions
                   else "implicitDeny" if "implicitDeny" in decisions else "allowed")
        result: dict[str, Any] = {
            "EvalActionName": action,
            "EvalResourceName": resources[0] if len(resources) == 1 else "*",
            "EvalDecision": overall,
        }
        if len(resources) > 1:
            result["ResourceSpecificResults"] = per_resource
        results.append(result)
    return ActionResult({"EvaluationResults": results, "IsTruncated": False})


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "SimulatePrincipalPolicy of a role evaluates its inline and attached policies (moto: not implemented)",
)


def install() -> None:
    iam_responses.IamResponse.simulate_principal_policy = _simulate_principal_policy
