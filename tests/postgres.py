"""A throw-away PostgreSQL server for the tests and the benchmark: FINOPS_TEST_DATABASE_URL,
or one started from the server binaries (as the postgres user when run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_postgres() -> Iterator[str]:
    """A PostgreSQL server for the session: FINOPS_TEST_DATABASE_URL, or one started here."""
    given = os.environ.get("FINOPS_TEST_DATABASE_URL")
    if given:
        yield given
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError(
            "PostgreSQL server binaries not found: install them (apt-get install postgresql) "
            "or set FINOPS_TEST_DATABASE_URL"
        )
    root = Path(tempfile.mkdtemp(prefix="finops-pg-"))
    data = root / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_postgres,
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def fresh_pg_database(server_url: str) -> str:
    name = f"finops_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    for attempt in range(20):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            break
        except Exception:
            if attempt == 19:
                raise
            time.sleep(0.25)
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"
