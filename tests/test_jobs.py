"""Running every night: the night lock, cron's exit codes, the scheduler, Azure Functions."""

from __future__ import annotations

import importlib.util
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import azure.functions.timer
import pytest
from azure.storage.blob import ContainerClient
from sqlalchemy import select

from finops.azure.clients import StaticTokenCredential
from finops.config import reference_markdown
from finops.sim.server import Fault
from finops.store import schema
from finops.store.db import engine_for
from tests.conftest import clean_env
from tests.test_cli import FINOPS, finops

REPO = Path(__file__).resolve().parents[1]


def sim_env(sim, db_url: str) -> dict[str, str]:
    return {
        "FINOPS_AZURE__ARM_ENDPOINT": sim.url,
        "FINOPS_AZURE__METRICS_ENDPOINT": sim.url,
        "FINOPS_AZURE__PRICES_ENDPOINT": sim.url,
        "FINOPS_AZURE__CA_FILE": sim.ca_file,
        "FINOPS_AZURE__CREDENTIAL": "simulated",
        "FINOPS_DB_URL": db_url,
    }


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    clean = clean_env()
    return subprocess.Popen(
        [FINOPS, *args],
        cwd=cwd,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def statuses(db_url: str) -> list[tuple[str, str | None]]:
    engine = engine_for(db_url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    select(schema.runs.c.status, schema.runs.c.error).order_by(schema.runs.c.id)
                )
            ]
    except Exception:
        return []  # the schema is not there yet
    finally:
        engine.dispose()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_night_is_refused_while_one_runs(db_url, sim, tmp_path):
    env = sim_env(sim, db_url)
    sim.inject(Fault("graph", delay=6.0, count=1))  # the first night takes a while
    first = start(["run"], tmp_path, env)
    wait_for(lambda: ("running", None) in statuses(db_url), 60, "the first night to start")
    second = finops("run", cwd=tmp_path, env=env)
    assert second.returncode == 3
    assert (
        second.stderr.strip()
        .splitlines()[-1]
        .startswith("finops: another finops night is running against")
    )
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert [s for s, _ in statuses(db_url)] == ["succeeded"]
    assert finops("run", cwd=tmp_path, env=env).returncode == 0  # the lock was released


