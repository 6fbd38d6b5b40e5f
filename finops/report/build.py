"""Store -> the data the report shows. Reads the store only."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from finops.catalog import size_family
from finops.config import Settings
from finops.rules import registry
from finops.rules.common import money
from finops.store import schema

TREND_DAYS = 30
QUOTA_WARN_PERCENT = 80


@dataclass
class ReportData:
    run: dict[str, Any]
    headline: str
    currency: str
    savings: dict[str, Decimal]  # currency -> monthly saving, each VM counted once
    top: list[dict[str, Any]]  # one entry per VM, largest saving first
    more: dict[str, Any]  # the VMs beyond the top: count and saving
    changes: dict[str, Any]
    exempt: list[dict[str, Any]]
    fleet: list[dict[str, Any]]
    quotas: list[dict[str, Any]]
    trend: dict[str, Any]
    gpu_hours: dict[str, Any]
    freshness: dict[str, Any]
    findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def date(self) -> date:
        return self.run["started_at"].date()


def fmt(amount: Decimal, currency: str) -> str:
    return f"{currency} {money(amount):,.2f}"


def fmt_totals(totals: dict[str, Decimal]) -> str:
    return ", ".join(fmt(v, c) for c, v in sorted(totals.items()))


def savings_by_currency(findings: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Sum per currency of each resource's largest saving: two findings on one VM (idle and no
    auto-shutdown) save its cost once, not twice."""
    best: dict[tuple[str, str], Decimal] = {}
    for f in findings:
        key = (f["resource_id"], f["currency"])
        best[key] = max(best.get(key, Decimal(0)), f["monthly_saving"])
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for (_, currency), amount in best.items():
        totals[currency] += amount
    return dict(totals)


def headline(findings: list[dict[str, Any]], titles: dict[str, str], currency: str) -> str:
    """One line: the monthly saving in the report's currency, how much of it is new tonight,
    where most of it is, and what is counted in other currencies."""
    if not findings:
        return "No savings found tonight: every GPU VM checked is busy, scheduled or deallocated."
    totals = savings_by_currency(findings)
    if currency not in totals:
        currency = max(totals.items(), key=lambda kv: kv[1])[0]
    total = totals[currency]
    mine = [f for f in findings if f["currency"] == currency]
    new = savings_by_currency([f for f in mine if f.get("new")]).get(currency, Decimal(0))
    by_rule: Counter[str] = Counter()
    by_sub: Counter[str] = Counter()
    for f in mine:
        by_rule[f["rule_id"]] += f["monthly_saving"]
    best: dict[str, dict[str, Any]] = {}
    for f in mine:
        if f["monthly_saving"] > best.get(f["resource_id"], {}).get("monthly_saving", -1):
            best[f["resource_id"]] = f
    for f in best.values():
        by_sub[f["subscription"]] += f["monthly_saving"]
    rule, rule_amount = by_rule.most_common(1)[0]
    sub, sub_amount = by_sub.most_common(1)[0]
    share = sub_amount / total * 100 if total else 0
    others = fmt_totals({c: v for c, v in totals.items() if c != currency})
    new_part = f"{fmt(new, currency)} of it new tonight" if new else "none of it new tonight"
    return (
        f"{fmt(total, currency)} a month can be saved on {len(best)} GPU VMs ({new_part}); "
        f"most from {titles.get(rule, rule)} findings ({fmt(rule_amount, currency)}), "
        f"and {share:.0f} % of it in subscription {sub}."
        + (f" Also {others} in other currencies." if others else "")
    )


