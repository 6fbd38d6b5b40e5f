"""Shared fixtures: the simulated estate over HTTPS, a real PostgreSQL server, store URLs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from finops import clock
from finops.azure.clients import AzureClients, StaticTokenCredential
from finops.config import Settings, load_settings
from finops.pipeline import run_night
from finops.remediate.apply import Applier
from finops.remediate.plan import make_plan, save_plan
from finops.sim.estate import Estate
from finops.sim.kql import KqlChecker
from finops.sim.server import SimServer
from finops.store import schema
from finops.store.db import engine_for
from tests.postgres import free_port, fresh_pg_database, local_postgres

# Every test sees the same instant, whatever the date it runs on: finops' clock and the
# estates built without `now` read it, and so do the `finops` subprocesses the tests start.
# FINOPS_NOW set by hand runs the whole suite as of another instant.
PINNED = "2026-11-25T03:00:00+00:00"  # a Wednesday in the middle of a month


def pytest_configure(config) -> None:
    os.environ.setdefault(clock.PIN, PINNED)
    # every simulator checks every Resource Graph query with Microsoft's parser: without it an
    # invalid query could pass the suite
    if KqlChecker.find() is None:
        raise pytest.UsageError(
            "the Kusto parser is missing: `make test` installs it under .cache/kusto (npm)"
        )


def clean_env() -> dict[str, str]:
    """This process's environment for a `finops` subprocess: no FINOPS_* setting of the
    developer's, but the pinned clock."""
    return clock.environment_without_settings(dict(os.environ))


@pytest.fixture(scope="session")
def estate() -> Estate:
    return Estate(seed=7, vms=60)


@pytest.fixture(scope="session")
def sim(estate: Estate) -> Iterator[SimServer]:
    with SimServer(estate, page_size=10, cost_page_size=100) as server:
        yield server


def sim_settings(sim: SimServer, **overrides) -> Settings:
    azure = {"ca_file": sim.ca_file, "credential": "simulated"}
    azure |= {"arm_endpoint": sim.url, "metrics_endpoint": sim.url, "prices_endpoint": sim.url}
    return load_settings(azure=azure, **overrides)


@pytest.fixture
def clients(sim: SimServer) -> AzureClients:
    return AzureClients(StaticTokenCredential(), sim_settings(sim).azure)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session: FINOPS_TEST_DATABASE_URL, or one started here."""
    with local_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """A fresh, empty store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'finops.db'}"
    return fresh_pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'finops.db'}"


AZURITE = Path(__file__).resolve().parents[1] / ".cache/azurite/node_modules/.bin/azurite-blob"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Azurite's Blob service over HTTPS with OAuth on a loopback port (installed by make test)."""
    binary = os.environ.get("FINOPS_TEST_AZURITE") or (str(AZURITE) if AZURITE.exists() else None)
    binary = binary or shutil.which("azurite-blob")
    if not binary:
        raise RuntimeError("Azurite is missing: `make test` installs it (npm install azurite)")
    import trustme

    folder = tmp_path_factory.mktemp("azurite")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--skipApiVersionCheck",
            "--inMemoryPersistence",
            "--oauth",
            "basic",
            "--cert",
            str(folder / "cert.pem"),
            "--key",
            str(folder / "key.pem"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"Azurite did not start: {proc.stderr.read()[:500]!r}") from None
            time.sleep(0.2)
    try:
        yield {
            "url": f"https://127.0.0.1:{port}/devstoreaccount1",
            "ca_file": str(folder / "ca.pem"),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@dataclass
class World:
    estate: Estate
    sim: SimServer
    settings: Settings
    engine: Engine
    clients: AzureClients

    def night(self):
        return run_night(self.engine, self.clients, self.settings, "azure")

    def plan(self, **filters) -> tuple[dict, Path]:
        with self.engine.begin() as conn:
            plan = make_plan(conn, self.settings, **filters)
            return plan, save_plan(conn, self.settings, plan)

    def apply(self, plan: dict):
        return Applier(self.engine, self.clients, self.settings, "tester").apply(plan)

    def vm(self, name: str):
        return next(v for v in self.estate.vms if v.name == name)

    def findings(self, run_id: int) -> set[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(schema.findings.c.rule_id, schema.findings.c.resource_id).where(
                    schema.findings.c.run_id == run_id, schema.findings.c.exempt.is_(False)
                )
            )
            return {(r, rid.rsplit("/", 1)[1]) for r, rid in rows}


@pytest.fixture
def world(tmp_path) -> World:
    estate = Estate(seed=7, vms=60)
    with SimServer(estate, page_size=50, cost_page_size=1000) as sim:
        settings = sim_settings(
            sim, db_url=f"sqlite:///{tmp_path / 'finops.db'}", reports_dir=tmp_path / "reports"
        )
        clients = AzureClients(StaticTokenCredential(), settings.azure)
        yield World(estate, sim, settings, engine_for(settings.db_url), clients)
