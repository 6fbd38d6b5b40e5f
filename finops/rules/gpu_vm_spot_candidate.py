"""gpu-vm-spot-candidate: interruptible GPU work (training, batch) on regular priority."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import (
    gpu_vms,
    money,
    monthly_costs,
    vm_price,
    vm_prices,
    working,
)

ID = "gpu-vm-spot-candidate"
TITLE = "Interruptible GPU work on regular priority"
SEVERITY = "medium"
WHY = (
    "Spot VMs run on Azure's spare capacity at a fraction of the pay-as-you-go price, and can "
    "be evicted with 30 seconds' notice. Work that checkpoints and resumes (training, batch "
    "inference, rendering) loses little to an eviction; serving and interactive work should "
    "stay on regular priority. The tags say which work is which."
)
THRESHOLDS = ("interruptible_tags", "idle_gpu_avg_percent", "idle_cpu_avg_percent")


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    t = settings.rules
    wanted = t.interruptible()
    vms = []
    for vm in gpu_vms(conn, run, ["running"]):
        tags = {(k.lower(), str(v).lower()) for k, v in (vm["tags"] or {}).items()}
        if vm["priority"].lower() == "regular" and tags & wanted:
            vms.append((vm, sorted(tags & wanted)))
    ids = [vm["resource_id"] for vm, _ in vms]
    busy = working(conn, run, ids, t)
    costs = monthly_costs(conn, run, [vm for vm, _ in vms])
    prices = vm_prices(conn, run)
    for vm, matched in vms:
        rid = vm["resource_id"]
        if rid not in busy:
            continue  # idle: deallocating it (idle-gpu-vm) beats any price
        payg, spot = vm_price(prices, vm, "payg"), vm_price(prices, vm, "spot")
        if not (payg and spot and payg.per_hour > 0):
            continue  # no retail prices for its size and region tonight
        cost = costs[rid]
        share = 1 - spot.per_hour / payg.per_hour
        yield Finding(
            rule_id=ID,
            resource_id=rid,
            severity=SEVERITY,
            title=f"{vm['name']} ({vm['size']}) runs {matched[0][1]} work on regular priority",
            evidence={
                "tags": ", ".join(f"{k}={v}" for k, v in matched),
                "priority": vm["priority"],
                "payg_per_hour": f"{payg.per_hour:.4f} {payg.currency}",
                "spot_per_hour": f"{spot.per_hour:.4f} {spot.currency}",
                "saving_share_percent": str(money(share * 100)),
                "prices_from": "Azure Retail Prices API, collected tonight (spot prices move)",
                "caveat": "spot VMs can be evicted with 30 seconds' notice and may not be "
                "available; the work must checkpoint and resume",
                **cost.evidence(),
            },
            monthly_saving=money(cost.amount * share),
            currency=cost.currency,
            saving_basis=cost.basis,
            proposed_action="redeploy-as-spot",
        )
