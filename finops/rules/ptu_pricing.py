"""Provisioned throughput (PTU) against pay-as-you-go: sizing, monthly cost, break-even.

A PTU carries `input_tpm_per_ptu` input tokens a minute; an output token uses `output_weight`
input tokens' worth. A deployment is billed per PTU whether used or not (hourly, or under a
monthly or yearly reservation); pay-as-you-go is billed per token.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from sqlalchemy import Connection, distinct, func, select

from finops.catalog import HOURS_PER_MONTH, SCOPES, PtuModel, ptu_models
from finops.config import Settings
from finops.rules import RunContext
from finops.rules.common import percentile
from finops.store import schema, series
from finops.store.costs import ACTUAL, AMORTIZED, counted
from finops.store.series import by_500

BASES = ("hourly", "monthly-reservation", "yearly-reservation")
MILLION = Decimal(1_000_000)
MINUTES_PER_MONTH = HOURS_PER_MONTH * 60


def is_provisioned(sku: str) -> bool:
    return sku.lower().endswith("provisionedmanaged")


def model_for(settings: Settings, model: str, sku: str) -> PtuModel | None:
    """The catalog row for a deployment's model and sku, or None (not a model we price)."""
    scope = SCOPES.get(sku.lower())
    catalog = ptu_models(str(settings.ptu.catalog_file) if settings.ptu.catalog_file else None)
    return catalog.get((model.lower(), scope)) if scope else None


def ptu_month(model: PtuModel, basis: str) -> Decimal:
    """What one PTU costs a month on a pricing basis."""
    if basis == "hourly":
        return model.ptu_hour * HOURS_PER_MONTH
    if basis == "monthly-reservation":
        return model.ptu_month_reserved
    return model.ptu_year_reserved / 12


def round_ptus(model: PtuModel, ptus: Decimal) -> int:
    """Up to the model's increment, and at least its minimum."""
    steps = (ptus / model.ptu_increment).to_integral_value(rounding=ROUND_CEILING)
    return max(model.ptu_min, int(steps) * model.ptu_increment)


def capacity_units(model: PtuModel, tokens_in: Decimal, tokens_out: Decimal) -> Decimal:
    """Tokens as a PTU counts them: input tokens plus weighted output tokens."""
    return tokens_in + model.output_weight * tokens_out


def ptus_for_rate(model: PtuModel, units_per_minute: Decimal) -> int:
    """PTUs that carry a rate of capacity units a minute."""
    return round_ptus(model, units_per_minute / model.input_tpm_per_ptu)


def payg_cost(model: PtuModel, tokens_in: Decimal, tokens_out: Decimal) -> Decimal:
    return (tokens_in * model.payg_input_per_1m + tokens_out * model.payg_output_per_1m) / MILLION


def full_ptu_payg_value(model: PtuModel, tokens_in: Decimal, tokens_out: Decimal) -> Decimal:
    """What a PTU used fully for a month would cost at pay-as-you-go prices, with the
    deployment's own mix of input and output tokens (input only when it has none)."""
    units = capacity_units(model, tokens_in, tokens_out)
    per_unit = (
        payg_cost(model, tokens_in, tokens_out) / units
        if units
        else model.payg_input_per_1m / MILLION
    )
    return model.input_tpm_per_ptu * MINUTES_PER_MONTH * per_unit


def break_even_percent(
    model: PtuModel, basis: str, tokens_in: Decimal, tokens_out: Decimal
) -> Decimal:
    """The sustained utilization above which a PTU costs less than the same tokens on
    pay-as-you-go; over 100 means it never does on price alone."""
    return ptu_month(model, basis) / full_ptu_payg_value(model, tokens_in, tokens_out) * 100


@dataclass(frozen=True)
class Option:
    label: str  # e.g. "40 PTU, hourly" or "pay-as-you-go"
    monthly: Decimal
    ptus: int | None = None
    basis: str | None = None


def cheapest_ptu(model: PtuModel, ptus: int) -> Option:
    """The cheapest basis for a PTU count (a yearly reservation, with the catalog's prices)."""
    return min(
        (Option(f"{ptus} PTU, {b}", ptus * ptu_month(model, b), ptus, b) for b in BASES),
        key=lambda o: o.monthly,
    )


