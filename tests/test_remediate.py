"""Plan and apply through the real SDK against a simulated estate of each test's own."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from finops import clock
from finops.remediate.apply import read_plan, verify
from finops.remediate.plan import PlanError, checksum
from finops.sim.estate import (
    ANOMALY,
    COMMITMENT,
    IDLE,
    MISSING_TAGS,
    NO_SHUTDOWN,
    ORPHANED_DISK,
    OVERSIZED,
    PAYG_PTU,
    PTU_SATURATED,
    PTU_UNDERUSED,
    SPOT,
    STOPPED,
    Estate,
)
from finops.sim.server import Fault
from finops.store import schema
from tests.conftest import World, clean_env
from tests.test_cli import FINOPS, finops

MUTATING = ("deallocate", "tags", "schedule-put")


def expected_pairs(estate: Estate) -> set[tuple[str, str]]:
    return {
        (rule, estate.by_id[rid].name)
        for rule in (IDLE, NO_SHUTDOWN, STOPPED)
        for rid in estate.expected(rule)
    } | not_acted_on(estate)


def taggable(estate: Estate) -> set[str]:
    """GPU VMs missing tags that their resource group carries."""
    return {
        vm.name
        for vm in estate.vms
        if vm.id.lower() in estate.expected(MISSING_TAGS)
        and set(estate.missing_tags(vm))
        & set(estate.group_tags.get((vm.subscription_id, vm.resource_group.lower()), {}))
    }


def quota_alerts(estate: Estate) -> set[tuple[str, str]]:
    """The nearly full A100 quota: deallocating the idle nodes frees it."""
    return {("gpu-quota-near-limit", q.rsplit("/", 1)[1]) for q in estate.expected_quotas()}


def not_acted_on(estate: Estate) -> set[tuple[str, str]]:
    """Findings no plan acts on: the quota alert, yesterday's jump in GPU spend (still on the
    bill after the VMs are deallocated) and the PTU findings (advice, not actions)."""
    return left_after_apply(estate) | quota_alerts(estate)


def left_after_apply(estate: Estate) -> set[tuple[str, str]]:
    """Also every missing-tags finding: no resource group carries `environment`."""
    alerts = {(ANOMALY, group.rsplit("/", 1)[1]) for group in estate.expected_groups(ANOMALY)}
    alerts |= {
        (rule, estate.by_id[rid].name)
        for rule in (MISSING_TAGS, OVERSIZED)  # resizing is advice: it restarts the VM
        for rid in estate.expected(rule)
    }
    advice = (PTU_UNDERUSED, PAYG_PTU, PTU_SATURATED, ORPHANED_DISK, COMMITMENT, SPOT)
    return alerts | {
        (rule, rid.rsplit("/", 1)[1]) for rule in advice for rid in estate.expected(rule)
    }


def test_plan_records_every_action_and_changes_nothing(world):
    world.night()
    plan, path = world.plan()
    assert json.loads(path.read_text()) == plan and plan["checksum"] == checksum(plan)
    assert path.parent == world.settings.reports_dir / "plans"
    assert plan["target"] == {"kind": "azure"}
    kinds = {(a["kind"], a["resource_id"].rsplit("/", 1)[1]) for a in plan["actions"]}
    wanted = {
        ("deallocate" if rule in (IDLE, STOPPED) else "create-auto-shutdown", name)
        for rule, name in expected_pairs(world.estate) - not_acted_on(world.estate)
    } | {("merge-tags", name) for name in taggable(world.estate)}
    assert kinds == wanted  # alerts and PTU advice: no action
    for action in plan["actions"]:
        assert action["finding"]["rule_id"] in (IDLE, NO_SHUTDOWN, STOPPED, MISSING_TAGS)
        saves = action["kind"] != "merge-tags"  # tags make money visible, not smaller
        assert (Decimal(action["monthly_saving"]) > 0) == saves and action["currency"] == "USD"
        assert action["expected"]
    assert not any(world.sim.requests[r] for r in MUTATING)
    with world.engine.connect() as conn:
        stored = conn.execute(select(schema.plans)).one()
    assert (stored.id, stored.checksum, stored.actions) == (
        plan["plan_id"],
        plan["checksum"],
        len(plan["actions"]),
    )


def test_plan_filters(world):
    world.night()
    only_stopped, _ = world.plan(rule_ids=[STOPPED])
    assert {a["kind"] for a in only_stopped["actions"]} == {"deallocate"}
    assert len(only_stopped["actions"]) == len(world.estate.expected(STOPPED))
    sub = world.estate.subscriptions[2].subscription_id
    in_sub, _ = world.plan(subscriptions=[sub])
    assert in_sub["actions"] and all(sub in a["resource_id"] for a in in_sub["actions"])
    big, _ = world.plan(min_saving=Decimal("10000"))
    assert big["actions"] and all(Decimal(a["monthly_saving"]) >= 10000 for a in big["actions"])


def test_apply_fixes_the_findings_and_the_next_night_shows_them_gone(world):
    first = world.night()
    assert world.findings(first.run_id) == expected_pairs(world.estate)
    plan, _ = world.plan()
    outcomes = world.apply(plan)
    assert {o.outcome for o in outcomes} == {"succeeded"}
    idle = world.vm("train-nd-a100-1")
    assert idle.power_state == "deallocated" and idle.schedule == "Enabled"
    # tags are merged, never replaced
    assert idle.tags["owner"] == "dana" and idle.tags["workload"] == "training"
    assert idle.tags["finops-finding"] == IDLE and idle.tags["finops-plan"] == plan["plan_id"]
    assert world.vm("viz-nv-a10-stopped").power_state == "deallocated"
    assert world.vm("nb-nc-t4-busy").power_state == "running"  # busy: scheduled, not stopped
    second = world.night()
    assert world.findings(second.run_id) == left_after_apply(world.estate)
    html = second.report.read_text()
    headline = re.search(r'id="headline"[^>]*>([^<]*)<', html).group(1)
    # the 23 acted on, and the quota alert their deallocation cleared
    assert "Resolved since the previous night: 24 finding(s), USD 213,692.29 a month." in headline
    with world.engine.connect() as conn:
        audit = conn.execute(select(schema.audit).order_by(schema.audit.c.id)).all()
    assert len(audit) == len(plan["actions"])
    row = next(r for r in audit if r.kind == "deallocate" and "train-nd-a100-1" in r.resource_id)
    assert row.actor == "tester" and row.outcome == "succeeded"
    assert row.before["power_state"] == "running" and row.after["power_state"] == "deallocated"
    assert row.finished_at >= row.started_at


def test_state_changed_or_exempt_since_the_plan_is_skipped(world):
    world.night()
    plan, _ = world.plan()
    started = world.vm("viz-nv-a10-stopped")
    world.estate.change(started, power_state="running")  # someone started it
    exempted = world.vm("dev-nc-a100-idle")
    world.estate.change(exempted, tags={**exempted.tags, "finops-exempt": "true"})
    world.estate.change_group_tags(
        world.vm("nb-nc-t4-busy").subscription_id, "notebooks", {"finops-exempt": "True"}
    )
    outcomes = {o.resource_id.rsplit("/", 1)[1]: o for o in world.apply(plan)}
    assert outcomes["viz-nv-a10-stopped"].outcome == "skipped"
    assert outcomes["viz-nv-a10-stopped"].reason == (
        "power state changed since the plan: expected stopped, found running"
    )
    assert outcomes["dev-nc-a100-idle"].reason == "exempt tag finops-exempt=true on the VM"
    assert outcomes["nb-nc-t4-busy"].reason == "exempt tag finops-exempt=True on the resource group"
    assert started.power_state == "running" and exempted.power_state == "running"
    assert outcomes["nb-nc-a100-schedoff"].outcome == "skipped"  # same resource group
    assert world.vm("train-nd-a100-1").power_state == "deallocated"  # the others went ahead


def test_a_failing_action_is_audited_the_rest_go_on_and_a_retry_finishes(world):
    world.night()
    plan, _ = world.plan()
    world.sim.inject(Fault("deallocate", status=409, match="train-nd-a100-3", count=None))
    outcomes = world.apply(plan)
    failed = [o for o in outcomes if o.outcome == "failed"]
    assert [(o.kind, o.resource_id.rsplit("/", 1)[1]) for o in failed] == [
        ("deallocate", "train-nd-a100-3")
    ]
    same_vm = [o for o in outcomes if o.resource_id.endswith("train-nd-a100-3")]
    assert [o.outcome for o in same_vm] == ["failed", "skipped"]
    assert sum(o.outcome == "succeeded" for o in outcomes) == len(outcomes) - 2
    with world.engine.connect() as conn:
        error = conn.execute(
            select(schema.audit.c.error).where(schema.audit.c.outcome == "failed")
        ).scalar_one()
    assert "409" in error or "InjectedFault" in error
    world.sim.faults.clear()
    posts = world.sim.requests["deallocate"]
    again = world.apply(plan)
    assert {o.resource_id.rsplit("/", 1)[1] for o in again if o.outcome == "succeeded"} == {
        "train-nd-a100-3"
    }
    assert all(
        o.reason == "done by an earlier apply of this plan" for o in again if o.outcome == "noop"
    )
    assert world.sim.requests["deallocate"] - posts == 1  # nothing done twice


def test_a_deallocation_that_outlasts_its_timeout_is_audited_failed_and_not_resent(world):
    world.night()
    plan, _ = world.plan(rule_ids=[STOPPED])
    world.settings = world.settings.model_copy(
        update={
            "remediation": world.settings.remediation.model_copy(
                update={"deallocate_timeout_seconds": 2}
            )
        }
    )
    world.sim.operation_seconds = 4  # Azure still working on it when the job stops waiting
    outcomes = world.apply(plan)
    assert {o.outcome for o in outcomes} == {"failed"}
    assert world.sim.requests["deallocate"] == len(plan["actions"])  # one POST each, no storm
    with world.engine.connect() as conn:
        errors = (
            conn.execute(select(schema.audit.c.error).where(schema.audit.c.outcome == "failed"))
            .scalars()
            .all()
        )
    assert errors and all("still running after 2 s" in e for e in errors)
    time.sleep(4)  # the operations end in Azure; the plan applies again, and finds them done
    again = world.apply(plan)
    assert {(o.outcome, o.reason) for o in again} == {("noop", "already deallocated")}
    assert world.sim.requests["deallocate"] == len(plan["actions"])


def test_tampered_stale_foreign_and_oversized_plans_are_refused(world, tmp_path, monkeypatch):
    world.night()
    _, path = world.plan()
    tampered = json.loads(path.read_text())
    tampered["actions"][0]["resource_id"] = tampered["actions"][1]["resource_id"]
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    with pytest.raises(PlanError, match="altered after it was made"):
        read_plan(bad)
    tampered["checksum"] = checksum(tampered)  # a forger recomputes the checksum
    bad.write_text(json.dumps(tampered))
    with pytest.raises(PlanError, match="differs from the one recorded in the store"):
        verify(world.engine, read_plan(bad), world.settings, 25)
    with pytest.raises(PlanError, match="more than the cap of 5"):
        verify(world.engine, read_plan(path), world.settings, 5)
    verify(world.engine, read_plan(path), world.settings, 25)
    monkeypatch.setenv(clock.PIN, (clock.now() + timedelta(hours=24, seconds=1)).isoformat())
    with pytest.raises(PlanError, match=r"is 24\.0 h old, older than the 24 h limit"):
        verify(world.engine, read_plan(path), world.settings, 25)
    assert not any(world.sim.requests[r] for r in MUTATING)


def test_killed_apply_is_finished_by_a_reapply_without_repeating(world, tmp_path):
    world.night()
    _, path = world.plan(rule_ids=[IDLE])
    env = {
        "FINOPS_AZURE__ARM_ENDPOINT": world.sim.url,
        "FINOPS_AZURE__METRICS_ENDPOINT": world.sim.url,
        "FINOPS_AZURE__PRICES_ENDPOINT": world.sim.url,
        "FINOPS_AZURE__CA_FILE": world.sim.ca_file,
        "FINOPS_AZURE__CREDENTIAL": "simulated",
        "FINOPS_DB_URL": world.settings.db_url,
        "FINOPS_REMEDIATION__CONCURRENCY": "1",
    }
    world.sim.inject(Fault("deallocate", delay=8.0, match="train-nd-a100-5"))
    clean = clean_env()
    proc = subprocess.Popen(
        [FINOPS, "apply", str(path), "--yes"],
        cwd=tmp_path,
        env={**clean, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "finops.db"
    deadline = time.time() + 60
    done_before: set[str] = set()
    while time.time() < deadline:
        with sqlite3.connect(db) as conn:
            done_before = {
                r[0]
                for r in conn.execute("select resource_id from audit where outcome='succeeded'")
            }
            hanging = conn.execute(
                "select count(*) from audit where outcome='started' and resource_id like '%a100-5'"
            ).fetchone()[0]
        if hanging:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert hanging and done_before, "apply never reached the slow action"
    posts = world.sim.requests["deallocate"]
    result = finops("apply", str(path), "--yes", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    noops = {line.split()[3].rstrip(":") for line in lines if " noop " in line}
    assert noops == {rid.rsplit("/", 1)[1] for rid in done_before}
    assert all(v.power_state == "deallocated" for v in world.estate.vms if IDLE in v.expect)
    # the killed run's in-flight call may land late; nothing finished before was repeated
    assert world.sim.requests["deallocate"] - posts <= len(world.estate.expected(IDLE)) - len(
        done_before
    )


def test_apply_command_refuses_without_yes_when_not_interactive(world, tmp_path):
    world.night()
    _, path = world.plan()
    env = {"FINOPS_DB_URL": world.settings.db_url}
    result = finops("apply", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "finops: refusing to apply without --yes in a non-interactive run"
    )
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    result = finops("apply", str(garbage), "--yes", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"finops: plan file {garbage} is not valid JSON")
    assert not any(world.sim.requests[r] for r in MUTATING)


def test_demo_plan_apply_then_next_night(tmp_path):
    assert finops("demo", cwd=tmp_path).returncode == 0
    planned = finops("plan", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "Nothing was changed in Azure." in planned.stdout
    plan_path = planned.stdout.strip().splitlines()[-1]
    applied = finops("apply", plan_path, "--yes", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip().splitlines()[-1] == "25 succeeded, 0 noop, 0 skipped, 0 failed"
    night = finops("demo", cwd=tmp_path)
    html = Path(night.stdout.strip().splitlines()[-1]).read_text()
    from tests.test_cli import report_findings

    left = report_findings(Path(night.stdout.strip().splitlines()[-1]))
    # advice only: nothing left to act on
    advice = {PTU_UNDERUSED, PAYG_PTU, OVERSIZED, ORPHANED_DISK, COMMITMENT, SPOT}
    assert {PTU_UNDERUSED, OVERSIZED, COMMITMENT} <= set(left) <= advice
    assert "Resolved since the previous night: 24 finding(s), USD 213,692.29 a month." in html
    audit = finops("audit", cwd=tmp_path)
    assert audit.returncode == 0
    assert sum(" succeeded " in line for line in audit.stdout.splitlines()) == 25
    assert "upn:finops-demo@simulated.invalid" in audit.stdout


def test_merge_tags_action_adds_tags_and_keeps_the_others(world):
    first = world.night()
    vm = world.vm("serve-nd-h100-busy")
    with world.engine.begin() as conn:  # a finding that proposes tags (as tag rules will)
        conn.execute(
            schema.findings.insert().values(
                run_id=first.run_id,
                rule_id="idle-gpu-vm",
                resource_id=vm.id.lower(),
                severity="low",
                title="tags",
                evidence={"tags_to_merge": {"team": "serving", "owner": "lee"}},
                monthly_saving=Decimal(0),
                currency="USD",
                saving_basis="none",
                proposed_action="merge-tags",
                exempt=False,
                first_seen=first_seen(world, first.run_id),
            )
        )
    plan, _ = world.plan(subscriptions=[vm.subscription_id], rule_ids=[IDLE])
    tag_actions = [a for a in plan["actions"] if a["kind"] == "merge-tags"]
    assert [a["resource_id"] for a in tag_actions] == [vm.id.lower()]
    outcomes = {o.kind: o for o in world.apply(plan) if o.resource_id == vm.id.lower()}
    assert outcomes["merge-tags"].outcome == "succeeded"
    assert vm.tags == {
        "owner": "lee",
        "cost-center": "cc-7200",
        "environment": "prod",
        "workload": "inference",
        "team": "serving",
    }
    assert vm.power_state == "running"
    again = world.apply(plan)
    assert {o.outcome for o in again} == {"noop"}


def first_seen(world: World, run_id: int):
    with world.engine.connect() as conn:
        return conn.execute(
            select(schema.runs.c.started_at).where(schema.runs.c.id == run_id)
        ).scalar_one()
