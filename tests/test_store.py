"""The store on SQLite and on a real PostgreSQL server: migrations, load, atomic night."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from finops.collection import Collection
from finops.config import load_settings
from finops.pipeline import start_run, store_night
from finops.store import schema, series
from finops.store.db import engine_for, safe_url, upgrade

RID = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1"
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _cost_row(
    day: date,
    subscription: str = "s",
    cost_type: str = "ActualCost",
    cost: str = "12.345678",
) -> dict:
    """One Query API cost row of the subscription's VM (resource group rg)."""
    return {
        "source": "query",
        "file_id": 0,
        "subscription_id": subscription,
        "resource_group": "rg",
        "resource_id": RID.replace("/subscriptions/s/", f"/subscriptions/{subscription}/"),
        "usage_date": day,
        "cost_type": cost_type,
        "meter_category": "Virtual Machines",
        "cost": Decimal(cost),
        "currency": "USD",
    }


def _night(cost: str = "12.345678") -> Collection:
    vm = {
        "resource_id": RID,
        "name": "vm1",
        "subscription_id": "s",
        "resource_group": "rg",
        "location": "eastus",
        "size": "Standard_D4s_v5",
        "power_state": "running",
        "os_type": "Linux",
        "priority": "Regular",
        "tags": {"owner": "ops"},
    }
    return Collection(
        metrics_start=NOW - timedelta(days=7),
        metrics_end=NOW,
        cost_start=date(2026, 10, 21),
        cost_end=date(2026, 11, 20),
        subscriptions=[{"subscription_id": "s", "display_name": "sub"}],
        vms=[vm],
        metrics=[
            {
                "resource_id": RID,
                "metric": "cpu",
                "ts": NOW - timedelta(hours=h),
                "average": 10.0 + h,
                "maximum": 20.0,
            }
            for h in range(1, 25)
        ],
        costs=[_cost_row(date(2026, 11, d), cost=cost) for d in range(1, 20)],
        cost_windows=[("s", "ActualCost", date(2026, 11, 1), date(2026, 11, 20))],
    )


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_migrations_build_exactly_the_schema(db_url):
    engine = engine_for(db_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    with engine.connect() as conn:
        options = {"include_object": schema.compared_on(conn.dialect.name)}
        diff = compare_metadata(MigrationContext.configure(conn, opts=options), schema.metadata)
    assert diff == []


@contextmanager
def _at_revision(engine, revision: str, down: bool = False):
    """A transaction on a store migrated up (or `down`) to `revision` only."""
    from alembic import command
    from alembic.config import Config

    from finops.store.db import SQL_DIR

    config = Config()
    config.set_main_option("script_location", str(SQL_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)
        yield conn


# rows as revisions 0003 to 0010 stored them, by resource id
COST_BY_ID = (
    "INSERT INTO costs_daily (source, file_id, resource_id, usage_date, cost_type, "
    "meter_category, subscription_id, resource_group, cost, currency) VALUES "
    "('query', 0, :rid, :day, 'ActualCost', 'Virtual Machines', 's', 'rg', 1.5, 'EUR')"
)
HOUR_BY_ID = (
    "INSERT INTO metrics_hourly (resource_id, metric, ts, average) VALUES (:rid, 'cpu', :ts, 3.5)"
)


def test_migration_0003_keeps_the_cost_history(db_url):
    """0003 rebuilds costs_daily with its source and scope: the rows stored before stay."""
    from sqlalchemy import text

    engine = engine_for(db_url)
    with _at_revision(engine, "0002") as conn:
        conn.execute(
            text(
                "INSERT INTO costs_daily (resource_id, usage_date, cost_type, meter_category, "
                "cost, currency) VALUES (:rid, :day, 'ActualCost', 'Virtual Machines', "
                "12.345678, 'EUR')"
            ),
            [{"rid": RID, "day": date(2026, 11, d)} for d in (1, 2)],
        )
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(schema.costs_daily).order_by("usage_date")).all()
    assert [(r.source, r.file_id, r.usage_date, r.currency) for r in rows] == [
        ("query", 0, date(2026, 11, 1), "EUR"),
        ("query", 0, date(2026, 11, 2), "EUR"),
    ]
    assert {(r.subscription_id, r.resource_group) for r in rows} == {(RID.split("/")[2], "rg")}
    assert Decimal(str(rows[0].cost)) == Decimal("12.345678")
    engine.dispose()


def test_migration_0007_keeps_the_time_series(db_url):
    """0007 rebuilds costs_daily and metrics_hourly WITHOUT ROWID on SQLite: rows and indexes
    stay (PostgreSQL is left as it is)."""
    from sqlalchemy import text

    engine = engine_for(db_url)
    with _at_revision(engine, "0006") as conn:
        conn.execute(text(COST_BY_ID), {"rid": RID, "day": date(2026, 11, 1)})
        conn.execute(text(HOUR_BY_ID), {"rid": RID, "ts": datetime(2026, 11, 1, 5)})
    upgrade(engine)
    with engine.connect() as conn:
        costs = series.by_resource_id(schema.costs_daily)
        assert [(r.resource_id, r.cost_type) for r in conn.execute(costs)] == [(RID, "ActualCost")]
        assert [r.average for r in conn.execute(select(series.metrics()))] == [3.5]
        if engine.dialect.name == "sqlite":
            tables = dict(
                conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                ).all()
            )
            assert tables["costs_daily"].strip().endswith("WITHOUT ROWID")
            assert tables["metrics_hourly"].strip().endswith("WITHOUT ROWID")
            indexes = {
                name
                for (name,) in conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'index'"
                )
            }
            on_sqlite = {
                ix.name
                for ix in schema.costs_daily.indexes
                if ix.info.get("dialect", "sqlite") == "sqlite"
            }
            assert on_sqlite <= indexes
    engine.dispose()


