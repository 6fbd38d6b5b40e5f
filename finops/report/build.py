"""Store -> the data the report shows. Reads the store only."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Date, Row, case, func, or_, select

from finops.catalog import size_family
from finops.config import Settings
from finops.rules import registry
from finops.rules.common import CENTS, money
from finops.store import schema, series
from finops.store.costs import ACTUAL, AMORTIZED, FOCUS, QUERY, counted, spend_type
from finops.store.series import by_500

TREND_DAYS = 30
YEARLY = "yearly-reservation"
PTU_RULES = ("ptu-underused", "payg-ptu-candidate", "ptu-saturated")


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
    spend: dict[str, Any]  # month to date, forecast, per subscription, cost sources
    alerts: list[dict[str, Any]]  # findings to investigate, with no saving of their own
    gpu_hours: dict[str, Any]
    freshness: dict[str, Any]
    findings: list[dict[str, Any]] = field(default_factory=list)
    ptu: dict[str, Any] = field(default_factory=dict)  # AI deployments: PTU vs pay-as-you-go
    teams: dict[str, Any] = field(default_factory=dict)  # savings by owner and cost center

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
        f"{fmt(total, currency)} a month can be saved on {_resources(best)} ({new_part}); "
        f"most from {titles.get(rule, rule)} findings ({fmt(rule_amount, currency)}), "
        f"and {share:.0f} % of it in subscription {sub}."
        + (f" Also {others} in other currencies." if others else "")
    )


def _resources(ids) -> str:
    """'15 GPU VMs, 3 disks and 2 AI deployments', from resource ids."""
    kinds = Counter(
        "AI deployment"
        if "/deployments/" in rid
        else "disk"
        if "/microsoft.compute/disks/" in rid.lower()
        else "GPU VM"
        for rid in ids
    )
    parts = [
        f"{kinds[kind]} {kind}{'s' if kinds[kind] != 1 else ''}"
        for kind in ("GPU VM", "disk", "AI deployment")
        if kinds[kind]
    ]
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def build(conn: Connection, run_id: int, settings: Settings) -> ReportData:
    run = dict(conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).one()._mapping)
    subs = {
        r.subscription_id: r.display_name
        for r in conn.execute(
            select(schema.subscriptions).where(schema.subscriptions.c.run_id == run_id)
        )
    }
    sizes = {
        r.size: r
        for r in conn.execute(select(schema.vm_sizes).where(schema.vm_sizes.c.run_id == run_id))
    }
    gpu_sizes = [size for size, r in sizes.items() if r.gpus > 0]
    # only the resources the report names: GPU VMs and those with a finding (not the estate)
    flagged = select(schema.findings.c.resource_id).where(schema.findings.c.run_id == run_id)
    vm_table = schema.vms
    vms = {
        r.resource_id: dict(r._mapping)
        for r in conn.execute(
            select(vm_table).where(
                vm_table.c.run_id == run_id,
                or_(vm_table.c.size.in_(gpu_sizes), vm_table.c.resource_id.in_(flagged)),
            )
        )
    }
    gpu_ids = {rid for rid, vm in vms.items() if vm["size"] in gpu_sizes}
    titles = {rule_id: module.TITLE for rule_id, module in registry().items()}
    deployments = {
        r.resource_id: dict(r._mapping)
        for r in conn.execute(
            select(schema.ai_deployments).where(schema.ai_deployments.c.run_id == run_id)
        )
    }
    disks = {
        r.resource_id: {**r._mapping, "size": f"{r.size_gb} GiB {r.sku}"}
        for r in conn.execute(
            select(schema.disks).where(
                schema.disks.c.run_id == run_id, schema.disks.c.resource_id.in_(flagged)
            )
        )
    }
    previous = _previous_run(conn, run)
    rows = _findings(conn, run, previous, {**vms, **deployments, **disks}, subs, titles)
    kinds = {rule_id: getattr(module, "KIND", "saving") for rule_id, module in registry().items()}
    alerts: list[dict[str, Any]] = []
    hygiene: list[dict[str, Any]] = []
    active: list[dict[str, Any]] = []
    by_kind = {"alert": alerts, "hygiene": hygiene}
    for f in rows:
        if not f["exempt"]:
            by_kind.get(kinds.get(f["rule_id"], "saving"), active).append(f)
    totals = savings_by_currency(active)
    currency = (
        settings.currency
        if settings.currency in totals or not totals
        else max(totals.items(), key=lambda kv: kv[1])[0]
    )
    top, more = _top(active, settings.report_top_vms)
    changes = _changes(conn, previous, active + alerts + hygiene)
    line = headline(active, titles, settings.currency)
    if alerts:
        line += f" {len(alerts)} alert(s) to investigate: {alerts[0]['title']}."
    spend = _spend(conn, run, subs, gpu_ids, currency)
    vm_spend = _vm_spend(conn, run, gpu_ids)
    if spend["has_data"]:
        if spend["days_left"]:
            line += (
                f" Month to date {spend['mtd']}, forecast {spend['forecast']} for {spend['month']}."
            )
        else:  # the night of the 1st: the newest complete day closed the month
            line += f" {spend['month']} came to {spend['mtd']}."
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
        fleet=_fleet(vms, sizes, gpu_ids, vm_spend, rows),
        quotas=_quotas(conn, run_id, subs, settings.rules.quota_near_percent),
        trend=spend["trend"],
        spend=spend,
        alerts=alerts,
        gpu_hours=_gpu_hours(conn, run, vms, sizes, gpu_ids, settings),
        freshness=_freshness(conn, run),
        findings=active,
        ptu=_ptu(conn, run, settings, deployments, subs, rows),
        teams=_teams(vms, gpu_ids, vm_spend, active, hygiene, currency),
    )


def _findings(conn, run, previous: int | None, vms, subs, titles) -> list[dict[str, Any]]:
    from finops.report.render import evidence_text

    table = schema.findings
    # new: not found the night before (by key, not by time: two nights may share an instant)
    seen = {
        (rule_id, resource_id)
        for rule_id, resource_id in conn.execute(
            select(table.c.rule_id, table.c.resource_id).where(table.c.run_id == previous)
        )
    }
    rows = []
    for r in conn.execute(select(table).where(table.c.run_id == run["id"])):
        f = dict(r._mapping)
        vm = vms.get(f["resource_id"], {})
        f["monthly_saving"] = money(Decimal(str(f["monthly_saving"])))
        f["name"] = vm.get("name", f["resource_id"].rsplit("/", 1)[-1])
        f["size"] = vm.get("size") or " ".join(filter(None, (vm.get("model"), vm.get("sku"))))
        f["subscription"] = subs.get(vm.get("subscription_id"), vm.get("subscription_id", ""))
        f["resource_group"] = vm.get("resource_group", "")
        f["owner"] = (vm.get("tags") or {}).get("owner", "")
        f["rule_title"] = titles.get(f["rule_id"], f["rule_id"])
        f["new"] = (f["rule_id"], f["resource_id"]) not in seen
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


def _changes(conn: Connection, previous: int | None, active: list[dict]) -> dict[str, Any]:
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


def _fleet(vms, sizes, gpu_ids, spend, findings) -> list[dict[str, Any]]:
    idle = {f["resource_id"] for f in findings if f["rule_id"] == "idle-gpu-vm"}
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
            entry[key] = f"{entry[key].normalize():f}"  # 10, 0.5: never 1E+1
    return result


def _cost_window(run: dict[str, Any]) -> tuple[date, date]:
    end = run["cost_end"] or run["started_at"].date()
    return end - timedelta(days=TREND_DAYS), end


def _vm_spend(conn, run, ids: set[str]) -> dict[str, dict[str, Decimal]]:
    """Each VM's spend over the trend window, per currency."""
    first, end = _cost_window(run)
    cost, kind = counted(), spend_type(conn, first, end)
    spend: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for chunk in by_500(ids):
        for rid, amount, currency in conn.execute(
            select(cost.c.resource_id, cost.c.cost, cost.c.currency).where(
                cost.c.resource_key.in_(series.keys(conn, chunk)),
                cost.c.cost_type == kind,
                cost.c.usage_date >= first,
                cost.c.usage_date < end,
            )
        ):
            spend[rid][currency] += Decimal(str(amount))
    return spend


