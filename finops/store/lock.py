"""One night at a time: a lock that dies with the process holding it.

PostgreSQL: a session advisory lock on a connection of its own (released when the connection
ends, so a killed process frees it). SQLite: an flock on a file beside the database (released
by the kernel when the process dies).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

ADVISORY_KEY = 0x46494E4F5053  # "FINOPS"


class LockHeld(Exception):
    """Another night is running against this store."""


@contextmanager
def night_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with _advisory(engine):
            yield
    elif engine.dialect.name == "sqlite":
        with _file_lock(engine.url.database):
            yield
    else:
        raise NotImplementedError(f"no night lock for {engine.dialect.name}")


@contextmanager
def _advisory(engine: Engine) -> Iterator[None]:
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar():
            raise LockHeld("another finops night is running against this database")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
    finally:
        conn.close()


@contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    if not database or database == ":memory:":
        yield  # a private in-memory store cannot be shared
        return
    path = Path(f"{database}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another finops night is running against {database}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
