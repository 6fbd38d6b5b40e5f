"""Engine creation, schema migration (Alembic, under sql/) and safe display of database URLs."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def _sql_dir() -> Path:
    """The Alembic migrations: sql/ in a source checkout, the finops.sql package in a wheel."""
    checkout = Path(__file__).resolve().parents[2] / "sql"
    if (checkout / "env.py").is_file():
        return checkout
    spec = find_spec("finops.sql")  # a namespace package: its folder, not a resource reader
    return Path(next(iter(spec.submodule_search_locations)))


SQL_DIR = _sql_dir()


class StoreError(Exception):
    """The store cannot be reached or used: reported as one line."""


def safe_url(url: str) -> str:
    """The URL with any password masked: the only form of it that may be logged or shown."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def engine_for(url: str) -> Engine:
    try:
        engine = create_engine(url, future=True, pool_pre_ping=True)
    except (ArgumentError, ModuleNotFoundError) as e:
        raise StoreError(f"cannot use database {safe_url(url)}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite opens transactions late and on its own; let SQLAlchemy say BEGIN itself so
        # that SAVEPOINTs (one per cost export file) nest inside the night's transaction.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(SQL_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
