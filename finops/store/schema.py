"""SQLAlchemy Core tables: the one source of truth for the schema (Alembic migrates to it).

Snapshots (subscriptions, VMs, sizes, quotas, schedules, findings) carry `run_id`, so every
night is kept. Time series (hourly metrics, daily cost) are keyed by resource and time and
upserted, so re-running a night changes nothing. Resource ids are stored lower-cased.
Timestamps are naive UTC. Money is Numeric(18, 6) beside its currency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)

Money = Numeric(18, 6, asdecimal=True)
# Nights whose findings stand: complete ones, and partial ones (some source failed; the rules
# judged only what was collected).
ANALYSED = ("succeeded", "partial")
metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    }
)


def _run_id() -> Column:
    return Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)


runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("status", String(16), nullable=False),  # running|collected|succeeded|partial|failed
    Column("source", String(16), nullable=False),  # azure | simulated
    Column("metrics_start", DateTime),
    Column("metrics_end", DateTime),
    Column("cost_start", Date),
    Column("cost_end", Date),
    Column("counts", JSON, nullable=False, default=dict),
    Column("error", Text),
    Column("simulation", JSON),  # seed and size of a simulated estate
)

subscriptions = Table(
    "subscriptions",
    metadata,
    _run_id(),
    Column("subscription_id", String(64), primary_key=True),
    Column("display_name", String(256), nullable=False),
)

vms = Table(
    "vms",
    metadata,
    _run_id(),
    Column("resource_id", String(512), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("subscription_id", String(64), nullable=False),
    Column("resource_group", String(128), nullable=False),
    Column("location", String(64), nullable=False),
    Column("size", String(64), nullable=False),
    Column("power_state", String(32), nullable=False),
    Column("os_type", String(16), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("tags", JSON, nullable=False),
)

vm_sizes = Table(
    "vm_sizes",
    metadata,
    _run_id(),
    Column("size", String(64), primary_key=True),
    Column("vcpus", Integer, nullable=False),
    Column("memory_gb", Float, nullable=False),
    Column("gpus", Numeric(8, 6), nullable=False),
    Column("gpu_model", String(64)),
    Column("gpu_memory_gb", Integer),
    Column("family", String(128), nullable=False),
)

quotas = Table(
    "quotas",
    metadata,
    _run_id(),
    Column("subscription_id", String(64), primary_key=True),
    Column("location", String(64), primary_key=True),
    Column("family", String(128), primary_key=True),
    Column("display_name", String(256), nullable=False),
    Column("current_value", Integer, nullable=False),
    Column("limit", Integer, nullable=False),
)

resource_groups = Table(
    "resource_groups",
    metadata,
    _run_id(),
    Column("subscription_id", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),  # lower-cased
    Column("tags", JSON, nullable=False),
)

disks = Table(
    "disks",
    metadata,
    _run_id(),
    Column("resource_id", String(512), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("subscription_id", String(64), nullable=False),
    Column("resource_group", String(128), nullable=False),
    Column("location", String(64), nullable=False),
    Column("sku", String(32), nullable=False),
    Column("size_gb", Integer, nullable=False),
    Column("state", String(32), nullable=False),  # Attached | Reserved | Unattached | ...
    Column("managed_by", String(512)),  # the VM's id, lower-cased; None when unattached
    Column("owner_changed", DateTime),  # last attached, detached, or its VM deallocated/started
    Column("tags", JSON, nullable=False),
)

vm_prices = Table(
    "vm_prices",
    metadata,
    _run_id(),
    Column("location", String(64), primary_key=True),
    Column("size", String(64), primary_key=True),
    Column("offer", String(16), primary_key=True),  # payg | spot | reservation-1y | ...-3y
    Column("os", String(8), primary_key=True),  # linux | windows | any (reservations)
    Column("per_hour", Money, nullable=False),  # a reservation's whole-term price / its hours
    Column("currency", String(3), nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    _run_id(),
    Column("resource_id", String(512), primary_key=True),
    Column("schedule_id", String(512), nullable=False),
    Column("status", String(16), nullable=False),
    Column("daily_time", String(8)),
    Column("time_zone", String(64), nullable=False),
)

# The time series name their resource by a small integer: a cost row or metric hour keyed by
# the ~150-character id made every b-tree of both tables twice as large and each insert slower.
# Read them through finops.store.series, which puts the id back. Not a declared foreign key:
# PostgreSQL checks one with a trigger per inserted row; rows of `resources` are never deleted.
resources = Table(
    "resources",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("resource_id", String(512), nullable=False),
)

metrics_hourly = Table(
    "metrics_hourly",
    metadata,
    Column("resource_key", Integer, primary_key=True),  # resources.id
    # cpu | gpu (VMs); ptu_util | tokens_in | tokens_out | throttled (AI deployments)
    Column("metric", String(16), primary_key=True),
    Column("ts", DateTime, primary_key=True),
    Column("average", Float),
    Column("maximum", Float),
    Column("total", Float),
    sqlite_with_rowid=False,  # SQLite stores each row once, in the primary key's b-tree
)

ai_deployments = Table(
    "ai_deployments",
    metadata,
    _run_id(),
    Column("resource_id", String(512), primary_key=True),  # the account's id + /deployments/NAME
    Column("account_id", String(512), nullable=False),
    Column("account_name", String(128), nullable=False),
    Column("subscription_id", String(64), nullable=False),
    Column("resource_group", String(128), nullable=False),
    Column("location", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # OpenAI | AIServices
    Column("name", String(128), nullable=False),
    Column("model", String(64), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("sku", String(64), nullable=False),  # e.g. GlobalProvisionedManaged, GlobalStandard
    Column("capacity", Integer, nullable=False),  # PTUs for provisioned skus
)

costs_daily = Table(
    "costs_daily",
    metadata,
    Column("source", String(8), primary_key=True),  # query (Cost Management) | focus (export)
    Column("file_id", Integer, primary_key=True),  # cost_files.id for focus; 0 for query
    Column("resource_key", Integer, primary_key=True),  # resources.id
    Column("usage_date", Date, primary_key=True),
    # ActualCost (FOCUS BilledCost) | AmortizedCost (EffectiveCost) | ListCost (FOCUS only)
    Column("cost_type", String(16), primary_key=True),
    Column("meter_category", String(128), primary_key=True),
    Column("subscription_id", String(64), nullable=False),
    Column("resource_group", String(128), nullable=False),
    Column("cost", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    sqlite_with_rowid=False,  # SQLite stores each row once, in the primary key's b-tree
)

cost_files = Table(
    "cost_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("location", String(1024), nullable=False, unique=True),
    Column("folder", String(1024), nullable=False),  # one export run's files share a folder
    Column("fingerprint", String(256), nullable=False),  # size + mtime, or the blob's ETag
    Column("modified", DateTime, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("first_day", Date),
    Column("last_day", Date),
    Column("coverage", JSON, nullable=False),  # subscription -> [first day, last day]
    Column("loaded_at", DateTime, nullable=False),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="SET NULL")),
)

focus_resources = Table(
    "focus_resources",
    metadata,
    Column("resource_id", String(512), primary_key=True),
    Column("resource_name", String(256), nullable=False),
    Column("service_name", String(128), nullable=False),
    Column("service_category", String(64), nullable=False),
    Column("sku_id", String(128), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("last_usage_date", Date, nullable=False),
)

findings = Table(
    "findings",
    metadata,
    _run_id(),
    Column("rule_id", String(64), primary_key=True),
    Column("resource_id", String(512), primary_key=True),
    Column("severity", String(8), nullable=False),
    Column("title", Text, nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("monthly_saving", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("saving_basis", String(32), nullable=False),
    Column("proposed_action", String(64)),
    Column("exempt", Boolean, nullable=False, default=False),
    Column("first_seen", DateTime, nullable=False),
)

plans = Table(
    "plans",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", DateTime, nullable=False),
    Column("source_run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("actions", Integer, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("plan_id", String(32), ForeignKey("plans.id"), nullable=False),
    Column("action_index", Integer, nullable=False),
    Column("resource_id", String(512), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("outcome", String(16), nullable=False),  # started | succeeded | noop | skipped | failed
    Column("reason", Text),
    Column("before", JSON),
    Column("after", JSON),
    Column("error", Text),
)


def only_on(dialect: str, index: Index) -> Index:
    """An index created on one dialect's stores only."""
    index.info["dialect"] = dialect
    return index.ddl_if(dialect=dialect)


