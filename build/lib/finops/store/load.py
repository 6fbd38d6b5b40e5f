"""Bulk, idempotent load of one night: snapshots inserted per run, time series upserted."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from finops.collection import Collection, Row
from finops.store import schema

CHUNK = 5000


def utc_naive(moment: datetime) -> datetime:
    """Timestamps are stored as naive UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _chunks(rows: Iterable[Row]) -> Iterable[list[Row]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, CHUNK)):
        yield chunk


def insert(conn: Connection, table: Table, rows: Iterable[Row], **extra: Any) -> int:
    count = 0
    for chunk in _chunks(rows):
        conn.execute(table.insert(), [{**row, **extra} for row in chunk])
        count += len(chunk)
    return count


def upsert(conn: Connection, table: Table, rows: Iterable[Row]) -> int:
    """Insert, or update the non-key columns where the primary key already exists."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(conn.dialect.name)
    if dialect is None:
        raise NotImplementedError(f"upsert is not written for {conn.dialect.name}")
    keys: Sequence[str] = [c.name for c in table.primary_key.columns]
    stmt = dialect.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    count = 0
    for chunk in _chunks(rows):
        conn.execute(stmt, chunk)
        count += len(chunk)
    return count


def load_night(conn: Connection, run_id: int, night: Collection) -> dict[str, int]:
    """Write the whole collection inside the caller's transaction; returns row counts."""
    counts = {
        "subscriptions": insert(conn, schema.subscriptions, night.subscriptions, run_id=run_id),
        "vms": insert(conn, schema.vms, night.vms, run_id=run_id),
        "vm_sizes": insert(conn, schema.vm_sizes, night.vm_sizes, run_id=run_id),
        "quotas": insert(conn, schema.quotas, night.quotas, run_id=run_id),
        "schedules": insert(conn, schema.schedules, night.schedules, run_id=run_id),
        "metrics": upsert(
            conn,
            schema.metrics_hourly,
            ({**m, "ts": utc_naive(m["ts"])} for m in night.metrics),
        ),
        "costs": upsert(conn, schema.costs_daily, night.costs),
    }
    return counts
