"""The nightly job: collect -> load -> rules -> report, one `runs` row per night.

A night's load and its findings are written in one transaction: a failure leaves the store as
it was, apart from the run row, which is marked failed with its error.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, select, update

from finops import clock, rules
from finops.azure import COLLECTION_ERRORS, costs, focus, inventory, metrics, openai, prices
from finops.azure.clients import AzureClients
from finops.collection import Collection, Row, Spool
from finops.config import Settings
from finops.report import Report, produce
from finops.report.mail import MailError, send
from finops.store import schema
from finops.store.costs import QUERY
from finops.store.db import upgrade
from finops.store.load import load_night, utc_naive
from finops.store.lock import night_lock

log = logging.getLogger("finops")
T = TypeVar("T")
# guest metrics (GPU) reach Azure Monitor late: the last stored hours are asked for again
METRICS_REFETCH = timedelta(hours=3)


# Called with (step name, "start" or "end") around every step: the benchmark's probes.
STEP_OBSERVERS: list[Callable[[str, str], None]] = []


@contextmanager
def step(name: str) -> Iterator[dict]:
    """Log one line per step with its duration and whatever counts the step reports."""
    info: dict = {}
    for observe in STEP_OBSERVERS:
        observe(name, "start")
    started = time.perf_counter()
    yield info
    for observe in STEP_OBSERVERS:
        observe(name, "end")
    counts = " ".join(f"{k}={v}" for k, v in info.items())
    log.info("%s done in %.2fs %s", name, time.perf_counter() - started, counts)


@contextmanager
def tolerated(
    night: Collection, source: str, scope: str, resources: list[str] | None = None
) -> Iterator[None]:
    """A failure of one source for one scope is recorded (with the resources it leaves without
    data), and the rest of the night goes on."""
    try:
        yield
    except COLLECTION_ERRORS as e:
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        failure = {"source": source, "scope": scope, "error": error}
        if resources:
            failure["resources"] = resources
        night.failures.append(failure)
        log.warning("%s for %s not collected: %s", source, scope, error)


def query_start(stored: tuple[date, date] | None, first_needed: date, refetch_days: int) -> date:
    """First day to ask the Query API for: the days not yet stored, and the last
    `refetch_days` stored ones again (cost settles late)."""
    if stored is None or stored[0] > first_needed:
        return first_needed
    return max(first_needed, stored[1] - timedelta(days=refetch_days - 1))


def stored_query_days(engine: Engine) -> dict[tuple[str, str], tuple[date, date]]:
    """(subscription, cost type) -> first and last day the store holds from the Query API."""
    c = schema.costs_daily
    query = (
        select(
            c.c.subscription_id, c.c.cost_type, func.min(c.c.usage_date), func.max(c.c.usage_date)
        )
        .where(c.c.source == QUERY)
        .group_by(c.c.subscription_id, c.c.cost_type)
    )
    with engine.connect() as conn:
        return {(sub, kind): (first, last) for sub, kind, first, last in conn.execute(query)}


def concurrently(
    pool: ThreadPoolExecutor, ahead: int, tasks: Iterable[tuple], fetch: Callable[..., T]
) -> Iterator[tuple[tuple, Callable[[], T]]]:
    """Run `fetch(*task)` for each task on the pool's threads, at most `ahead` tasks ahead of
    the caller; yield each task with its result's getter, in task order (the getter raises what
    `fetch` raised, so the caller decides what a failure costs)."""
    running: deque[tuple[tuple, Future[T]]] = deque()
    for task in tasks:
        running.append((task, pool.submit(fetch, *task)))
        if len(running) > ahead:
            done, future = running.popleft()
            yield done, future.result
    while running:
        done, future = running.popleft()
        yield done, future.result


def stored_metric_hours(engine: Engine) -> dict[str, datetime]:
    """Resource -> the newest hour the store holds of every one of its series (the oldest of
    the series' newest hours)."""
    m, r = schema.metrics_hourly, schema.resources
    series_newest = (
        select(m.c.resource_key, func.max(m.c.ts).label("ts"))
        .group_by(m.c.resource_key, m.c.metric)
        .subquery()
    )
    query = select(r.c.resource_id, series_newest.c.ts).join_from(
        series_newest, r, r.c.id == series_newest.c.resource_key
    )
    newest: dict[str, datetime] = {}
    with engine.connect() as conn:
        for rid, hour in conn.execute(query):
            hour = hour.replace(tzinfo=UTC)
            newest[rid] = min(hour, newest.get(rid, hour))
    return newest


def collect(
    clients: AzureClients,
    settings: Settings,
    now: datetime,
    stored_costs: dict[tuple[str, str], tuple[date, date]] | None = None,
    stored_metrics: dict[str, datetime] | None = None,
) -> Collection:
    """Collect the night, `azure.concurrency` calls at a time. One subscription's inventory, one
    metrics batch, one subscription's cost or one export location may fail without losing the
    rest: each failure is recorded in `night.failures`, and a subscription whose inventory
    failed is left out whole (its VMs without their schedules would all look unscheduled).
    VMs, disks, metric points and cost rows go to spools on disk, not memory; a VM's metrics
    are asked for from a few hours before the newest the store holds. Export files are found
    here and read while the night is stored."""
    workers = settings.azure.concurrency
    with ThreadPoolExecutor(workers, thread_name_prefix="collect") as pool:
        in_parallel = partial(concurrently, pool, 2 * workers)
        stored = stored_costs or {}, stored_metrics or {}
        return _collect(in_parallel, clients, settings, now, *stored)


def _collect(
    in_parallel: Callable[..., Iterator[tuple[tuple, Callable[[], Any]]]],
    clients: AzureClients,
    settings: Settings,
    now: datetime,
    stored_costs: dict[tuple[str, str], tuple[date, date]],
    stored_metrics: dict[str, datetime],
) -> Collection:
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

    sub_ids: list[str] = []
    # VM ids by subscription, region and size: what the rest of the night needs of the VMs,
    # which themselves go to the spool
    placed: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    with step("collect inventory") as info:
        subs = [s["subscription_id"] for s in night.subscriptions]
        scope = f"{len(subs)} subscriptions"
        queries = [
            (inventory.vms, Spool),
            (inventory.schedules, list),
            (inventory.resource_groups, list),
            (inventory.disks, Spool),
        ]
        # VMs without their schedules would all look unscheduled: none of the three is stored
        # without the others
        together = (inventory.vms, inventory.schedules, inventory.resource_groups)
        answers: dict[Callable, Any] = {}

        def listed(query: Callable, keep: Callable) -> Any:
            return keep(query(clients, subs))

        for (query, _), result in in_parallel(queries, listed):
            with tolerated(night, "inventory" if query in together else "disks", scope):
                answers[query] = result()
        if all(query in answers for query in together):
            night.vms = answers[inventory.vms]
            night.schedules = answers[inventory.schedules]
            night.resource_groups = answers[inventory.resource_groups]
            night.disks = answers.get(inventory.disks, night.disks)
            sub_ids = subs
            for vm in night.vms:
                key = (vm["subscription_id"], vm["location"], vm["size"])
                placed[key].append(vm["resource_id"])
        regions = {region for _, region, _ in placed}
        if sub_ids and regions:
            with tolerated(night, "vm sizes", "all regions"):
                night.vm_sizes = inventory.vm_sizes(clients, sub_ids[0], regions)
        gpu_sizes = {s["size"].lower() for s in night.vm_sizes if s["gpus"] > 0}
        # quotas matter where GPU VMs are (gpu-quota-near-limit), not in every region in use
        gpu_regions: dict[str, set[str]] = defaultdict(set)
        for sub, region, size in placed:
            if size.lower() in gpu_sizes:
                gpu_regions[sub].add(region)
        tasks = [(sub, gpu_regions[sub]) for sub in sub_ids if gpu_regions[sub]]
        for (sub, _), result in in_parallel(tasks, partial(inventory.quotas, clients)):
            with tolerated(night, "quotas", f"subscription {sub}"):
                night.quotas += result()
        info.update(
            vms=len(night.vms),
            disks=len(night.disks),
            schedules=len(night.schedules),
            quotas=len(night.quotas),
            regions=len(regions),
        )
    gpu_vms = [
        {"resource_id": rid, "subscription_id": sub, "location": region, "size": size}
        for (sub, region, size), ids in placed.items()
        if size.lower() in gpu_sizes
        for rid in ids
    ]
    del placed
    with step("collect prices") as info:
        in_use = {(vm["location"], vm["size"]) for vm in gpu_vms}
        with tolerated(night, "prices", f"{len(in_use)} GPU sizes and regions"):
            night.vm_prices = prices.vm_prices(settings.azure, settings.currency, in_use)
        info.update(pairs=len(in_use), prices=len(night.vm_prices))

    def vm_metrics(region: str, ids: list[str]) -> Spool:
        newest = min(stored_metrics.get(rid, night.metrics_start) for rid in ids)
        start = max(night.metrics_start, newest - METRICS_REFETCH)
        return Spool(metrics.hourly_batch(clients, region, ids, start, night.metrics_end))

    with step("collect metrics") as info:
        for (region, ids), result in in_parallel(metrics.batches(gpu_vms), vm_metrics):
            with tolerated(night, "metrics", f"{len(ids)} GPU VMs in {region}", ids):
                night.metrics.absorb(result())
        info.update(gpu_vms=len(gpu_vms), points=len(night.metrics))
    ptu_start = now - timedelta(days=settings.ptu.window_days)

    def ai_metrics(region: str, ids: list[str]) -> Spool:
        return Spool(openai.hourly_batch(clients, region, ids, ptu_start, now))

    with step("collect AI deployments") as info:
        found: list[Row] = []
        with tolerated(night, "ai deployments", f"{len(sub_ids)} subscriptions"):
            found = openai.accounts(clients, sub_ids) if sub_ids else []
        # an account whose deployments could not be listed is left out whole, its metrics too
        accounts: list[Row] = []
        each_account = [(a,) for a in found]
        for (account,), result in in_parallel(each_account, partial(openai.deployments, clients)):
            with tolerated(night, "ai deployments", f"account {account['resource_id']}"):
                night.ai_deployments += result()
                accounts.append(account)
        points = len(night.metrics)
        for (region, ids), result in in_parallel(metrics.batches(accounts), ai_metrics):
            chosen = set(ids)
            deployments = [
                d["resource_id"] for d in night.ai_deployments if d["account_id"] in chosen
            ]
            with tolerated(night, "metrics", f"{len(ids)} AI accounts in {region}", deployments):
                night.metrics.absorb(result())
        info.update(
            accounts=len(accounts),
            deployments=len(night.ai_deployments),
            points=len(night.metrics) - points,
        )

    def daily_costs(sub: str, cost_type: str, first: date) -> Spool:
        return Spool(costs.daily(clients, sub, first, night.cost_end, cost_type))

    with step("collect costs") as info:
        refetch = settings.costs.refetch_days
        windows = [
            (sub, kind, query_start(stored_costs.get((sub, kind)), night.cost_start, refetch))
            for sub in (sub_ids if settings.costs.query else [])
            for kind in costs.COST_TYPES
        ]
        for (sub, cost_type, first), result in in_parallel(windows, daily_costs):
            with tolerated(night, "costs", f"{cost_type} of subscription {sub}"):
                night.costs.absorb(result())
                night.cost_windows.append((sub, cost_type, first, night.cost_end))
        for location in settings.costs.exports:
            with tolerated(night, "cost export", location):
                night.cost_files += focus.find(location, settings.azure)
        info.update(rows=len(night.costs), export_files=len(night.cost_files))
    if clients.pacer.waited:
        # summed over the requests held: how much Azure's throttling budgets slowed the night
        log.info("requests held %.1f s in all by Azure's throttling budgets", clients.pacer.waited)
    return night


@dataclass(frozen=True)
class NightResult:
    run_id: int
    findings: int
    report: Path | None
    missing: str | None = None  # what could not be collected, when the night is partial


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
            .values(status="failed", finished_at=utc_naive(clock.now()), error=message)
        )


