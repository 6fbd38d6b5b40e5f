"""The night at the dates where money logic breaks: the 1st of a month (the month just closed,
month to date of one day the night after), 31 Dec -> 1 Jan, 29 Feb, the two DST changes of a
working-hours time zone; FOCUS monthly folders across a month and a year; and no wall clock
read anywhere in finops but through its one clock."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from finops import clock
from finops.azure.clients import AzureClients, StaticTokenCredential
from finops.config import ScheduleSettings
from finops.pipeline import run_night
from finops.report.build import build
from finops.scheduler import trigger_for
from finops.sim.estate import Estate
from finops.sim.exports import write_focus_export
from finops.sim.server import SimServer
from finops.store import schema
from finops.store.db import engine_for
from tests.conftest import PINNED, World, sim_settings
from tests.test_costs import expected_billed, totals

EDGES = [
    "2026-12-01T03:00:00Z",  # the 1st: the newest complete day closed November
    "2026-12-02T03:00:00Z",  # month to date is one day
    "2026-12-31T03:00:00Z",
    "2027-01-01T03:00:00Z",  # a year closed
    "2028-02-29T03:00:00Z",  # a leap day
    "2028-03-01T03:00:00Z",  # a February of 29 days closed
    "2027-03-28T03:00:00Z",  # Europe's clocks go forward this night
    "2027-10-31T03:00:00Z",  # and back
]


def night_at(instant: str, tmp_path: Path, monkeypatch, exports_from: int | None = None):
    """The demo estate's night as of `instant`; with `exports_from`, FOCUS exports from that
    many days back to yesterday are read too."""
    monkeypatch.setenv(clock.PIN, instant)
    estate = Estate(seed=7, vms=60)
    assert estate.now == clock.now()
    overrides = {}
    if exports_from is not None:
        today = estate.now.date()
        root = tmp_path / "exports"
        write_focus_export(estate, root, today - timedelta(days=exports_from), today, "csv")
        overrides["costs"] = {"exports": [str(root)]}
    with SimServer(estate, page_size=50, cost_page_size=1000) as sim:
        settings = sim_settings(
            sim,
            db_url=f"sqlite:///{tmp_path / 'finops.db'}",
            reports_dir=tmp_path / "reports",
            **overrides,
        )
        clients = AzureClients(StaticTokenCredential(), settings.azure)
        world = World(estate, sim, settings, engine_for(settings.db_url), clients)
        result = run_night(world.engine, clients, settings, "azure")
    return world, result


@pytest.fixture(scope="module")
def usual_findings(tmp_path_factory) -> set[tuple[str, str]]:
    """The findings of a night in the middle of a month, on a Wednesday."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        world, result = night_at(PINNED, tmp_path_factory.mktemp("usual"), monkeypatch)
        return world.findings(result.run_id)


def month_spend(engine, first: date, end: date) -> Decimal:
    """Amortized cost the store holds from the Query API over [first, end)."""
    c = schema.costs_daily
    with engine.connect() as conn:
        total = conn.execute(
            select(func.sum(c.c.cost)).where(
                c.c.source == "query",
                c.c.cost_type == "AmortizedCost",
                c.c.usage_date >= first,
                c.c.usage_date < end,
            )
        ).scalar_one()
    return Decimal(str(total))


@pytest.mark.parametrize("instant", EDGES)
def test_the_night_at_a_date_edge(instant, tmp_path, monkeypatch, usual_findings):
    world, result = night_at(instant, tmp_path, monkeypatch)
    assert result.missing is None
    today = clock.parse(instant).date()
    newest = today - timedelta(days=1)  # the newest complete day
    month_start = newest.replace(day=1)
    month_days = calendar.monthrange(newest.year, newest.month)[1]

    # every day of the window is stored once, to the cent, across months and years
    billed = totals(world.engine, "query")
    first = today - timedelta(days=world.settings.cost_days)
    assert billed == expected_billed(world.estate, first)

    with world.engine.connect() as conn:
        data = build(conn, result.run_id, world.settings)
    spend = data.spend
    assert spend["month"] == f"{newest:%B %Y}"
    assert spend["days_left"] == month_days - newest.day
    mtd = month_spend(world.engine, month_start, today)
    assert abs(spend["mtd_amount"] - mtd) < Decimal("0.01")
    rate = month_spend(world.engine, newest - timedelta(days=6), today) / 7
    forecast = mtd + rate * spend["days_left"]
    assert abs(spend["forecast_amount"] - forecast) < Decimal("0.01")
    if spend["days_left"]:
        assert f"forecast {spend['forecast']} for {spend['month']}" in data.headline
    else:  # the 1st: the month is complete and said to be so, without a forecast
        assert f"{spend['month']} came to {spend['mtd']}." in data.headline
        assert "forecast" not in data.headline
    assert data.spend["trend"]["days"][-1] == newest
    assert len(data.spend["trend"]["days"]) == 30

    # the estate is built relative to its night: the same findings on every date, the
    # anomaly's trailing median reaching into the month before included
    assert world.findings(result.run_id) == usual_findings
    assert (tmp_path / "reports" / f"finops-{today}.html").exists()


