"""Bulk, idempotent load of one night: snapshots inserted per run, time series upserted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, delete, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from finops.collection import Collection, CostFile, CostFileError, Row
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
    conn: Connection, table: Table, rows: Iterable[Row], accumulate: Sequence[str] = ()
) -> int:
    """Insert, or update the non-key columns where the primary key already exists (adding to
    the stored value for the columns in `accumulate`; rows of one key in one call add up there
    and the later row wins elsewhere); returns the number of rows given. Rows of a time series
    name their resource by `resource_id`; its key is stored (see finops.store.series). Chunks
    go in key order (SQLite's index pages stay in cache) as one DBAPI executemany (SQLite) or
    COPY (PostgreSQL): SQLAlchemy's per-row parameter handling cost as much as the database's
    own work. Values pass through the columns' own bind processors, so they are stored exactly
    as SQLAlchemy stores them."""
    write = {"postgresql": _copy_upsert, "sqlite": _executemany_upsert}.get(conn.dialect.name)
    if write is None:
        raise NotImplementedError(f"upsert is not written for {conn.dialect.name}")
    keys = [c.name for c in table.primary_key.columns]
    key = itemgetter(*(_given(k) for k in keys))
    count = 0

    def in_key_order() -> Iterator[list[Row]]:
        nonlocal count
        for chunk in _chunks(rows):
            chunk.sort(key=key)
            count += len(chunk)
            yield chunk

    write(conn, table, keys, accumulate, in_key_order())
    return count


def _given(column: str) -> str:
    """The name a row gives the column's value by."""
    return RESOURCE_ID if column == RESOURCE_KEY else column


def _executemany_upsert(
    conn: Connection,
    table: Table,
    keys: list[str],
    accumulate: Sequence[str],
    chunks: Iterator[list[Row]],
) -> None:
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
    # a time series' resource keys are looked up in Python: by a subquery a row, SQLite's
    # insert took a third longer
    resource_keys = ResourceKeys()
    values = _converter(conn, table, compiled.positiontup, resource_keys.known.__getitem__)
    sql, keyed = str(compiled), RESOURCE_KEY in table.c
    for chunk in chunks:
        if keyed:
            resource_keys.cover(conn, {row[RESOURCE_ID] for row in chunk})
        # one key twice in one chunk: the second updates the first, as a second statement would
        conn.exec_driver_sql(sql, [values(row) for row in chunk])


def _converter(
    conn: Connection,
    table: Table,
    names: Sequence[str],
    key_of: Callable[[str], int] | None = None,
) -> Callable[[Row], tuple]:
    """A row's values for the columns `names`, as SQLAlchemy's bind processors give them; for
    a resource key, `key_of` the row's resource id (or the id itself without `key_of`)."""
    dialect = conn.dialect

    def processor(name: str) -> Callable[[Any], Any] | None:
        if name == RESOURCE_KEY:
            return key_of
        fn = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        return fn and _faster(table.c[name].type.python_type, fn)

    processors = [(i, fn) for i, name in enumerate(names) if (fn := processor(name)) is not None]
    given = [_given(name) for name in names]
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


def _faster(kind: type, process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLite's date and datetime bind processors build each ISO 8601 string in Python, the
    larger part of converting a night's rows; isoformat writes the same string in C. Checked
    on a probe value, and used only for naive values of exactly that type."""
    iso = _ISO.get(kind)
    if iso is None or process(_PROBES[kind]) != iso(_PROBES[kind]):
        return process

    def convert(value: Any) -> Any:
        if type(value) is kind and (kind is date or value.tzinfo is None):
            return iso(value)
        return process(value)

    return convert


def _copy_upsert(
    conn: Connection,
    table: Table,
    keys: list[str],
    accumulate: Sequence[str],
    chunks: Iterator[list[Row]],
) -> None:
    """COPY each chunk into a temporary table, then one INSERT .. SELECT from it: a plain one
    while no row's key is stored yet (the Query API's windows were deleted first, so a night's
    cost rows are new), else, from the first chunk that meets a stored key, ON CONFLICT, whose
    check before each row cost the server 40 % more. Rows of one key are merged in Python
    first: ON CONFLICT can't update a row twice, and merging them in the INSERT (GROUP BY with
    array_agg) cost PostgreSQL 60 % more time than the insert. While PostgreSQL inserts a chunk,
    a thread reads, sorts and converts the next (a 10k-VM night's load: 41-42 s -> 31-37 s);
    started before the COPY, it only contended for the GIL and was slower. A time series'
    rows are staged with their resource ids, and PostgreSQL finds or adds their keys."""
    names = [c.name for c in table.columns]
    given = [_given(n) for n in names]
    stage = f"stage_{table.name}"
    values, key = _converter(conn, table, names), itemgetter(*(_given(k) for k in keys))
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

    def next_prepared() -> list[tuple] | None:
        chunk = next(chunks, None)
        return None if chunk is None else [values(r) for r in _one_per_key(chunk, key, accumulate)]

    with ThreadPoolExecutor(1, thread_name_prefix="finops-load") as pool:
        prepared = next_prepared()
        while prepared is not None:
            # without the table's constraints: a bad row fails in the INSERT, as SQLAlchemy
            # reports it (created here, not once: a rolled-back savepoint drops it)
            conn.exec_driver_sql(create_stage)
            conn.exec_driver_sql(f"TRUNCATE {stage}")
            cursor = conn.connection.driver_connection.cursor()
            with cursor.copy(f"COPY {stage} ({', '.join(given)}) FROM STDIN") as copy:
                for row in prepared:
                    copy.write_row(row)
            following = pool.submit(next_prepared)
            if RESOURCE_KEY in names:
                conn.exec_driver_sql(new_resources)
            if stored_keys_met or not _inserted(conn, insert):
                stored_keys_met = True
                conn.exec_driver_sql(merge)
            prepared = following.result()


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
    counts = {
        "subscriptions": insert(conn, schema.subscriptions, night.subscriptions, run_id=run_id),
        "vms": insert(conn, schema.vms, night.vms, run_id=run_id),
        "vm_sizes": insert(conn, schema.vm_sizes, night.vm_sizes, run_id=run_id),
        "quotas": insert(conn, schema.quotas, night.quotas, run_id=run_id),
        "schedules": insert(conn, schema.schedules, night.schedules, run_id=run_id),
        "resource_groups": insert(
            conn, schema.resource_groups, night.resource_groups, run_id=run_id
        ),
        "ai_deployments": insert(conn, schema.ai_deployments, night.ai_deployments, run_id=run_id),
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
        "metrics": upsert(
            conn,
            schema.metrics_hourly,
            # collected rows are naive UTC already; rows given by hand may not be
            (
                m if m["ts"].tzinfo is None else {**m, "ts": utc_naive(m["ts"])}
                for m in night.metrics
            ),
        ),
        "costs": replace_query_costs(conn, night.cost_windows, night.costs),
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
    conn: Connection, windows: Iterable[tuple[str, str, date, date]], rows: Iterable[Row]
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
    return upsert(conn, costs, rows, accumulate=("cost",))


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
        "loaded_at": utc_naive(datetime.now(UTC)),
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
