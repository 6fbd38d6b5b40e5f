"""Daily cost per resource from the Cost Management Query API, one query chain per subscription.

The SDK does not follow the query's `nextLink`: each further page is the same POST body sent to
that link, through the client's own pipeline (authentication, retries).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from azure.core.rest import HttpRequest

from finops.azure.clients import AzureClients
from finops.collection import Row

MICROS = Decimal("0.000001")
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD")


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
    clients: AzureClients, subscription_id: str, start: date, end: date, cost_type="ActualCost"
) -> Iterator[Row]:
    body = query_body(cost_type, start, end)
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
                continue  # charges without a resource (support plans, marketplace)
            yield {
                "resource_id": str(row[rid_i]).lower(),
                "usage_date": datetime.strptime(str(int(row[date_i])), "%Y%m%d").date(),
                "cost_type": cost_type,
                "meter_category": row[cat_i] or "",
                "cost": Decimal(str(row[cost_i])).quantize(MICROS),
                "currency": row[cur_i],
            }