@pytest.mark.parametrize("instant", ["2026-12-01T03:00:00Z", "2027-01-01T03:00:00Z"])
def test_focus_exports_across_a_month_and_a_year_lose_no_day(instant, tmp_path, monkeypatch):
    world, result = night_at(instant, tmp_path, monkeypatch, exports_from=20)
    assert result.missing is None
    today = world.estate.now.date()
    folders = sorted(p.name for p in (tmp_path / "exports" / "finops-focus").iterdir())
    assert len(folders) == 2  # the month before and the month of today
    loaded = totals(world.engine, "focus")
    expected = expected_billed(world.estate, today - timedelta(days=20))
    assert loaded == expected  # each day once, the boundary's days included
    assert min(loaded) == today - timedelta(days=20) and max(loaded) == today


@pytest.mark.parametrize(
    ("zone", "spring", "autumn"),
    [
        ("Europe/Berlin", date(2027, 3, 28), date(2027, 10, 31)),
        ("America/New_York", date(2027, 3, 14), date(2027, 11, 7)),
    ],
)
@pytest.mark.parametrize("cron", ["0 30 2 * * *", "0 0 2 * * *", "0 0 3 * * *", "0 0 1 * * *"])
def test_a_nightly_schedule_runs_once_a_night_through_both_dst_changes(zone, spring, autumn, cron):
    """Clocks going forward skip 02:00-03:00 and going back repeat 01:00-02:00 (New York) or
    02:00-03:00 (Berlin): a nightly schedule at any of these times runs once every night."""
    schedule = ScheduleSettings(cron=cron, time_zone=zone)
    trigger = trigger_for(schedule)
    tz = ZoneInfo(zone)
    for change in (spring, autumn):
        previous = None
        moment = datetime.combine(change - timedelta(days=3), datetime.min.time(), tz)
        nights = []
        for _ in range(7):
            fire = trigger.get_next_fire_time(previous, moment)
            nights.append(fire)
            previous = moment = fire
        days = [n.astimezone(tz).date() for n in nights]
        assert days == [change + timedelta(days=i - 3) for i in range(7)], nights
        gaps = {
            (b.astimezone(UTC) - a.astimezone(UTC)) / timedelta(hours=1)
            for a, b in pairwise(nights)
        }
        assert gaps <= {23, 24, 25}, nights


FINOPS = Path(__file__).resolve().parents[1] / "finops"
# transport times, which the wall clock must give: a token's expiry, the scheduler's next fire
WALL_CLOCK_ALLOWED = {"clock.py", "azure/clients.py", "scheduler.py"}


def test_finops_reads_the_wall_clock_only_through_its_clock():
    reads = re.compile(r"datetime\.now\(|datetime\.utcnow\(|date\.today\(|time\.time\(")
    offenders = [
        f"{path.relative_to(FINOPS)}:{number}"
        for path in FINOPS.rglob("*.py")
        if str(path.relative_to(FINOPS)) not in WALL_CLOCK_ALLOWED
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if reads.search(line)
    ]
    assert offenders == []


def test_the_pinned_clock_is_read_and_a_bad_pin_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(clock.PIN, "2028-02-29T01:30:00+01:00")
    assert clock.now() == datetime(2028, 2, 29, 0, 30, tzinfo=UTC)
    monkeypatch.setenv(clock.PIN, "2028-02-29T01:30:00")
    with pytest.raises(clock.ClockError, match="needs a UTC offset"):
        clock.now()
    monkeypatch.setenv(clock.PIN, "tomorrow")
    with pytest.raises(clock.ClockError, match="not an ISO 8601"):
        clock.now()
