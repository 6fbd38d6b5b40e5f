"""payg-ptu-candidate: a pay-as-you-go deployment busy enough that PTUs would cost less."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import money
from finops.rules.ptu_pricing import (
    break_even_percent,
    cheapest_ptu,
    deployments,
    model_for,
    payg_cost,
    ptus_for_rate,
    usage,
)

ID = "payg-ptu-candidate"
TITLE = "Pay-as-you-go deployment cheaper on PTU"
SEVERITY = "medium"
WHY = (
    "Pay-as-you-go tokens cost the same at any volume. A deployment that uses tokens steadily "
    "and heavily can carry its peak on provisioned throughput for less, usually under a yearly "
    "reservation: a commitment, so the finding states it."
)
THRESHOLDS = ("ptu.window_days",)


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    found = deployments(conn, run, provisioned=False)
    used = usage(conn, run, settings, [d["resource_id"] for d in found])
    for d in found:
        model = model_for(settings, d["model"], d["sku"])
        u = used.get(d["resource_id"])
        if model is None or u is None or u.hours < settings.ptu.min_hours:
            continue
        tokens_in, tokens_out = u.total_in(), u.total_out()
        payg = u.monthly(payg_cost(model, tokens_in, tokens_out))
        peak = u.units_p95_per_minute(model)
        ptus = ptus_for_rate(model, peak)
        best = cheapest_ptu(model, ptus)
        if best.monthly >= payg:
            continue
        commitment = {
            "yearly-reservation": f"{ptus} PTU for a year: {money(ptus * model.ptu_year_reserved)}",
            "monthly-reservation": f"{ptus} PTU a month: {money(best.monthly)}",
            "hourly": "none (hourly, no commitment)",
        }[best.basis]
        yield Finding(
            rule_id=ID,
            resource_id=d["resource_id"],
            severity=SEVERITY,
            title=(
                f"{d['name']} ({d['model']}, {d['sku']}) spends {model.currency} "
                f"{money(payg):,.2f} a month on tokens: {best.label} would carry its peak"
            ),
            evidence={
                "hours_with_data": u.hours,
                "tokens_in": int(tokens_in),
                "tokens_out": int(tokens_out),
                "p95_tokens_per_minute": int(peak),
                "payg_monthly_cost": str(money(payg)),
                "ptus": ptus,
                "ptu_monthly_cost": str(money(best.monthly)),
                "pricing_basis": best.basis,
                "commitment": f"{commitment} {model.currency}",
                "break_even_percent": str(
                    money(break_even_percent(model, best.basis, tokens_in, tokens_out))
                ),
                "recommendation": best.label,
                "currency": model.currency,
            },
            monthly_saving=money(payg - best.monthly),
            currency=model.currency,
            saving_basis=f"ptu-{best.basis}",
            proposed_action="move-to-ptu",
        )
