"""KMS keys as EBS uses them across accounts, where moto has nothing:

* a snapshot of an encrypted volume is encrypted with the volume's key (moto: no key);
* a snapshot encrypted with the account's default EBS key (`alias/aws/ebs`) cannot be shared
  with another account: `OperationNotPermitted` (moto: shared);
* a copy of another account's encrypted snapshot ends in `error`, "Given key ID is not
  accessible", unless the copying account may use the source's key: the key's policy allows
  that account (its root, or the role) `kms:Decrypt`, and, for an assumed role that IAM
  enforces (`accounts`), the role's own policies allow `kms:Decrypt` on the key through EC2
  (`kms:ViaService`) (moto: any key, always completed).
"""

from __future__ import annotations

import json
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_block_store import EBSBackend

from .iam import evaluate

_original_create_snapshot = EBSBackend.create_snapshot
_original_add_permission = EBSBackend.add_create_volume_permission

NOT_ACCESSIBLE = "Given key ID is not accessible"


def _create_snapshot(self: Any, volume_id: str, *args: Any, **kwargs: Any) -> Any:
    snapshot = _original_create_snapshot(self, volume_id, *args, **kwargs)
    volume = self.get_volume(volume_id)
    if volume.encrypted:
        snapshot.encrypted = True
        snapshot.kms_key_id = volume.kms_key_id
    return snapshot


def _kms(account: str, region: str) -> Any:
    from moto.kms.models import kms_backends

    return kms_backends[account][region]


def _is_default_key(account: str, region: str, key_id: str | None) -> bool:
    """Whether `key_id` is the account's default EBS key (no key at all counts as it)."""
    if not key_id:
        return True
    try:
        default = _kms(account, region).describe_key("alias/aws/ebs")
    except Exception:  # noqa: BLE001 - no default key made yet: not it
        return False
    return key_id in (default.arn, default.id, "alias/aws/ebs")


def _add_create_volume_permission(self: Any, snapshot_id: str, user_ids: list[str],
                                  groups: list[str]) -> None:
    snapshot = self.get_snapshot(snapshot_id)
    if (user_ids or groups) and snapshot.encrypted and _is_default_key(
            self.account_id, self.region_name, snapshot.kms_key_id):
        raise EC2ClientError(
            "OperationNotPermitted", "Encrypted snapshots with EBS default key cannot be shared"
        )
    return _original_add_permission(self, snapshot_id, user_ids, groups)


def _principals(statement: dict) -> list[str]:
    principal = statement.get("Principal", {})
    names = principal.get("AWS", []) if isinstance(principal, dict) else [principal]
    return names if isinstance(names, list) else [names]


def may_use(key_arn: str, account: str, region: str, role_statements: list[dict] | None,
            role_arn: str | None) -> bool:
    """Whether `account` (as `role_arn`, whose statements IAM enforces when given) may use the
    key `key_arn` of another account, through EC2 in `region`."""
    parts = key_arn.split(":")
    if len(parts) < 6:
        return False
    key_region, owner = parts[3], parts[4]
    try:
        policy = json.loads(_kms(owner, key_region).get_key_policy(key_arn) or "{}")
    except Exception:  # noqa: BLE001 - no such key: not accessible
        return False
    context = {"kms:viaservice": [f"ec2.{region}.amazonaws.com"]}
    # The key policy's statements for this account (its root, or the role itself).
    names = {account, f"arn:aws:iam::{account}:root"} | ({role_arn} if role_arn else set())
    mine = [st for st in policy.get("Statement", []) if names & set(_principals(st))]
    if evaluate(mine, "kms:Decrypt", key_arn, context) != "allowed":
        return False
    if role_statements is None:
        return True
    return evaluate(role_statements, "kms:Decrypt", key_arn, context) == "allowed"


def create_key(spec: dict) -> dict:
    """`/_sim/kms-key`: a customer-managed key in `account` and `region` with `policy` (as a
    template's `AWS::KMS::Key` makes it); answers its ARN."""
    key = _kms(str(spec["account"]), str(spec["region"])).create_key(
        policy=json.dumps(spec["policy"]),
        key_usage="ENCRYPT_DECRYPT",
        key_spec="SYMMETRIC_DEFAULT",
        description=str(spec.get("description", "")),
        tags=None,
    )
    return {"arn": key.arn}


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "a snapshot of an encrypted volume carries the volume's KMS key (moto: none)",
    "sharing a snapshot encrypted with the default EBS key is refused, OperationNotPermitted (moto: shared)",
    "a copy of another account's encrypted snapshot ends in error, 'Given key ID is not accessible', unless the key's policy and the copying role's policies let it use the key (moto: any key)",
)


def install() -> None:
    EBSBackend.create_snapshot = _create_snapshot
    EBSBackend.add_create_volume_permission = _add_create_volume_permission