def _month_end(day: date) -> date:
    """The last day of the day's month."""
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def _spend(conn, run, subs: dict[str, str], gpu_ids: set[str], currency: str) -> dict[str, Any]:
    """Daily spend over the trend window, GPU VMs against the rest, per subscription; month to
    date and the month's forecast (month to date plus the last 7 complete days' mean for each
    day left). Amortized cost where the store has it."""
    first, end = _cost_window(run)
    month_start = (end - timedelta(days=1)).replace(day=1)
    since = min(first, month_start)
    kind = spend_type(conn, since, end)
    totals = _day_totals(conn, since, end, kind, currency)
    # an export covering a subscription's day is its bill: the Query API's rows don't count
    covered = {(sub, day) for source, sub, day, _, _ in totals if source == FOCUS}
    gpu_spend = _gpu_spend(conn, gpu_ids, first, end, kind, currency)
    days = [first + timedelta(days=i) for i in range((end - first).days)]
    gpu = dict.fromkeys(days, Decimal(0))
    rest = dict.fromkeys(days, Decimal(0))
    per_sub: dict[str, dict[str, Any]] = {}
    for source, sub, day, amount, _ in totals:
        if amount is None or (source == QUERY and (sub, day) in covered):
            continue
        amount = Decimal(str(amount))
        entry = per_sub.setdefault(
            sub,
            {
                "daily": defaultdict(Decimal),
                "gpu": dict.fromkeys(days, Decimal(0)),
                "rest": dict.fromkeys(days, Decimal(0)),
            },
        )
        entry["daily"][day] += amount
        if day >= first:
            on_gpus = gpu_spend.get((sub, day), Decimal(0))
            gpu[day] += on_gpus
            rest[day] += amount - on_gpus
            entry["gpu"][day] += on_gpus
            entry["rest"][day] += amount - on_gpus
    last_day = end - timedelta(days=1)
    days_left = (_month_end(last_day) - last_day).days
    run_rate_days = [last_day - timedelta(days=i) for i in range(7)]
    rows = []
    for sub, entry in per_sub.items():
        daily = entry["daily"]
        mtd = sum((v for d, v in daily.items() if d >= month_start), Decimal(0))
        rate = sum((daily.get(d, Decimal(0)) for d in run_rate_days), Decimal(0)) / 7
        rows.append(
            {
                "subscription": subs.get(sub, sub) if sub else "(no subscription)",
                "gpu": sum(entry["gpu"].values()),
                "rest": sum(entry["rest"].values()),
                "daily_gpu": [entry["gpu"][d] for d in days],
                "daily_rest": [entry["rest"][d] for d in days],
                "mtd": mtd,
                "forecast": mtd + rate * days_left,
            }
        )
    rows.sort(key=lambda r: -(r["gpu"] + r["rest"]))
    total_gpu, total_rest = sum(gpu.values()), sum(rest.values())
    mtd = sum((r["mtd"] for r in rows), Decimal(0))
    forecast = sum((r["forecast"] for r in rows), Decimal(0))
    return {
        "cost_type": "amortized" if kind == AMORTIZED else "actual (billed)",
        "currency": currency,
        "month": f"{month_start:%B %Y}",
        "days_left": days_left,  # after the newest complete day; 0 once the month is complete
        "mtd_amount": mtd,
        "forecast_amount": forecast,
        "mtd": fmt(mtd, currency),
        "forecast": fmt(forecast, currency),
        "subscriptions": rows,
        "trend": {
            "days": days,
            "gpu": [gpu[d] for d in days],
            "rest": [rest[d] for d in days],
            "currency": currency,
            "total_gpu": fmt(total_gpu, currency),
            "total_rest": fmt(total_rest, currency),
            "has_data": bool(total_gpu or total_rest),
        },
        "has_data": bool(rows),
        "sources": _sources(conn, [t for t in totals if t[2] >= first]),
    }


