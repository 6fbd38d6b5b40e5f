"""idle-gpu-vm: a running GPU VM whose GPUs have done (almost) nothing over the window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from sqlalchemy import Connection

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import gpu_vms, idle_verdict, money, monthly_costs, utilisation

ID = "idle-gpu-vm"
TITLE = "Idle GPU VM"
SEVERITY = "high"
WHY = (
    "A running GPU VM is billed by the hour whether its GPUs work or not; one idle A100 node "
    "costs more a day than most teams' whole CPU fleet. GPU utilisation is the measure (CPU can "
    "be busy feeding nothing); without GPU telemetry the rule falls back to CPU and says so."
)
THRESHOLDS = (
    "idle_gpu_avg_percent",
    "idle_gpu_p95_percent",
    "idle_cpu_avg_percent",
    "idle_min_hours",
    "idle_max_data_age_hours",
)


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    t = settings.rules
    vms = gpu_vms(conn, run, ["running"])
    ids = [vm["resource_id"] for vm in vms]
    gpu = utilisation(conn, run, "gpu", ids)
    cpu = utilisation(conn, run, "cpu", ids)
    costs = monthly_costs(conn, run, vms)
    # Only data reaching close to tonight counts: when tonight's metrics could not be read, the
    # nights before must not make a VM look idle (it may have got busy since).
    fresh_after = run.metrics_end - timedelta(hours=t.idle_max_data_age_hours)
    gpu = {rid: u for rid, u in gpu.items() if u.newest >= fresh_after}
    cpu = {rid: u for rid, u in cpu.items() if u.newest >= fresh_after}
    for vm in vms:
        rid = vm["resource_id"]
        if rid in run.unmeasured:
            continue  # tonight's metrics failed for it: no verdict on older data
        g, c = gpu.get(rid), cpu.get(rid)
        idle = idle_verdict(g, c, t)
        if not idle:
            continue  # working, or too little data for a verdict
        if g and g.hours >= t.idle_min_hours:
            measured = {
                "signal": "gpu",
                "gpu_avg_percent": g.average,
                "gpu_p95_max_percent": g.p95_max,
                "hours_with_data": g.hours,
                "thresholds": f"GPU average < {t.idle_gpu_avg_percent} % and "
                f"p95 < {t.idle_gpu_p95_percent} %",
            }
        else:
            measured = {
                "signal": "cpu",
                "gpu_telemetry": "missing",
                "cpu_avg_percent": c.average,
                "hours_with_data": c.hours,
                "thresholds": f"CPU average < {t.idle_cpu_avg_percent} % (no GPU telemetry)",
            }
        cost = costs[rid]
        yield Finding(
            rule_id=ID,
            resource_id=rid,
            severity=SEVERITY,
            title=f"{vm['name']} ({vm['size']}) is running idle",
            evidence={**measured, "window_days": settings.metrics_days, **cost.evidence()},
            monthly_saving=money(cost.amount),
            currency=cost.currency,
            saving_basis=cost.basis,
            proposed_action="deallocate",
        )
