"""Other accounts' roles as AWS enforces them: an EC2 call made with the credentials of an
assumed role that exists in its account's IAM is allowed only if that role's policies allow
it (IAM's evaluation, `iam.evaluate`), else refused with `UnauthorizedOperation`, as EC2 does.
moto enforces no IAM by default; the fleet account's own calls (the function's, the harness's)
are made with plain keys and stay unchecked, as before. This is what a vault account's role is
tested against: it may copy, tag, describe and lock, and never delete."""

from __future__ import annotations

import threading
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses import EC2Response
from moto.core.utils import camelcase_to_underscores

from .iam import _role_statements, evaluate

_original_call_action = EC2Response.call_action


def _assumed_role_arn(response: Any) -> str | None:
    """The role whose session signed this request, if it was an assumed role's."""
    from moto.sts.models import sts_backends

    key = response.get_access_key()
    for partitions in list(sts_backends.values()):
        for backend in list(partitions.values()):
            role = backend.get_assumed_role_from_access_key(key)
            if role is not None:
                return role.role_arn
    return None


def _statements(role_arn: str) -> list[dict] | None:
    """The role's policy statements, if the role exists in its account's IAM."""
    from moto.iam.models import iam_backends

    account = role_arn.split(":")[4]
    try:
        return _role_statements(iam_backends[account]["aws"], role_arn)
    except Exception:  # noqa: BLE001 - a role IAM does not know is not enforced
        return None


def _context(response: Any, action: str) -> dict[str, list[str]]:
    """The request's condition keys this emulator plays (lower-cased, as IAM compares them)."""
    context: dict[str, list[str]] = {}
    if action == "LockSnapshot":
        duration = response._get_param("LockDuration")
        if duration is not None:
            context["ec2:snapshotlockduration"] = [str(duration)]
    return context


#: The assumed role (and its enforced statements) of the EC2 request being answered, for the
#: backends' checks that depend on the caller (`keys`): `(role_arn, statements)`.
CALLER = threading.local()


def caller() -> tuple[str | None, list[dict] | None]:
    """The assumed role of the request being answered and its statements, if IAM enforces it."""
    return getattr(CALLER, "role", (None, None))


def _call_action(self: Any) -> Any:
    role_arn = _assumed_role_arn(self)
    statements = _statements(role_arn) if role_arn else None
    CALLER.role = (role_arn, statements)
    if statements is not None:
        action = self._get_action()
        decision = evaluate(statements, f"ec2:{action}", "*", _context(self, action))
        if decision != "allowed":
            message = (
                f"You are not authorized to perform this operation. User: {role_arn} is not "
                f"authorized to perform: ec2:{action} ({decision})"
            )

            def refuse(*_args: Any, **_kwargs: Any) -> Any:
                raise EC2ClientError("UnauthorizedOperation", message)

            # Answered through moto's own error path, as any EC2 error.
            setattr(self, camelcase_to_underscores(action), refuse)
    return _original_call_action(self)


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "EC2 calls by an assumed role that exists in IAM are refused (UnauthorizedOperation) unless its policies allow them (moto: no IAM enforced)",
)


def install() -> None:
    EC2Response.call_action = _call_action