def test_migration_0011_keys_the_time_series_by_resource_and_back(db_url):
    """0011 gives each resource id of both time series one key; downgraded, the ids are back."""
    from sqlalchemy import text

    other = RID.replace("vm1", "vm2")
    engine = engine_for(db_url)
    with _at_revision(engine, "0010") as conn:
        conn.execute(text(COST_BY_ID), [{"rid": r, "day": date(2026, 11, 1)} for r in (RID, other)])
        conn.execute(
            text(HOUR_BY_ID), [{"rid": RID, "ts": datetime(2026, 11, 1, h)} for h in range(3)]
        )
    upgrade(engine)
    with engine.connect() as conn:
        keys = dict(
            conn.execute(select(schema.resources.c.resource_id, schema.resources.c.id)).all()
        )
        assert sorted(keys) == [RID, other]
        costs = series.by_resource_id(schema.costs_daily)
        assert sorted(r.resource_id for r in conn.execute(costs)) == [RID, other]
        stored = conn.execute(select(schema.metrics_hourly.c.resource_key)).scalars().all()
        assert stored == [keys[RID]] * 3
    with _at_revision(engine, "0010", down=True) as conn:
        rows = conn.exec_driver_sql("SELECT resource_id, cost FROM costs_daily").all()
        assert sorted((rid, float(cost)) for rid, cost in rows) == [(RID, 1.5), (other, 1.5)]
        hours = conn.exec_driver_sql("SELECT resource_id FROM metrics_hourly").scalars().all()
        assert hours == [RID] * 3
    engine.dispose()


def test_nights_keep_history_and_time_series_upsert(db_url):
    engine = engine_for(db_url)
    upgrade(engine)
    settings = load_settings()
    for cost in ("12.345678", "12.500001"):  # the second night sees a settled, higher cost
        run_id = start_run(engine, "test", NOW)
        store_night(engine, run_id, _night(cost), settings)
    assert _count(engine, schema.runs) == 2
    assert _count(engine, schema.vms) == 2  # one snapshot per night
    assert _count(engine, schema.metrics_hourly) == 24  # upserted, not duplicated
    assert _count(engine, schema.costs_daily) == 19
    with engine.connect() as conn:
        costs = conn.execute(select(schema.costs_daily.c.cost)).scalars().all()
        statuses = conn.execute(select(schema.runs.c.status)).scalars().all()
    assert {Decimal(str(c)) for c in costs} == {Decimal("12.500001")}
    assert statuses == ["succeeded", "succeeded"]