def _day_totals(conn, since: date, end: date, kind: str, currency: str) -> list[Row]:
    """(source, subscription, day, spend, billed) over [since, end): the spend is cost type
    `kind` in `currency`, billed is ActualCost in any currency. Found by the day index, so the
    query reads the window, not the history; SQLite reads that index alone (see the schema): at
    10k VMs 0.4 s, where through `counted()` it read every stored row (2.9 s)."""
    c = schema.costs_daily
    spend = case(((c.c.cost_type == kind) & (c.c.currency == currency), c.c.cost))
    return conn.execute(
        select(
            c.c.source,
            c.c.subscription_id,
            c.c.usage_date,
            func.sum(spend),
            func.sum(case((c.c.cost_type == ACTUAL, c.c.cost))),
        )
        .where(c.c.usage_date >= since, c.c.usage_date < end)
        .group_by(c.c.source, c.c.subscription_id, c.c.usage_date)
    ).all()


def _gpu_spend(
    conn, gpu_ids: set[str], first: date, end: date, kind: str, currency: str
) -> dict[tuple[str, date], Decimal]:
    """The GPU VMs' spend per subscription and day over [first, end)."""
    cost = counted()
    spend: dict[tuple[str, date], Decimal] = defaultdict(Decimal)
    for chunk in by_500(gpu_ids):
        for sub, day, amount in conn.execute(
            select(cost.c.subscription_id, cost.c.usage_date, func.sum(cost.c.cost))
            .where(
                cost.c.resource_key.in_(series.keys(conn, chunk)),
                cost.c.cost_type == kind,
                cost.c.currency == currency,
                cost.c.usage_date >= first,
                cost.c.usage_date < end,
            )
            .group_by(cost.c.subscription_id, cost.c.usage_date)
        ):
            spend[(sub, day)] += Decimal(str(amount))
    return spend


