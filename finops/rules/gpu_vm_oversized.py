"""gpu-vm-oversized: a GPU VM using a fraction of its GPUs' memory and compute, on a size whose
family has a smaller one that carries the same work."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import Connection, select

from finops.catalog import gpu_size
from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import gpu_vms, money, monthly_costs, utilisation
from finops.store import schema

ID = "gpu-vm-oversized"
TITLE = "GPU VM larger than its work"
SEVERITY = "medium"
WHY = (
    "GPU sizes in a family differ by GPU count and the price doubles with it. A VM whose GPUs "
    "hold a fraction of their memory and do a fraction of the work pays for GPUs it does not "
    "use: the smaller size of the same family carries the same model with headroom."
)
THRESHOLDS = (
    "oversized_memory_p95_percent",
    "oversized_gpu_p95_percent",
    "oversized_headroom_percent",
    "oversized_target_gpu_percent",
    "idle_min_hours",
)
MIB_PER_GB = 1024


def vram_gb(gpus: Decimal, memory_gb: int) -> Decimal:
    """A size's GPU memory in all: a partition's (fractional GPU) memory, or per GPU x GPUs."""
    return Decimal(memory_gb) * max(gpus, Decimal(1))


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    t = settings.rules
    vms = gpu_vms(conn, run, ["running"])
    ids = [vm["resource_id"] for vm in vms]
    gpu = utilisation(conn, run, "gpu", ids)
    memory = utilisation(conn, run, "gpu_memory", ids)
    sizes = schema.vm_sizes
    offered = {
        r.size.lower(): dict(r._mapping)
        for r in conn.execute(select(sizes).where(sizes.c.run_id == run.run_id, sizes.c.gpus > 0))
    }
    costs = monthly_costs(conn, run, vms)
    for vm in vms:
        rid = vm["resource_id"]
        g, m = gpu.get(rid), memory.get(rid)
        current = gpu_size(vm["size"])
        own = offered.get(vm["size"].lower())
        if rid in run.unmeasured or not (g and m and own and vm["gpu_memory_gb"]):
            continue
        if current is None or current.usd_per_hour is None:
            continue  # no list price to compare sizes by
        if min(g.hours, m.hours) < t.idle_min_hours or g.average < t.idle_gpu_avg_percent:
            continue  # too little data, or idle: idle-gpu-vm's verdict
        memory_percent = m.p95_max / (vm["gpu_memory_gb"] * MIB_PER_GB) * 100
        if (
            memory_percent >= t.oversized_memory_p95_percent
            or g.p95_max > t.oversized_gpu_p95_percent
        ):
            continue
        gpus = Decimal(vm["gpus"])
        # Every GPU counted at the p95 of the busiest one: a conservative total.
        needed_gb = Decimal(str(m.p95_max)) / MIB_PER_GB * max(gpus, Decimal(1))
        wanted_gb = needed_gb * (1 + Decimal(str(t.oversized_headroom_percent)) / 100)
        work = Decimal(str(g.p95_max)) / 100 * gpus  # in whole GPUs
        fitting = []
        for size in offered.values():
            price = gpu_size(size["size"])
            if price is None or price.usd_per_hour is None:
                continue
            smaller_gpus = Decimal(size["gpus"])
            if (
                size["family"].lower() == own["family"].lower()
                and size["gpu_model"] == vm["gpu_model"]
                and smaller_gpus < gpus
                and price.usd_per_hour < current.usd_per_hour
                and vram_gb(smaller_gpus, size["gpu_memory_gb"] or 0) >= wanted_gb
                and work / smaller_gpus * 100 <= Decimal(t.oversized_target_gpu_percent)
            ):
                fitting.append((price.usd_per_hour, size["size"], smaller_gpus))
        if not fitting:
            continue
        price, smaller, smaller_gpus = min(fitting)
        cost = costs[rid]
        share = 1 - price / current.usd_per_hour
        yield Finding(
            rule_id=ID,
            resource_id=rid,
            severity=SEVERITY,
            title=f"{vm['name']} ({vm['size']}) would fit on {smaller}",
            evidence={
                "gpu_memory_p95_gb": str(round(Decimal(str(m.p95_max)) / MIB_PER_GB, 1)),
                "gpu_memory_p95_percent": round(memory_percent, 1),
                "gpu_p95_max_percent": g.p95_max,
                "gpu_avg_percent": g.average,
                "hours_with_data": min(g.hours, m.hours),
                "vram_gb": str(vram_gb(gpus, vm["gpu_memory_gb"])),
                "vram_needed_gb": str(round(wanted_gb, 1)),
                "proposed_size": smaller,
                "proposed_gpu_p95_percent": str(round(work / smaller_gpus * 100, 1)),
                "list_price_per_hour": f"{current.usd_per_hour} -> {price} USD",
                "saving_share_percent": str(money(share * 100)),
                "caveat": "the list-price ratio applied to its cost; check the smaller size's "
                "vCPUs and RAM fit the job too",
                **cost.evidence(),
            },
            monthly_saving=money(cost.amount * share),
            currency=cost.currency,
            saving_basis=cost.basis,
            proposed_action="resize",
        )
