"""DynamoDB's Query by partition key without moto's walk of the whole table."""

from __future__ import annotations

import copy
from typing import Any

from moto.dynamodb.models.table import Table

_original_query = Table.query


def _query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
    """A Query of the table (not of an index) reads its one partition, as DynamoDB does.

    moto answers it by sorting every item of the table and keeping the partition's: one Query
    per server over a 50,000-item catalog walked the table a thousand times. The query runs
    unchanged on a shallow view of the table that holds only that partition, so its sorting,
    paging, filters and projections are moto's own; nothing is mutated, so concurrent requests
    on the table are unaffected.
    """
    index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
    if index_name or hash_key is None:
        return _original_query(self, hash_key, *args, **kwargs)
    view = copy.copy(self)
    partition = self.items.get(hash_key)  # `get`: the defaultdict grows no empty partition
    view.items = {} if partition is None else {hash_key: partition}
    return _original_query(view, hash_key, *args, **kwargs)


#: Every moto behaviour this module replaces, one line each (what AWS does instead).
REPLACES = (
    "Query of a table reads the partition of its key (moto: sorts every item of the table per Query)",
)


def install() -> None:
    """Patches moto as `REPLACES` lists. Idempotent only in the sense that it is called once."""
    Table.query = _query
