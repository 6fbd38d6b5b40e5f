"""Store queries and arithmetic that several rules share."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import ColumnElement, Connection, Text, case, cast, func, select

from finops.catalog import CATALOG_CURRENCY, HOURS_PER_MONTH, gpu_size
from finops.config import RuleSettings
from finops.rules import RunContext
from finops.store import schema, series
from finops.store.costs import ACTUAL, AMORTIZED, counted
from finops.store.series import by_500

BILLED_DAYS = 7
COMPUTE_METER = "Virtual Machines"
CENTS = Decimal("0.01")


def money(value: Decimal) -> Decimal:
    return value.quantize(CENTS, rounding=ROUND_HALF_UP)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def gpu_vms(conn: Connection, run: RunContext, power_states: Iterable[str]) -> list[dict]:
    """The run's VMs in the given power states whose size has GPUs, with their GPU facts."""
    vms, sizes = schema.vms, schema.vm_sizes
    query = (
        select(vms, sizes.c.gpus, sizes.c.gpu_model, sizes.c.gpu_memory_gb)
        .join(sizes, (sizes.c.run_id == vms.c.run_id) & (sizes.c.size == vms.c.size))
        .where(vms.c.run_id == run.run_id, sizes.c.gpus > 0)
        .where(vms.c.power_state.in_(list(power_states)))
        .order_by(vms.c.resource_id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


@dataclass(frozen=True)
class MonthlyCost:
    amount: Decimal  # per month, unrounded
    currency: str
    basis: str  # amortized | billed | list-price | none
    detail: str

    def evidence(self) -> dict[str, str]:
        return {
            "monthly_cost": str(money(self.amount)),
            "currency": self.currency,
            "cost_basis": self.basis,
            "cost_detail": self.detail,
        }


@dataclass
class DailyCosts:
    """Per resource: day -> billed cost, day -> amortized cost, and its currency."""

    billed: dict[str, dict[date, Decimal]] = field(default_factory=dict)
    amortized: dict[str, dict[date, Decimal]] = field(default_factory=dict)
    currency: dict[str, str] = field(default_factory=dict)


def daily_costs(
    conn: Connection, run: RunContext, ids: list[str], meter: str, days: int
) -> DailyCosts:
    """The resources' daily costs of one meter category over the last `days` complete days."""
    costs = counted()
    first = run.cost_end - timedelta(days=days)
    daily = DailyCosts()
    for batch in by_500(ids):
        rows = conn.execute(
            select(
                costs.c.resource_id,
                costs.c.cost_type,
                costs.c.usage_date,
                costs.c.cost,
                costs.c.currency,
            ).where(
                costs.c.resource_key.in_(series.keys(conn, batch)),
                costs.c.cost_type.in_((ACTUAL, AMORTIZED)),
                costs.c.meter_category == meter,
                costs.c.usage_date >= first,
                costs.c.usage_date < run.cost_end,
            )
        )
        for rid, cost_type, day, cost, currency in rows:
            by_day = (daily.billed if cost_type == ACTUAL else daily.amortized).setdefault(rid, {})
            by_day[day] = by_day.get(day, Decimal(0)) + Decimal(str(cost))
            daily.currency[rid] = currency
    return daily


def monthly_costs(
    conn: Connection, run: RunContext, resources: list[dict], meter: str = COMPUTE_METER
) -> dict[str, MonthlyCost]:
    """Each resource's cost per month at its own rate: amortized where a reservation or savings
    plan makes it differ from the billed cost, else billed, else (VMs) the catalog's list price.

    The rate is the highest daily cost (of one meter category: compute for VMs) of the last
    complete days: a day the resource ran throughout, at the customer's own price. A mean would
    be dragged down by the day it was started and by a day not yet settled.
    """
    daily = daily_costs(conn, run, [r["resource_id"] for r in resources], meter, BILLED_DAYS)
    currencies = daily.currency
    result = {}
    for vm in resources:
        rid = vm["resource_id"]
        billed = daily.billed.get(rid, {})
        amortized = daily.amortized.get(rid, {})
        top_billed = max(billed.values(), default=Decimal(0))
        top_amortized = max(amortized.values(), default=Decimal(0))
        if top_amortized > 0 and abs(top_amortized - top_billed) >= CENTS:
            currency = currencies[rid]
            result[rid] = MonthlyCost(
                top_amortized * HOURS_PER_MONTH / 24,
                currency,
                "amortized",
                f"highest daily amortized cost of the last {len(amortized)} day(s), "
                f"{money(top_amortized)} {currency}, x 730 h / 24 (billed "
                f"{money(top_billed)} {currency} a day: a reservation or savings plan covers "
                "it, so the saving is real once the commitment serves other VMs)",
            )
        elif top_billed > 0:
            currency = currencies[rid]
            result[rid] = MonthlyCost(
                top_billed * HOURS_PER_MONTH / 24,
                currency,
                "billed",
                f"highest daily billed cost of the last {len(billed)} day(s), "
                f"{money(top_billed)} {currency}, x 730 h / 24",
            )
        elif (catalog := gpu_size(vm.get("size", ""))) and catalog.monthly_list_price is not None:
            result[rid] = MonthlyCost(
                catalog.monthly_list_price,
                CATALOG_CURRENCY,
                "list-price",
                f"catalog list price {catalog.usd_per_hour} {CATALOG_CURRENCY}/h x 730 h",
            )
        else:
            result[rid] = MonthlyCost(
                Decimal(0), CATALOG_CURRENCY, "none", "no billed cost and no list price"
            )
    return result


@dataclass(frozen=True)
class Utilisation:
    hours: int
    average: float
    p95_max: float
    newest: datetime


def utilisation(
    conn: Connection, run: RunContext, metric: str, resource_ids: list[str]
) -> dict[str, Utilisation]:
    """Per resource over the run's metrics window: hours with data, the mean of hourly
    averages, and the 95th percentile of hourly maxima. Computed once a night per resource and
    metric: idle-gpu-vm, gpu-vm-oversized and the commitment rules ask for the same VMs. The
    database sends one row per resource with its hours' values joined in a string: fetching
    an hour a row cost 2.4 us an hour through the driver and SQLAlchemy, 2 M hours at 50k VMs."""
    known = run.measured.setdefault(metric, {})
    table = series.metrics()
    averaged = table.c.average.is_not(None)
    for batch in by_500(set(resource_ids) - known.keys()):
        rows = conn.execute(
            select(
                table.c.resource_id,
                func.max(case((averaged, table.c.ts))),
                _joined(conn, table.c.average),
                _joined(conn, func.coalesce(table.c.maximum, table.c.average)),
            )
            .where(
                table.c.resource_key.in_(series.keys(conn, batch)),
                table.c.metric == metric,
                table.c.ts >= run.metrics_start,
                table.c.ts < run.metrics_end,
            )
            .group_by(table.c.resource_id)
        )
        figures = {}
        for rid, newest, averages, maxima in rows:
            if averages:
                values = list(map(float, averages.split(",")))
                figures[rid] = Utilisation(
                    hours=len(values),
                    average=round(sum(values) / len(values), 2),
                    p95_max=round(percentile(list(map(float, maxima.split(","))), 95), 2),
                    newest=newest,
                )
        for rid in batch:
            known[rid] = figures.get(rid)
    return {rid: found for rid in resource_ids if (found := known[rid])}


def _joined(conn: Connection, values: ColumnElement) -> ColumnElement:
    """A group's non-null numbers as one comma-separated string (NULL when there are none),
    each written so that it reads back as the same float: PostgreSQL's float text is the
    shortest exact one; SQLite's is 15 digits, so it is asked for 17."""
    if conn.dialect.name == "postgresql":
        return func.string_agg(cast(values, Text), ",")
    return func.group_concat(case((values.is_not(None), func.printf("%!.17g", values))), ",")


def idle_verdict(gpu: Utilisation | None, cpu: Utilisation | None, t: RuleSettings) -> bool | None:
    """Whether a VM is idle by idle-gpu-vm's thresholds: by its GPUs where their telemetry
    arrives, else by its CPU; None with too little data for a verdict."""
    if gpu and gpu.hours >= t.idle_min_hours:
        return gpu.average < t.idle_gpu_avg_percent and gpu.p95_max < t.idle_gpu_p95_percent
    if cpu and cpu.hours >= t.idle_min_hours:
        return cpu.average < t.idle_cpu_avg_percent
    return None


def working(conn: Connection, run: RunContext, ids: list[str], t: RuleSettings) -> set[str]:
    """The VMs measured tonight and not idle by idle-gpu-vm's thresholds: those worth a
    cheaper price (an idle one is worth deallocating, one without data gets no verdict)."""
    gpu = utilisation(conn, run, "gpu", ids)
    cpu = utilisation(conn, run, "cpu", ids)
    return {
        rid
        for rid in ids
        if rid not in run.unmeasured and idle_verdict(gpu.get(rid), cpu.get(rid), t) is False
    }


@dataclass(frozen=True)
class Price:
    per_hour: Decimal
    currency: str


def vm_prices(conn: Connection, run: RunContext) -> dict[tuple[str, str, str, str], Price]:
    """(region, lower-cased size, offer, os) -> the retail price collected tonight."""
    table = schema.vm_prices
    rows = conn.execute(select(table).where(table.c.run_id == run.run_id))
    return {
        (r.location, r.size.lower(), r.offer, r.os): Price(Decimal(str(r.per_hour)), r.currency)
        for r in rows
    }


def vm_price(prices: dict[tuple[str, str, str, str], Price], vm: dict, offer: str) -> Price | None:
    """A VM's price for an offer, for its OS (a reservation's for any OS)."""
    os = "any" if offer.startswith("reservation") else str(vm["os_type"]).lower()
    key = (vm["location"], vm["size"].lower(), offer)
    return prices.get((*key, os)) or prices.get((*key, "linux"))
