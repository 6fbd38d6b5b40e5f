"""Retail prices of the GPU VM sizes in use: pay-as-you-go, spot and 1- and 3-year reservations.

The Azure Retail Prices API (no SDK, no authentication) answers one filtered query per region
and size, a few rows each, paged by an absolute `NextPageLink`. Filter values are
case-sensitive in api-version 2023-01-01-preview, so sizes are asked as ARM spells them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from azure.core import PipelineClient
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.policies import HeadersPolicy, UserAgentPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest

from finops.azure.retry import retry_policy
from finops.collection import Row
from finops.config import AzureSettings

API_VERSION = "2023-01-01-preview"
TERM_HOURS = {"1 Year": 8760, "3 Years": 26280}


def client(settings: AzureSettings) -> PipelineClient:
    transport = RequestsTransport(
        connection_verify=str(settings.ca_file) if settings.ca_file else True,
        read_timeout=settings.timeout_seconds,
    )
    policies = [HeadersPolicy(), UserAgentPolicy(sdk_moniker="finops"), retry_policy(settings)]
    return PipelineClient(settings.prices_endpoint, policies=policies, transport=transport)


def _pages(api: PipelineClient, url: str, params: dict[str, str] | None) -> Iterator[dict]:
    while url:
        response = api.send_request(HttpRequest("GET", url, params=params))
        if response.status_code != 200:
            raise HttpResponseError(
                message=f"Retail Prices API answered {response.status_code}", response=response
            )
        page = response.json()
        yield from page.get("Items") or []
        url, params = page.get("NextPageLink"), None  # the link carries every parameter


def offer(item: dict[str, Any]) -> tuple[str, str, Decimal] | None:
    """(offer, os, price per hour) of one price row, or None for rows that price nothing we
    compare (dev/test, other units, unknown terms)."""
    sku = item.get("skuName") or ""
    price = Decimal(str(item["unitPrice"]))
    if item.get("type") == "Reservation":
        hours = TERM_HOURS.get(item.get("reservationTerm") or "")
        if not hours:
            return None
        return f"reservation-{hours // 8760}y", "any", price / hours
    if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
        return None
    os = "windows" if "Windows" in (item.get("productName") or "") else "linux"
    if sku.endswith("Low Priority"):
        return "low-priority", os, price
    return ("spot" if sku.endswith("Spot") else "payg"), os, price


def vm_prices(
    settings: AzureSettings, currency: str, sizes: Iterable[tuple[str, str]]
) -> list[Row]:
    """Prices per (region, size) pair given, one query each."""
    api = client(settings)
    rows: dict[tuple[str, str, str, str], Row] = {}
    for region, size in sorted(set(sizes)):
        # the documented form quotes the values ("Azure Retail Prices REST API", Microsoft
        # Learn: currencyCode='EUR', meterRegion='primary')
        params = {
            "api-version": API_VERSION,
            "currencyCode": f"'{currency}'",
            "meterRegion": "'primary'",
            "$filter": f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' "
            f"and armSkuName eq '{size}'",
        }
        for item in _pages(api, f"{settings.prices_endpoint}/api/retail/prices", params):
            if item.get("isPrimaryMeterRegion") is False:
                continue  # the same offer metered from another region: not this region's price
            found = offer(item)
            if found is None:
                continue
            kind, os, per_hour = found
            rows[(region, size, kind, os)] = {
                "location": region,
                "size": size,
                "offer": kind,
                "os": os,
                "per_hour": per_hour,
                "currency": item.get("currencyCode") or currency,
            }
    return list(rows.values())
