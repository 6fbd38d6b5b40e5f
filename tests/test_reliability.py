"""Partial failure is explicit: what failed is recorded, and no finding comes from missing data."""

from __future__ import annotations

import sqlite3
import time

import pytest
from sqlalchemy import select

from finops.pipeline import run_night
from finops.sim.estate import IDLE, NO_SHUTDOWN, STOPPED
from finops.sim.server import Fault
from finops.store import schema
from tests.conftest import World
from tests.test_cli import finops
from tests.test_jobs import sim_env


def test_no_idle_verdict_when_tonights_metrics_fail(world: World):
    first = world.night()
    idle = {(r, n) for r, n in world.findings(first.run_id) if r == IDLE}
    assert len(idle) == len(world.estate.expected(IDLE))
    # Tonight the metrics API refuses every call; last night's metrics still cover 6 of the
    # 7 days of the window, and must not be enough to call anything idle.
    world.sim.inject(Fault("metrics", status=403, count=None))
    second = run_night(world.engine, world.clients, world.settings, "azure")
    assert second.missing.startswith("missing data: metrics for ")
    found = world.findings(second.run_id)
    assert not {f for f in found if f[0] == IDLE}
    # what does not depend on metrics is still found
    assert {n for r, n in found if r == STOPPED} == {
        world.estate.by_id[r].name for r in world.estate.expected(STOPPED)
    }
    with world.engine.connect() as conn:
        run = conn.execute(select(schema.runs).where(schema.runs.c.id == second.run_id)).one()
    assert run.status == "partial"
    assert {f["source"] for f in run.counts["failures"]} == {"metrics"}
    html = second.report.read_text()
    assert "Data missing tonight" in html and "metrics for" in html


def test_vms_are_not_stored_without_their_schedules(sim, estate, tmp_path):
    """The schedules' query failing for good: the VMs are left out with them (each would look
    unscheduled), no VM is judged, and the night is partial and says what is missing."""
    fault = sim.inject(Fault("graph", status=403, match="devtestlab/schedules", count=None))
    try:
        db_url = f"sqlite:///{tmp_path / 'finops.db'}"
        result = finops("run", cwd=tmp_path, env=sim_env(sim, db_url))
    finally:
        sim.faults.remove(fault)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("finops:")]
    assert errors == [
        f"finops: night 1 stored with missing data: inventory for {len(estate.subscriptions)} "
        "subscriptions (HttpResponseError: (InjectedFault) simulated 403)"
    ]
    report = result.stdout.strip().splitlines()[-1]
    assert report.endswith(".html")
    with sqlite3.connect(tmp_path / "finops.db") as db:
        vms = db.execute("select count(*) from vms").fetchone()[0]
        rules = {r[0] for r in db.execute("select rule_id from findings")}
        status = db.execute("select status from runs").fetchone()[0]
    assert status == "partial"
    assert vms == 0
    assert NO_SHUTDOWN not in rules and IDLE not in rules


