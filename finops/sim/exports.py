"""FOCUS 1.0 cost exports of the simulated estate, as Azure Cost Management writes them with
"overwrite data" on: one folder per month, month to date, rewritten by each export run:
`<root>/<export>/<YYYYMMDD-YYYYMMDD>/part_0_0001.csv.gz` (or `.parquet`).

The rows carry the same money as the simulator's Query API answers, split finer (the storage
account's cost over two meters), so a store that loads both can check that they agree.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from itertools import islice
from pathlib import Path

from finops.sim.estate import STORAGE_DAILY_COST, Estate

COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargeCategory",
    "ChargeDescription",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "CommitmentDiscountId",
    "ConsumedQuantity",
    "ConsumedUnit",
    "EffectiveCost",
    "ListCost",
    "PricingCategory",
    "RegionId",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_ResourceGroupName",
    "x_SkuMeterCategory",
    "x_SkuMeterName",
)
EXPORT_NAME = "finops-focus"
DISK_DAY = (Decimal(1) / 30).quantize(Decimal("0.000001"))  # a disk's daily share of a month
STORAGE_METERS = (("Hot LRS Data Stored", Decimal("10.0")), ("Read Operations", Decimal("2.5")))
assert sum(amount for _, amount in STORAGE_METERS) == STORAGE_DAILY_COST


def _month_end(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _rows(estate: Estate, first: date, last: date) -> Iterator[dict]:
    account = f"sim-billing-{estate.seed}"
    names = {s.subscription_id: s.display_name for s in estate.subscriptions}
    disks = {s.subscription_id: estate.disks_in(s.subscription_id) for s in estate.subscriptions}
    day = first
    while day <= last:
        period = {
            "BillingAccountId": account,
            "BillingCurrency": "USD",
            "BillingPeriodStart": f"{day.replace(day=1)}T00:00:00Z",
            "BillingPeriodEnd": f"{_month_end(day)}T00:00:00Z",
            "ChargePeriodStart": f"{day}T00:00:00Z",
            "ChargePeriodEnd": f"{day + timedelta(days=1)}T00:00:00Z",
        }
        for sub in estate.subscriptions:
            scope = {
                "SubAccountId": sub.subscription_id,
                "SubAccountName": names[sub.subscription_id],
            }
            for vm in estate.vms_in(sub.subscription_id):
                hours = estate.billed_hours(vm, day)
                if not hours:
                    continue
                yield {
                    **period,
                    **scope,
                    "BilledCost": estate.daily_cost(vm, day, "ActualCost"),
                    "EffectiveCost": estate.daily_cost(vm, day, "AmortizedCost"),
                    "ListCost": estate.daily_cost(vm, day, "ListCost"),
                    "ChargeCategory": "Usage",
                    "ChargeDescription": f"{vm.size} hours",
                    "CommitmentDiscountId": "sim-reservation" if vm.reserved else "",
                    "ConsumedQuantity": hours,
                    "ConsumedUnit": "Hours",
                    "PricingCategory": "Committed" if vm.reserved else "Standard",
                    "RegionId": vm.location,
                    "ResourceId": vm.id,
                    "ResourceName": vm.name,
                    "ResourceType": "Virtual machine",
                    "ServiceCategory": "Compute",
                    "ServiceName": "Virtual Machines",
                    "SkuId": vm.size,
                    "Tags": json.dumps(vm.tags),
                    "x_ResourceGroupName": vm.resource_group,
                    "x_SkuMeterCategory": "Virtual Machines",
                    "x_SkuMeterName": vm.size.removeprefix("Standard_").replace("_", " "),
                }
            for account in estate.accounts_in(sub.subscription_id):
                billed = estate.account_daily_cost(account, day, "ActualCost")
                effective = estate.account_daily_cost(account, day, "AmortizedCost")
                if not (billed or effective):
                    continue
                yield {
                    **period,
                    **scope,
                    "BilledCost": billed,
                    "EffectiveCost": effective,
                    "ListCost": estate.account_daily_cost(account, day, "ListCost"),
                    "ChargeCategory": "Usage",
                    "ChargeDescription": "Azure OpenAI provisioned throughput and tokens",
                    "CommitmentDiscountId": "sim-ptu-reservation" if account.reservation else "",
                    "PricingCategory": "Committed" if account.reservation else "Standard",
                    "RegionId": account.location,
                    "ResourceId": account.id,
                    "ResourceName": account.name,
                    "ResourceType": "Cognitive Services account",
                    "ServiceCategory": "AI and Machine Learning",
                    "ServiceName": "Azure OpenAI",
                    "SkuId": account.kind,
                    "Tags": "{}",
                    "x_ResourceGroupName": account.resource_group,
                    "x_SkuMeterCategory": "Cognitive Services",
                    "x_SkuMeterName": "Provisioned Managed and tokens",
                }
            for disk in disks[sub.subscription_id]:
                tier = f"{disk.sku} {disk.size_gb} GiB"
                yield {
                    **period,
                    **scope,
                    "BilledCost": disk.daily_cost,
                    "EffectiveCost": disk.daily_cost,
                    "ListCost": disk.daily_cost,
                    "ChargeCategory": "Usage",
                    "ChargeDescription": f"{tier} managed disk",
                    "ConsumedQuantity": DISK_DAY,
                    "ConsumedUnit": "1/Month",
                    "PricingCategory": "Standard",
                    "RegionId": disk.location,
                    "ResourceId": disk.id,
                    "ResourceName": disk.name,
                    "ResourceType": "Disk",
                    "ServiceCategory": "Storage",
                    "ServiceName": "Storage",
                    "SkuId": disk.sku,
                    "Tags": json.dumps(disk.vm.tags if disk.vm else {}),
                    "x_ResourceGroupName": disk.resource_group,
                    "x_SkuMeterCategory": "Storage",
                    "x_SkuMeterName": tier,
                }
            storage = estate.storage_account_id(sub.subscription_id)
            for meter, amount in STORAGE_METERS:
                yield {
                    **period,
                    **scope,
                    "BilledCost": amount,
                    "EffectiveCost": amount,
                    "ListCost": amount,
                    "ChargeCategory": "Usage",
                    "ChargeDescription": meter,
                    "ConsumedUnit": "GB/Month",
                    "PricingCategory": "Standard",
                    "RegionId": "eastus",
                    "ResourceId": storage,
                    "ResourceName": storage.rsplit("/", 1)[-1],
                    "ResourceType": "Storage account",
                    "ServiceCategory": "Storage",
                    "ServiceName": "Storage Accounts",
                    "SkuId": "Standard_LRS",
                    "Tags": "{}",
                    "x_ResourceGroupName": "shared",
                    "x_SkuMeterCategory": "Storage",
                    "x_SkuMeterName": meter,
                }
            purchase = estate.reservation_purchase(sub.subscription_id, day)
            if purchase:
                yield {
                    **period,
                    **scope,
                    "BilledCost": purchase,
                    "EffectiveCost": Decimal(0),
                    "ListCost": Decimal(0),
                    "ChargeCategory": "Purchase",
                    "ChargeDescription": "Reserved VM instance, 1 year, monthly payment",
                    "PricingCategory": "Committed",
                    "ServiceCategory": "Compute",
                    "ServiceName": "Virtual Machines",
                    "x_SkuMeterCategory": "Virtual Machines",
                }
        day += timedelta(days=1)


def write_focus_export(
    estate: Estate, root: Path, first: date, last: date | None = None, kind: str = "csv.gz"
) -> list[Path]:
    """Write the export files covering `first`..`last` (default: the estate's today), one per
    month; returns their paths."""
    last = min(last or estate.now.date(), estate.now.date())
    paths = []
    month = first.replace(day=1)
    while month <= last:
        start, end = max(first, month), min(last, _month_end(month) - timedelta(days=1))
        folder = (
            root / EXPORT_NAME / f"{month:%Y%m%d}-{_month_end(month) - timedelta(days=1):%Y%m%d}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part_0_0001.{kind}"
        rows = _rows(estate, start, end)
        if kind == "parquet":
            _write_parquet(path, rows)
        else:
            _write_csv(path, rows, compress=kind == "csv.gz")
        paths.append(path)
        month = _month_end(month)
    return paths


def _write_csv(path: Path, rows: Iterator[dict], compress: bool) -> None:
    partial = path.with_name(path.name + ".partial")
    with (gzip.open if compress else open)(partial, "wt", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)  # readers never see half a file


def _write_parquet(path: Path, rows: Iterator[dict], batch: int = 5000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    money = {"BilledCost", "EffectiveCost", "ListCost", "ConsumedQuantity"}
    schema = pa.schema([(c, pa.float64() if c in money else pa.string()) for c in COLUMNS])
    partial = path.with_name(path.name + ".partial")
    with pq.ParquetWriter(partial, schema) as writer:
        for chunk in iter(lambda: list(islice(rows, batch)), []):
            table = [
                {c: (float(r[c]) if c in money else str(r[c])) if c in r else None for c in COLUMNS}
                for r in chunk
            ]
            writer.write_table(pa.Table.from_pylist(table, schema=schema))
    partial.replace(path)
