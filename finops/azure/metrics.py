"""Hourly CPU and GPU utilisation (and GPU memory used) through the Azure Monitor metrics batch API.

One call covers up to 50 resources of one subscription, region and type; the results are
mapped back to resources by the prefix of each metric's id, because the SDK's result objects
drop the `resourceid` field.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from finops.azure.clients import AzureClients
from finops.collection import Row

BATCH_SIZE = 50
VM_NAMESPACE = "Microsoft.Compute/virtualMachines"
CPU_METRIC = "Percentage CPU"


def batches(vms: Iterable[Row]) -> Iterator[tuple[str, list[str]]]:
    """(region, up to 50 resource ids of one subscription and region) for each batch call."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for vm in vms:
        groups[(vm["subscription_id"], vm["location"])].append(vm["resource_id"])
    for (_, region), ids in sorted(groups.items()):
        for i in range(0, len(ids), BATCH_SIZE):
            yield region, ids[i : i + BATCH_SIZE]


def hourly_batch(
    clients: AzureClients, region: str, ids: list[str], start: datetime, end: datetime
) -> list[Row]:
    """Rows (resource_id, metric 'cpu'|'gpu'|'gpu_memory', ts, average, maximum) for the hours
    with data of one batch of VMs: one call for CPU, one for the GPU guest metrics (utilisation
    and memory used, MiB per GPU)."""
    settings = clients.settings
    queries = [
        (VM_NAMESPACE, {CPU_METRIC: "cpu"}),
        (
            settings.gpu_metric_namespace,
            {settings.gpu_metric_name: "gpu", settings.gpu_memory_metric_name: "gpu_memory"},
        ),
    ]
    client = clients.metrics(region)
    rows = []
    for namespace, names in queries:
        by_name = {name.lower(): metric for name, metric in names.items()}
        results = client.query_resources(
            resource_ids=ids,
            metric_namespace=namespace,
            metric_names=list(names),
            timespan=(start, end),
            granularity=timedelta(hours=1),
            aggregations=["Average", "Maximum"],
        )
        for result in results:
            for series_metric in result.metrics:
                resource_id = series_metric.id.lower().split("/providers/microsoft.insights/")[0]
                metric = by_name.get(series_metric.name.lower())
                if metric is None:
                    continue
                for series in series_metric.timeseries:
                    for point in series.data:
                        if point.average is None and point.maximum is None:
                            continue
                        rows.append(
                            {
                                "resource_id": resource_id,
                                "metric": metric,
                                "ts": point.timestamp,
                                "average": point.average,
                                "maximum": point.maximum,
                                "total": None,
                            }
                        )
    return rows


def hourly(clients: AzureClients, vms: list[Row], start: datetime, end: datetime) -> Iterator[Row]:
    """Every batch's rows, for callers that want all or nothing."""
    for region, ids in batches(vms):
        yield from hourly_batch(clients, region, ids, start, end)
