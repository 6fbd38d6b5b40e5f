"""gpu-disks-orphaned: managed disks billed while nothing uses them: left unattached, or kept by a
GPU VM deallocated for weeks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from sqlalchemy import Connection, select

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import gpu_vms, money, monthly_costs
from finops.store import schema

ID = "gpu-disks-orphaned"
TITLE = "Disk billed for nothing"
SEVERITY = "medium"
WHY = (
    "A managed disk is billed by its provisioned size whether a VM uses it or not. Training "
    "runs leave multi-terabyte checkpoint disks behind, and a GPU VM deallocated for weeks "
    "still pays for its disks. Snapshot what is worth keeping (a fraction of the price) and "
    "delete the disk."
)
THRESHOLDS = ("disk_unattached_days", "disk_deallocated_days")
STORAGE_METER = "Storage"


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    t = settings.rules
    table = schema.disks
    disks = [
        dict(r._mapping)
        for r in conn.execute(
            select(table).where(table.c.run_id == run.run_id).order_by(table.c.resource_id)
        )
    ]
    parked = {vm["resource_id"]: vm for vm in gpu_vms(conn, run, ["deallocated"])}
    now = run.metrics_end
    candidates = []
    for disk in disks:
        changed = disk["owner_changed"]
        days = (now - changed) / timedelta(days=1) if changed else None
        if disk["state"].lower() == "unattached" and not disk["managed_by"]:
            if days is not None and days < t.disk_unattached_days:
                continue  # just detached: a redeploy or a move in progress
            why = "unattached"
        elif disk["managed_by"] in parked and disk["state"].lower() == "reserved":
            if days is None or days < t.disk_deallocated_days:
                continue
            why = f"its GPU VM {parked[disk['managed_by']]['name']} is deallocated"
        else:
            continue
        candidates.append((disk, why, days))
    costs = monthly_costs(conn, run, [d for d, _, _ in candidates], STORAGE_METER)
    for disk, why, days in candidates:
        cost = costs[disk["resource_id"]]
        if cost.amount <= 0:
            continue  # not billed in the store's days: nothing to save that we can show
        since = f"{days:.0f} days" if days is not None else "an unknown time"
        yield Finding(
            rule_id=ID,
            resource_id=disk["resource_id"],
            severity=SEVERITY,
            title=f"{disk['name']} ({disk['size_gb']} GiB {disk['sku']}): {why} for {since}",
            evidence={
                "disk_state": disk["state"],
                "managed_by": disk["managed_by"] or "nothing",
                "days_in_state": round(days, 1) if days is not None else None,
                "size_gb": disk["size_gb"],
                "sku": disk["sku"],
                "thresholds": f"unattached {t.disk_unattached_days} days or more; attached to "
                f"a GPU VM deallocated {t.disk_deallocated_days} days or more",
                "caveat": "snapshot it first if its data may be needed again",
                **cost.evidence(),
            },
            monthly_saving=money(cost.amount),
            currency=cost.currency,
            saving_basis=cost.basis,
            proposed_action="snapshot-and-delete",
        )
