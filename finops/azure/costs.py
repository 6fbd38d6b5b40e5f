"""Daily cost per resource and meter category from the Cost Management Query API, one query
chain per subscription and cost type (ActualCost, AmortizedCost).

Every page is read as JSON through the SDK client's own pipeline (authentication, retries, Cost
Management's rate-limit headers: see retry.py): the SDK's models would cost more CPU than the
rest of the night, and the SDK does not follow the query's `nextLink` anyway (each further page
is the same POST body sent to that link).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from finops.azure.clients import AzureClients, post_json
from finops.collection import Row
from finops.store.costs import QUERY, scope_of

MICROS = Decimal("0.000001")
PARSED_KEPT = 50_000  # parsed scopes, and amounts, a cost query keeps at hand
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD")
COST_TYPES = ("ActualCost", "AmortizedCost")
API_VERSION = "2025-03-01"  # as azure-mgmt-costmanagement 5.0.0 sends it


def query_body(cost_type: str, start: date, end: date) -> dict[str, Any]:
    return {
        "type": cost_type,
        "timeframe": "Custom",
        "timePeriod": {
            "from": datetime.combine(start, time.min, UTC).isoformat(),
            "to": datetime.combine(end, time(23, 59, 59), UTC).isoformat(),
        },
        "dataset": {
            "granularity": "Daily",
            "aggregation": {"totalCost": {"name": "Cost", "function": "Sum"}},
            "grouping": [
                {"type": "Dimension", "name": "ResourceId"},
                {"type": "Dimension", "name": "MeterCategory"},
            ],
        },
    }


def month_before(day: date) -> date:
    """The same day a month earlier, the month's last where it has fewer days."""
    year, month = (day.year, day.month - 1) if day.month > 1 else (day.year - 1, 12)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def windows(start: date, end: date) -> list[tuple[date, date]]:
    """[start, end] cut into the longest windows a Daily query answers whole. The Query API
    silently moves a Daily query's `from` up to `to` - 1 month + 1 day (Microsoft's cost-query
    guardrails, microsoft/GitHub-Copilot-for-Azure, azure-cost-optimization skill): a longer
    window would lose its first days without a word."""
    found = []
    while end >= start:
        first = max(start, month_before(end) + timedelta(days=1))
        found.append((first, end))
        end = first - timedelta(days=1)
    return found[::-1]


def _pages(clients: AzureClients, scope: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    client = clients.costs()
    url, params = f"/{scope}/providers/Microsoft.CostManagement/query", {"api-version": API_VERSION}
    while url:
        # Query_Usage's spec answers 200 or 204 No Content (no usage in the window)
        answer = post_json(client, url, params, body, no_content=True)
        if answer is None:
            return
        props = answer.get("properties") or {}
        yield props
        url, params = props.get("nextLink"), {}


def daily(
    clients: AzureClients, subscription_id: str, start: date, end: date, cost_type: str
) -> Iterator[Row]:
    """The subscription's daily cost from `start` to `end` (both included), page by page. Rows
    of one page whose ids differ only in case (APIs disagree on it) are summed into one; the
    store adds up those that fall on different pages. Windows longer than the Query API
    answers whole are asked a month at a time."""
    # a window repeats each resource once a day and many costs (an always-on VM's day): the
    # parsed day, cost and scope are looked up, not parsed again, for each row
    days: dict[Any, date] = {}
    amounts: dict[Any, Decimal] = {}
    scopes: dict[str, tuple[str, str]] = {}
    for props in _all_pages(clients, subscription_id, cost_type, start, end):
        rows: dict[tuple, Row] = {}
        names = [c["name"] for c in props.get("columns") or []]
        try:
            cost_i = next(i for i, n in enumerate(names) if n in COST_COLUMNS)
            date_i, rid_i = names.index("UsageDate"), names.index("ResourceId")
            cat_i, cur_i = names.index("MeterCategory"), names.index("Currency")
        except (StopIteration, ValueError):
            raise ValueError(f"cost query answered unexpected columns {names}") from None
        for row in props.get("rows") or []:
            if not row[rid_i]:
                continue  # charges without a resource (purchases, support plans, tax)
            rid = str(row[rid_i]).lower()
            try:
                day = days.get(row[date_i]) or days.setdefault(row[date_i], _day(row[date_i]))
                cost = amounts.get(row[cost_i])
                if cost is None:
                    cost = amounts.setdefault(row[cost_i], _amount(row[cost_i]))
            except (ValueError, TypeError, InvalidOperation):
                raise ValueError(f"cost query answered an unreadable row {row!r}") from None
            key = (rid, day, row[cat_i] or "")
            if key in rows:
                rows[key]["cost"] += cost
                continue
            sub, group = scopes.get(rid) or scopes.setdefault(rid, scope_of(rid))
            rows[key] = {
                "source": QUERY,
                "file_id": 0,
                "resource_id": rid,
                "usage_date": day,
                "cost_type": cost_type,
                "meter_category": key[2],
                "subscription_id": sub or subscription_id,
                "resource_group": group,
                "cost": cost,
                "currency": str(row[cur_i]).upper(),
            }
        yield from rows.values()
        if len(scopes) > PARSED_KEPT or len(amounts) > PARSED_KEPT:  # memory stays flat
            scopes.clear()
            amounts.clear()


def _all_pages(
    clients: AzureClients, subscription_id: str, cost_type: str, start: date, end: date
) -> Iterator[dict[str, Any]]:
    for first, last in windows(start, end):
        body = query_body(cost_type, first, last)
        yield from _pages(clients, f"subscriptions/{subscription_id}", body)


def _amount(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(MICROS)


def _day(value: Any) -> date:
    return datetime.strptime(str(int(value)), "%Y%m%d").date()