def test_no_secret_reaches_logs_reports_plans_the_store_or_errors(tmp_path, postgres_server):
    from aiosmtpd.controller import Controller
    from sqlalchemy import create_engine, inspect, text

    from tests.postgres import fresh_pg_database
    from tests.test_mail import PASSWORD, Inbox, _authenticator, _free_port

    db_canary = "canary-db-pw-41c9"
    secret_canary = "canary-client-secret-93be"
    url = fresh_pg_database(postgres_server).replace("postgres@", f"postgres:{db_canary}@")
    inbox = Inbox()
    smtp = Controller(
        inbox,
        hostname="127.0.0.1",
        port=_free_port(),
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    smtp.start()
    env = {
        "FINOPS_DB_URL": url,
        "AZURE_CLIENT_SECRET": secret_canary,
        "AZURE_CLIENT_ID": "00000000-0000-4000-8000-0000000000c1",
        "AZURE_TENANT_ID": "00000000-0000-4000-8000-0000000000c2",
        "FINOPS_MAIL__SMTP_HOST": "127.0.0.1",
        "FINOPS_MAIL__SMTP_PORT": str(smtp.port),
        "FINOPS_MAIL__SECURITY": "none",
        "FINOPS_MAIL__USERNAME": "finops",
        "FINOPS_MAIL__PASSWORD": PASSWORD,
        "FINOPS_MAIL__RECIPIENTS": '["lead@example.test"]',
    }
    try:
        outputs = [finops("-v", "demo", cwd=tmp_path, env=env)]
        outputs.append(finops("-v", "plan", cwd=tmp_path, env=env))
        outputs.append(finops("-v", "runs", cwd=tmp_path, env=env))
        bad_db = {**env, "FINOPS_DB_URL": f"postgresql+psycopg://u:{db_canary}@127.0.0.1:1/x"}
        outputs.append(finops("-v", "runs", cwd=tmp_path, env=bad_db))
    finally:
        smtp.stop()
    assert [o.returncode for o in outputs] == [0, 0, 0, 1]
    assert "DEBUG" in outputs[0].stderr  # debug logging was on
    assert len(inbox.envelopes) == 1  # the login with the password worked
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [
        p.read_text(errors="replace")
        for p in (tmp_path / "reports").rglob("*")
        if p.is_file() and p.suffix in (".html", ".json")
    ]
    texts.append(inbox.envelopes[0].content.decode(errors="replace"))
    engine = create_engine(url)
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            texts += [str(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    engine.dispose()
    for canary in (db_canary, secret_canary, PASSWORD):
        leaks = [t[:200] for t in texts if canary in t]
        assert not leaks, f"{canary} leaked: {leaks[:1]}"


def _collect(sim, **azure):
    from finops.azure.clients import AzureClients, StaticTokenCredential
    from finops.pipeline import collect
    from tests.conftest import sim_settings

    settings = sim_settings(sim)
    settings = settings.model_copy(update={"azure": settings.azure.model_copy(update=azure)})
    clients = AzureClients(StaticTokenCredential(), settings.azure)
    started = time.perf_counter()
    night = collect(clients, settings, sim.estate.now)
    return night, time.perf_counter() - started


FAST = {"retry_backoff_max_seconds": 0.3}


@pytest.mark.parametrize(
    ("fault", "extra_requests"),
    [
        (Fault("costs", status=429, headers={"Retry-After": "1"}, count=2), 2),
        # Cost Management's own throttling answer: no Retry-After, a POST (azure-core alone
        # would fail on the first 429)
        (
            Fault(
                "costs",
                status=429,
                count=1,
                headers={"x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": "1"},
            ),
            1,
        ),
        (Fault("graph", match="virtualmachines", status=503, count=2), 2),
        (Fault("graph", match="schedules", status=500, count=1), 1),
        (Fault("usages", kind="reset", count=1), 1),
        # a page chain broken once, mid-way
        (Fault("graph", match="virtualmachines", skip=1, status=502, count=1), 1),
        (Fault("graph", match="compute/disks", status=503, count=1), 1),
        (Fault("costs", status=502, count=1), 1),  # a read-only POST: retried like a GET
        (Fault("metrics", status=502, count=1), 1),
        (Fault("prices", status=429, headers={"Retry-After": "1"}, count=1), 1),  # no SDK
        # azure.retries (4) governs each kind of retry: azure-core's own count is 3
        (Fault("costs", status=503, count=4), 4),
        (Fault("graph", match="schedules", status=500, count=4), 4),
        (Fault("usages", kind="reset", count=4), 4),
        (Fault("prices", status=503, count=4), 4),
    ],
)
def test_transient_faults_are_retried_and_the_night_is_complete(fault, extra_requests):
    from finops.sim.estate import Estate
    from finops.sim.server import SimServer

    estate = Estate(seed=7, vms=60)
    with SimServer(estate, page_size=25, cost_page_size=1000) as sim:
        clean, _ = _collect(sim, **FAST)
        baseline = sum(sim.requests.values())
        sim.requests.clear()
        sim.inject(fault)
        night, _ = _collect(sim, **FAST)
        assert night.failures == []
        assert sum(sim.requests.values()) == baseline + extra_requests
        assert len(night.vms) == len(clean.vms) and len(night.costs) == len(clean.costs)
        assert len(night.metrics) == len(clean.metrics)
        assert len(night.disks) == len(clean.disks) and night.vm_prices == clean.vm_prices


@pytest.mark.parametrize(
    ("fault", "source"),
    [
        (Fault("metrics", kind="truncate", count=1), "metrics"),
        # broken for good
        (Fault("graph", match="virtualmachines", skip=1, status=500, count=None), "inventory"),
        # slower than the timeout
        (Fault("graph", match="schedules", delay=3.0, count=None), "inventory"),
        (Fault("graph", match="compute/disks", status=500, count=None), "disks"),
        (Fault("prices", kind="truncate", count=None), "prices"),
    ],
)
def test_lasting_faults_give_up_within_the_budget_and_are_recorded(fault, source):
    from finops.sim.estate import Estate
    from finops.sim.server import SimServer

    with SimServer(Estate(seed=7, vms=60), page_size=25) as sim:
        sim.inject(fault)
        night, took = _collect(sim, timeout_seconds=1, retry_budget_seconds=4, retries=3, **FAST)
        sim.faults.clear()
    assert night.failures and {f["source"] for f in night.failures} == {source}
    assert took < 30


@pytest.mark.parametrize("blocked_at", ["vms", "findings"])  # the first and last table written
def test_a_night_killed_during_its_load_leaves_nothing_half_stored(
    blocked_at, sim, postgres_server, tmp_path
):
    """The test holds a lock on one table, so the night blocks inside its load transaction
    right there; it is killed at that point, and the store must hold none of that night."""
    import signal

    from sqlalchemy import create_engine, text

    from tests.postgres import fresh_pg_database
    from tests.test_jobs import start, statuses, wait_for

    url = fresh_pg_database(postgres_server)
    env = sim_env(sim, url)
    assert finops("run", cwd=tmp_path, env=env).returncode == 0  # a first, complete night
    engine = create_engine(url)

    def count(table: str) -> int:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()

    before = {t: count(t) for t in ("vms", "metrics_hourly", "costs_daily", "findings")}
    blocker = engine.connect()
    blocker.begin()
    blocker.execute(text(f"LOCK TABLE {blocked_at} IN ACCESS EXCLUSIVE MODE"))
    night = start(["run"], tmp_path, env)
    try:

        def waiting_on_lock() -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND datname = current_database()"
                        )
                    ).scalar()
                )

        wait_for(waiting_on_lock, 90, f"the night to block on {blocked_at}")
        night.send_signal(signal.SIGKILL)
        night.wait(timeout=10)
    finally:
        blocker.rollback()
        blocker.close()
    # the killed backend's transaction is rolled back by PostgreSQL
    wait_for(lambda: not waiting_on_lock_after(engine), 30, "the killed session to end")
    assert {t: count(t) for t in before} == before
    assert finops("run", cwd=tmp_path, env=env).returncode == 0
    assert [s for s, _ in statuses(url)] == ["succeeded", "failed", "succeeded"]
    assert statuses(url)[1][1] == "interrupted: the process ended before the night was stored"
    assert count("vms") == 2 * before["vms"]
    engine.dispose()