def fail_interrupted_runs(engine: Engine) -> None:
    """Runs still marked running while we hold the lock belong to a process that died."""
    with engine.begin() as conn:
        ended = conn.execute(
            update(schema.runs)
            .where(schema.runs.c.status == "running")
            .values(
                status="failed",
                finished_at=utc_naive(clock.now()),
                error="interrupted: the process ended before the night was stored",
            )
        ).rowcount
    if ended:
        log.warning("marked %s interrupted run(s) failed", ended)


def run_context(conn: Connection, run_id: int) -> rules.RunContext:
    run = conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).one()
    failures = (run.counts or {}).get("failures", [])
    unmeasured = frozenset(
        rid for f in failures if f["source"] == "metrics" for rid in f.get("resources", [])
    )
    return rules.RunContext(run_id, run.metrics_start, run.metrics_end, run.cost_end, unmeasured)


def store_findings(conn: Connection, run_id: int, findings: list[rules.Finding]) -> None:
    """Replace the run's findings; `first_seen` carries over from the previous run's."""
    table = schema.findings
    previous_run = conn.execute(
        select(func.max(schema.runs.c.id)).where(
            schema.runs.c.id < run_id, schema.runs.c.status.in_(schema.ANALYSED)
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
                counts={**counts, "failures": night.failures},
            )
        )
        findings = analyze(conn, run_id, settings) if with_rules else []
        status = "collected" if not with_rules else "partial" if night.failures else "succeeded"
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                status=status,
                finished_at=utc_naive(clock.now()),
                counts={**counts, "findings": len(findings), "failures": night.failures},
                error=missing_data(night.failures),
            )
        )
    return findings


