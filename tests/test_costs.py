"""Cost data: the Query API read incrementally with both cost types, FOCUS exports (CSV, gzip
CSV, Parquet; folder and Blob container through Azurite) loaded once each, bad files refused
whole, and the two sources agreeing on the simulated estate."""

from __future__ import annotations

import gzip
import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient
from sqlalchemy import func, select

from finops.azure import focus
from finops.azure.clients import StaticTokenCredential
from finops.collection import CostFileError
from finops.pipeline import query_start
from finops.sim.estate import Estate
from finops.sim.exports import COLUMNS, write_focus_export
from finops.store import schema
from finops.store.db import engine_for, upgrade
from finops.store.load import upsert
from finops.store.series import by_resource_id
from tests.postgres import fresh_pg_database
from tests.test_cli import finops


def totals(engine, source: str, cost_type: str = "ActualCost") -> dict[date, Decimal]:
    c = schema.costs_daily
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.c.usage_date, func.sum(c.c.cost))
            .where(c.c.source == source, c.c.cost_type == cost_type)
            .group_by(c.c.usage_date)
        )
        return {day: Decimal(str(amount)).quantize(Decimal("0.01")) for day, amount in rows}


def store_url(request, backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'finops.db'}"
    return fresh_pg_database(request.getfixturevalue("postgres_server"))


def expected_billed(estate: Estate, first: date) -> dict[date, Decimal]:
    """Each day's billed cost of the estate: its VMs, its AI accounts, its managed disks and 3
    storage accounts (12.50 a day)."""
    expected = {}
    disks = sum(
        d.daily_cost for s in estate.subscriptions for d in estate.disks_in(s.subscription_id)
    )
    day = first
    while day <= estate.now.date():
        vms = sum(estate.daily_cost(vm, day) for vm in estate.vms)
        ai = sum(estate.account_daily_cost(a, day) for a in estate.ai_accounts)
        storage = disks + Decimal("12.5") * len(estate.subscriptions)
        expected[day] = (vms + ai + storage).quantize(Decimal("0.01"))
        day += timedelta(days=1)
    return expected


# -- the Query API ------------------------------------------------------------------------
def test_query_start_fetches_new_days_and_refetches_the_last_ones():
    first_needed = date(2026, 10, 24)
    assert query_start(None, first_needed, 3) == first_needed
    stored = (date(2026, 10, 24), date(2026, 11, 22))
    assert query_start(stored, first_needed, 3) == date(2026, 11, 20)
    assert query_start(stored, first_needed, 0) == date(2026, 11, 23)
    # more history wanted than stored (cost_days raised): fetch it all again
    assert query_start((date(2026, 11, 1), date(2026, 11, 22)), first_needed, 3) == first_needed
    # the job stopped for a while: everything since the last stored days
    assert query_start((date(2026, 10, 1), date(2026, 10, 30)), first_needed, 3) == date(
        2026, 10, 28
    )


def test_second_night_asks_only_for_unsettled_and_new_days(world):
    world.night()
    today = world.estate.now.date()
    first_night = list(world.sim.cost_periods)
    assert {(kind, start, end) for _, kind, start, end in first_night} == {
        (kind, today - timedelta(days=30), today) for kind in ("ActualCost", "AmortizedCost")
    }
    assert len(first_night) == 2 * len(world.estate.subscriptions)
    world.sim.cost_periods.clear()
    world.night()
    assert {(start, end) for _, _, start, end in world.sim.cost_periods} == {
        (today - timedelta(days=2), today)
    }
    # both nights' data is whole: the second night's refetch replaced, not doubled
    engine = world.engine
    assert totals(engine, "query") == totals(engine, "focus") or not totals(engine, "focus")
    c = schema.costs_daily
    with engine.connect() as conn:
        keys = conn.execute(select(func.count()).select_from(c)).scalar_one()
        assert (
            keys
            == conn.execute(select(func.count()).select_from(c.select().subquery())).scalar_one()
        )


