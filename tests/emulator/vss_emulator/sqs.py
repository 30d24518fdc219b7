"""SQS without moto's quadratic SendMessage."""

from __future__ import annotations

import threading
from typing import Any

from moto.sqs.models import Queue as SqsQueue
from moto.sqs.models import SQSBackend

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


_original_sqs_send = SQSBackend.send_message


def _sqs_send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
    _SENDING.on = True
    try:
        return _original_sqs_send(self, *args, **kwargs)
    finally:
        _SENDING.on = False


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "SendMessage reads only the attributes it needs (moto: builds every attribute, counting the queue's messages, per message)",
)


def install() -> None:
    """Patches moto as `REPLACES` lists. Idempotent only in the sense that it is called once."""
    SqsQueue.attributes = property(_queue_attributes)
    SQSBackend.send_message = _sqs_send_message
