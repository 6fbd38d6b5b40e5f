"""gpu-vm-no-auto-shutdown: a running GPU VM with no enabled auto-shutdown schedule."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import Connection, select

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import gpu_vms, money, monthly_costs
from finops.store import schema

ID = "gpu-vm-no-auto-shutdown"
TITLE = "GPU VM without auto-shutdown"
SEVERITY = "medium"
WHY = (
    "Nobody remembers to stop a GPU VM at 2 a.m. on a Saturday. An auto-shutdown schedule is "
    "the cheapest guard there is against a crashed job or a forgotten notebook running all "
    "weekend. The saving is an estimate: the VM's hourly cost for the hours outside the "
    "working window."
)
THRESHOLDS = ("working_hours", "working_days")
HOURS_PER_WEEK = Decimal(168)


def off_hours_fraction(settings: Settings) -> Decimal:
    return (HOURS_PER_WEEK - settings.rules.working_hours_per_week()) / HOURS_PER_WEEK


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    enabled = set(
        conn.execute(
            select(schema.schedules.c.resource_id).where(
                schema.schedules.c.run_id == run.run_id, schema.schedules.c.status == "Enabled"
            )
        ).scalars()
    )
    vms = [vm for vm in gpu_vms(conn, run, ["running"]) if vm["resource_id"] not in enabled]
    costs = monthly_costs(conn, run, vms)
    fraction = off_hours_fraction(settings)
    for vm in vms:
        cost = costs[vm["resource_id"]]
        yield Finding(
            rule_id=ID,
            resource_id=vm["resource_id"],
            severity=SEVERITY,
            title=f"{vm['name']} ({vm['size']}) has no auto-shutdown schedule",
            evidence={
                **cost.evidence(),
                "working_hours": settings.rules.working_hours,
                "working_days": ",".join(settings.rules.working_days),
                "off_hours_share": f"{fraction * 100:.1f} %",
                "estimate": "hourly cost x hours outside the working window",
            },
            monthly_saving=money(cost.amount * fraction),
            currency=cost.currency,
            saving_basis=f"estimate-{cost.basis}",
            proposed_action="create-auto-shutdown",
        )