def test_refetched_days_replace_what_settled_differently(world):
    world.night()
    today = world.estate.now.date()
    sub = world.estate.subscriptions[0].subscription_id
    gone = f"/subscriptions/{sub}/resourcegroups/x/providers/microsoft.compute/disks/moved"
    c = schema.costs_daily
    with world.engine.begin() as conn:
        for days_ago in (1, 10):  # a charge later moved away; one inside the refetch, one not
            upsert(
                conn,
                c,
                [
                    dict(
                        source="query",
                        file_id=0,
                        resource_id=gone,
                        usage_date=today - timedelta(days=days_ago),
                        cost_type="ActualCost",
                        meter_category="Storage",
                        subscription_id=sub,
                        resource_group="x",
                        cost=Decimal("5"),
                        currency="USD",
                    )
                ],
            )
    world.night()
    stored = by_resource_id(c).subquery()
    with world.engine.connect() as conn:
        left = conn.execute(
            select(stored.c.usage_date).where(stored.c.resource_id == gone)
        ).scalars()
        assert list(left) == [today - timedelta(days=10)]


def test_both_cost_types_are_stored_and_differ_under_a_reservation(world):
    world.night()
    billed, amortized = (
        totals(world.engine, "query"),
        totals(world.engine, "query", "AmortizedCost"),
    )
    day = world.estate.now.date() - timedelta(days=2)
    reserved = [vm for vm in world.estate.vms if vm.reserved is not None]
    assert "train-nd-h100-stopped" in {vm.name for vm in reserved}
    ptus = world.estate.ai_accounts[0]  # under a yearly reservation
    assert ptus.reservation == "yearly-reservation"
    ptu_share = world.estate.account_daily_cost(
        ptus, day, "AmortizedCost"
    ) - world.estate.account_daily_cost(ptus, day)  # its tokens are billed either way
    assert ptu_share > 0
    vm_shares = sum(
        vm.hourly_price * world.estate.billed_hours(vm, day) * vm.reserved for vm in reserved
    )
    shares = vm_shares + ptu_share
    assert abs(amortized[day] - billed[day] - shares) <= Decimal("0.01")  # each rounded


# -- FOCUS exports ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_estate() -> Estate:
    return Estate(seed=11, vms=40)


