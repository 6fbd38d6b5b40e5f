"""The benchmark's smoke run: it runs end to end on a small estate and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_runs_on_200_vms_and_writes_its_results(tmp_path):
    out = tmp_path / "latest.json"
    command = [sys.executable, str(REPO / "bench" / "run.py"), "--vms", "200"]
    command += ["--backends", "sqlite", "--naive-vms", "200", "--subscriptions", "5"]
    done = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    first, second = results["runs"]
    assert (first["vms"], first["night"], second["night"]) == (200, 1, 2)
    for phase in ("collect", "load", "rules", "report"):
        assert first["phases"][phase]["wall_s"] > 0
    assert first["phases"]["collect"]["requests"] > 0 and first["rows_loaded"] > 1000
    assert first["findings"] > 0 and first["peak_rss_mb"] > 0
    assert first["simulator_cpu_s"] > 0  # it answered the night's requests
    assert results["naive"]["requests"] > first["requests"]  # a call per VM, and more
    assert {v["target"].split(" ")[0] for v in results["verdicts"]} >= {"requests", "naive"}
    assert "| 200 | sqlite | 1 |" in out.with_suffix(".md").read_text()
