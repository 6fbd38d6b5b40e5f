"""Carry out exactly one saved plan: verified, re-checked against live state, audited.

Refused outright: a plan whose checksum does not match its content or the store's record of it,
one older than the age limit, one with more actions than the cap. Per action: an action an
earlier apply of this plan completed is a no-op without an Azure call; otherwise the resource's
live state is re-read, the action is skipped when the exempt tag is on the VM or its resource
group or the state is no longer the one planned, and is a no-op when the live state already is
its outcome. Every action leaves one audit row, written as soon as the action ends.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from finops import clock
from finops.azure import actions
from finops.azure.clients import AzureClients
from finops.config import Settings
from finops.remediate.plan import ACTION_ORDER, PlanError, checksum
from finops.store import schema
from finops.store.load import utc_naive

log = logging.getLogger("finops")
DONE = ("succeeded", "noop")


@dataclass(frozen=True)
class Outcome:
    index: int
    resource_id: str
    kind: str
    outcome: str  # succeeded | noop | skipped | failed
    reason: str


def read_plan(path: Path) -> dict[str, Any]:
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"plan file {path} is not valid JSON: {e}") from None
    required = {"plan_id", "created_at", "source_run", "target", "actions", "checksum"}
    if not isinstance(plan, dict) or not required <= plan.keys():
        raise PlanError(f"plan file {path} is not a finops plan (missing fields)")
    if plan["checksum"] != checksum(plan):
        raise PlanError(f"plan {path} was altered after it was made (checksum mismatch): refused")
    for action in plan["actions"]:
        if not isinstance(action, dict) or action.get("kind") not in ACTION_ORDER:
            raise PlanError(f"plan {path} holds an unknown action: refused")
        actions.VmRef.parse(action["resource_id"])
    return plan


def verify(engine: Engine, plan: dict[str, Any], settings: Settings, max_actions: int) -> None:
    with engine.connect() as conn:
        recorded = conn.execute(
            select(schema.plans.c.checksum).where(schema.plans.c.id == plan["plan_id"])
        ).scalar()
    if recorded is None:
        raise PlanError(f"plan {plan['plan_id']} was not made by `finops plan` on this store")
    if recorded != plan["checksum"]:
        raise PlanError(f"plan {plan['plan_id']} differs from the one recorded in the store")
    created = datetime.fromisoformat(plan["created_at"])
    age = clock.now() - created
    limit = timedelta(hours=settings.remediation.max_plan_age_hours)
    if age > limit:
        hours = age.total_seconds() / 3600
        raise PlanError(
            f"plan {plan['plan_id'][:8]} is {hours:.1f} h old, older than the "
            f"{settings.remediation.max_plan_age_hours:g} h limit: make a new plan"
        )
    if len(plan["actions"]) > max_actions:
        raise PlanError(
            f"plan has {len(plan['actions'])} actions, more than the cap of {max_actions}: "
            "pass --max-actions to allow it"
        )


class Applier:
    def __init__(self, engine: Engine, clients: AzureClients, settings: Settings, actor: str):
        self.engine, self.clients, self.settings, self.actor = engine, clients, settings, actor
        self.exempt_name, self.exempt_value = settings.exempt

    def apply(self, plan: dict[str, Any]) -> list[Outcome]:
        with self.engine.connect() as conn:
            done = {
                row.action_index
                for row in conn.execute(
                    select(schema.audit.c.action_index).where(
                        schema.audit.c.plan_id == plan["plan_id"],
                        schema.audit.c.outcome.in_(DONE),
                    )
                )
            }
        per_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for action in plan["actions"]:
            per_resource[action["resource_id"]].append(action)
        workers = min(self.settings.remediation.concurrency, max(1, len(per_resource)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(self._resource, plan["plan_id"], group, done)
                for group in per_resource.values()
            ]
            outcomes = [o for f in futures for o in f.result()]
        return sorted(outcomes, key=lambda o: o.index)

    def _resource(self, plan_id: str, group: list[dict], done: set[int]) -> list[Outcome]:
        """One resource's actions, in order; a failure skips the rest of that resource."""
        outcomes: list[Outcome] = []
        for action in sorted(group, key=lambda a: a["index"]):
            if outcomes and outcomes[-1].outcome == "failed":
                outcomes.append(
                    self._record(
                        plan_id, action, "skipped", "an earlier action on this resource failed"
                    )
                )
                continue
            if action["index"] in done:
                outcomes.append(
                    self._record(plan_id, action, "noop", "done by an earlier apply of this plan")
                )
                continue
            outcomes.append(self._one(plan_id, action))
        return outcomes

    def _one(self, plan_id: str, action: dict[str, Any]) -> Outcome:
        vm = actions.VmRef.parse(action["resource_id"])
        row_id = self._start(plan_id, action)
        before: actions.LiveState | None = None
        try:
            before = actions.read_live(self.clients, vm)
            verdict = self._check(action, before)
            if verdict:
                return self._finish(row_id, action, *verdict, before)
            self._execute(action, vm, before)
            after = actions.read_live(self.clients, vm)
            return self._finish(row_id, action, "succeeded", "done", before, after)
        except Exception as e:  # audited, and the other resources go on
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:1000]
            log.warning("action %s on %s failed: %s", action["kind"], vm.name, message)
            return self._finish(
                row_id, action, "failed", "the Azure call failed", before, error=message
            )

    def _check(self, action: dict[str, Any], live: actions.LiveState) -> tuple[str, str] | None:
        """(outcome, reason) when the action must not run, None when it should."""
        if not live.exists:
            return "skipped", "the VM no longer exists"
        for where, tags in (("VM", live.tags), ("resource group", live.group_tags)):
            for key, value in tags.items():
                if key.lower() == self.exempt_name.lower() and (
                    str(value).lower() == self.exempt_value.lower()
                ):
                    return "skipped", f"exempt tag {key}={value} on the {where}"
        expected = action["expected"]
        kind = action["kind"]
        if kind == "deallocate" and live.power_state == "deallocated":
            return "noop", "already deallocated"
        if kind == "merge-tags" and all(
            live.tags.get(k) == v for k, v in action["parameters"]["tags"].items()
        ):
            return "noop", "tags already set"
        if kind == "create-auto-shutdown":
            if live.auto_shutdown == "Enabled":
                return "noop", "an enabled auto-shutdown schedule exists"
            if live.auto_shutdown != expected["auto_shutdown"]:
                return "skipped", (
                    f"schedule changed since the plan: expected {expected['auto_shutdown']}, "
                    f"found {live.auto_shutdown}"
                )
        elif live.power_state != expected["power_state"]:
            return "skipped", (
                f"power state changed since the plan: expected {expected['power_state']}, "
                f"found {live.power_state}"
            )
        return None

    def _execute(self, action: dict[str, Any], vm: actions.VmRef, live: actions.LiveState):
        params = action["parameters"]
        if action["kind"] == "deallocate":
            mark = params.get("mark_tags") or {}
            if any(live.tags.get(k) != v for k, v in mark.items()):
                actions.merge_tags(self.clients, vm, mark)
            timeout = self.settings.remediation.deallocate_timeout_seconds
            actions.deallocate(self.clients, vm, timeout)
        elif action["kind"] == "merge-tags":
            actions.merge_tags(self.clients, vm, params["tags"])
        else:
            actions.create_auto_shutdown(
                self.clients,
                vm,
                live.location,
                params["time"],
                params["time_zone"],
                params.get("notification_email"),
            )

    # -- audit ---------------------------------------------------------------------------
    def _start(self, plan_id: str, action: dict[str, Any]) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                schema.audit.insert().values(
                    plan_id=plan_id,
                    action_index=action["index"],
                    resource_id=action["resource_id"],
                    kind=action["kind"],
                    actor=self.actor,
                    started_at=utc_naive(clock.now()),
                    outcome="started",
                )
            ).inserted_primary_key[0]

    def _finish(self, row_id, action, outcome, reason, before=None, after=None, error=None):
        with self.engine.begin() as conn:
            conn.execute(
                update(schema.audit)
                .where(schema.audit.c.id == row_id)
                .values(
                    finished_at=utc_naive(clock.now()),
                    outcome=outcome,
                    reason=reason,
                    before=before.as_dict() if before else None,
                    after=after.as_dict() if after else None,
                    error=error,
                )
            )
        return Outcome(action["index"], action["resource_id"], action["kind"], outcome, reason)

    def _record(self, plan_id: str, action: dict[str, Any], outcome: str, reason: str) -> Outcome:
        return self._finish(self._start(plan_id, action), action, outcome, reason)
