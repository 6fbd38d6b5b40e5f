"""gpu-quota-near-limit: a GPU family's vCPU quota nearly used up where GPU VMs run."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import Connection, select

from finops.catalog import gpu_sizes
from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import gpu_vms
from finops.store import schema

ID = "gpu-quota-near-limit"
TITLE = "GPU quota nearly used up"
SEVERITY = "medium"
KIND = "alert"
WHY = (
    "GPU quotas are small and an increase takes days, sometimes weeks for the newest GPUs. A "
    "family near its limit where GPU VMs run means the next training job, or the replacement "
    "of a failed node, will not start: ask for the increase before it is needed."
)
THRESHOLDS = ("quota_near_percent",)


def _key(family: str) -> str:
    """Quota family names differ in case and spacing between APIs."""
    return family.replace(" ", "").lower()


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    sizes = schema.vm_sizes
    gpu_families = {_key(s.quota_family) for s in gpu_sizes().values()} | {
        _key(family)
        for (family,) in conn.execute(
            select(sizes.c.family).where(sizes.c.run_id == run.run_id, sizes.c.gpus > 0)
        )
    }
    running: dict[tuple[str, str], int] = {}
    for vm in gpu_vms(conn, run, ["running", "starting", "stopped"]):
        key = (vm["subscription_id"], vm["location"])
        running[key] = running.get(key, 0) + 1
    quotas = schema.quotas
    for q in conn.execute(select(quotas).where(quotas.c.run_id == run.run_id)):
        if _key(q.family) not in gpu_families or not q.limit:
            continue
        vms = running.get((q.subscription_id, q.location), 0)
        percent = Decimal(q.current_value * 100) / q.limit
        if not vms or percent < Decimal(str(settings.rules.quota_near_percent)):
            continue
        yield Finding(
            rule_id=ID,
            resource_id=(
                f"/subscriptions/{q.subscription_id}/providers/microsoft.compute/locations/"
                f"{q.location}/usages/{q.family.lower()}"
            ),
            severity=SEVERITY,
            title=(
                f"GPU quota {q.display_name} in {q.location} is {percent:.0f} % used "
                f"({q.current_value} of {q.limit} vCPUs)"
            ),
            evidence={
                "family": q.family,
                "region": q.location,
                "used_vcpus": q.current_value,
                "limit_vcpus": q.limit,
                "percent_used": f"{percent:.1f}",
                "gpu_vms_in_region": vms,
                "action": "request a quota increase now: it takes days",
            },
            monthly_saving=Decimal(0),
            currency=settings.currency,
            saving_basis="none",
            proposed_action=None,
        )
