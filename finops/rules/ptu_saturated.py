"""ptu-saturated: a provisioned deployment at its limit, turning requests away (429)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import Connection

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.ptu_pricing import deployments, usage

ID = "ptu-saturated"
TITLE = "Provisioned throughput saturated"
SEVERITY = "high"
KIND = "alert"  # no saving of its own: a risk or a jump to investigate
WHY = (
    "At 100 % utilization a PTU deployment answers 429 and callers wait or fail. It is a risk, "
    "not a saving: add PTUs, or configure spillover to a pay-as-you-go deployment."
)
THRESHOLDS = ("ptu.window_days", "ptu.saturated_percent")


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    found = deployments(conn, run, provisioned=True)
    used = usage(conn, run, settings, [d["resource_id"] for d in found])
    for d in found:
        u = used.get(d["resource_id"])
        if u is None or len(u.utilization) < settings.ptu.min_hours or not u.throttled:
            continue
        summary = u.utilization_summary()
        if summary["utilization_p95"] < settings.ptu.saturated_percent:
            continue
        yield Finding(
            rule_id=ID,
            resource_id=d["resource_id"],
            severity=SEVERITY,
            title=(
                f"{d['name']} ({d['model']}, {d['capacity']} PTU) is saturated: "
                f"{u.throttled:,} requests throttled (429) in {u.hours} h"
            ),
            evidence={
                **summary,
                "hours_with_data": u.hours,
                "throttled_requests": u.throttled,
                "ptus": d["capacity"],
                "action": "add PTUs or configure spillover to a pay-as-you-go deployment",
            },
            monthly_saving=Decimal(0),
            currency="USD",
            saving_basis="none",
            proposed_action=None,
        )
