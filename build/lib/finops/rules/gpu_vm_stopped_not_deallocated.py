"""gpu-vm-stopped-not-deallocated: a GPU VM stopped from inside, still billed for compute."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import gpu_vms, money, monthly_costs

ID = "gpu-vm-stopped-not-deallocated"
TITLE = "GPU VM stopped but not deallocated"
SEVERITY = "high"
WHY = (
    "A VM shut down from its operating system (or powered off through the API) is 'stopped', "
    "not 'deallocated': Azure keeps its hardware reserved and bills the compute in full. Only "
    "deallocation stops the meter."
)
THRESHOLDS: tuple[str, ...] = ()


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    vms = gpu_vms(conn, run, ["stopped"])
    costs = monthly_costs(conn, run, vms)
    for vm in vms:
        cost = costs[vm["resource_id"]]
        yield Finding(
            rule_id=ID,
            resource_id=vm["resource_id"],
            severity=SEVERITY,
            title=f"{vm['name']} ({vm['size']}) is stopped but still billed",
            evidence={"power_state": vm["power_state"], **cost.evidence()},
            monthly_saving=money(cost.amount),
            currency=cost.currency,
            saving_basis=cost.basis,
            proposed_action="deallocate",
        )
