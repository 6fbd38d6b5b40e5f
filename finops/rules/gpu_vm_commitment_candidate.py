"""gpu-vm-commitment-candidate: a working GPU VM that runs nearly every hour on pay-as-you-go."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import Connection

from finops.catalog import HOURS_PER_MONTH
from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import (
    CENTS,
    COMPUTE_METER,
    daily_costs,
    gpu_vms,
    money,
    vm_price,
    vm_prices,
    working,
)

ID = "gpu-vm-commitment-candidate"
TITLE = "Always-on GPU VM on pay-as-you-go"
SEVERITY = "medium"
WHY = (
    "A GPU VM that runs nearly every hour of the month pays the pay-as-you-go rate for "
    "capacity it uses like a fixed asset. A 1- or 3-year reservation for its size and region "
    "costs a fraction of that rate, billed whether the VM runs or not, so it suits only VMs "
    "that keep running; a reservation can be exchanged for another size if the work moves."
)
THRESHOLDS = (
    "commitment_running_percent",
    "commitment_days",
    "idle_gpu_avg_percent",
    "idle_cpu_avg_percent",
)


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    t = settings.rules
    days = min(t.commitment_days, settings.cost_days)
    vms = [vm for vm in gpu_vms(conn, run, ["running"]) if vm["priority"].lower() == "regular"]
    ids = [vm["resource_id"] for vm in vms]
    busy = working(conn, run, ids, t)
    daily = daily_costs(conn, run, ids, COMPUTE_METER, days)
    prices = vm_prices(conn, run)
    for vm in vms:
        rid = vm["resource_id"]
        if rid not in busy:
            continue  # idle (idle-gpu-vm's verdict) or unknown: nothing to commit to
        billed = daily.billed.get(rid, {})
        amortized = daily.amortized.get(rid, {})
        if any(
            abs(amortized.get(d, Decimal(0)) - billed.get(d, Decimal(0))) >= CENTS
            for d in set(billed) | set(amortized)
        ):
            continue  # a reservation or savings plan already covers it
        top = max(billed.values(), default=Decimal(0))
        if top <= 0:
            continue
        running = sum(billed.values()) / (top * days) * 100
        if running < Decimal(str(t.commitment_running_percent)):
            continue
        payg, linux = (
            vm_price(prices, vm, "payg"),
            vm_price(prices, {**vm, "os_type": "linux"}, "payg"),
        )
        year, three = vm_price(prices, vm, "reservation-1y"), vm_price(prices, vm, "reservation-3y")
        if not (payg and linux and year and payg.per_hour > 0):
            continue  # no retail prices for its size and region tonight: no figure to give
        monthly = top * HOURS_PER_MONTH / 24
        currency = daily.currency[rid]
        # a reservation covers the compute only: a Windows licence is still paid by the hour
        saving = {
            term: monthly * (linux.per_hour - price.per_hour) / payg.per_hour
            for term, price in (("1y", year), ("3y", three))
            if price
        }

        evidence = {
            "running_percent": str(money(running)),
            "window_days": days,
            "covered_by_commitment": "no (amortized cost equals billed cost every day)",
            "monthly_cost": str(money(monthly)),
            "currency": currency,
            "cost_detail": f"highest daily billed compute cost of the last {days} days, "
            f"{money(top)} {currency}, x 730 h / 24",
            "payg_per_hour": f"{payg.per_hour:.4f} {payg.currency}",
            "reservation_1y_per_hour": f"{year.per_hour:.4f} {year.currency}",
            "saving_1y": str(money(saving["1y"])),
            "prices_from": "Azure Retail Prices API, collected tonight",
            "caveat": "a reservation is paid whether the VM runs or not, for the whole term",
        }
        if three:
            evidence["reservation_3y_per_hour"] = f"{three.per_hour:.4f} {three.currency}"
            evidence["saving_3y"] = str(money(saving["3y"]))
        yield Finding(
            rule_id=ID,
            resource_id=rid,
            severity=SEVERITY,
            title=f"{vm['name']} ({vm['size']}) ran {money(running)} % of the last {days} days "
            "on pay-as-you-go",
            evidence=evidence,
            monthly_saving=money(saving["1y"]),
            currency=currency,
            saving_basis="billed",
            proposed_action="buy-reservation",
        )