def waiting_on_lock_after(engine) -> bool:
    from sqlalchemy import text

    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' "
                    "AND datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
        )


def test_an_account_whose_deployments_fail_is_left_out_with_its_metrics():
    from finops.sim.estate import Estate
    from finops.sim.server import SimServer

    with SimServer(Estate(seed=7, vms=60)) as sim:
        broken, kept = sim.estate.ai_accounts
        sim.inject(Fault("ai-deployments", status=403, match=broken.name, count=None))
        night, _ = _collect(sim, **FAST)
    assert [(f["source"], f["scope"]) for f in night.failures] == [
        ("ai deployments", f"account {broken.id.lower()}")
    ]
    assert {d["account_id"] for d in night.ai_deployments} == {kept.id.lower()}
    measured = {
        p["resource_id"].split("/deployments/")[0]
        for p in night.metrics
        if "/deployments/" in p["resource_id"]
    }
    assert measured == {kept.id.lower()}


def test_reanalysing_a_partial_night_keeps_it_partial(sim, estate, tmp_path):
    broken = estate.subscriptions[2].subscription_id
    fault = sim.inject(Fault("costs", status=403, match=broken, count=None))
    try:
        env = sim_env(sim, f"sqlite:///{tmp_path / 'finops.db'}")
        assert finops("run", cwd=tmp_path, env=env).returncode == 1
    finally:
        sim.faults.remove(fault)
    assert finops("analyze", cwd=tmp_path, env=env).returncode == 0
    with sqlite3.connect(tmp_path / "finops.db") as db:
        assert db.execute("select status from runs").fetchall() == [("partial",)]


def test_cost_throttling_past_the_budget_is_a_clear_partial_night():
    """Cost Management keeps answering 429 with its own retry header: the waits honour it, the
    budget ends them, and the subscription's cost is reported missing with the reason."""
    from finops.sim.estate import Estate
    from finops.sim.server import SimServer

    header = {"x-ms-ratelimit-microsoft.costmanagement-entity-retry-after": "1"}
    estate = Estate(seed=7, vms=60)
    sub = estate.subscriptions[1].subscription_id
    with SimServer(estate, page_size=25, cost_page_size=1000) as sim:
        sim.inject(Fault("costs", status=429, match=sub, count=None, headers=header))
        night, took = _collect(sim, retry_budget_seconds=3, retries=10)
        throttled = sim.requests["costs"]
        sim.faults.clear()
    assert {(f["source"], f["scope"]) for f in night.failures} == {
        ("costs", f"ActualCost of subscription {sub}"),
        ("costs", f"AmortizedCost of subscription {sub}"),
    }
    assert all("429" in f["error"] or "Too Many Requests" in f["error"] for f in night.failures)
    assert took < 20
    # the other subscriptions' cost is whole; the throttled one was retried, about once a second
    assert {r["subscription_id"] for r in night.costs} == {
        s.subscription_id for s in estate.subscriptions if s.subscription_id != sub
    }
    assert 4 <= throttled - 2 * (len(estate.subscriptions) - 1) <= 10
