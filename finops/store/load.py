"""Bulk, idempotent load of one night: snapshots inserted per run, time series upserted."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import islice
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, delete, select, update
from sqlalchemy.dialects import registry, sqlite
from sqlalchemy.exc import IntegrityError

from finops import clock
from finops.collection import CHUNK as SPOOL_CHUNK
from finops.collection import Collection, CostFile, CostFileError, Row, Spool
from finops.store import schema
from finops.store.costs import ACTUAL, AMORTIZED, FOCUS, LIST, QUERY
from finops.store.series import RESOURCE_ID, RESOURCE_KEY, ResourceKeys

CHUNK = 20_000  # rows per executemany or COPY: fewer round trips, memory still bounded
UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE


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


def upsert(
    conn: Connection,
    table: Table,
    rows: Iterable[Row],
    accumulate: Sequence[str] = (),
    helper: Executor | None = None,
) -> int:
    """Insert, or update the non-key columns where the primary key already exists (adding to
    the stored value for the columns in `accumulate`; rows of one key in one call add up there
    and the later row wins elsewhere); returns the number of rows given. Rows of a time series
    name their resource by `resource_id`; its key is stored (see finops.store.series). Chunks
    go in key order (SQLite's index pages stay in cache) as one DBAPI executemany (SQLite) or
    COPY (PostgreSQL): SQLAlchemy's per-row parameter handling cost as much as the database's
    own work. Values pass through the columns' own bind processors, so they are stored exactly
    as SQLAlchemy stores them. With a `helper` process, a large spool's chunks are sorted and
    converted there while the database writes the chunk before."""
    dialect = conn.dialect
    if dialect.name == "sqlite":
        sql, names = _sqlite_upsert(conn, table, accumulate)
    elif dialect.name == "postgresql":
        names = tuple(c.name for c in table.columns)
    else:
        raise NotImplementedError(f"upsert is not written for {dialect.name}")
    prepare = Prepare(
        f"{dialect.name}.{dialect.driver}",
        table.name,
        names,
        tuple(accumulate),
        merge=dialect.name == "postgresql",
    )
    count = 0

    def prepared() -> Iterator[list[tuple]]:
        nonlocal count
        for given, values in _prepared(prepare, rows, helper):
            count += given
            yield values

    if dialect.name == "sqlite":
        _executemany_upsert(conn, sql, names, prepared())
    else:
        _copy_upsert(conn, table, names, accumulate, prepared())
    return count


def _given(column: str) -> str:
    """The name a row gives the column's value by."""
    return RESOURCE_ID if column == RESOURCE_KEY else column


@dataclass(frozen=True)
class Prepare:
    """Turns a chunk of rows into the statement's parameter tuples, sorted by key, a resource
    key's place still holding the resource id. Picklable, so that a helper process can do it."""

    dialect: str  # name.driver
    table: str
    names: tuple[str, ...]  # the statement's columns, in its order
    accumulate: tuple[str, ...]
    merge: bool  # rows of one key merged into one (PostgreSQL's ON CONFLICT updates a row once)

    def __call__(self, rows: list[Row]) -> list[tuple]:
        table = schema.metadata.tables[self.table]
        key = itemgetter(*(_given(c.name) for c in table.primary_key.columns))
        rows.sort(key=key)
        chosen = _one_per_key(rows, key, self.accumulate) if self.merge else rows
        values = _converter(self)
        return [values(row) for row in chosen]


PARALLEL_FROM = 3 * CHUNK  # rows of a spool: for fewer, the helper process costs more than it saves
PICKLES_PER_CHUNK = CHUNK // SPOOL_CHUNK


def _prepared(
    prepare: Prepare, rows: Iterable[Row], helper: Executor | None
) -> Iterator[tuple[int, list[tuple]]]:
    """(rows given, their parameter tuples) a chunk at a time, prepared in this process or,
    for a large spool, two chunks ahead in the helper's."""
    if helper is None or not isinstance(rows, Spool) or len(rows) < PARALLEL_FROM:
        for chunk in _chunks(rows):
            yield len(chunk), prepare(chunk)
        return
    pickled = rows.pickled()
    groups = iter(lambda: list(islice(pickled, PICKLES_PER_CHUNK)), [])
    waiting = deque(helper.submit(_unpickle_and_prepare, prepare, g) for g in islice(groups, 2))
    while waiting:
        first = waiting.popleft()
        waiting.extend(helper.submit(_unpickle_and_prepare, prepare, g) for g in islice(groups, 1))
        yield first.result()


def _unpickle_and_prepare(prepare: Prepare, pickled: list[bytes]) -> tuple[int, list[tuple]]:
    rows = [row for chunk in pickled for row in pickle.loads(chunk)]
    return len(rows), prepare(rows)


@contextmanager
def helper_for(*spools: Spool) -> Iterator[Executor | None]:
    """A process that sorts and converts the large spools' chunks while the database writes
    (the job's Python work and the database's took turns on one core); None for a small night.
    Started at once, so that it imports while the night's snapshots load. Spawned, it runs the
    main script again as a module: a script that runs a night must do so under
    `if __name__ == "__main__":` (as the `finops` command, the scheduler and Functions do)."""
    if max((len(spool) for spool in spools), default=0) < PARALLEL_FROM:
        yield None
        return
    # spawned, not forked: the job may hold threads (the scheduler's) whose locks a fork copies
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, spawn, _end_with, (os.getpid(),)) as pool:
        pool.submit(int)
        yield pool