def test_a_killed_night_frees_the_lock_and_is_marked_failed(db_url, sim, tmp_path):
    env = sim_env(sim, db_url)
    sim.inject(Fault("graph", delay=30.0, count=1))
    killed = start(["run"], tmp_path, env)
    wait_for(lambda: ("running", None) in statuses(db_url), 60, "the night to start")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    sim.faults.clear()
    result = finops("run", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert statuses(db_url) == [
        ("failed", "interrupted: the process ended before the night was stored"),
        ("succeeded", None),
    ]


def test_scheduler_runs_nights_and_stops_cleanly_on_sigterm(sim, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'finops.db'}"
    env = {**sim_env(sim, db_url), "FINOPS_SCHEDULE__CRON": "*/4 * * * * *"}
    proc = start(["schedule"], tmp_path, env)
    try:
        wait_for(lambda: ("succeeded", None) in statuses(db_url), 90, "a scheduled night")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    log = proc.stderr.read()
    assert "scheduler started: '*/4 * * * * *' (UTC)" in log
    assert re.search(r"scheduled night finished: run \d+, \d+ finding\(s\)", log)
    assert "SIGTERM received: stopping after any running night" in log
    assert log.rstrip().endswith("scheduler stopped")
    assert "Traceback" not in log


def test_bad_schedule_is_a_configuration_error(tmp_path):
    result = finops("schedule", cwd=tmp_path, env={"FINOPS_SCHEDULE__CRON": "0 2 * * *"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "finops: bad setting schedule.cron (FINOPS_SCHEDULE__CRON): "
        "must have six fields: second minute hour day month weekday"
    )


def _function_app():
    path = REPO / "jobs/azure_function/function_app.py"
    spec = importlib.util.spec_from_file_location("function_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_azure_function_runs_the_night_and_uploads_the_report(sim, azurite, tmp_path, monkeypatch):
    bundle = tmp_path / "ca-bundle.pem"  # trust both the simulator and Azurite
    bundle.write_text(Path(sim.ca_file).read_text() + Path(azurite["ca_file"]).read_text())
    container_url = f"{azurite['url']}/finops-reports"
    ContainerClient.from_container_url(
        container_url, credential=StaticTokenCredential(), connection_verify=str(bundle)
    ).create_container()
    settings = {
        **sim_env(sim, f"sqlite:///{tmp_path / 'finops.db'}"),
        "FINOPS_AZURE__CA_FILE": str(bundle),
        "FINOPS_REPORT_CONTAINER_URL": container_url,
        "FINOPS_REPORTS_DIR": str(tmp_path / "reports"),
        "FINOPS_SCHEDULE__CRON": "0 30 1 * * *",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)

    module = _function_app()
    (function,) = module.app.get_functions()
    assert function.get_function_name() == "finops_nightly"
    trigger = function.get_trigger()
    assert trigger.get_binding_name() == "timerTrigger"
    assert trigger.schedule == "%FINOPS_SCHEDULE__CRON%"  # the same setting as finops schedule
    function.get_user_function()(azure.functions.timer.TimerRequest(past_due=True))

    assert [s for s, _ in statuses(settings["FINOPS_DB_URL"])] == ["succeeded"]
    blobs = {
        b.name: b
        for b in ContainerClient.from_container_url(
            container_url, credential=StaticTokenCredential(), connection_verify=str(bundle)
        ).list_blobs()
    }
    report = next(n for n in blobs if n.endswith(".html"))
    assert re.fullmatch(r"finops-\d{4}-\d{2}-\d{2}\.html", report)
    assert {n for n in blobs if n.endswith(".png")} == {
        report.replace(".html", "-gpu-hours.png"),
        report.replace(".html", "-cost-trend.png"),
    }
    assert blobs[report].content_settings.content_type == "text/html; charset=utf-8"


def test_runs_lists_the_nights(tmp_path, sim):
    env = sim_env(sim, f"sqlite:///{tmp_path / 'finops.db'}")
    assert finops("run", cwd=tmp_path, env=env).returncode == 0
    failing = {**env, "FINOPS_SUBSCRIPTIONS": '["00000000-0000-4000-8000-000000000000"]'}
    assert finops("run", cwd=tmp_path, env=failing).returncode == 1
    listed = finops("runs", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    header, newest, oldest = listed.stdout.splitlines()
    assert header.split()[:4] == ["run", "started", "(UTC)", "took"]
    assert re.match(r"2\s+\S+ \S+\s+\d+s\s+failed\s+azure\s+-\s+0\s+-\s+LookupError: ", newest)
    with sqlite3.connect(tmp_path / "finops.db") as db:
        (findings,) = db.execute(
            "select count(*) from findings where run_id = 1 and not exempt"
        ).fetchone()
        (status, counts) = db.execute("select status, counts from runs where id = 1").fetchone()
    assert findings > 40, (status, counts)
    assert re.match(
        r"1\s+\S+ \S+\s+\d+s\s+succeeded\s+azure\s+vms=60 metrics=\d+ costs=\d+\s+"
        rf"{findings}\s+USD [\d,]+\.\d\d",
        oldest,
    )


def test_the_settings_reference_is_generated_from_the_settings():
    page = (REPO / "docs" / "configuration.md").read_text()
    assert reference_markdown() in page, (
        "run `finops settings`, paste it into docs/configuration.md"
    )
    assert "docs/configuration.md" in (REPO / "README.md").read_text()


def test_a_night_changes_the_cycle_collector_only_while_it_runs():
    """The scheduler runs night after night in one process: what a night changes in the cycle
    collector is undone after it, also when the night fails."""
    import gc

    from finops.pipeline import few_collections

    before = gc.get_threshold()
    with pytest.raises(RuntimeError), few_collections():
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0
        raise RuntimeError("the night failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
