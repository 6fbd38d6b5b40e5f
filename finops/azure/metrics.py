"""Hourly CPU and GPU utilisation (and GPU memory used) from Azure Monitor.

Platform metrics (CPU) go through the metrics batch API, one call for up to 50 resources of one
subscription, region and type. The GPU figures are custom metrics (Telegraf's `nvidia_smi` input
through its `azure_monitor` output), which the batch API does not serve ("Custom metrics aren't
currently supported", Microsoft Learn: azure-monitor/metrics/migrate-to-batch-api): they are read
per VM through Resource Manager's metrics API, GPU VMs only. A VM that sends none is answered
400 and has no GPU rows; the others of its batch keep theirs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from azure.core.exceptions import HttpResponseError

from finops.azure.clients import AzureClients, get_json, post_json
from finops.collection import Row

log = logging.getLogger("finops")

BATCH_SIZE = 50
VM_NAMESPACE = "Microsoft.Compute/virtualMachines"
CPU_METRIC = "Percentage CPU"
API_VERSION = "2024-02-01"  # as azure-monitor-querymetrics 1.0.0 sends it
RESOURCE_API_VERSION = "2024-02-01"  # Microsoft.Insights/metrics on Resource Manager
INSIGHTS = "/providers/microsoft.insights/"


def batches(resources: Iterable[Row]) -> Iterator[tuple[str, list[str]]]:
    """(region, up to 50 resource ids of one subscription and region) for each batch call: VMs
    or AI accounts."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for resource in resources:
        groups[(resource["subscription_id"], resource["location"])].append(resource["resource_id"])
    for (_, region), ids in sorted(groups.items()):
        for i in range(0, len(ids), BATCH_SIZE):
            yield region, ids[i : i + BATCH_SIZE]


def query_batch(
    clients: AzureClients,
    region: str,
    ids: list[str],
    namespace: str,
    names: Iterable[str],
    aggregations: Iterable[str],
    start: datetime,
    end: datetime,
    **options: str,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(lower-cased resource id, metric as sent) for each metric of each resource of one batch
    call, hourly from `start` to `end`; `options` are further query parameters (filter, top).
    The request is the one `MetricsClient.query_resources` sends, through the same client; the
    answer is read as JSON, which also keeps each value's `resourceid` that the SDK drops."""
    params = {
        "api-version": API_VERSION,
        "starttime": _iso(start),
        "endtime": _iso(end),
        "interval": "PT1H",
        "metricnamespace": namespace,
        "metricnames": ",".join(name.replace(",", "%2") for name in names),
        "aggregation": ",".join(aggregations),
        **options,
    }
    subscription = ids[0].split("/")[2]
    answer = post_json(
        clients.metrics(region),
        f"/subscriptions/{subscription}/metrics:getBatch",
        params,
        {"resourceids": ids},
    )
    for value in answer.get("values") or []:
        resource_id = str(value.get("resourceid") or "").lower()
        for metric in value.get("value") or []:
            yield resource_id or metric["id"].lower().split(INSIGHTS)[0], metric


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def guest_metrics(
    clients: AzureClients,
    resource_id: str,
    namespace: str,
    names: Iterable[str],
    start: datetime,
    end: datetime,
) -> list[dict[str, Any]]:
    """One resource's custom metrics `names` of `namespace`, hourly, as Resource Manager's
    metrics API sends them; none where the resource sends no such metrics (Azure answers 400,
    "Failed to find metric configuration for provider ...")."""
    params = {
        "api-version": RESOURCE_API_VERSION,
        "timespan": f"{_iso(start)}/{_iso(end)}",
        "interval": "PT1H",
        "metricnamespace": namespace,
        "metricnames": ",".join(name.replace(",", "%2") for name in names),
        "aggregation": "Average,Maximum",
    }
    subscription = resource_id.split("/")[2]
    url = f"{resource_id}/providers/Microsoft.Insights/metrics"
    try:
        answer = get_json(clients.resources(subscription), url, params)
    except HttpResponseError as e:
        if e.status_code in (400, 404):
            return []
        raise
    return answer.get("value") or []


def hourly_batch(
    clients: AzureClients, region: str, ids: list[str], start: datetime, end: datetime
) -> list[Row]:
    """Rows (resource_id, metric 'cpu'|'gpu'|'gpu_memory', ts, average, maximum) for the hours
    with data of one batch of GPU VMs: one batch call for CPU, one call per VM for the GPU
    guest metrics (utilisation and memory used, MiB per GPU)."""
    settings = clients.settings
    rows: list[Row] = []
    answer = query_batch(
        clients, region, ids, VM_NAMESPACE, (CPU_METRIC,), ("Average", "Maximum"), start, end
    )
    for resource_id, metric in answer:
        if metric["name"]["value"].lower() == CPU_METRIC.lower():
            for series in metric.get("timeseries") or []:
                rows += points(resource_id, "cpu", series)
    names = {settings.gpu_metric_name: "gpu", settings.gpu_memory_metric_name: "gpu_memory"}
    by_name = {name.lower(): ours for name, ours in names.items()}
    silent = 0
    for resource_id in ids:
        found = guest_metrics(
            clients, resource_id, settings.gpu_metric_namespace, names, start, end
        )
        silent += not found
        for metric in found:
            ours = by_name.get(metric["name"]["value"].lower())
            if ours is None:
                continue
            for series in metric.get("timeseries") or []:
                rows += points(resource_id.lower(), ours, series)
    if silent:
        # all of them, night after night: the namespace or metric names are likely misnamed
        log.info(
            "%d of %d GPU VMs in %s send no %s metrics: judged on CPU",
            silent,
            len(ids),
            region,
            settings.gpu_metric_namespace,
        )
    return rows


@lru_cache(maxsize=4096)
def hour(stamp: str) -> datetime:
    """A point's time stamp as naive UTC, as the store keeps it. Parsed once per hour: a batch's
    series share their hours, and rows that share the object are also pickled once per chunk of
    the night's spool."""
    return datetime.fromisoformat(stamp).astimezone(UTC).replace(tzinfo=None)


def points(resource_id: str, metric: str, series: dict[str, Any]) -> Iterator[Row]:
    """Rows (resource_id, metric, ts naive UTC, average, maximum, total) of one time series as
    the batch API sends it, leaving out the hours without data."""
    for point in series.get("data") or []:
        average, maximum, total = point.get("average"), point.get("maximum"), point.get("total")
        if average is None and maximum is None and total is None:
            continue
        yield {
            "resource_id": resource_id,
            "metric": metric,
            "ts": hour(point["timeStamp"]),
            "average": average,
            "maximum": maximum,
            "total": total,
        }


def hourly(clients: AzureClients, vms: list[Row], start: datetime, end: datetime) -> Iterator[Row]:
    """Every batch's rows, for callers that want all or nothing."""
    for region, ids in batches(vms):
        yield from hourly_batch(clients, region, ids, start, end)
