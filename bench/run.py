"""The nightly job on simulated estates of 1k to 50k VMs, on SQLite and PostgreSQL, against the
naive way (a call per VM), with per-phase wall time, CPU time, peak RSS, requests and rows/s.

    python bench/run.py                       # 1k, 10k, 50k VMs (make bench)
    python bench/run.py --vms 200 --backends sqlite --naive-vms 200    # a smoke run

Each estate is served by the simulator in a process of its own; each night runs in a fresh
process (so its RSS is the job's alone) and reports its phases as one JSON line. Results go to
bench/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finops import clock  # noqa: E402 (the repository's finops, found through ROOT)

PHASES = ("collect", "load", "rules", "report")
TARGETS = {
    "seconds_10k": 60,
    "seconds_50k": 300,
    "rss_mb_50k": 400,
    "rss_growth_10k_to_50k": 1.5,
    "vms_per_request": 40,
    "second_night_share": 0.5,
    "naive_request_ratio": 20,
    "naive_time_ratio": 5,
}


# -- the simulator process ------------------------------------------------------------------
def serve(args: argparse.Namespace) -> None:
    from finops.sim.estate import Estate
    from finops.sim.server import SimServer

    estate = Estate(
        seed=7, vms=args.vms[0], subscriptions=args.subscriptions, regions=args.regions,
        gpu_share=args.gpu_share,
    )  # fmt: skip
    with SimServer(estate, page_size=1000, cost_page_size=5000, prices_page_size=1000) as sim:
        print(json.dumps({"url": sim.url, "ca_file": sim.ca_file}), flush=True)
        sys.stdin.read()  # until the parent closes it


class Simulator:
    def __init__(self, args: argparse.Namespace, vms: int):
        command = [sys.executable, __file__, "--serve", "--vms", str(vms)]
        command += ["--subscriptions", str(args.subscriptions), "--regions", str(args.regions)]
        command += ["--gpu-share", str(args.gpu_share)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the simulator did not start")
        found = json.loads(line)
        self.url, self.ca_file = found["url"], found["ca_file"]

    def env(self, db_url: str, reports: Path) -> dict[str, str]:
        return {
            **clock.environment_without_settings(dict(os.environ)),
            "FINOPS_AZURE__ARM_ENDPOINT": self.url,
            "FINOPS_AZURE__METRICS_ENDPOINT": self.url,
            "FINOPS_AZURE__PRICES_ENDPOINT": self.url,
            "FINOPS_AZURE__CA_FILE": self.ca_file,
            "FINOPS_AZURE__CREDENTIAL": "simulated",
            "FINOPS_DB_URL": db_url,
            "FINOPS_REPORTS_DIR": str(reports),
        }

    def cpu_seconds(self) -> float:
        """The simulator's CPU time so far: on this machine it competes with the job for the
        two cores, where Azure would compute its answers on its own."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@cache
def _session():
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxy look-up: it took seconds on a probe
    return session


def requests_so_far(url: str, ca_file: str) -> int:
    answer = _session().get(f"{url}/_sim/requests", verify=ca_file, timeout=30)
    return sum(answer.json().values())


# -- one night, in a process of its own ----------------------------------------------------------
def cpu_seconds() -> float:
    """The process's CPU time and its ended children's: the load's helper process."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


class ChildrenPeak(threading.Thread):
    """The largest peak RSS of this process's children (the load's helper), read from /proc
    while they live: getrusage's figure for children also counts a child forked to run another
    program at the size of the process it was forked from."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.kib = 0

    def run(self) -> None:
        me = str(os.getpid())
        while True:
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    if stat.read_text().rsplit(")", 1)[1].split()[1] != me:
                        continue
                    status = (stat.parent / "status").read_text()
                except (OSError, IndexError):
                    continue  # ended meanwhile
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.kib = max(self.kib, int(line.split()[1]))
            time.sleep(0.2)