def build(conn: Connection, run_id: int, settings: Settings) -> ReportData:
    run = dict(conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).one()._mapping)
    subs = {
        r.subscription_id: r.display_name
        for r in conn.execute(
            select(schema.subscriptions).where(schema.subscriptions.c.run_id == run_id)
        )
    }
    vms = {
        r.resource_id: dict(r._mapping)
        for r in conn.execute(select(schema.vms).where(schema.vms.c.run_id == run_id))
    }
    sizes = {
        r.size: r
        for r in conn.execute(select(schema.vm_sizes).where(schema.vm_sizes.c.run_id == run_id))
    }
    gpu_ids = {rid for rid, vm in vms.items() if (s := sizes.get(vm["size"])) and s.gpus > 0}
    titles = {rule_id: module.TITLE for rule_id, module in registry().items()}
    rows = _findings(conn, run, vms, subs, titles)
    active = [f for f in rows if not f["exempt"]]
    totals = savings_by_currency(active)
    currency = (
        settings.currency
        if settings.currency in totals or not totals
        else max(totals.items(), key=lambda kv: kv[1])[0]
    )
    top, more = _top(active, settings.report_top_vms)
    changes = _changes(conn, run, active)
    line = headline(active, titles, settings.currency)
    if changes["resolved"]:
        line += (
            f" Resolved since the previous night: {len(changes['resolved'])} finding(s), "
            f"{fmt_totals(changes['resolved_savings'])} a month."
        )
    return ReportData(
        run=run,
        headline=line,
        currency=currency,
        savings=totals,
        top=top,
        more=more,
        changes=changes,
        exempt=[f for f in rows if f["exempt"]],
        fleet=_fleet(conn, run, vms, sizes, gpu_ids, rows),
        quotas=_quotas(conn, run_id, subs),
        trend=_trend(conn, run, gpu_ids, currency),
        gpu_hours=_gpu_hours(conn, run, vms, sizes, gpu_ids, settings),
        freshness=_freshness(conn, run),
        findings=active,
    )


def _findings(conn, run, vms, subs, titles) -> list[dict[str, Any]]:
    from finops.report.render import evidence_text

    rows = []
    query = select(schema.findings).where(schema.findings.c.run_id == run["id"])
    for r in conn.execute(query):
        f = dict(r._mapping)
        vm = vms.get(f["resource_id"], {})
        f["monthly_saving"] = money(Decimal(str(f["monthly_saving"])))
        f["name"] = vm.get("name", f["resource_id"].rsplit("/", 1)[-1])
        f["size"] = vm.get("size", "")
        f["subscription"] = subs.get(vm.get("subscription_id"), vm.get("subscription_id", ""))
        f["resource_group"] = vm.get("resource_group", "")
        f["owner"] = (vm.get("tags") or {}).get("owner", "")
        f["rule_title"] = titles.get(f["rule_id"], f["rule_id"])
        f["new"] = f["first_seen"] >= run["started_at"]
        f["age_days"] = (run["started_at"] - f["first_seen"]).days
        f["evidence_text"] = evidence_text(f["evidence"])
        rows.append(f)
    rows.sort(key=lambda f: (-f["monthly_saving"], f["rule_id"], f["name"]))
    return rows


def _top(active: list[dict[str, Any]], limit: int) -> tuple[list[dict], dict[str, Any]]:
    """One entry per VM (its findings inside), largest saving first, cut at `limit`."""
    per_vm: dict[str, dict[str, Any]] = {}
    for f in active:  # already sorted by saving
        entry = per_vm.setdefault(
            f["resource_id"],
            {
                "resource_id": f["resource_id"],
                "name": f["name"],
                "size": f["size"],
                "subscription": f["subscription"],
                "resource_group": f["resource_group"],
                "owner": f["owner"],
                "saving": f["monthly_saving"],
                "currency": f["currency"],
                "new": f["new"],
                "age_days": f["age_days"],
                "findings": [],
            },
        )
        entry["findings"].append(f)
        entry["new"] = entry["new"] and f["new"]
        entry["age_days"] = max(entry["age_days"], f["age_days"])
    ordered = sorted(per_vm.values(), key=lambda e: (-e["saving"], e["name"]))
    rest = ordered[limit:]
    more_totals: dict[str, Decimal] = defaultdict(Decimal)
    for e in rest:
        more_totals[e["currency"]] += e["saving"]
    return ordered[:limit], {"count": len(rest), "savings": fmt_totals(more_totals)}