def _sources(conn, totals: list[Row]) -> dict[str, Any]:
    """What each cost source holds for the window (`_day_totals`), and whether they agree where
    both cover a subscription's day (billed cost, complete days)."""
    billed: dict[tuple[str, date], dict[str, Decimal]] = defaultdict(dict)
    for source, sub, day, _, amount in totals:
        if amount is not None:
            billed[(sub, day)][source] = Decimal(str(amount))
    both = [(key, v[QUERY], v[FOCUS]) for key, v in billed.items() if len(v) == 2]
    differ = sorted(
        ((abs(q - f), key) for key, q, f in both if abs(q - f) > max(CENTS, abs(f) / 1000)),
        reverse=True,
    )
    files = conn.execute(select(func.count()).select_from(schema.cost_files)).scalar_one()
    return {
        "query_days": sum(1 for v in billed.values() if QUERY in v),
        "focus_days": sum(1 for v in billed.values() if FOCUS in v),
        "files": files,
        "compared": len(both),
        "differ": len(differ),
        "largest": (money(differ[0][0]), *differ[0][1]) if differ else None,
        "largest_gap": money(max((abs(q - f) for _, q, f in both), default=Decimal(0))),
    }


def _gpu_hours(conn, run, vms, sizes, gpu_ids, settings: Settings) -> dict[str, Any]:
    """Per day of the metrics window: GPU-hours of running GPU VMs, busy and idle. An hour is
    idle when its GPU average is under the idle threshold (CPU average without GPU telemetry)."""
    table = series.metrics()
    thresholds = {
        "gpu": settings.rules.idle_gpu_avg_percent,
        "cpu": settings.rules.idle_cpu_avg_percent,
    }
    start_day = run["metrics_start"].date()
    days = [
        start_day + timedelta(days=i)
        for i in range((run["metrics_end"].date() - start_day).days + 1)
    ]
    busy = dict.fromkeys(days, 0.0)
    idle = dict.fromkeys(days, 0.0)
    by_metric = {
        metric: func.max(case((table.c.metric == metric, table.c.average))).label(metric)
        for metric in thresholds
    }
    for batch in by_500(gpu_ids):
        hours = (
            select(table.c.resource_id, table.c.ts, *by_metric.values())
            .where(
                table.c.resource_key.in_(series.keys(conn, batch)),
                table.c.metric.in_(list(thresholds)),
                table.c.ts >= run["metrics_start"],
                table.c.ts < run["metrics_end"],
            )
            .group_by(table.c.resource_id, table.c.ts)
            .subquery()
        )
        # the database counts each VM's idle and busy hours per day: no hour reaches Python
        average = func.coalesce(hours.c.gpu, hours.c.cpu)
        is_idle = average < case(
            (hours.c.gpu.is_not(None), thresholds["gpu"]), else_=thresholds["cpu"]
        )
        day = func.date(hours.c.ts, type_=Date)
        counts = (
            select(hours.c.resource_id, day, is_idle, func.count())
            .where(average.is_not(None))
            .group_by(hours.c.resource_id, day, is_idle)
        )
        for rid, on, was_idle, count in conn.execute(counts):
            (idle if was_idle else busy)[on] += count * float(sizes[vms[rid]["size"]].gpus)
    total_idle, total = sum(idle.values()), sum(idle.values()) + sum(busy.values())
    return {
        "days": days,
        "busy": [busy[d] for d in days],
        "idle": [idle[d] for d in days],
        "idle_share": round(total_idle / total * 100) if total else 0,
        "window_days": (run["metrics_end"] - run["metrics_start"]).days,
        "has_data": total > 0,
    }


