"""The local AWS emulator, as a package: moto's server extended to behave like AWS where this
project depends on it (see `server.py` for what and why).

* `model`: the simulated Windows side (`SIM`);
* `ssm`, `ec2`, `iam`, `sqs`: one module per patched service (`accounts`: other accounts'
  roles enforced on EC2; `keys`: KMS keys as EBS uses them across accounts) (`protection`: Snapshot Lock and the
  Recycle Bin; `tiering`: the archive tier; `blocks`: the EBS direct APIs' block lists;
  `events`: SSM's status-change events on EventBridge; `dynamodb`: Query by partition); each
  one's `REPLACES` lists every moto
  behaviour it replaces, and its `install()` applies them;
* `seeding`: earlier nightly runs and time passing;
* `routes`: moto's routes and the `/_sim/...` control API.
"""

from . import accounts, blocks, dynamodb, ec2, events, iam, keys, protection, sqs, ssm, tiering


def install() -> None:
    """Applies every patch, once, before the server starts."""
    for service in (
        ssm, ec2, iam, accounts, keys, protection, sqs, tiering, blocks, events, dynamodb
    ):
        service.install()
