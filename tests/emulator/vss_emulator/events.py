"""EventBridge as SSM feeds it: each invocation that ends publishes SSM's
`EC2 Command Invocation Status-change Notification` on the account's default bus, where moto's
own rules match it and deliver it to their targets (an SQS queue, as the template's
`CompletionEventsRule`). moto publishes no SSM events."""

from __future__ import annotations

import json
import sys
from typing import Any

DETAIL_TYPE = "EC2 Command Invocation Status-change Notification"


def publish_ended(invocations: list[Any]) -> None:
    """Publishes one event per invocation that became final (its own status, as SSM's event
    carries it: command-id, document-name, instance-id, requested-date-time, status)."""
    if not invocations:
        return
    from moto.events.models import events_backends

    from .model import iso

    for inv in invocations:
        detail = {
            "command-id": inv.command_id,
            "document-name": inv.document_name,
            "instance-id": inv.instance_id,
            "requested-date-time": iso(inv.started),
            "status": inv.status,
        }
        try:
            events_backends[inv.account_id][inv.region].put_events([{
                "Source": "aws.ssm",
                "DetailType": DETAIL_TYPE,
                "Detail": json.dumps(detail),
                "Resources": [f"arn:aws:ec2:{inv.region}:{inv.account_id}:instance/{inv.instance_id}"],
            }])
        except Exception as err:  # noqa: BLE001 - delivery is best effort, as AWS says
            print(f"event not published for {inv.instance_id}: {err!r}", file=sys.stderr, flush=True)


def events_rule(spec: dict[str, Any]) -> dict[str, Any]:
    """What CloudFormation makes of the template's `CompletionEventsRule`: a rule named `name`
    on the default bus of `region` with `pattern`, and one target, the queue `target`."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.events.models import events_backends

    backend = events_backends[spec.get("account", DEFAULT_ACCOUNT_ID)][spec["region"]]
    rule = backend.put_rule(spec["name"], event_pattern=json.dumps(spec["pattern"]), state="ENABLED")
    backend.put_targets(spec["name"], None, [{"Id": "TrackingQueue", "Arn": spec["target"]}])
    return {"arn": rule.arn}


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "SSM publishes its command invocation status-change events to EventBridge (moto: none)",
    "A rule's target receives the whole event, `account` included (moto: its default input "
    "template leaves `account` out)",
)


def install() -> None:
    """`model.Simulation.tick` publishes what ended; the default input template gets the
    event's `account` back."""
    from moto.events.utils import EventTemplateParser

    EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE = (
        '{"version": "0", "id": "<id>", "detail-type": "<detail-type>", "source": "<source>", '
        '"account": "<account>", "time": <time>, "region": "<region>", '
        '"resources": <resources>, "detail": <detail>}'
    )