def _end_with(job: int) -> None:
    """In the helper: end when the job does. A killed job's helper would otherwise wait for
    work forever (it holds its own queue's other end, so it never reads an end of file)."""

    def watch() -> None:
        while os.getppid() == job:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="finops-end-with-job", daemon=True).start()


def _sqlite_upsert(
    conn: Connection, table: Table, accumulate: Sequence[str]
) -> tuple[str, tuple[str, ...]]:
    """SQLite's upsert statement and the columns of its parameters, in order."""
    keys = [c.name for c in table.primary_key.columns]
    stmt = sqlite.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={
            c.name: c + stmt.excluded[c.name] if c.name in accumulate else stmt.excluded[c.name]
            for c in table.columns
            if c.name not in keys
        },
    )
    compiled = stmt.compile(dialect=conn.dialect, column_keys=[c.name for c in table.columns])
    return str(compiled), tuple(compiled.positiontup)


def _executemany_upsert(
    conn: Connection, sql: str, names: Sequence[str], chunks: Iterator[list[tuple]]
) -> None:
    # a time series' resource keys are looked up in Python: by a subquery a row, SQLite's
    # insert took a third longer
    at = names.index(RESOURCE_KEY) if RESOURCE_KEY in names else None
    resource_keys = ResourceKeys()
    for chunk in chunks:
        if at is not None:
            resource_keys.cover(conn, {values[at] for values in chunk})
            known = resource_keys.known
            chunk = [(*values[:at], known[values[at]], *values[at + 1 :]) for values in chunk]
        # one key twice in one chunk: the second updates the first, as a second statement would
        conn.exec_driver_sql(sql, chunk)


@lru_cache(maxsize=64)
def _converter(prepare: Prepare) -> Callable[[Row], tuple]:
    """A row's values for the columns `prepare.names`, as SQLAlchemy's bind processors give
    them (a resource key's place holds the row's resource id)."""
    dialect = registry.load(prepare.dialect)()
    table = schema.metadata.tables[prepare.table]

    def processor(name: str) -> Callable[[Any], Any] | None:
        if name == RESOURCE_KEY:
            return None
        column_type = table.c[name].type
        process = column_type.dialect_impl(dialect).bind_processor(dialect)
        return _bind(column_type.python_type, process)

    processors = [(i, fn) for i, n in enumerate(prepare.names) if (fn := processor(n)) is not None]
    given = [_given(name) for name in prepare.names]
    pick = itemgetter(*given)

    def values(row: Row) -> tuple:
        try:
            found = pick(row)
        except KeyError:
            found = tuple(row.get(name) for name in given)
        if not processors:
            return found
        found = list(found)
        for i, fn in processors:
            found[i] = fn(found[i])
        return tuple(found)

    return values


