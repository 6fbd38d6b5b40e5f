"""The `finops` command end to end: demo, run/collect/analyze/report against the simulator,
bad configuration and usage as one line with exit code 2."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from finops.sim.estate import (
    ANOMALY,
    COMMITMENT,
    EXEMPT,
    IDLE,
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
from tests.conftest import clean_env

FINOPS = str(Path(sys.executable).with_name("finops"))


def finops(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = clean_env()
    return subprocess.run(
        [FINOPS, *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def report_findings(path: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    html = path.read_text(encoding="utf-8")
    for vm, rules in re.findall(r'<tr data-vm="([^"]+)" data-rules="([^"]+)"', html):
        for rule in rules.split():
            found.setdefault(rule, set()).add(vm)
    return found


def test_demo_reports_exactly_the_seeded_vms_and_is_repeatable(tmp_path):
    first = finops("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = Path(first.stdout.strip().splitlines()[-1])
    assert report.is_file() and report.parent == tmp_path / "reports"
    assert re.fullmatch(r"finops-\d{4}-\d{2}-\d{2}\.html", report.name)

    estate = Estate(seed=7, vms=60)
    names = {vm.id.lower(): vm.name for vm in estate.vms}
    found = report_findings(report)
    with sqlite3.connect(tmp_path / "finops.db") as db:
        stored = db.execute(
            "select rule_id, resource_id, monthly_saving from findings where exempt = 0"
        ).fetchall()
    for rule in (IDLE, NO_SHUTDOWN, STOPPED, OVERSIZED, ORPHANED_DISK, COMMITMENT, SPOT):
        assert {r for rule_id, r, _ in stored if rule_id == rule} == estate.expected(rule), rule
        shown = {name.lower() for name in found.get(rule, set())}
        assert shown <= {r.rsplit("/", 1)[1] for r in estate.expected(rule)}, rule
    # the report lists the 20 resources that save the most, each with all its findings
    best: dict[str, float] = {}
    for _, r, saving in stored:
        best[r] = max(best.get(r, 0), saving)
    top = sorted(best, key=lambda r: (-best[r], r.rsplit("/", 1)[1]))[:20]
    assert {n.lower() for n in set().union(*found.values())} == {r.rsplit("/", 1)[1] for r in top}
    assert found[IDLE] >= {"train-nd-a100-1", "dev-nc-a100-idle"}
    exempt = {names[r] for r in estate.expected(EXEMPT)}
    assert not exempt & set().union(*found.values())
    html = report.read_text(encoding="utf-8")
    assert "1 VM(s) carrying the exempt tag were left out" in html
    assert re.search(r"USD [\d,]+\.\d\d a month can be saved on \d+ GPU VMs", html)
    assert "(new tonight)" in html and "open 0 d" not in html
    for family in ("NC T4 v3", "NC A100 v4", "ND A100 v4", "ND H100 v5", "NV A10 v5"):
        assert re.search(f">{family}</td>", html)
    # the crashed training job's resource group, and none of the near-misses
    alerts = set(re.findall(r'<tr data-alert="([^"]+)" data-rules="gpu-cost-anomaly"', html))
    assert alerts == estate.expected_groups(ANOMALY)
    quotas = set(re.findall(r'<tr data-alert="([^"]+)" data-rules="gpu-quota-near-limit"', html))
    assert quotas == estate.expected_quotas()
    # costs from the Query API and from the simulator's FOCUS export, and they agree
    # one file per month the 30 days touch (3 on 1 March of a leap year)
    first, today = estate.now.date() - timedelta(days=30), estate.now.date()
    months = (today.year - first.year) * 12 + today.month - first.month + 1
    assert re.search(rf"FOCUS exports \({months} file\(s\)\) for 9\d;", html)
    assert re.search(r"They agree on all 9\d subscription-day\(s\) both cover", html)
    # mid-month a month to date and a forecast; on the 1st what the month just closed came to
    month = r"Month to date USD [\d,]+\.\d\d, forecast USD [\d,]+\.\d\d for"
    assert re.search(rf"{month}|\w+ \d{{4}} came to USD [\d,]+\.\d\d\.", html)
    # the PTU section: one row per deployment, the seeded findings on theirs
    for rule in (PTU_UNDERUSED, PAYG_PTU, PTU_SATURATED):
        shown = set(re.findall(rf'<tr data-deployment="([^"]+)" data-rules="{rule}"', html))
        assert shown == {rid.rsplit("/", 1)[1] for rid in estate.expected(rule)}, rule
    assert len(re.findall(r"<tr data-deployment=", html)) == 8

    second = finops("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    with sqlite3.connect(tmp_path / "finops.db") as db:
        runs = db.execute("select id, status from runs order by id").fetchall()
        per_run = [
            set(
                db.execute(
                    "select rule_id, resource_id, exempt from findings where run_id=?", (run_id,)
                ).fetchall()
            )
            for run_id, _ in runs
        ]
    assert [status for _, status in runs] == ["succeeded", "succeeded"]
    assert per_run[0] == per_run[1] and per_run[0]
    assert report_findings(report) == found
    html = report.read_text(encoding="utf-8")  # the second night knows the findings already
    assert "(open 0 d)" in html and "(new tonight)" not in html
    assert "(none of it new tonight)" in html


@pytest.fixture
def sim_env(sim) -> dict[str, str]:
    return {
        "FINOPS_AZURE__ARM_ENDPOINT": sim.url,
        "FINOPS_AZURE__METRICS_ENDPOINT": sim.url,
        "FINOPS_AZURE__PRICES_ENDPOINT": sim.url,
        "FINOPS_AZURE__CA_FILE": sim.ca_file,
        "FINOPS_AZURE__CREDENTIAL": "simulated",
    }


def test_collect_then_analyze_then_report(tmp_path, sim_env, estate):
    collected = finops("collect", cwd=tmp_path, env=sim_env)
    assert collected.returncode == 0, collected.stderr
    assert collected.stdout.strip() == "run 1 collected"
    analyzed = finops("analyze", "--rule", "gpu-vm-stopped-not-deallocated", cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr
    stopped = {line.split()[-1] for line in analyzed.stdout.splitlines()[:-1]}
    assert stopped == estate.expected(STOPPED)
    reported = finops("report", cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert report_findings(Path(reported.stdout.strip())) == {
        STOPPED: {estate.by_id[r].name for r in estate.expected(STOPPED)}
    }


def test_run_against_the_simulator_with_a_config_file(tmp_path, sim_env, estate):
    sub = estate.subscriptions[1].subscription_id
    config = tmp_path / "finops.toml"
    config.write_text(f'subscriptions = ["{sub}"]\ndb_url = "sqlite:///night.db"\n')
    result = finops("run", "--config", str(config), cwd=tmp_path, env=sim_env)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "night.db") as db:
        subs = db.execute("select distinct subscription_id from vms").fetchall()
    assert subs == [(sub,)]


def test_a_failed_night_is_one_line_exit_1_and_marked_failed(tmp_path, sim_env):
    env = {**sim_env, "FINOPS_SUBSCRIPTIONS": '["00000000-0000-4000-8000-000000000000"]'}
    result = finops("run", cwd=tmp_path, env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("finops:")]
    assert errors == [
        "finops: subscription 00000000-0000-4000-8000-000000000000 is not visible to this "
        "identity (check the id and the Reader role)"
    ]
    assert "Traceback" not in result.stderr
    with sqlite3.connect(tmp_path / "finops.db") as db:
        assert db.execute("select status, error from runs").fetchall() == [
            ("failed", "LookupError: " + errors[0].removeprefix("finops: "))
        ]


@pytest.mark.parametrize(
    ("args", "env", "config", "message"),
    [
        (
            ["demo"],
            {"FINOPS_METRICS_DAYS": "0"},
            None,
            "bad setting metrics_days (FINOPS_METRICS_DAYS): "
            "Input should be greater than or equal to 1",
        ),
        (
            ["demo"],
            {"FINOPS_RULES__IDLE_GPU_AVG_PERCENT": "lots"},
            None,
            "bad setting rules.idle_gpu_avg_percent (FINOPS_RULES__IDLE_GPU_AVG_PERCENT): "
            "Input should be a valid number, unable to parse string as a number",
        ),
        (
            ["demo"],
            {"FINOPS_CURRENCY": "dollars"},
            None,
            "bad setting currency (FINOPS_CURRENCY): "
            "must be a three-letter ISO 4217 code such as USD",
        ),
        (
            ["run"],
            {},
            "[rules]\nworking_hours = '20:00-08:00'\n",
            "bad setting rules.working_hours (FINOPS_RULES__WORKING_HOURS): "
            "must be a start before an end within one day, like 08:00-20:00",
        ),
        (["run"], {}, "colour = 'blue'\n", "bad setting colour: unknown setting"),
        (["run"], {}, "metrics_days = \n", None),
        (["analyze", "--rule", "no-such-rule"], {}, None, None),
        (["report"], {}, None, None),
    ],
)
def test_bad_configuration_and_usage_exit_2_with_one_line(tmp_path, args, env, config, message):
    if config is not None:
        path = tmp_path / "finops.toml"
        path.write_text(config)
        args = [*args, "--config", str(path)]
    result = finops(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("finops:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    if message:
        assert lines[0] == f"finops: {message}"


def test_missing_config_file_is_exit_2(tmp_path):
    result = finops("run", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"finops: config file not found: {tmp_path / 'nope.toml'}"


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["run", "--help"],
        ["demo", "--help"],
        ["collect", "--help"],
        ["analyze", "--help"],
        ["report", "--help"],
        ["db", "upgrade", "--help"],
        ["sim", "serve", "--help"],
    ],
)
def test_every_command_has_help(tmp_path, command):
    result = finops(*command, cwd=tmp_path)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_db_upgrade_creates_the_schema(tmp_path):
    result = finops("db", "upgrade", cwd=tmp_path, env={"FINOPS_DB_URL": "sqlite:///x.db"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema up to date in sqlite:///x.db"
    with sqlite3.connect(tmp_path / "x.db") as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert {"runs", "vms", "findings", "costs_daily", "metrics_hourly"} <= tables


def test_sim_serve_prints_its_url_and_ca_file(tmp_path):
    clean = clean_env()
    proc = subprocess.Popen(
        [FINOPS, "sim", "serve", "--vms", "30"],
        cwd=tmp_path,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        ca_line = proc.stdout.readline()
        assert re.fullmatch(r"simulated Azure estate at https://127\.0\.0\.1:\d+\n", first)
        assert Path(ca_line.split(": ", 1)[1].strip()).is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