def _ptu(conn, run, settings: Settings, deployments, subs, findings) -> dict[str, Any]:
    """One row per AI deployment: PTUs, utilization, monthly cost, the pay-as-you-go cost of the
    same tokens, and the recommendation of its finding; and the break-even in two sentences."""
    from finops.rules import RunContext
    from finops.rules.ptu_pricing import (
        billing,
        break_even_percent,
        full_ptu_payg_value,
        is_provisioned,
        model_for,
        payg_cost,
        ptu_month,
        usage,
    )

    context = RunContext(run["id"], run["metrics_start"], run["metrics_end"], run["cost_end"])
    used = usage(conn, context, settings, sorted(deployments))
    billed = billing(conn, context, settings, list(deployments.values()))
    advice = {f["resource_id"]: f for f in findings if f["rule_id"] in PTU_RULES}
    rows = []
    for rid, d in sorted(
        deployments.items(), key=lambda kv: (kv[1]["account_name"], kv[1]["name"])
    ):
        model = model_for(settings, d["model"], d["sku"])
        u = used.get(rid)
        provisioned = is_provisioned(d["sku"])
        row = {
            "resource_id": rid,
            "account": d["account_name"],
            "subscription": subs.get(d["subscription_id"], d["subscription_id"]),
            "name": d["name"],
            "model": d["model"],
            "sku": d["sku"],
            "ptus": d["capacity"] if provisioned else None,
            "basis": billed[d["account_id"]].describe() if provisioned else "per token",
            "p50": None,
            "p95": None,
            "monthly": None,
            "payg": None,
            "currency": model.currency if model else "",
            "advice": "",
        }
        if u and u.utilization and provisioned:
            summary = u.utilization_summary()
            row["p50"], row["p95"] = summary["utilization_p50"], summary["utilization_p95"]
        if model and u:
            row["payg"] = money(u.monthly(payg_cost(model, u.total_in(), u.total_out())))
            row["monthly"] = (
                money(d["capacity"] * ptu_month(model, billed[d["account_id"]].basis))
                if provisioned
                else row["payg"]
            )
        finding = advice.get(rid)
        if finding:
            row["advice"] = finding["evidence"].get("recommendation") or finding["rule_title"]
            row["rule"] = finding["rule_id"]
        elif model is None:
            row["advice"] = "no price in the catalog"
        else:
            row["advice"] = "keep"
        rows.append(row)
    explained = None
    priced = [(d, model_for(settings, d["model"], d["sku"])) for d in deployments.values()]
    priced = [(d, m) for d, m in priced if m is not None]
    if priced:
        d, model = max(
            priced, key=lambda dm: dm[0]["capacity"] if is_provisioned(dm[0]["sku"]) else 0
        )
        zero = Decimal(0)
        explained = {
            "model": f"{model.model} ({model.scope})",
            "tokens": f"{model.input_tpm_per_ptu * 60 * 730 / 1_000_000:,.1f}",
            "value": fmt(full_ptu_payg_value(model, zero, zero), model.currency),
            "hourly": fmt(ptu_month(model, "hourly"), model.currency),
            "yearly": fmt(ptu_month(model, YEARLY), model.currency),
            "hourly_break_even": f"{break_even_percent(model, 'hourly', zero, zero):.0f}",
            "yearly_break_even": f"{break_even_percent(model, YEARLY, zero, zero):.0f}",
        }
    return {"rows": rows, "explained": explained}


def _tag(tags: dict | None, name: str) -> str:
    for key, value in (tags or {}).items():
        if key.lower() == name and str(value).strip():
            return str(value)
    return ""


def _teams(vms, gpu_ids, vm_spend, active, hygiene, currency) -> dict[str, Any]:
    """Each team's money (by owner and cost-center tags, each resource counted once at its
    largest saving), the 30-day spend of GPU VMs without an owner or cost center, and how many
    GPU VMs lack required tags."""
    best: dict[str, dict[str, Any]] = {}
    for f in active:
        if f["currency"] == currency and f["monthly_saving"] > best.get(f["resource_id"], {}).get(
            "monthly_saving", Decimal(-1)
        ):
            best[f["resource_id"]] = f
    teams: dict[tuple[str, str], dict[str, Any]] = {}
    for rid, f in best.items():
        tags = vms.get(rid, {}).get("tags")
        key = (_tag(tags, "owner") or "(no owner)", _tag(tags, "cost-center") or "(none)")
        entry = teams.setdefault(
            key, {"owner": key[0], "cost_center": key[1], "resources": 0, "saving": Decimal(0)}
        )
        entry["resources"] += 1
        entry["saving"] += f["monthly_saving"]
    untagged = {
        rid
        for rid in gpu_ids
        if not (_tag(vms[rid]["tags"], "owner") and _tag(vms[rid]["tags"], "cost-center"))
    }
    untagged_spend = sum(
        (vm_spend[rid].get(currency, Decimal(0)) for rid in untagged if rid in vm_spend),
        Decimal(0),
    )
    return {
        "rows": sorted(teams.values(), key=lambda e: -e["saving"]),
        "currency": currency,
        "untagged_vms": len(untagged),
        "untagged_spend": fmt(untagged_spend, currency),
        "missing_tags": len(hygiene),
        "fixable": sum(1 for f in hygiene if f["proposed_action"] == "merge-tags"),
    }


def _quotas(conn: Connection, run_id: int, subs: dict[str, str], near: float) -> list[dict]:
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
                "near": percent >= near,
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
