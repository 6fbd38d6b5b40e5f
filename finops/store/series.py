"""The time series tables (costs_daily, metrics_hourly) name their resource by a small integer
key, `resources.id`. Rows are written by resource id (finops.store.load.upsert finds or adds
the keys). `by_resource_id` reads a table with each row's id; `keys` gives the keys to filter
it by."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import Connection, Select, Subquery, Table, insert, select

from finops.store import schema

RESOURCE_KEY, RESOURCE_ID = "resource_key", "resource_id"
KEPT = 50_000  # ids remembered between chunks: enough for a chunk's, memory still flat


def by_resource_id(table: Table) -> Select:
    """The table's rows with their resource id beside the key. Filter them by `keys(...)`:
    on a filter by resource id SQLite read every row and looked its id up."""
    r = schema.resources
    return select(*table.columns, r.c.resource_id).join_from(
        table, r, r.c.id == table.c.resource_key
    )


def by_500(resource_ids: Iterable[str]) -> Iterator[list[str]]:
    """Resource ids in sorted lists of 500, whose keys (`keys`) filter the cost and
    metrics tables a list at a time: memory stays flat, and a list of values reaches each arm
    of `counted()` and seeks its primary key, where SQLite filters by a subquery only after
    reading every stored row of both arms."""
    ordered = sorted(resource_ids)
    for start in range(0, len(ordered), 500):
        yield ordered[start : start + 500]


def keys(conn: Connection, resource_ids: list[str]) -> list[int]:
    """The keys of those of the resource ids the store has seen (lists from `by_500` stay
    well under SQLite's limit of bound values)."""
    r = schema.resources
    return conn.execute(select(r.c.id).where(r.c.resource_id.in_(resource_ids))).scalars().all()


def metrics() -> Subquery:
    """metrics_hourly by resource id."""
    return by_resource_id(schema.metrics_hourly).subquery("metrics")


class ResourceKeys:
    """Each resource id's key, found in or added to `resources`, for SQLite's load (PostgreSQL
    finds the keys of its staged rows itself); `known` holds those of the ids last covered and
    up to KEPT more."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}

    def cover(self, conn: Connection, ids: set[str]) -> None:
        """Make `known` hold each of the ids."""
        known = self.known
        missing = ids - known.keys()
        if missing and len(known) + len(missing) > KEPT:
            known.clear()
            missing = ids
        r = schema.resources
        for batch in by_500(missing):
            found = conn.execute(select(r.c.resource_id, r.c.id).where(r.c.resource_id.in_(batch)))
            known.update(found.all())
            new = [{"resource_id": i} for i in batch if i not in known]
            if new:
                known.update(conn.execute(insert(r).returning(r.c.resource_id, r.c.id), new).all())
