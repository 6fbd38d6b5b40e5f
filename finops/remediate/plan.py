"""Open findings -> a plan: a JSON file ops review, recorded in the store. Nothing changes in Azure.

Each action names its resource, what it does and with which parameters, the finding that
justifies it, the live state it expects (apply skips the action when the resource is no longer
in that state) and its monthly saving. The checksum covers everything else in the file.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from finops import clock
from finops.config import Settings
from finops.rules.common import money
from finops.store import schema

PLAN_VERSION = 1
# The action kinds, in the order a resource's actions run.
ACTION_ORDER = ("merge-tags", "deallocate", "create-auto-shutdown")


class PlanError(Exception):
    """A plan that cannot be made or must not be applied: one line, exit code 2."""


def checksum(plan: dict[str, Any]) -> str:
    body = {k: v for k, v in plan.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def latest_run(conn: Connection) -> Any:
    run = conn.execute(
        select(schema.runs)
        .where(schema.runs.c.status.in_(schema.ANALYSED))
        .order_by(schema.runs.c.id.desc())
        .limit(1)
    ).first()
    if run is None:
        raise PlanError("no analysed night in the store: run `finops run` or `finops demo` first")
    return run


def make_plan(
    conn: Connection,
    settings: Settings,
    rule_ids: list[str] | None = None,
    subscriptions: list[str] | None = None,
    min_saving: Decimal | None = None,
) -> dict[str, Any]:
    run = latest_run(conn)
    plan_id = uuid.uuid4().hex
    findings = schema.findings
    query = select(findings).where(findings.c.run_id == run.id, findings.c.exempt.is_(False))
    if rule_ids:
        query = query.where(findings.c.rule_id.in_(rule_ids))
    wanted_subs = {s.lower() for s in subscriptions or []}
    states = {
        r.resource_id: r.power_state
        for r in conn.execute(
            select(schema.vms.c.resource_id, schema.vms.c.power_state).where(
                schema.vms.c.run_id == run.id
            )
        )
    }
    shutdown = {
        r.resource_id: r.status
        for r in conn.execute(select(schema.schedules).where(schema.schedules.c.run_id == run.id))
    }
    by_resource: dict[str, list[Any]] = defaultdict(list)
    for f in conn.execute(query):
        subscription = f.resource_id.split("/")[2]
        saving = money(Decimal(str(f.monthly_saving)))
        if wanted_subs and subscription not in wanted_subs:
            continue
        if min_saving is not None and saving < min_saving:
            continue
        if f.proposed_action in ACTION_ORDER:
            by_resource[f.resource_id].append((f, saving))
    actions: list[dict[str, Any]] = []
    remediation = settings.remediation
    for resource_id, items in sorted(by_resource.items(), key=lambda kv: -max(s for _, s in kv[1])):
        planned = []
        for f, saving in items:
            justification = {"rule_id": f.rule_id, "title": f.title, "run_id": run.id}
            money_fields = {"monthly_saving": str(saving), "currency": f.currency}
            if f.proposed_action == "deallocate":
                planned.append(
                    {
                        "kind": "deallocate",
                        # marked first, so whoever finds the VM deallocated sees why
                        "parameters": {
                            "mark_tags": {"finops-finding": f.rule_id, "finops-plan": plan_id}
                        },
                        "finding": justification,
                        "expected": {"power_state": states.get(resource_id, "unknown")},
                        **money_fields,
                    }
                )
            elif f.proposed_action == "merge-tags":
                planned.append(
                    {
                        "kind": "merge-tags",
                        "parameters": {"tags": dict(f.evidence["tags_to_merge"])},
                        "finding": justification,
                        "expected": {"power_state": states.get(resource_id, "unknown")},
                        **money_fields,
                    }
                )
            else:
                planned.append(
                    {
                        "kind": "create-auto-shutdown",
                        "parameters": {
                            "time": remediation.auto_shutdown_time.replace(":", ""),
                            "time_zone": remediation.auto_shutdown_time_zone,
                            "notification_email": remediation.notification_email,
                        },
                        "finding": justification,
                        "expected": {"auto_shutdown": shutdown.get(resource_id, "none")},
                        **money_fields,
                    }
                )
        planned.sort(key=lambda a: ACTION_ORDER.index(a["kind"]))
        actions += [{"resource_id": resource_id, **a} for a in planned]
    for index, action in enumerate(actions):
        action["index"] = index
    plan: dict[str, Any] = {
        "version": PLAN_VERSION,
        "plan_id": plan_id,
        "created_at": clock.now().isoformat(timespec="seconds"),
        "source_run": run.id,
        "target": {"kind": "simulated", **run.simulation} if run.simulation else {"kind": "azure"},
        "filters": {
            "rules": rule_ids or [],
            "subscriptions": sorted(wanted_subs),
            "min_saving": None if min_saving is None else str(min_saving),
        },
        "actions": actions,
    }
    plan["checksum"] = checksum(plan)
    return plan


def plan_savings(plan: dict[str, Any]) -> dict[str, Decimal]:
    """Monthly saving per currency, each resource counted once at its largest action."""
    best: dict[tuple[str, str], Decimal] = {}
    for a in plan["actions"]:
        key = (a["resource_id"], a["currency"])
        best[key] = max(best.get(key, Decimal(0)), Decimal(a["monthly_saving"]))
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for (_, currency), amount in best.items():
        totals[currency] += amount
    return dict(totals)


def save_plan(conn: Connection, settings: Settings, plan: dict[str, Any]) -> Path:
    folder = settings.reports_dir / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = plan["created_at"][:19].replace(":", "").replace("-", "")
    path = folder / f"plan-{stamp}-{plan['plan_id'][:8]}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    conn.execute(
        schema.plans.insert().values(
            id=plan["plan_id"],
            created_at=datetime.fromisoformat(plan["created_at"]).replace(tzinfo=None),
            source_run_id=plan["source_run"],
            checksum=plan["checksum"],
            path=str(path.resolve()),
            actions=len(plan["actions"]),
        )
    )
    return path.resolve()