def test_a_failing_load_leaves_nothing_of_the_night(db_url):
    engine = engine_for(db_url)
    upgrade(engine)
    night = _night()
    broken = {**next(iter(night.costs)), "usage_date": date(2026, 11, 20), "cost": None}
    night.costs.append(broken)  # the last table loaded breaks a NOT NULL constraint
    run_id = start_run(engine, "test", NOW)
    with pytest.raises(IntegrityError):
        store_night(engine, run_id, night, load_settings())
    for table in (
        schema.vms,
        schema.subscriptions,
        schema.metrics_hourly,
        schema.costs_daily,
        schema.findings,
    ):
        assert _count(engine, table) == 0, table.name


def test_safe_url_hides_the_password():
    url = "postgresql+psycopg://finops:s3cr3t-canary@db.example:5432/finops"
    assert "s3cr3t-canary" not in safe_url(url)
    assert "db.example" in safe_url(url)


def test_query_windows_replace_only_their_own_subscriptions_days(db_url):
    """Windows of one cost type and span are deleted in one statement over their
    subscriptions; a subscription with another window keeps the days outside it."""
    from finops.store.load import replace_query_costs, upsert

    engine = engine_for(db_url)
    upgrade(engine)
    day = date(2026, 11, 20)

    stored = [
        _cost_row(day - timedelta(days=d), sub) for sub in ("a", "b", "c") for d in (1, 10)
    ] + [_cost_row(day - timedelta(days=1), "a", "AmortizedCost")]
    windows = [
        ("a", "ActualCost", day - timedelta(days=3), day),
        ("b", "ActualCost", day - timedelta(days=3), day),
        ("c", "ActualCost", day - timedelta(days=30), day),
    ]
    with engine.begin() as conn:
        upsert(conn, schema.costs_daily, stored)
        replace_query_costs(conn, windows, [])
        c = schema.costs_daily
        left = conn.execute(select(c.c.subscription_id, c.c.usage_date, c.c.cost_type)).all()
    engine.dispose()
    assert sorted(left) == [
        ("a", day - timedelta(days=10), "ActualCost"),
        ("a", day - timedelta(days=1), "AmortizedCost"),
        ("b", day - timedelta(days=10), "ActualCost"),
    ]


def test_bulk_upsert_stores_values_as_sqlalchemy_does(db_url):
    """The bulk load writes its own parameters (ISO strings in C on SQLite, a row missing a
    column as NULL): what it stores must read back exactly as rows inserted by SQLAlchemy."""
    from finops.store.load import upsert

    engine = engine_for(db_url)
    upgrade(engine)
    m = schema.metrics_hourly
    moments = [
        datetime(2026, 11, 20, 4, 5, 6, 7),
        datetime(2026, 11, 20, 5),
        datetime(987, 6, 5, 4, 3, 2),
    ]
    rows = [
        {"resource_id": "vm", "metric": "cpu", "ts": ts, "average": 1.5, "maximum": 2}
        for ts in moments
    ]
    with engine.begin() as conn:
        upsert(conn, m, rows)
        twin = conn.execute(
            schema.resources.insert().values(resource_id="twin")
        ).inserted_primary_key[0]
        conn.execute(m.insert(), [{**r, "resource_key": twin, "total": None} for r in rows])
        raw = conn.exec_driver_sql(
            "SELECT r.resource_id, ts, average, maximum, total FROM metrics_hourly "
            "JOIN resources r ON r.id = resource_key"
        ).all()
        stored = conn.execute(select(series.metrics()).order_by("ts")).all()
    engine.dispose()
    assert sorted(r[1:] for r in raw if r[0] == "vm") == sorted(
        r[1:] for r in raw if r[0] == "twin"
    )
    assert [r.ts for r in stored if r.resource_id == "vm"] == sorted(moments)