_PROBES = {date: date(987, 6, 5), datetime: datetime(987, 6, 5, 4, 3, 2, 1)}
_ISO = {date: date.isoformat, datetime: lambda moment: moment.isoformat(" ", "microseconds")}


def _bind(kind: type, process: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    """A column's bind processor as the load applies it. Datetimes are stored as naive UTC (a
    PostgreSQL timestamp without time zone would drop an offset). SQLite's date and datetime
    bind processors build each ISO 8601 string in Python, the larger part of converting a
    night's rows; isoformat writes the same string in C (checked on a probe value)."""
    iso = _ISO.get(kind)
    if iso is not None and (process is None or process(_PROBES[kind]) != iso(_PROBES[kind])):
        iso = None
    if kind is datetime:
        write = iso or process

        def moment(value: Any) -> Any:
            if type(value) is datetime and value.tzinfo is not None:
                value = utc_naive(value)
            if type(value) is datetime and write is not None:
                return write(value)
            return process(value) if process is not None else value

        return moment
    if kind is date and iso is not None:
        return lambda value: iso(value) if type(value) is date else process(value)
    return process


def _copy_upsert(
    conn: Connection,
    table: Table,
    names: Sequence[str],
    accumulate: Sequence[str],
    chunks: Iterator[list[tuple]],
) -> None:
    """COPY each chunk into a temporary table, then one INSERT .. SELECT from it: a plain one
    while no row's key is stored yet (the Query API's windows were deleted first, so a night's
    cost rows are new), else, from the first chunk that meets a stored key, ON CONFLICT, whose
    check before each row cost the server 40 % more. Rows of one key were merged in Python
    (`Prepare`): ON CONFLICT can't update a row twice, and merging them in the INSERT (GROUP
    BY with array_agg) cost PostgreSQL 60 % more time than the insert. A time series' rows are
    staged with their resource ids, and PostgreSQL finds or adds their keys. `names`: the
    chunks' columns, in their order."""
    keys = [c.name for c in table.primary_key.columns]
    given = [_given(n) for n in names]
    stage = f"stage_{table.name}"
    updates = [
        f"{n} = {table.name}.{n} + excluded.{n}" if n in accumulate else f"{n} = excluded.{n}"
        for n in names
        if n not in keys
    ]
    staged = ", ".join("r.id" if n == RESOURCE_KEY else f"s.{n}" for n in names)
    joined = f"{stage} s LEFT JOIN resources r ON r.resource_id = s.resource_id"
    source = joined if RESOURCE_KEY in names else f"{stage} s"
    insert = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {staged} FROM {source}"
    new_resources = (
        f"INSERT INTO resources (resource_id) SELECT DISTINCT s.resource_id FROM {stage} s "
        "WHERE NOT EXISTS (SELECT FROM resources r WHERE r.resource_id = s.resource_id)"
    )
    merge = f"{insert} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}"
    create_stage = (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DROP AS SELECT "
        + ", ".join("r.resource_id" if n == RESOURCE_KEY else f"t.{n}" for n in names)
        + f" FROM {table.name} t JOIN resources r ON false WITH NO DATA"
    )
    stored_keys_met = False
    for chunk in chunks:
        # without the table's constraints: a bad row fails in the INSERT, as SQLAlchemy
        # reports it (created here, not once: a rolled-back savepoint drops it)
        conn.exec_driver_sql(create_stage)
        conn.exec_driver_sql(f"TRUNCATE {stage}")
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY {stage} ({', '.join(given)}) FROM STDIN") as copy:
            for values in chunk:
                copy.write_row(values)
        if RESOURCE_KEY in names:
            conn.exec_driver_sql(new_resources)
        if stored_keys_met or not _inserted(conn, insert):
            stored_keys_met = True
            conn.exec_driver_sql(merge)


def _inserted(conn: Connection, insert: str) -> bool:
    """Run a plain INSERT in a savepoint; False, and nothing inserted, where a row's key is
    already stored."""
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(insert)
    except IntegrityError as e:
        if getattr(e.orig, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
        return False
    return True


def _one_per_key(
    rows: list[Row], key: Callable[[Row], tuple], accumulate: Sequence[str]
) -> Iterable[Row]:
    """Rows sorted by key, those of one key merged as SQLite's upsert merges them."""
    last, last_key = None, None
    for row in rows:
        row_key = key(row)
        if row_key == last_key:
            row = {**last, **row, **{n: _add(last[n], row[n]) for n in accumulate}}
        elif last is not None:
            yield last
        last, last_key = row, row_key
    if last is not None:
        yield last


def _add(stored: Any, new: Any) -> Any:
    return None if stored is None or new is None else stored + new  # as SQL adds NULL


def load_night(conn: Connection, run_id: int, night: Collection) -> dict[str, int]:
    """Write the whole collection inside the caller's transaction; returns row counts."""
    with helper_for(night.metrics, night.costs) as helper:
        counts = {
            "subscriptions": insert(conn, schema.subscriptions, night.subscriptions, run_id=run_id),
            "vms": insert(conn, schema.vms, night.vms, run_id=run_id),
            "vm_sizes": insert(conn, schema.vm_sizes, night.vm_sizes, run_id=run_id),
            "quotas": insert(conn, schema.quotas, night.quotas, run_id=run_id),
            "schedules": insert(conn, schema.schedules, night.schedules, run_id=run_id),
            "resource_groups": insert(
                conn, schema.resource_groups, night.resource_groups, run_id=run_id
            ),
            "ai_deployments": insert(
                conn, schema.ai_deployments, night.ai_deployments, run_id=run_id
            ),
            "disks": insert(
                conn,
                schema.disks,
                (
                    {**d, "owner_changed": d["owner_changed"] and utc_naive(d["owner_changed"])}
                    for d in night.disks
                ),
                run_id=run_id,
            ),
            "vm_prices": insert(conn, schema.vm_prices, night.vm_prices, run_id=run_id),
            "metrics": upsert(conn, schema.metrics_hourly, night.metrics, helper=helper),
            "costs": replace_query_costs(conn, night.cost_windows, night.costs, helper),
            "cost_files": 0,
            "cost_file_rows": 0,
        }
    for file in night.cost_files:
        try:
            with conn.begin_nested():
                rows = load_cost_file(conn, file, run_id)
        except CostFileError as e:
            failure = {"source": "cost export", "scope": file.location, "error": str(e)}
            night.failures.append(failure)
            continue
        if rows is not None:
            counts["cost_files"] += 1
            counts["cost_file_rows"] += rows
    refresh_statistics(conn)
    return counts


def refresh_statistics(conn: Connection) -> None:
    """Let the planner see what the night loaded before the rules query it (in the same
    transaction). Without this PostgreSQL planned the cost queries for an empty table after a
    bulk COPY: nested loops over 3.7 M index probes, 16 s for one rule's query at 1,000 VMs
    instead of 50 ms. ANALYZE samples a fixed number of rows, so it stays cheap as the store
    grows."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE")


def replace_query_costs(
    conn: Connection,
    windows: Iterable[tuple[str, str, date, date]],
    rows: Iterable[Row],
    helper: Executor | None = None,
) -> int:
    """The Query API's rows replace what the store held for the windows fetched: a cost that
    moved or vanished while it settled does not linger. Rows of one resource, day and meter
    (ids differing in case, on different pages) add up."""
    costs = schema.costs_daily
    # one statement per window over all its subscriptions: the index leads with the day, so a
    # statement per subscription would read the window's days once for each. The days are
    # named one by one: SQLite then seeks the index on all three of its columns, where for a
    # range of days it would rather scan every query row by the primary key
    subscriptions: dict[tuple[str, date, date], list[str]] = defaultdict(list)
    for subscription_id, cost_type, first, last in windows:
        subscriptions[(cost_type, first, last)].append(subscription_id)
    for (cost_type, first, last), ids in subscriptions.items():
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        conn.execute(
            delete(costs).where(
                costs.c.usage_date.in_(days),
                costs.c.source == QUERY,
                costs.c.subscription_id.in_(ids),
                costs.c.cost_type == cost_type,
            )
        )
    return upsert(conn, costs, rows, accumulate=("cost",), helper=helper)


COST_COLUMNS = ((ACTUAL, "billed"), (AMORTIZED, "effective"), (LIST, "list"))


def load_cost_file(conn: Connection, file: CostFile, run_id: int | None) -> int | None:
    """Load one FOCUS export file, streaming; None when it is already loaded unchanged. A
    changed file replaces its earlier rows. CostFileError leaves the caller to roll back."""
    files, costs = schema.cost_files, schema.costs_daily
    known = conn.execute(select(files).where(files.c.location == file.location)).first()
    if known is not None and known.fingerprint == file.fingerprint:
        return None
    entry: dict = {
        "location": file.location,
        "folder": file.folder,
        "fingerprint": file.fingerprint,
        "modified": file.modified,
        "loaded_at": utc_naive(clock.now()),
        "run_id": run_id,
    }
    if known is not None:
        file_id = known.id
        conn.execute(delete(costs).where(costs.c.source == FOCUS, costs.c.file_id == file_id))
    else:
        new = files.insert().values(**entry, rows=0, coverage={})
        file_id = conn.execute(new).inserted_primary_key[0]
    coverage: dict[str, list[date]] = {}
    count = 0
    for chunk in _chunks(file.read()):
        count += len(chunk)
        daily: dict[tuple, Row] = {}
        resources: dict[str, Row] = {}
        for r in chunk:
            for cost_type, column in COST_COLUMNS:
                key = (r["resource_id"], r["usage_date"], cost_type, r["meter_category"])
                if key in daily:
                    daily[key]["cost"] += r[column]
                    continue
                daily[key] = {
                    "source": FOCUS,
                    "file_id": file_id,
                    "resource_id": r["resource_id"],
                    "usage_date": r["usage_date"],
                    "cost_type": cost_type,
                    "meter_category": r["meter_category"],
                    "subscription_id": r["subscription_id"],
                    "resource_group": r["resource_group"],
                    "cost": r[column],
                    "currency": r["currency"],
                }
            seen = resources.get(r["resource_id"])
            if seen is None or seen["last_usage_date"] <= r["usage_date"]:
                resources[r["resource_id"]] = {
                    "resource_id": r["resource_id"],
                    "resource_name": r["resource_name"],
                    "service_name": r["service_name"],
                    "service_category": r["service_category"],
                    "sku_id": r["sku_id"],
                    "tags": r["tags"],
                    "last_usage_date": r["usage_date"],
                }
            span = coverage.setdefault(r["subscription_id"], [r["usage_date"], r["usage_date"]])
            span[0], span[1] = min(span[0], r["usage_date"]), max(span[1], r["usage_date"])
        upsert(conn, costs, daily.values(), accumulate=("cost",))
        upsert(conn, schema.focus_resources, resources.values())
    days = [d for span in coverage.values() for d in span]
    conn.execute(
        update(files)
        .where(files.c.id == file_id)
        .values(
            **entry,
            rows=count,
            first_day=min(days, default=None),
            last_day=max(days, default=None),
            coverage={s: [a.isoformat(), b.isoformat()] for s, (a, b) in coverage.items()},
        )
    )
    _supersede(conn, file_id, file.folder, file.modified)
    return count


def _supersede(conn: Connection, file_id: int, folder: str, modified: datetime) -> None:
    """Exports written without overwriting leave one folder per export run, each holding the
    month to date: where two runs cover the same subscription and day, the newer one counts
    and the older one's rows for those days are dropped."""
    files, costs = schema.cost_files, schema.costs_daily
    this = conn.execute(select(files.c.coverage).where(files.c.id == file_id)).scalar_one()
    for other in conn.execute(
        select(files.c.id, files.c.modified, files.c.coverage).where(files.c.folder != folder)
    ).all():
        if other.modified <= modified:
            older, spans = other.id, this
        else:
            older, spans = file_id, other.coverage
        for subscription_id, (first, last) in spans.items():
            conn.execute(
                delete(costs).where(
                    costs.c.source == FOCUS,
                    costs.c.file_id == older,
                    costs.c.subscription_id == subscription_id,
                    costs.c.usage_date.between(date.fromisoformat(first), date.fromisoformat(last)),
                )
            )
