"""Store -> the data the report shows. Reads the store only."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from finops.catalog import size_family
from finops.rules import registry
from finops.rules.common import money
from finops.store import schema


@dataclass
class ReportData:
    run: dict[str, Any]
    headline: str
    savings: dict[str, Decimal]  # currency -> monthly saving, without double counting
    findings: list[dict[str, Any]]
    exempt: list[dict[str, Any]]
    fleet: list[dict[str, Any]]
    quotas: list[dict[str, Any]]
    resolved: list[dict[str, Any]] = field(default_factory=list)
    resolved_savings: dict[str, Decimal] = field(default_factory=dict)
    rule_titles: dict[str, str] = field(default_factory=dict)

    @property
    def date(self) -> date:
        return self.run["started_at"].date()


def _fmt(amount: Decimal, currency: str) -> str:
    return f"{currency} {money(amount):,.2f}"


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
    """One line: the monthly saving in the report's currency, where most of it is, and what is
    counted in other currencies (list prices are USD; billed costs carry the billing currency)."""
    if not findings:
        return "No savings found tonight: every GPU VM checked is busy, scheduled or deallocated."
    totals = savings_by_currency(findings)
    if currency not in totals:
        currency = max(totals.items(), key=lambda kv: kv[1])[0]
    total = totals[currency]
    others = ", ".join(_fmt(v, c) for c, v in sorted(totals.items()) if c != currency)
    resources = {f["resource_id"] for f in findings if f["currency"] == currency}
    by_rule: Counter[str] = Counter()
    by_sub: Counter[str] = Counter()
    for f in findings:
        if f["currency"] == currency:
            by_rule[f["rule_id"]] += f["monthly_saving"]
    for f in _largest_per_resource(findings, currency):
        by_sub[f["subscription"]] += f["monthly_saving"]
    rule, rule_amount = by_rule.most_common(1)[0]
    sub, sub_amount = by_sub.most_common(1)[0]
    share = sub_amount / total * 100 if total else 0
    return (
        f"{_fmt(total, currency)} a month can be saved on {len(resources)} GPU VMs; "
        f"most from {titles.get(rule, rule)} findings ({_fmt(rule_amount, currency)}), "
        f"and {share:.0f} % of it in subscription {sub}."
        + (f" Also {others} in other currencies." if others else "")
    )


def _largest_per_resource(findings: list[dict[str, Any]], currency: str) -> list[dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for f in findings:
        if f["currency"] != currency:
            continue
        if (
            f["resource_id"] not in best
            or f["monthly_saving"] > best[f["resource_id"]]["monthly_saving"]
        ):
            best[f["resource_id"]] = f
    return list(best.values())


def build(conn: Connection, run_id: int, currency: str) -> ReportData:
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
    titles = {rule_id: module.TITLE for rule_id, module in registry().items()}
    rows = []
    for r in conn.execute(select(schema.findings).where(schema.findings.c.run_id == run_id)):
        f = dict(r._mapping)
        vm = vms.get(f["resource_id"], {})
        f["monthly_saving"] = money(Decimal(str(f["monthly_saving"])))
        f["name"] = vm.get("name", f["resource_id"].rsplit("/", 1)[-1])
        f["size"] = vm.get("size", "")
        f["subscription"] = subs.get(vm.get("subscription_id"), vm.get("subscription_id", ""))
        f["resource_group"] = vm.get("resource_group", "")
        f["rule_title"] = titles.get(f["rule_id"], f["rule_id"])
        f["new"] = f["first_seen"] >= run["started_at"]
        f["age_days"] = (run["started_at"] - f["first_seen"]).days
        rows.append(f)
    rows.sort(key=lambda f: (-f["monthly_saving"], f["rule_id"], f["name"]))
    active = [f for f in rows if not f["exempt"]]
    resolved = _resolved(conn, run, {(f["rule_id"], f["resource_id"]) for f in active})
    resolved_savings = savings_by_currency(resolved)
    line = headline(active, titles, currency)
    if resolved:
        amounts = ", ".join(_fmt(v, c) for c, v in sorted(resolved_savings.items()))
        line += (
            f" Resolved since the previous night: {len(resolved)} finding(s), {amounts} a month."
        )
    return ReportData(
        run=run,
        headline=line,
        resolved=resolved,
        resolved_savings=resolved_savings,
        savings=savings_by_currency(active),
        findings=active,
        exempt=[f for f in rows if f["exempt"]],
        fleet=_fleet(conn, run, vms),
        quotas=_quotas(conn, run_id, subs),
        rule_titles=titles,
    )


def _resolved(conn: Connection, run: dict[str, Any], open_now: set) -> list[dict[str, Any]]:
    """Findings of the previous successful night that tonight no longer has."""
    runs, findings = schema.runs, schema.findings
    previous = conn.execute(
        select(func.max(runs.c.id)).where(runs.c.id < run["id"], runs.c.status == "succeeded")
    ).scalar()
    if previous is None:
        return []
    resolved = []
    for r in conn.execute(
        select(findings).where(findings.c.run_id == previous, findings.c.exempt.is_(False))
    ):
        if (r.rule_id, r.resource_id) not in open_now:
            f = dict(r._mapping)
            f["monthly_saving"] = money(Decimal(str(f["monthly_saving"])))
            resolved.append(f)
    return resolved


def _fleet(conn: Connection, run: dict[str, Any], vms: dict[str, dict]) -> list[dict[str, Any]]:
    sizes = {
        r.size: r
        for r in conn.execute(select(schema.vm_sizes).where(schema.vm_sizes.c.run_id == run["id"]))
    }
    gpu_vms = {rid: vm for rid, vm in vms.items() if (s := sizes.get(vm["size"])) and s.gpus > 0}
    cost_end = run["cost_end"] or run["started_at"].date()
    cost = schema.costs_daily
    spend: dict[str, Decimal] = defaultdict(Decimal)
    currencies: dict[str, str] = {}
    ids = list(gpu_vms)
    for start in range(0, len(ids), 500):
        for rid, amount, currency in conn.execute(
            select(cost.c.resource_id, cost.c.cost, cost.c.currency).where(
                cost.c.resource_id.in_(ids[start : start + 500]),
                cost.c.cost_type == "ActualCost",
                cost.c.usage_date >= cost_end - timedelta(days=30),
                cost.c.usage_date < cost_end,
            )
        ):
            spend[rid] += Decimal(str(amount))
            currencies[rid] = currency
    families: dict[str, dict[str, Any]] = {}
    for rid, vm in gpu_vms.items():
        family = size_family(vm["size"])
        entry = families.setdefault(
            family,
            {
                "family": family,
                "running": 0,
                "stopped": 0,
                "deallocated": 0,
                "other": 0,
                "gpus_running": Decimal(0),
                "gpus": Decimal(0),
                "cost": defaultdict(Decimal),
            },
        )
        state = (
            vm["power_state"]
            if vm["power_state"] in ("running", "stopped", "deallocated")
            else "other"
        )
        entry[state] += 1
        gpus = Decimal(str(sizes[vm["size"]].gpus))
        entry["gpus"] += gpus
        if state == "running":
            entry["gpus_running"] += gpus
        if rid in spend:
            entry["cost"][currencies[rid]] += spend[rid]
    result = sorted(families.values(), key=lambda e: -sum(e["cost"].values()))
    for entry in result:
        entry["cost_30d"] = ", ".join(_fmt(v, c) for c, v in sorted(entry["cost"].items())) or "-"
        entry["gpus"] = entry["gpus"].normalize()
        entry["gpus_running"] = entry["gpus_running"].normalize()
    return result


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
            }
        )
    return sorted(rows, key=lambda r: -r["percent"])