@pytest.mark.parametrize("stored", [Decimal(100), None], ids=["onto-stored", "new"])
def test_bulk_upsert_adds_up_rows_of_one_key_within_and_across_chunks(db_url, monkeypatch, stored):
    """Rows of one key in one load (ids on different pages) add up their cost onto what is
    stored, and the later row's other values win, whichever chunk each lands in. PostgreSQL
    inserts new keys by a plain INSERT and merges from the first chunk that meets a stored one."""
    from sqlalchemy import event

    from finops.store import load

    engine = engine_for(db_url)
    upgrade(engine)
    day = date(2026, 11, 20)
    monkeypatch.setattr(load, "CHUNK", 3)
    rows = [
        _cost_row(day, cost="1.5"),
        {**_cost_row(day, cost="2.25"), "resource_group": "second"},
        _cost_row(day - timedelta(days=1), cost="4"),
        {**_cost_row(day, cost="0.125"), "resource_group": "third"},  # the next chunk
        _cost_row(day - timedelta(days=2), cost="8"),
        {**_cost_row(day, cost="0.0625"), "resource_group": "last"},
    ]
    inserts = []
    with engine.begin() as conn:
        if stored is not None:
            load.upsert(conn, schema.costs_daily, [_cost_row(day, cost=str(stored))])
        event.listen(
            conn,
            "before_cursor_execute",
            lambda *args: (
                inserts.append(args[2]) if args[2].startswith("INSERT INTO costs_daily") else None
            ),
        )
        assert load.upsert(conn, schema.costs_daily, rows, accumulate=("cost",)) == 6
        c = schema.costs_daily
        found = conn.execute(
            select(c.c.usage_date, c.c.cost, c.c.resource_group).order_by(c.c.usage_date)
        ).all()
    engine.dispose()
    assert [(d, Decimal(str(cost)), rg) for d, cost, rg in found] == [
        (day - timedelta(days=2), Decimal(8), "rg"),
        (day - timedelta(days=1), Decimal(4), "rg"),
        (day, (stored or 0) + Decimal("3.9375"), "last"),
    ]
    if engine.dialect.name == "postgresql":
        merged = ["ON CONFLICT" in sql for sql in inserts]
        # a plain INSERT until one meets a stored key (rolled back, that chunk merged), then
        # merges: onto the stored row at once, else at the chunk meeting the first chunk's key
        assert merged == ([False, True, True] if stored else [False, False, True])


def test_each_resource_keeps_one_key_when_ids_are_forgotten_between_chunks(db_url, monkeypatch):
    """The load remembers a bounded number of ids: one it forgot is found again, not added
    twice, and every row reads back under its own id."""
    from finops.store import load

    engine = engine_for(db_url)
    upgrade(engine)
    monkeypatch.setattr(load, "CHUNK", 3)
    monkeypatch.setattr(series, "KEPT", 4)
    day = date(2026, 11, 20)
    ids = [RID.replace("vm1", f"vm{i}") for i in range(10)]
    rows = [
        {**_cost_row(day - timedelta(days=d), cost="1"), "resource_id": rid}
        for d in range(2)
        for rid in ids
    ]
    with engine.begin() as conn:
        assert load.upsert(conn, schema.costs_daily, rows, accumulate=("cost",)) == 20
        assert load.upsert(conn, schema.costs_daily, rows[::-3], accumulate=("cost",)) == 7
    costs = series.by_resource_id(schema.costs_daily).subquery()
    with engine.connect() as conn:
        assert _count(engine, schema.resources) == 10
        stored = conn.execute(select(costs.c.resource_id, costs.c.usage_date, costs.c.cost)).all()
    engine.dispose()
    again = {(r["resource_id"], r["usage_date"]) for r in rows[::-3]}
    assert sorted((rid, d, Decimal(str(c))) for rid, d, c in stored) == sorted(
        (
            r["resource_id"],
            r["usage_date"],
            Decimal(2 if (r["resource_id"], r["usage_date"]) in again else 1),
        )
        for r in rows
    )