@pytest.mark.parametrize(
    ("backend", "kind"), [("sqlite", "csv"), ("sqlite", "parquet"), ("postgresql", "csv.gz")]
)
def test_export_files_load_once_and_match_the_money(request, backend, tmp_path, small_estate, kind):
    db_url = store_url(request, backend, tmp_path)
    first, today = small_estate.now.date() - timedelta(days=20), small_estate.now.date()
    paths = write_focus_export(
        small_estate, tmp_path / "exports", first, today - timedelta(days=1), kind=kind
    )
    env = {"FINOPS_DB_URL": db_url}
    done = finops("costs", "import", str(tmp_path / "exports"), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert f"{len(paths)} file(s) loaded" in done.stdout

    engine = engine_for(db_url)
    loaded = totals(engine, "focus")
    # purchases (no resource) left out, the storage account's two meters summed
    assert loaded == {d: v for d, v in expected_billed(small_estate, first).items() if d < today}
    amortized = totals(engine, "focus", "AmortizedCost")
    assert sum(amortized.values()) > sum(loaded.values())  # the reservation's share

    again = finops("costs", "import", str(tmp_path / "exports"), cwd=tmp_path, env=env)
    assert again.returncode == 0 and "0 file(s) loaded" in again.stdout
    assert totals(engine, "focus") == loaded

    # one day more: the month-to-date run rewrites the month holding today, and only that one
    write_focus_export(
        small_estate, tmp_path / "exports", max(first, today.replace(day=1)), kind=kind
    )
    third = finops("costs", "import", str(tmp_path / "exports"), cwd=tmp_path, env=env)
    assert third.returncode == 0 and "1 file(s) loaded" in third.stdout, third.stdout
    reloaded = totals(engine, "focus")
    assert {d: v for d, v in reloaded.items() if d in loaded} == loaded  # replaced, not doubled
    assert max(reloaded) == today
    with engine.connect() as conn:
        tags = conn.execute(
            select(schema.focus_resources.c.tags).where(
                schema.focus_resources.c.resource_name == "train-nd-a100-1"
            )
        ).scalar_one()
        assert tags["owner"] == "dana"
    engine.dispose()


def test_a_newer_export_run_supersedes_an_older_one(sqlite_url, tmp_path, small_estate):
    """Exports written without overwriting leave a folder per run, each month to date."""
    first = small_estate.now.date() - timedelta(days=3)
    older, newer = tmp_path / "run-1", tmp_path / "run-2"
    write_focus_export(small_estate, older, first)
    write_focus_export(small_estate, newer, first)
    env = {"FINOPS_DB_URL": sqlite_url}
    assert finops("costs", "import", str(older), cwd=tmp_path, env=env).returncode == 0
    once = totals(engine_for(sqlite_url), "focus")
    assert finops("costs", "import", str(newer), cwd=tmp_path, env=env).returncode == 0
    assert totals(engine_for(sqlite_url), "focus") == once


def _csv(path: Path, rows: list[dict], columns=COLUMNS, encoding="utf-8") -> Path:
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


GOOD = {
    "ChargePeriodStart": "2026-11-01T00:00:00Z",
    "ChargePeriodEnd": "2026-11-02T00:00:00Z",
    "ResourceId": "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/"
    "virtualMachines/A",
    "ResourceName": "a",
    "ServiceName": "Virtual Machines",
    "ServiceCategory": "Compute",
    "BilledCost": "10.5",
    "EffectiveCost": "10.5",
    "ListCost": "12",
    "BillingCurrency": "EUR",
    "SkuId": "x",
    "x_SkuMeterCategory": "Virtual Machines",
}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: _csv(p / "a.csv", [GOOD], [c for c in COLUMNS if c != "BilledCost"]),
            r"a\.csv: not a FOCUS 1\.x cost export: missing column\(s\) BilledCost",
        ),
        (
            lambda p: _csv(p / "a.csv", [GOOD, GOOD, {**GOOD, "EffectiveCost": "twelve"}]),
            r"a\.csv row 3: EffectiveCost 'twelve' is not a number",
        ),
        (
            lambda p: _csv(
                p / "a.csv", [GOOD, {**GOOD, "ResourceName": "caf\xe9"}], encoding="latin-1"
            ),
            r"a\.csv row 2: not UTF-8 text",
        ),
        (
            lambda p: _csv(p / "a.csv", [{**GOOD, "ChargePeriodStart": "yesterday"}]),
            r"a\.csv row 1: ChargePeriodStart 'yesterday' is not a date and time",
        ),
        (
            lambda p: _csv(p / "a.csv", [{**GOOD, "BillingCurrency": "euro"}]),
            r"a\.csv row 1: BillingCurrency 'EURO' is not a currency code",
        ),
        (
            lambda p: _write(
                p / "a.csv.gz", _half(gzip.compress(_csv(p / "x", [GOOD] * 500).read_bytes()))
            ),
            r"a\.csv\.gz: cannot be read",
        ),
        (
            lambda p: _write(p / "a.parquet", b"PAR1 this is not parquet"),
            r"a\.parquet: not a Parquet file",
        ),
    ],
    ids=[
        "missing-column",
        "bad-number",
        "bad-encoding",
        "bad-date",
        "bad-currency",
        "bad-gzip",
        "not-parquet",
    ],
)
def test_a_bad_file_is_refused_whole_with_one_line(request, tmp_path, make, message):
    # every kind on SQLite; on PostgreSQL too for one (the rollback is the database's)
    backend = "postgresql" if "bad-number" in request.node.name else "sqlite"
    db_url = store_url(request, backend, tmp_path)
    folder = tmp_path / "exports"
    folder.mkdir()
    good = _csv(folder / "0-good.csv", [GOOD])  # loaded first, then rolled back with the bad one
    bad = make(folder)
    assert bad.exists() and good.exists()
    done = finops("costs", "import", str(folder), cwd=tmp_path, env={"FINOPS_DB_URL": db_url})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and lines[-1].startswith("finops: ")
    assert re.search(message, lines[-1]), lines[-1]
    engine = engine_for(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        for table in (schema.costs_daily, schema.cost_files, schema.focus_resources):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 0
    engine.dispose()


def test_a_bad_export_file_leaves_the_night_partial_and_the_rest_loaded(world, tmp_path):
    folder = tmp_path / "exports"
    write_focus_export(world.estate, folder, world.estate.now.date() - timedelta(days=5))
    _csv(folder / "broken.csv", [GOOD, {**GOOD, "BilledCost": "n/a"}])
    world.settings = world.settings.model_copy(
        update={"costs": world.settings.costs.model_copy(update={"exports": [str(folder)]})}
    )
    result = world.night()
    assert result.missing and "broken.csv row 2: BilledCost 'n/a' is not a number" in result.missing
    with world.engine.connect() as conn:
        files = conn.execute(select(schema.cost_files.c.location)).scalars().all()
        status = conn.execute(select(schema.runs.c.status)).scalar_one()
    assert status == "partial" and files and not [f for f in files if "broken" in f]
    assert totals(world.engine, "focus")  # the good files are in


def test_focus_reader_names_the_row_of_a_ragged_line(tmp_path):
    path = tmp_path / "a.csv"
    _csv(path, [GOOD])
    path.write_text(path.read_text() + "1,2,3," + ",".join(["x"] * len(COLUMNS)) + "\n")
    (file,) = focus.find(str(path))
    with pytest.raises(CostFileError, match=r"a\.csv row 2: more fields than the header has"):
        list(file.read())


# -- Blob container (Azurite) -------------------------------------------------------------
def test_exports_in_a_blob_container_load_through_azurite(azurite, tmp_path, small_estate):
    container_url = f"{azurite['url']}/cost-exports"
    container = ContainerClient.from_container_url(
        container_url, credential=StaticTokenCredential(), connection_verify=azurite["ca_file"]
    )
    container.create_container()
    local = tmp_path / "local"
    first = small_estate.now.date() - timedelta(days=6)
    for kind in ("csv.gz", "parquet"):
        for path in write_focus_export(small_estate, local / kind, first, kind=kind):
            name = f"focus/{kind}/{path.relative_to(local / kind).as_posix()}"
            with path.open("rb") as data:
                container.upload_blob(name, data)
    container.upload_blob("focus/csv.gz/manifest.json", b"{}")  # not a data file: ignored
    container.upload_blob("other/unrelated.csv", b"not,an,export\n")  # outside the prefix

    db = f"sqlite:///{tmp_path / 'finops.db'}"
    env = {
        "FINOPS_DB_URL": db,
        "FINOPS_AZURE__CREDENTIAL": "simulated",
        "FINOPS_AZURE__CA_FILE": azurite["ca_file"],
    }
    for kind in ("csv.gz", "parquet"):
        done = finops("costs", "import", f"{container_url}/focus/{kind}", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert "file(s) loaded" in done.stdout and "0 file(s) loaded" not in done.stdout
        with engine_for(db).connect() as conn:
            locations = conn.execute(select(schema.cost_files.c.location)).scalars().all()
        assert all(loc.startswith(f"{container_url}/focus/") for loc in locations)
    # the same money twice: the Parquet run is newer and supersedes the CSV run day by day
    assert totals(engine_for(db), "focus") == expected_billed(small_estate, first)
    again = finops("costs", "import", f"{container_url}/focus", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "0 file(s) loaded" in again.stdout, again.stdout


def test_report_spend_splits_each_subscription_day_into_gpu_and_the_rest(world):
    """The chart data: per subscription and day, GPU VMs against everything else (AI accounts
    included), amortized, equal to what the estate charged for each."""
    from finops.report.build import build

    result = world.night()
    with world.engine.connect() as conn:
        spend = build(conn, result.run_id, world.settings).spend
    estate = world.estate
    days = spend["trend"]["days"]
    assert len(days) == 30 and days[-1] == estate.now.date() - timedelta(days=1)
    names = {s.display_name: s.subscription_id for s in estate.subscriptions}
    assert {row["subscription"] for row in spend["subscriptions"]} == set(names)
    cent = Decimal("0.01")
    for row in spend["subscriptions"]:
        vms = [vm for vm in estate.vms if vm.subscription_id == names[row["subscription"]]]
        for i, day in enumerate(days):
            gpu = sum(estate.daily_cost(vm, day, "AmortizedCost") for vm in vms if vm.is_gpu)
            rest = sum(estate.daily_cost(vm, day, "AmortizedCost") for vm in vms if not vm.is_gpu)
            rest += sum(
                estate.account_daily_cost(a, day, "AmortizedCost")
                for a in estate.accounts_in(names[row["subscription"]])
            )
            rest += sum(d.daily_cost for d in estate.disks_in(names[row["subscription"]]))
            assert row["daily_gpu"][i].quantize(cent) == gpu.quantize(cent), (row, day)
            assert row["daily_rest"][i].quantize(cent) == (rest + Decimal("12.5")).quantize(cent)
        assert row["gpu"] == sum(row["daily_gpu"])
    assert spend["trend"]["gpu"] == [
        sum(row["daily_gpu"][i] for row in spend["subscriptions"]) for i in range(len(days))
    ]
    assert spend["cost_type"] == "amortized"


def test_report_spend_counts_an_export_where_it_covers_a_subscription_day(world):
    """Where a FOCUS export covers a subscription's day (in any currency), its rows are that
    day's spend and the Query API's are not; elsewhere the Query API's rows count. The cost
    sources' comparison sees the covered days."""
    from finops.report.build import build

    result = world.night()
    c, vms, sizes = schema.costs_daily, schema.vms, schema.vm_sizes
    with world.engine.begin() as conn:
        gpu_vm, sub, group = conn.execute(
            select(vms.c.resource_id, vms.c.subscription_id, vms.c.resource_group)
            .join(sizes, (sizes.c.run_id == vms.c.run_id) & (sizes.c.size == vms.c.size))
            .where(vms.c.run_id == result.run_id, sizes.c.gpus > 0)
            .order_by(vms.c.resource_id)
            .limit(1)
        ).one()
        other = f"/subscriptions/{sub}/resourcegroups/{group}/providers/microsoft.storage/x"
        before = build(conn, result.run_id, world.settings).spend
        days = before["trend"]["days"]
        covered, in_euros = days[-3], days[-2]
        file_id = conn.execute(
            schema.cost_files.insert().values(
                location="export.csv",
                folder="exports",
                fingerprint="1",
                modified=datetime(2026, 1, 1),
                rows=3,
                coverage={},
                loaded_at=datetime(2026, 1, 1),
            )
        ).inserted_primary_key[0]
        rows = [
            (gpu_vm, covered, "100", "USD"),
            (other, covered, "50", "USD"),
            (other, in_euros, "70", "EUR"),
        ]
        for resource_id, day, cost, currency in rows:
            upsert(
                conn,
                c,
                [
                    dict(
                        source="focus",
                        file_id=file_id,
                        resource_id=resource_id,
                        usage_date=day,
                        cost_type=cost_type,
                        meter_category="Virtual Machines",
                        subscription_id=sub,
                        resource_group=group,
                        cost=Decimal(cost),
                        currency=currency,
                    )
                    for cost_type in ("ActualCost", "AmortizedCost")
                ],
            )
        after = build(conn, result.run_id, world.settings).spend

    name = next(s.display_name for s in world.estate.subscriptions if s.subscription_id == sub)
    was = next(r for r in before["subscriptions"] if r["subscription"] == name)
    now = next(r for r in after["subscriptions"] if r["subscription"] == name)
    i, j = days.index(covered), days.index(in_euros)
    assert (now["daily_gpu"][i], now["daily_rest"][i]) == (100, 50)
    assert (now["daily_gpu"][j], now["daily_rest"][j]) == (0, 0)  # its spend is in EUR
    assert was["daily_rest"][i] > 0 and was["daily_rest"][j] > 0  # storage, every day
    for k in set(range(len(days))) - {i, j}:
        assert (now["daily_gpu"][k], now["daily_rest"][k]) == (
            was["daily_gpu"][k],
            was["daily_rest"][k],
        )
    in_month = [k for k in (i, j) if days[k] >= days[-1].replace(day=1)]
    dropped = sum(was["daily_gpu"][k] + was["daily_rest"][k] for k in in_month)
    added = 150 if i in in_month else 0  # the euros are not spend in dollars
    assert after["trend"]["gpu"][i] == before["trend"]["gpu"][i] - was["daily_gpu"][i] + 100
    assert after["mtd_amount"] == before["mtd_amount"] - dropped + added
    for r in after["subscriptions"]:
        if r["subscription"] != name:
            assert r == next(
                b for b in before["subscriptions"] if b["subscription"] == r["subscription"]
            )
    sources = after["sources"]
    assert (sources["focus_days"], sources["compared"], sources["differ"], sources["files"]) == (
        2,
        2,
        2,
        1,
    )
    assert sources["query_days"] == before["sources"]["query_days"]
