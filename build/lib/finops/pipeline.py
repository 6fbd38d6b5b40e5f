"""The nightly job: collect -> load -> rules -> report, one `runs` row per night.

A night's load and its findings are written in one transaction: a failure leaves the store as
it was, apart from the run row, which is marked failed with its error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, func, select, update

from finops import rules
from finops.azure import costs, inventory, metrics
from finops.azure.clients import AzureClients
from finops.collection import Collection
from finops.config import Settings
from finops.report import Report, produce
from finops.report.mail import MailError, send
from finops.store import schema
from finops.store.db import upgrade
from finops.store.load import load_night, utc_naive
from finops.store.lock import night_lock

log = logging.getLogger("finops")


@contextmanager
def step(name: str) -> Iterator[dict]:
    """Log one line per step with its duration and whatever counts the step reports."""
    info: dict = {}
    started = time.perf_counter()
    yield info
    counts = " ".join(f"{k}={v}" for k, v in info.items())
    log.info("%s done in %.2fs %s", name, time.perf_counter() - started, counts)


def collect(clients: AzureClients, settings: Settings, now: datetime) -> Collection:
    now = now.replace(minute=0, second=0, microsecond=0)
    night = Collection(
        metrics_start=now - timedelta(days=settings.metrics_days),
        metrics_end=now,
        cost_start=now.date() - timedelta(days=settings.cost_days),
        cost_end=now.date(),
    )
    with step("collect subscriptions") as info:
        night.subscriptions = inventory.subscriptions(clients, settings.subscriptions)
        info["subscriptions"] = len(night.subscriptions)
    sub_ids = [s["subscription_id"] for s in night.subscriptions]
    with step("collect inventory") as info:
        for sub in sub_ids:
            night.vms += inventory.vms(clients, sub)
            night.schedules += inventory.schedules(clients, sub)
        regions = {vm["location"] for vm in night.vms}
        if sub_ids and regions:
            night.vm_sizes = inventory.vm_sizes(clients, sub_ids[0], regions)
        for sub in sub_ids:
            sub_regions = {vm["location"] for vm in night.vms if vm["subscription_id"] == sub}
            night.quotas += inventory.quotas(clients, sub, sub_regions)
        info.update(
            vms=len(night.vms),
            schedules=len(night.schedules),
            quotas=len(night.quotas),
            regions=len(regions),
        )
    gpu_sizes = {s["size"].lower() for s in night.vm_sizes if s["gpus"] > 0}
    gpu_vms = [vm for vm in night.vms if vm["size"].lower() in gpu_sizes]
    with step("collect metrics") as info:
        if gpu_vms:
            night.metrics = list(
                metrics.hourly(clients, gpu_vms, night.metrics_start, night.metrics_end)
            )
        info.update(gpu_vms=len(gpu_vms), points=len(night.metrics))
    with step("collect costs") as info:
        for sub in sub_ids:
            night.costs += costs.daily(clients, sub, night.cost_start, night.cost_end)
        info["rows"] = len(night.costs)
    return night


@dataclass(frozen=True)
class NightResult:
    run_id: int
    findings: int
    report: Path | None


def start_run(engine: Engine, source: str, now: datetime, simulation: dict | None = None) -> int:
    with engine.begin() as conn:
        return conn.execute(
            schema.runs.insert().values(
                started_at=utc_naive(now),
                status="running",
                source=source,
                counts={},
                simulation=simulation,
            )
        ).inserted_primary_key[0]


def fail_run(engine: Engine, run_id: int, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}".splitlines()[0][:1000]
    with engine.begin() as conn:
        conn.execute(
            update(schema.runs)
            .where(schema.runs.c.id == run_id)
            .values(status="failed", finished_at=utc_naive(datetime.now(UTC)), error=message)
        )


def fail_interrupted_runs(engine: Engine) -> None:
    """Runs still marked running while we hold the lock belong to a process that died."""
    with engine.begin() as conn:
        ended = conn.execute(
            update(schema.runs)
            .where(schema.runs.c.status == "running")
            .values(
                status="failed",
                finished_at=utc_naive(datetime.now(UTC)),
                error="interrupted: the process ended before the night was stored",
            )
        ).rowcount
    if ended:
        log.warning("marked %s interrupted run(s) failed", ended)


def run_context(conn: Connection, run_id: int) -> rules.RunContext:
    run = conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).one()
    return rules.RunContext(run_id, run.metrics_start, run.metrics_end, run.cost_end)


def store_findings(conn: Connection, run_id: int, findings: list[rules.Finding]) -> None:
    """Replace the run's findings; `first_seen` carries over from the previous run's."""
    table = schema.findings
    previous_run = conn.execute(
        select(func.max(schema.runs.c.id)).where(
            schema.runs.c.id < run_id, schema.runs.c.status == "succeeded"
        )
    ).scalar()
    first_seen = {
        (row.rule_id, row.resource_id): row.first_seen
        for row in conn.execute(
            select(table.c.rule_id, table.c.resource_id, table.c.first_seen).where(
                table.c.run_id == previous_run
            )
        )
    }
    started = conn.execute(
        select(schema.runs.c.started_at).where(schema.runs.c.id == run_id)
    ).scalar_one()
    conn.execute(delete(table).where(table.c.run_id == run_id))
    rows = [
        {
            **f.__dict__,
            "run_id": run_id,
            "first_seen": first_seen.get((f.rule_id, f.resource_id), started),
        }
        for f in findings
    ]
    if rows:
        conn.execute(table.insert(), rows)


def analyze(
    conn: Connection, run_id: int, settings: Settings, rule_ids: list[str] | None = None
) -> list[rules.Finding]:
    with step("rules") as info:
        findings = rules.evaluate(conn, run_context(conn, run_id), settings, rule_ids)
        store_findings(conn, run_id, findings)
        info.update(findings=len(findings), exempt=sum(f.exempt for f in findings))
    return findings


def store_night(
    engine: Engine, run_id: int, night: Collection, settings: Settings, with_rules: bool = True
) -> list[rules.Finding]:
    """Load the night and evaluate the rules in one transaction, then mark the run done."""
    runs = schema.runs
    with engine.begin() as conn:
        with step("load") as info:
            counts = load_night(conn, run_id, night)
            info.update(counts)
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                metrics_start=utc_naive(night.metrics_start),
                metrics_end=utc_naive(night.metrics_end),
                cost_start=night.cost_start,
                cost_end=night.cost_end,
            )
        )
        findings = analyze(conn, run_id, settings) if with_rules else []
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                status="succeeded" if with_rules else "collected",
                finished_at=utc_naive(datetime.now(UTC)),
                counts={**counts, "findings": len(findings)},
            )
        )
    return findings


def run_night(
    engine: Engine,
    clients: AzureClients,
    settings: Settings,
    source: str,
    with_rules: bool = True,
    simulation: dict | None = None,
) -> NightResult:
    """Collect a night, store it and (by default) evaluate the rules and write the report.
    Holds the night lock throughout: a second night against the same store raises LockHeld."""
    upgrade(engine)
    with night_lock(engine):
        fail_interrupted_runs(engine)
        now = datetime.now(UTC)
        run_id = start_run(engine, source, now, simulation)
        log.info("run %s started (source %s)", run_id, source)
        try:
            night = collect(clients, settings, now)
            findings = store_night(engine, run_id, night, settings, with_rules)
        except BaseException as e:
            fail_run(engine, run_id, e)
            raise
    log.info("run %s succeeded: %s finding(s)", run_id, len(findings))
    if not with_rules:
        return NightResult(run_id, len(findings), None)
    report = produce(engine, settings, run_id)
    if settings.mail.enabled:
        mail_report(report, settings)
    return NightResult(run_id, len(findings), report.path)


def mail_report(report: Report, settings: Settings) -> None:
    """Send the report; on failure say that nothing of the night was lost."""
    with step("mail") as info:
        try:
            send(report, settings.mail)
        except MailError as e:
            raise MailError(f"{e} (the night is stored; the report is at {report.path})") from None
        info["recipients"] = len(settings.mail.recipients)


def nightly(
    settings: Settings, source: str = "azure", with_rules: bool = True, simulation=None
) -> NightResult:
    """The night as cron, the scheduler and Azure Functions run it: store, clients and upload
    from settings."""
    from finops.azure.clients import clients_for
    from finops.store.db import engine_for

    engine = engine_for(settings.db_url)
    try:
        result = run_night(
            engine, clients_for(settings.azure), settings, source, with_rules, simulation
        )
    finally:
        engine.dispose()
    if result.report and settings.report_container_url:
        from finops.azure.blob import upload_report

        with step("upload report") as info:
            info["files"] = upload_report(result.report, settings)
    return result