def _small_chunks(monkeypatch, rows: int, pickled: int) -> None:
    """The load's chunks of `rows` rows, spools pickled every `pickled` rows, and every spool
    large enough for the helper process."""
    from finops import collection
    from finops.store import load

    monkeypatch.setattr(load, "CHUNK", rows)
    monkeypatch.setattr(load, "PARALLEL_FROM", 1)
    monkeypatch.setattr(load, "PICKLES_PER_CHUNK", rows // pickled)
    monkeypatch.setattr(collection, "CHUNK", pickled)


@pytest.mark.parametrize("helper", [False, True], ids=["here", "helper-process"])
def test_a_bad_row_fails_the_upsert_from_any_chunk(db_url, monkeypatch, helper):
    """Chunks are sorted and converted ahead of the database, in a helper process for a large
    spool: an error there reaches the caller (and the night's transaction)."""
    from finops import collection
    from finops.store import load

    engine = engine_for(db_url)
    upgrade(engine)
    _small_chunks(monkeypatch, rows=2, pickled=2)
    day = date(2026, 11, 20)
    rows = [_cost_row(day - timedelta(days=d)) for d in range(5)]
    del rows[3]["usage_date"]  # in the second chunk
    spool = collection.Spool(rows)
    with (
        load.helper_for(spool) as pool,
        pytest.raises(KeyError, match="usage_date"),
        engine.begin() as conn,
    ):
        load.upsert(conn, schema.costs_daily, spool, ("cost",), pool if helper else None)
    assert _count(engine, schema.costs_daily) == 0
    engine.dispose()


def test_a_helper_process_stores_what_the_job_itself_would(db_url, monkeypatch):
    """A large spool's chunks are prepared in a helper process: the same rows are stored as
    when the job prepares them itself (cost rows of one key added up across chunks and pages,
    hours given with a time zone stored as naive UTC)."""
    from finops import collection
    from finops.store import load

    engine = engine_for(db_url)
    upgrade(engine)
    _small_chunks(monkeypatch, rows=6, pickled=3)
    day = date(2026, 11, 20)
    ids = [RID.replace("vm1", f"vm{i}") for i in range(4)]
    costs = [
        {**_cost_row(day - timedelta(days=d % 3), cost=f"{d}.5"), "resource_id": rid}
        for d in range(5)
        for rid in ids
    ]
    hours = [NOW - timedelta(hours=h) for h in range(6)]
    metrics = [
        {
            "resource_id": rid,
            "metric": "cpu",
            "ts": hour,  # with a time zone: stored as naive UTC
            "average": float(i),
            "maximum": 2.0 * i,
        }
        for i, (rid, hour) in enumerate((rid, hour) for rid in ids for hour in hours)
    ]
    stored = []
    with load.helper_for(collection.Spool(costs)) as pool:
        submitted = []

        class Counted:
            def submit(self, *task):
                submitted.append(task)
                return pool.submit(*task)

        for helper in (None, Counted()):
            with engine.connect() as conn, conn.begin() as transaction:
                given = load.upsert(
                    conn, schema.costs_daily, collection.Spool(costs), ("cost",), helper
                )
                given += load.upsert(
                    conn, schema.metrics_hourly, collection.Spool(metrics), helper=helper
                )
                assert given == len(costs) + len(metrics)
                tables = (
                    series.by_resource_id(schema.costs_daily).subquery(),
                    series.metrics(),
                )
                # keys may differ between the two loads (a rolled-back sequence moves on)
                stored.append(
                    [
                        sorted(
                            conn.execute(
                                select(*(c for c in t.c if c.name != "resource_key"))
                            ).all()
                        )
                        for t in tables
                    ]
                )
                transaction.rollback()
    engine.dispose()
    assert len(submitted) > 2  # both tables, more than one chunk each
    here, helped = stored
    assert here == helped
    assert len(here[0]) == 12 and len(here[1]) == 24  # 4 VMs x 3 days; 4 VMs x 6 hours
    assert {row.ts for row in here[1]} == {hour.replace(tzinfo=None) for hour in hours}


def test_a_killed_job_leaves_no_helper_process_behind(tmp_path):
    """A night killed during its load (a cron timeout, SIGKILL) takes the load's helper process
    with it, instead of leaving it waiting for work forever."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time
    from pathlib import Path

    job = tmp_path / "job.py"
    job.write_text(
        textwrap.dedent(
            """
            import os, signal
            from finops.collection import Spool
            from finops.store import load

            if __name__ == "__main__":
                load.PARALLEL_FROM = 1
                with load.helper_for(Spool([{"i": 1}])) as pool:
                    print(pool.submit(os.getpid).result(), flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    done = subprocess.run([sys.executable, str(job)], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    helper = Path(f"/proc/{int(done.stdout)}/stat")

    def alive() -> bool:
        try:
            return helper.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive()