@dataclass
class Usage:
    """A deployment's hourly metrics over the PTU window."""

    utilization: list[float] = field(default_factory=list)  # hourly peak, percent
    tokens_in: dict[datetime, Decimal] = field(default_factory=dict)
    tokens_out: dict[datetime, Decimal] = field(default_factory=dict)
    throttled: int = 0

    @property
    def hours(self) -> int:
        return max(len(self.utilization), len(set(self.tokens_in) | set(self.tokens_out)))

    def total_in(self) -> Decimal:
        return sum(self.tokens_in.values(), Decimal(0))

    def total_out(self) -> Decimal:
        return sum(self.tokens_out.values(), Decimal(0))

    def monthly(self, amount: Decimal) -> Decimal:
        """An amount over the hours with data, scaled to a month."""
        return amount * HOURS_PER_MONTH / self.hours if self.hours else Decimal(0)

    def utilization_summary(self) -> dict[str, float]:
        return {
            "utilization_p50": round(percentile(self.utilization, 50), 1),
            "utilization_p95": round(percentile(self.utilization, 95), 1),
            "utilization_max": round(max(self.utilization), 1),
        }

    def units_p95_per_minute(self, model: PtuModel) -> Decimal:
        """The 95th percentile over hours of the capacity units used per minute."""
        hours = sorted(set(self.tokens_in) | set(self.tokens_out))
        rates = [
            float(
                capacity_units(
                    model,
                    self.tokens_in.get(h, Decimal(0)),
                    self.tokens_out.get(h, Decimal(0)),
                )
                / 60
            )
            for h in hours
        ]
        return Decimal(str(percentile(rates, 95))) if rates else Decimal(0)


def window(run: RunContext, settings: Settings) -> tuple[datetime, datetime]:
    return run.metrics_end - timedelta(days=settings.ptu.window_days), run.metrics_end


def deployments(conn: Connection, run: RunContext, provisioned: bool) -> list[dict]:
    table = schema.ai_deployments
    rows = conn.execute(select(table).where(table.c.run_id == run.run_id))
    return [
        dict(r._mapping)
        for r in rows
        if is_provisioned(r.sku) == provisioned and r.resource_id not in run.unmeasured
    ]


def usage(
    conn: Connection, run: RunContext, settings: Settings, ids: list[str]
) -> dict[str, Usage]:
    table = series.metrics()
    start, end = window(run, settings)
    found: dict[str, Usage] = defaultdict(Usage)
    for batch in by_500(ids):
        for rid, metric, ts, average, maximum, total in conn.execute(
            select(
                table.c.resource_id,
                table.c.metric,
                table.c.ts,
                table.c.average,
                table.c.maximum,
                table.c.total,
            ).where(
                table.c.resource_key.in_(series.keys(conn, batch)),
                table.c.metric.in_(("ptu_util", "tokens_in", "tokens_out", "throttled")),
                table.c.ts >= start,
                table.c.ts < end,
            )
        ):
            entry = found[rid]
            if metric == "ptu_util" and (maximum is not None or average is not None):
                entry.utilization.append(maximum if maximum is not None else average)
            elif metric == "tokens_in" and total is not None:
                entry.tokens_in[ts] = Decimal(str(total))
            elif metric == "tokens_out" and total is not None:
                entry.tokens_out[ts] = Decimal(str(total))
            elif metric == "throttled" and total:
                entry.throttled += int(total)
    return dict(found)


@dataclass(frozen=True)
class Billing:
    basis: str  # one of BASES
    source: str  # "amortized cost" (read from the account's cost) | "config"

    def describe(self) -> str:
        return f"{self.basis} ({'from amortized cost' if self.source != 'config' else 'config'})"


def billing(
    conn: Connection, run: RunContext, settings: Settings, found: list[dict]
) -> dict[str, Billing]:
    """How each account's PTUs are billed. A reservation moves their cost out of billed cost
    into amortized cost, so the gap between the two per day, set against what the account's
    PTUs would amortize to a day under a monthly or a yearly reservation (or 0, hourly), tells
    the basis. An account without cost in the window keeps `ptu.pricing_basis` from config."""
    per_day: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(BASES, Decimal(0)))
    for d in found:
        model = model_for(settings, d["model"], d["sku"])
        if model is not None and is_provisioned(d["sku"]):
            for basis in BASES[1:]:
                month = d["capacity"] * ptu_month(model, basis)
                per_day[d["account_id"]][basis] += month / HOURS_PER_MONTH * 24
    cost = counted()
    start = window(run, settings)[0].date()
    totals: dict[str, dict[str, Decimal]] = defaultdict(dict)
    days: dict[str, int] = {}
    for rid, cost_type, amount, day_count in conn.execute(
        select(
            cost.c.resource_id,
            cost.c.cost_type,
            func.sum(cost.c.cost),
            func.count(distinct(cost.c.usage_date)),
        )
        .where(
            cost.c.resource_key.in_(series.keys(conn, list(per_day))),
            cost.c.cost_type.in_((ACTUAL, AMORTIZED)),
            cost.c.usage_date >= start,
            cost.c.usage_date < run.cost_end,
        )
        .group_by(cost.c.resource_id, cost.c.cost_type)
    ):
        totals[rid][cost_type] = Decimal(str(amount))
        days[rid] = max(days.get(rid, 0), day_count)
    found_billing = {}
    for account, expected in per_day.items():
        seen = totals.get(account, {})
        if AMORTIZED not in seen or not days.get(account):
            found_billing[account] = Billing(settings.ptu.pricing_basis, "config")
            continue
        gap = (seen[AMORTIZED] - seen.get(ACTUAL, Decimal(0))) / days[account]
        basis = min(BASES, key=lambda b: abs(expected[b] - gap))
        found_billing[account] = Billing(basis, "amortized cost")
    return found_billing