def _previous_run(conn: Connection, run: dict[str, Any]) -> int | None:
    runs = schema.runs
    return conn.execute(
        select(func.max(runs.c.id)).where(runs.c.id < run["id"], runs.c.status.in_(schema.ANALYSED))
    ).scalar()


def _changes(conn: Connection, run: dict[str, Any], active: list[dict]) -> dict[str, Any]:
    previous = _previous_run(conn, run)
    new = [f for f in active if f["new"]]
    persisting = [f for f in active if not f["new"]]
    resolved = []
    if previous is not None:
        open_now = {(f["rule_id"], f["resource_id"]) for f in active}
        findings = schema.findings
        for r in conn.execute(
            select(findings).where(findings.c.run_id == previous, findings.c.exempt.is_(False))
        ):
            if (r.rule_id, r.resource_id) not in open_now:
                f = dict(r._mapping)
                f["monthly_saving"] = money(Decimal(str(f["monthly_saving"])))
                f["name"] = f["resource_id"].rsplit("/", 1)[-1]
                resolved.append(f)
    return {
        "first_night": previous is None,
        "new": new,
        "new_savings": fmt_totals(savings_by_currency(new)),
        "persisting": persisting,
        "oldest_days": max((f["age_days"] for f in persisting), default=0),
        "resolved": resolved,
        "resolved_savings": savings_by_currency(resolved),
    }


def _fleet(conn, run, vms, sizes, gpu_ids, findings) -> list[dict[str, Any]]:
    idle = {f["resource_id"] for f in findings if f["rule_id"] == "idle-gpu-vm"}
    spend = _spend(conn, run, gpu_ids)
    families: dict[str, dict[str, Any]] = {}
    for rid in gpu_ids:
        vm = vms[rid]
        family = size_family(vm["size"])
        entry = families.setdefault(
            family,
            {
                "family": family,
                "running": 0,
                "stopped": 0,
                "deallocated": 0,
                "other": 0,
                "gpus_busy": Decimal(0),
                "gpus_idle": Decimal(0),
                "gpus_off": Decimal(0),
                "cost": defaultdict(Decimal),
            },
        )
        state = vm["power_state"]
        state = state if state in ("running", "stopped", "deallocated") else "other"
        entry[state] += 1
        gpus = Decimal(str(sizes[vm["size"]].gpus))
        if state == "running":
            entry["gpus_idle" if rid in idle else "gpus_busy"] += gpus
        else:
            entry["gpus_off"] += gpus
        for currency, amount in spend.get(rid, {}).items():
            entry["cost"][currency] += amount
    result = sorted(families.values(), key=lambda e: -sum(e["cost"].values()))
    for entry in result:
        entry["cost_30d"] = fmt_totals(entry["cost"]) or "-"
        for key in ("gpus_busy", "gpus_idle", "gpus_off"):
            entry[key] = entry[key].normalize()
    return result


def _cost_window(run: dict[str, Any]) -> tuple[date, date]:
    end = run["cost_end"] or run["started_at"].date()
    return end - timedelta(days=TREND_DAYS), end


def _spend(conn, run, ids: set[str]) -> dict[str, dict[str, Decimal]]:
    cost = schema.costs_daily
    first, end = _cost_window(run)
    spend: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    ordered = sorted(ids)
    for start in range(0, len(ordered), 500):
        for rid, amount, currency in conn.execute(
            select(cost.c.resource_id, cost.c.cost, cost.c.currency).where(
                cost.c.resource_id.in_(ordered[start : start + 500]),
                cost.c.cost_type == "ActualCost",
                cost.c.usage_date >= first,
                cost.c.usage_date < end,
            )
        ):
            spend[rid][currency] += Decimal(str(amount))
    return spend