def compared_on(dialect: str) -> Callable[..., bool]:
    """Alembic's include_object for comparing a `dialect` store with this schema: another
    dialect's own indexes are not expected there."""

    def compared(obj: Any, _name: Any, kind: str, _reflected: bool, _to: Any) -> bool:
        return kind != "index" or obj.info.get("dialect", dialect) == dialect

    return compared


Index("ix_resources_resource_id", resources.c.resource_id, unique=True)
Index("ix_audit_plan", audit.c.plan_id, audit.c.action_index)
# The day index: the report's sums per source, subscription and day, and the deletes of the
# Query API's windows, read a window's rows through it. On SQLite it also holds the primary key
# (WITHOUT ROWID), so with the cost and currency the report reads it alone. PostgreSQL reads the
# table for the cost type anyway; there the three columns alone deduplicate to a twelfth of the
# size (10k VMs' month of cost: 12 MB, not 141), and its inserts cost less (see sql/ 0012).
only_on(
    "sqlite",
    Index(
        "ix_costs_daily_day",
        costs_daily.c.usage_date,
        costs_daily.c.source,
        costs_daily.c.subscription_id,
        costs_daily.c.cost,
        costs_daily.c.currency,
    ),
)
only_on(
    "postgresql",
    Index(
        "ix_costs_daily_day_pg",
        costs_daily.c.usage_date,
        costs_daily.c.source,
        costs_daily.c.subscription_id,
    ),
)
Index("ix_findings_resource", findings.c.rule_id, findings.c.resource_id)
