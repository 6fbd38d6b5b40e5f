"""Which stored cost rows count, and the scope a resource id belongs to.

Daily cost comes from two sources: the Cost Management Query API (`source` query) and FOCUS
cost exports (`source` focus, one `file_id` per export file). Where an export covers a
subscription's day it is the bill and counts; otherwise the Query API's rows count.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import Connection, Subquery, select, union_all

from finops.store import schema
from finops.store.series import by_resource_id

QUERY, FOCUS = "query", "focus"
ACTUAL, AMORTIZED, LIST = "ActualCost", "AmortizedCost", "ListCost"


def scope_of(resource_id: str) -> tuple[str, str]:
    """(subscription id, resource group) of a lower-cased ARM id; '' where it has none."""
    parts = resource_id.split("/")
    sub = parts[2] if len(parts) > 2 and parts[1] == "subscriptions" else ""
    group = parts[4] if len(parts) > 4 and parts[3] == "resourcegroups" else ""
    return sub, group


def counted() -> Subquery:
    """costs_daily restricted to the rows that count (see the module's docstring)."""
    c = schema.costs_daily
    export = c.alias("export")
    covered = (
        select(export.c.file_id)
        .where(
            export.c.source == FOCUS,
            export.c.subscription_id == c.c.subscription_id,
            export.c.usage_date == c.c.usage_date,
        )
        .exists()
    )
    # two arms rather than one OR: a filter on resource ids reaches each arm and its index
    # (the query rows' primary key leads with source, file_id 0, resource key)
    return union_all(
        by_resource_id(c).where(c.c.source == FOCUS),
        by_resource_id(c).where(c.c.source == QUERY, c.c.file_id == 0, ~covered),
    ).subquery("counted_costs")


def spend_type(conn: Connection, first: date, end: date) -> str:
    """The cost type spend is shown in: amortized (reservations and savings plans spread over
    the days they cover) where the store has it for the window, else actual."""
    c = schema.costs_daily
    found = conn.execute(
        select(c.c.cost_type)
        .where(c.c.cost_type == AMORTIZED, c.c.usage_date >= first, c.c.usage_date < end)
        .limit(1)
    ).first()
    return AMORTIZED if found else ACTUAL