def peak_rss_mb(children: ChildrenPeak | None = None) -> float:
    """The night's peak RSS and its helper's, added up (an upper bound: the two peaks need not
    coincide)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return (kib + (children.kib if children else 0)) / 1024


def night(args: argparse.Namespace) -> None:
    """Run the nightly job with probes around its steps; print the phases as JSON."""
    import logging

    from finops import pipeline
    from finops.config import load_settings

    logging.basicConfig(level=logging.WARNING)
    url, ca_file = os.environ["FINOPS_AZURE__ARM_ENDPOINT"], os.environ["FINOPS_AZURE__CA_FILE"]
    phases = {p: {"wall_s": 0.0, "cpu_s": 0.0, "requests": 0, "rows": 0} for p in PHASES}
    open_steps: dict[str, tuple[float, float, int]] = {}
    children = ChildrenPeak()
    children.start()

    def probe(name: str, when: str) -> None:
        phase = "collect" if name.startswith("collect") else name
        if phase not in phases:
            return
        now = (time.perf_counter(), cpu_seconds(), requests_so_far(url, ca_file))
        if when == "start":
            open_steps[name] = now
            return
        began = open_steps.pop(name)
        phases[phase]["wall_s"] += now[0] - began[0]
        phases[phase]["cpu_s"] += now[1] - began[1]
        phases[phase]["requests"] += now[2] - began[2]
        phases[phase]["peak_rss_mb"] = round(peak_rss_mb(children), 1)

    pipeline.STEP_OBSERVERS.append(probe)
    settings = load_settings()
    started = time.perf_counter()
    result = pipeline.nightly(settings, source="azure")
    total = time.perf_counter() - started
    from sqlalchemy import select

    from finops.store import schema
    from finops.store.db import engine_for

    engine = engine_for(settings.db_url)
    with engine.connect() as conn:
        counts = conn.execute(select(schema.runs.c.counts).where(schema.runs.c.id == result.run_id))
        loaded = counts.scalar_one()
    engine.dispose()
    rows = sum(v for k, v in loaded.items() if isinstance(v, int) and k != "findings")
    phases["load"]["rows"] = rows
    for values in phases.values():
        values["wall_s"] = round(values["wall_s"], 2)
        values["cpu_s"] = round(values["cpu_s"], 2)
    print(
        json.dumps(
            {
                "phases": phases,
                "wall_s": round(total, 2),
                "cpu_s": round(cpu_seconds(), 2),
                "peak_rss_mb": round(peak_rss_mb(children), 1),
                "requests": sum(p["requests"] for p in phases.values()),
                "rows_loaded": rows,
                "rows_per_s": round(rows / max(phases["load"]["wall_s"], 0.001)),
                "findings": result.findings,
                "partial": result.missing,
            }
        )
    )


def run_child(mode: str, env: dict[str, str], cwd: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, mode], env=env, cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the naive way ---------------------------------------------------------------------------
def naive(args: argparse.Namespace) -> None:
    """What a hand-written script does with the same SDK: every VM's instance view, its own
    metrics calls, its own cost query."""
    from datetime import timedelta

    from azure.mgmt.costmanagement.models import (
        QueryAggregation,
        QueryComparisonExpression,
        QueryDataset,
        QueryDefinition,
        QueryFilter,
        QueryTimePeriod,
    )

    from finops.azure.clients import clients_for
    from finops.azure.metrics import guest_metrics
    from finops.config import load_settings

    settings = load_settings()
    clients = clients_for(settings.azure)
    url, ca_file = settings.azure.arm_endpoint, str(settings.azure.ca_file)
    before = requests_so_far(url, ca_file)
    started, cpu = time.perf_counter(), cpu_seconds()
    now = clock.now().replace(minute=0, second=0, microsecond=0)
    subs = [s.subscription_id for s in clients.subscription().subscriptions.list()]
    vms = 0
    for sub in subs:
        compute = clients.compute(sub)
        for vm in compute.virtual_machines.list_all():
            vms += 1
            group = vm.id.split("/")[4]
            compute.virtual_machines.instance_view(group, vm.name)
            week = (now - timedelta(days=7), now)
            clients.metrics(vm.location).query_resources(
                resource_ids=[vm.id],
                metric_namespace="microsoft.compute/virtualmachines",
                metric_names=["Percentage CPU"],
                timespan=week,
                granularity=timedelta(hours=1),
                aggregations=["Average", "Maximum"],
            )
            # custom metrics: Resource Manager's per-resource API, as the job itself reads them
            guest_metrics(
                clients,
                vm.id,
                settings.azure.gpu_metric_namespace,
                [settings.azure.gpu_metric_name],
                *week,
            )
            query = QueryDefinition(
                type="ActualCost",
                timeframe="Custom",
                time_period=QueryTimePeriod(from_property=now - timedelta(days=30), to=now),
                dataset=QueryDataset(
                    granularity="Daily",
                    aggregation={"totalCost": QueryAggregation(name="Cost", function="Sum")},
                    filter=QueryFilter(
                        dimensions=QueryComparisonExpression(
                            name="ResourceId", operator="In", values_property=[vm.id]
                        )
                    ),
                ),
            )
            answer = clients.costs().query.usage(f"/subscriptions/{sub}", query)
            list(answer.rows if answer else [])  # None: 204 No Content, no usage
    print(
        json.dumps(
            {
                "vms": vms,
                "wall_s": round(time.perf_counter() - started, 2),
                "cpu_s": round(cpu_seconds() - cpu, 2),
                "requests": requests_so_far(url, ca_file) - before,
            }
        )
    )


# -- the whole benchmark -----------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def database(backend: str, stack: ExitStack, work: Path, pg: list[str]) -> str:
    if backend == "sqlite":
        path = work / f"bench-{time.monotonic_ns()}.db"
        return f"sqlite:///{path}"
    from tests.postgres import fresh_pg_database, local_postgres

    if not pg:
        pg.append(stack.enter_context(local_postgres()))
    return fresh_pg_database(pg[0])


def benchmark(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """Every run, saved as it ends: a long run stopped halfway keeps what it measured."""
    results: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "estate": {
            "subscriptions": args.subscriptions,
            "regions": args.regions,
            "gpu_share": args.gpu_share,
            "cost_days": 30,
            "metrics_days": 7,
        },
        "runs": [],
        "naive": None,
    }
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finops-bench-")))
        pg: list[str] = []
        for vms in args.vms:
            sim = Simulator(args, vms)
            try:
                for backend in args.backends:
                    env = sim.env(database(backend, stack, work, pg), work / "reports")
                    for number in (1, 2):
                        print(f"{vms} VMs, {backend}, night {number} ...", file=sys.stderr)
                        simulator_cpu = sim.cpu_seconds()
                        measured = run_child("--night", env, work)
                        measured["simulator_cpu_s"] = round(sim.cpu_seconds() - simulator_cpu, 2)
                        results["runs"].append(
                            {"vms": vms, "backend": backend, "night": number, **measured}
                        )
                        save(results)
                if vms == args.naive_vms:
                    print(f"{vms} VMs, the naive way ...", file=sys.stderr)
                    results["naive"] = run_child("--naive", sim.env("sqlite://", work), work)
                    save(results)
            finally:
                sim.stop()
        shutil.rmtree(work / "reports", ignore_errors=True)
    return results


def verdicts(results: dict, args: argparse.Namespace) -> list[dict]:
    runs = {(r["vms"], r["backend"], r["night"]): r for r in results["runs"]}
    out = []

    def verdict(target: str, figure: str, met: bool) -> None:
        out.append({"target": target, "figure": figure, "met": met})

    for backend in args.backends:
        for vms, limit in ((10_000, TARGETS["seconds_10k"]), (50_000, TARGETS["seconds_50k"])):
            if r := runs.get((vms, backend, 1)):
                verdict(
                    f"{vms:,} VMs end to end on {backend} in {limit} s or less",
                    f"{r['wall_s']} s",
                    r["wall_s"] <= limit,
                )
        if (big := runs.get((50_000, backend, 1))) and (mid := runs.get((10_000, backend, 1))):
            verdict(
                f"peak RSS at 50,000 VMs on {backend} {TARGETS['rss_mb_50k']} MB or less",
                f"{big['peak_rss_mb']} MB",
                big["peak_rss_mb"] <= TARGETS["rss_mb_50k"],
            )
            growth = big["peak_rss_mb"] / mid["peak_rss_mb"]
            verdict(
                f"RSS growth 10k -> 50k on {backend} under {TARGETS['rss_growth_10k_to_50k']}x",
                f"{growth:.2f}x",
                growth < TARGETS["rss_growth_10k_to_50k"],
            )
    for (vms, backend, number), r in sorted(runs.items()):
        if number == 1 and backend == args.backends[0]:
            # per subscription: 2 cost types, quotas per region, and per region up to 2
            # metric batches left part-full (the batch API takes 50 ids of one subscription
            # and region, CPU and GPU metrics in separate calls); per region the VM sizes and
            # one retail price query per GPU size; the subscription list and the 5 Resource
            # Graph queries (VMs, schedules, groups, disks, AI accounts)
            per_subscription = 2 + 3 * args.regions
            allowed = (
                vms / TARGETS["vms_per_request"]
                + per_subscription * args.subscriptions
                + 15 * args.regions
                + 6
            )
            verdict(
                f"requests at {vms:,} VMs: at most one per 40 VMs + {per_subscription} per "
                f"subscription + 15 per region + 6 ({allowed:,.0f})",
                f"{r['requests']:,}",
                r["requests"] <= allowed,
            )
        if number == 2 and (first := runs.get((vms, backend, 1))):
            share = r["wall_s"] / first["wall_s"]
            verdict(
                f"second night at {vms:,} VMs on {backend} at most half the first",
                f"{r['wall_s']} s of {first['wall_s']} s ({share:.0%})",
                share <= TARGETS["second_night_share"],
            )
    naive_run, ours = results["naive"], runs.get((args.naive_vms, args.backends[0], 1))
    if naive_run and ours:
        requests = naive_run["requests"] / max(ours["requests"], 1)
        seconds = naive_run["wall_s"] / max(ours["wall_s"], 0.01)
        verdict(
            f"naive way at {args.naive_vms:,} VMs: {TARGETS['naive_request_ratio']}x the requests",
            f"{naive_run['requests']:,} vs {ours['requests']:,} ({requests:.0f}x)",
            requests >= TARGETS["naive_request_ratio"],
        )
        verdict(
            f"naive way at {args.naive_vms:,} VMs: {TARGETS['naive_time_ratio']}x the time",
            f"{naive_run['wall_s']} s vs {ours['wall_s']} s ({seconds:.1f}x)",
            seconds >= TARGETS["naive_time_ratio"],
        )
    return out


def markdown(results: dict) -> str:
    lines = [
        f"Measured {results['when']} on {results['machine']}; estates over "
        f"{results['estate']['subscriptions']} subscriptions and {results['estate']['regions']} "
        f"regions, {results['estate']['gpu_share']:.0%} GPU VMs, 30 days of daily cost, 7 days "
        "of hourly metrics.",
        "",
        "| VMs | store | night | total s | collect s | load s | rules s | report s | CPU s "
        "| simulator CPU s | peak RSS MB | requests | rows loaded/s | findings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        p = r["phases"]
        lines.append(
            f"| {r['vms']:,} | {r['backend']} | {r['night']} | {r['wall_s']} "
            f"| {p['collect']['wall_s']} | {p['load']['wall_s']} | {p['rules']['wall_s']} "
            f"| {p['report']['wall_s']} | {r['cpu_s']} | {r.get('simulator_cpu_s', '')} "
            f"| {r['peak_rss_mb']} "
            f"| {r['requests']:,} | {r['rows_per_s']:,} | {r['findings']} |"
        )
    if naive := results["naive"]:
        lines += [
            "",
            f"The naive way (instance view, metrics and a cost query per VM) on {naive['vms']:,} "
            f"VMs: {naive['wall_s']} s, {naive['requests']:,} requests, {naive['cpu_s']} CPU s.",
        ]
    lines += ["", "| target | figure | met |", "|---|---|---|"]
    for v in results["verdicts"]:
        lines.append(f"| {v['target']} | {v['figure']} | {'yes' if v['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--naive-vms", type=int, default=1000, help="0: skip the naive way")
    parser.add_argument("--subscriptions", type=int, default=50)
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--gpu-share", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--night", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    if args.night:
        return night(args)
    if args.naive:
        return naive(args)

    def save(results: dict) -> None:
        results["verdicts"] = verdicts(results, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")

    results = benchmark(args, save)
    save(results)
    print(markdown(results))


if __name__ == "__main__":
    main()
