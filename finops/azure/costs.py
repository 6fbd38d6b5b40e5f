"""Daily cost per resource and meter category from the Cost Management Query API, one query
chain per subscription and cost type (ActualCost, AmortizedCost).

The SDK does not follow the query's `nextLink`: each further page is the same POST body sent to
that link, through the client's own pipeline (authentication, retries, Cost Management's
rate-limit headers: see retry.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from azure.core.rest import HttpRequest

from finops.azure.clients import AzureClients
from finops.collection import Row
from finops.store.costs import QUERY, scope_of

MICROS = Decimal("0.000001")
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD")
COST_TYPES = ("ActualCost", "AmortizedCost")


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


def _pages(clients: AzureClients, scope: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    client = clients.costs()
    result = client.query.usage(scope, body)
    page = result.as_dict()
    while True:
        props = page.get("properties") or {}
        yield props
        next_link = props.get("nextLink")
        if not next_link:
            return
        response = client.send_request(HttpRequest("POST", next_link, json=body))
        response.raise_for_status()
        page = response.json()


def daily(
    clients: AzureClients, subscription_id: str, start: date, end: date, cost_type: str
) -> list[Row]:
    """The subscription's daily cost from `start` to `end` (both included). Rows whose ids
    differ only in case (APIs disagree on it) are summed into one."""
    body = query_body(cost_type, start, end)
    rows: dict[tuple, Row] = {}
    for props in _pages(clients, f"subscriptions/{subscription_id}", body):
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
                day = datetime.strptime(str(int(row[date_i])), "%Y%m%d").date()
                cost = Decimal(str(row[cost_i]))
            except (ValueError, TypeError, InvalidOperation):
                raise ValueError(f"cost query answered an unreadable row {row!r}") from None
            key = (rid, day, row[cat_i] or "")
            if key in rows:
                rows[key]["cost"] += cost
                continue
            sub, group = scope_of(rid)
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
    for row in rows.values():
        row["cost"] = row["cost"].quantize(MICROS)
    return list(rows.values())
