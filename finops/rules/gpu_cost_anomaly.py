"""gpu-cost-anomaly: a resource group's (or subscription's) daily GPU spend far above its
trailing median: the crashed training job's nodes, found on the first bill, not the month's."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import Connection, func, select

from finops.catalog import HOURS_PER_MONTH
from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import money
from finops.store import schema, series
from finops.store.costs import counted, spend_type
from finops.store.series import by_500

ID = "gpu-cost-anomaly"
TITLE = "GPU spend jumped"
SEVERITY = "high"
KIND = "alert"  # no saving of its own: a risk or a jump to investigate
WHY = (
    "A day's GPU spend well above its usual level is how a forgotten cluster or a runaway job "
    "first shows on the bill. Caught the next morning it costs a day; caught at month end it "
    "costs the month. The finding names the resources that drove the jump: investigate them."
)
THRESHOLDS = ("anomaly_percent", "anomaly_min_amount", "anomaly_baseline_days")
DRIVERS = 5


def _gpu_vm_ids(run: RunContext, since: date):
    """Every VM with GPUs the store saw since `since`: one deleted since still has its cost."""
    vms, sizes, runs = schema.vms, schema.vm_sizes, schema.runs
    recent = select(runs.c.id).where(runs.c.id <= run.run_id, func.date(runs.c.started_at) >= since)
    return (
        select(vms.c.resource_id)
        .join(sizes, (sizes.c.run_id == vms.c.run_id) & (sizes.c.size == vms.c.size))
        .where(sizes.c.gpus > 0, vms.c.run_id.in_(recent))
        .distinct()
    )


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    rules = settings.rules
    day = run.cost_end - timedelta(days=1)  # the newest complete day
    first = day - timedelta(days=rules.anomaly_baseline_days)
    cost_type = spend_type(conn, first, run.cost_end)
    costs = counted()
    columns = (
        costs.c.resource_id,
        costs.c.subscription_id,
        costs.c.resource_group,
        costs.c.currency,
        costs.c.usage_date,
    )
    # scope -> resource -> day -> amount, scopes being (currency, subscription, group or "")
    spend: dict[tuple, dict[str, dict[date, Decimal]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(Decimal))
    )
    for batch in by_500(conn.execute(_gpu_vm_ids(run, first)).scalars()):
        query = (
            select(*columns, func.sum(costs.c.cost))
            .where(
                costs.c.cost_type == cost_type,
                costs.c.usage_date.between(first, day),
                costs.c.resource_key.in_(series.keys(conn, batch)),
            )
            .group_by(*columns)
        )
        for rid, sub, group, currency, usage_date, amount in conn.execute(query):
            for scope in ((currency, sub, group), (currency, sub, "")):
                spend[scope][rid][usage_date] += Decimal(str(amount))
    baseline_days = [first + timedelta(days=i) for i in range(rules.anomaly_baseline_days)]
    fired_subscriptions = set()
    for scope in sorted(spend, key=lambda s: s[2] == ""):  # groups before subscriptions
        currency, sub, group = scope
        if not group and (currency, sub) in fired_subscriptions:
            continue
        resources = spend[scope]
        total = sum((r[day] for r in resources.values()), Decimal(0))
        median = statistics.median(
            sum((r[d] for r in resources.values()), Decimal(0)) for d in baseline_days
        )
        excess = total - median
        if excess <= rules.anomaly_min_amount or excess * 100 <= median * Decimal(
            str(rules.anomaly_percent)
        ):
            continue
        fired_subscriptions.add((currency, sub))
        yield _finding(scope, day, total, median, excess, resources, baseline_days, cost_type)


def _finding(scope, day, total, median, excess, resources, baseline_days, cost_type) -> Finding:
    currency, sub, group = scope
    scope_id = f"/subscriptions/{sub}" + (f"/resourcegroups/{group}" if group else "")
    where = f"resource group {group}" if group else f"subscription {sub}"
    drivers = sorted(
        (
            (days[day] - statistics.median(days[d] for d in baseline_days), rid, days[day])
            for rid, days in resources.items()
        ),
        reverse=True,
    )
    percent = f"{excess / median * 100:.0f} %" if median else "from nothing"
    return Finding(
        rule_id=ID,
        resource_id=scope_id,
        severity=SEVERITY,
        title=(
            f"GPU spend of {where} jumped {percent} on {day}: {currency} {money(total):,.2f} "
            f"against a median of {currency} {money(median):,.2f}"
        ),
        evidence={
            "scope": scope_id,
            "day": day.isoformat(),
            "spend": str(money(total)),
            "baseline_median": str(money(median)),
            "baseline_days": len(baseline_days),
            "excess": str(money(excess)),
            "monthly_at_stake": str(money(excess * HOURS_PER_MONTH / 24)),
            "currency": currency,
            "cost_type": cost_type,
            "drivers": [
                {"resource_id": rid, "spend": str(money(amount)), "above_usual": str(money(up))}
                for up, rid, amount in drivers[:DRIVERS]
                if up > 0
            ],
            "action": "investigate: confirm the spend is intended, stop it if not",
        },
        monthly_saving=Decimal(0),
        currency=currency,
        saving_basis="none",
        proposed_action=None,
    )
