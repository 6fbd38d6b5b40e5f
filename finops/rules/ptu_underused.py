"""ptu-underused: a provisioned deployment paying for far more PTUs than its peak use needs."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import Connection

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import money
from finops.rules.ptu_pricing import (
    Option,
    billing,
    break_even_percent,
    deployments,
    model_for,
    payg_cost,
    ptu_month,
    round_ptus,
    usage,
)

ID = "ptu-underused"
TITLE = "Provisioned throughput under-used"
SEVERITY = "high"
WHY = (
    "A provisioned (PTU) deployment is billed for every PTU every hour, used or not. One whose "
    "peak use stays well under its capacity pays for idle PTUs: fewer PTUs carry the same "
    "peak, and pay-as-you-go may carry the tokens for less still."
)
THRESHOLDS = ("ptu.window_days", "ptu.underused_p95_percent", "ptu.target_percent")


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    ptu = settings.ptu
    found = deployments(conn, run, provisioned=True)
    used = usage(conn, run, settings, [d["resource_id"] for d in found])
    billed = billing(conn, run, settings, found)
    for d in found:
        model = model_for(settings, d["model"], d["sku"])
        u = used.get(d["resource_id"])
        if model is None or u is None or len(u.utilization) < ptu.min_hours or not d["capacity"]:
            continue
        summary = u.utilization_summary()
        p95 = Decimal(str(summary["utilization_p95"]))
        if p95 >= Decimal(str(ptu.underused_p95_percent)):
            continue
        basis = billed[d["account_id"]].basis
        current = d["capacity"] * ptu_month(model, basis)
        needed = round_ptus(model, d["capacity"] * p95 / Decimal(str(ptu.target_percent)))
        tokens_in, tokens_out = u.total_in(), u.total_out()
        payg = u.monthly(payg_cost(model, tokens_in, tokens_out))
        options = [Option("pay-as-you-go", payg)]
        if needed < d["capacity"]:
            options.append(
                Option(f"{needed} PTU, {basis}", needed * ptu_month(model, basis), needed, basis)
            )
        best = min(options, key=lambda o: o.monthly)
        saving = max(Decimal(0), current - best.monthly)
        yield Finding(
            rule_id=ID,
            resource_id=d["resource_id"],
            severity=SEVERITY,
            title=(
                f"{d['name']} ({d['model']}, {d['capacity']} PTU) peaks at {p95} % (p95): "
                f"{best.label} would do"
            ),
            evidence={
                **summary,
                "hours_with_data": u.hours,
                "tokens_in": int(tokens_in),
                "tokens_out": int(tokens_out),
                "ptus": d["capacity"],
                "pricing_basis": basis,
                "pricing_basis_from": billed[d["account_id"]].source,
                **(
                    {"commitment": "the saving comes when the reservation renews or is exchanged"}
                    if basis != "hourly"
                    else {}
                ),
                "monthly_cost": str(money(current)),
                "right_sized_ptus": needed,
                "right_sized_monthly_cost": str(money(needed * ptu_month(model, basis))),
                "payg_monthly_cost": str(money(payg)),
                "break_even_percent": str(
                    money(break_even_percent(model, basis, tokens_in, tokens_out))
                ),
                "recommendation": best.label,
                "currency": model.currency,
            },
            monthly_saving=money(saving),
            currency=model.currency,
            saving_basis=f"ptu-{basis}",
            proposed_action="move-to-pay-as-you-go" if best.ptus is None else "reduce-ptu",
        )