def missing_data(failures: list[dict]) -> str | None:
    """One line naming what could not be collected, or None."""
    if not failures:
        return None
    first = failures[0]
    more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
    return f"missing data: {first['source']} for {first['scope']} ({first['error']}){more}"


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
        now = clock.now()
        run_id = start_run(engine, source, now, simulation)
        log.info("run %s started (source %s)", run_id, source)
        try:
            stored = stored_query_days(engine), stored_metric_hours(engine)
            night = collect(clients, settings, now, *stored)
            findings = store_night(engine, run_id, night, settings, with_rules)
            missing = missing_data(night.failures)
        except BaseException as e:
            fail_run(engine, run_id, e)
            raise
    log.info("run %s succeeded: %s finding(s)", run_id, len(findings))
    if not with_rules:
        return NightResult(run_id, len(findings), None, missing)
    with step("report") as info:
        report = produce(engine, settings, run_id)
        info["findings"] = len(findings)
    if settings.mail.enabled:
        mail_report(report, settings)
    return NightResult(run_id, len(findings), report.path, missing)


def mail_report(report: Report, settings: Settings) -> None:
    """Send the report; on failure say that nothing of the night was lost."""
    with step("mail") as info:
        try:
            send(report, settings.mail)
        except MailError as e:
            raise MailError(f"{e} (the night is stored; the report is at {report.path})") from None
        info["recipients"] = len(settings.mail.recipients)


@contextmanager
def few_collections() -> Iterator[None]:
    """A night makes and drops millions of rows, dicts and tuples without cycles, which
    reference counting frees. CPython's cycle collector still scanned them every 700 new
    objects and, once they piled up, everything alive: 7.7 s of a 10k-VM night's 72 s of CPU.
    For the night, what is alive at its start (modules, settings) is left out of collections
    and a collection waits for 50,000 new objects (0.8 s); both are undone after it."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def nightly(
    settings: Settings, source: str = "azure", with_rules: bool = True, simulation=None
) -> NightResult:
    """The night as cron, the scheduler and Azure Functions run it: store, clients and upload
    from settings."""
    from finops.azure.clients import clients_for
    from finops.store.db import engine_for

    engine = engine_for(settings.db_url)
    try:
        with few_collections():
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