def _trend(conn, run, gpu_ids: set[str], currency: str) -> dict[str, Any]:
    """Daily cost of GPU VMs and of everything else over the last complete days."""
    cost = schema.costs_daily
    first, end = _cost_window(run)
    days = [first + timedelta(days=i) for i in range((end - first).days)]
    gpu = dict.fromkeys(days, Decimal(0))
    rest = dict.fromkeys(days, Decimal(0))
    for rid, day, amount in conn.execute(
        select(cost.c.resource_id, cost.c.usage_date, cost.c.cost).where(
            cost.c.cost_type == "ActualCost",
            cost.c.currency == currency,
            cost.c.usage_date >= first,
            cost.c.usage_date < end,
        )
    ):
        (gpu if rid in gpu_ids else rest)[day] += Decimal(str(amount))
    total_gpu, total_rest = sum(gpu.values()), sum(rest.values())
    return {
        "days": days,
        "gpu": [gpu[d] for d in days],
        "rest": [rest[d] for d in days],
        "currency": currency,
        "total_gpu": fmt(total_gpu, currency),
        "total_rest": fmt(total_rest, currency),
        "has_data": bool(total_gpu or total_rest),
    }


def _gpu_hours(conn, run, vms, sizes, gpu_ids, settings: Settings) -> dict[str, Any]:
    """Per day of the metrics window: GPU-hours of running GPU VMs, busy and idle. An hour is
    idle when its GPU average is under the idle threshold (CPU average without GPU telemetry)."""
    table = schema.metrics_hourly
    thresholds = {
        "gpu": settings.rules.idle_gpu_avg_percent,
        "cpu": settings.rules.idle_cpu_avg_percent,
    }
    hours: dict[tuple[str, datetime], dict[str, float]] = defaultdict(dict)
    ordered = sorted(gpu_ids)
    for start in range(0, len(ordered), 500):
        for rid, metric, ts, average in conn.execute(
            select(table.c.resource_id, table.c.metric, table.c.ts, table.c.average).where(
                table.c.resource_id.in_(ordered[start : start + 500]),
                table.c.ts >= run["metrics_start"],
                table.c.ts < run["metrics_end"],
            )
        ):
            if average is not None:
                hours[(rid, ts)][metric] = average
    start_day = run["metrics_start"].date()
    days = [
        start_day + timedelta(days=i)
        for i in range((run["metrics_end"].date() - start_day).days + 1)
    ]
    busy = dict.fromkeys(days, 0.0)
    idle = dict.fromkeys(days, 0.0)
    for (rid, ts), values in hours.items():
        metric = "gpu" if "gpu" in values else "cpu"
        gpus = float(sizes[vms[rid]["size"]].gpus)
        target = idle if values[metric] < thresholds[metric] else busy
        target[ts.date()] += gpus
    total_idle, total = sum(idle.values()), sum(idle.values()) + sum(busy.values())
    return {
        "days": days,
        "busy": [busy[d] for d in days],
        "idle": [idle[d] for d in days],
        "idle_share": round(total_idle / total * 100) if total else 0,
        "window_days": (run["metrics_end"] - run["metrics_start"]).days,
        "has_data": total > 0,
    }


def _quotas(conn: Connection, run_id: int, subs: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for q in conn.execute(select(schema.quotas).where(schema.quotas.c.run_id == run_id)):
        percent = q.current_value / q.limit * 100 if q.limit else 0.0
        rows.append(
            {
                "subscription": subs.get(q.subscription_id, q.subscription_id),
                "location": q.location,
                "family": q.display_name,
                "used": q.current_value,
                "limit": q.limit,
                "percent": round(percent),
                "near": percent >= QUOTA_WARN_PERCENT,
            }
        )
    return sorted(rows, key=lambda r: -r["percent"])


def _freshness(conn: Connection, run: dict[str, Any]) -> dict[str, Any]:
    latest_cost = conn.execute(
        select(func.max(schema.costs_daily.c.usage_date)).where(
            schema.costs_daily.c.usage_date < (run["cost_end"] or date.max)
        )
    ).scalar()
    latest_metric = conn.execute(
        select(func.max(schema.metrics_hourly.c.ts)).where(
            schema.metrics_hourly.c.ts < (run["metrics_end"] or datetime.max)
        )
    ).scalar()
    return {"latest_cost_day": latest_cost, "latest_metric_hour": latest_metric}
