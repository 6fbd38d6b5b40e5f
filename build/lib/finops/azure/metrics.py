"""Hourly CPU and GPU utilisation through the Azure Monitor metrics batch API.

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


def _batches(vms: Iterable[Row]) -> Iterator[tuple[str, list[str]]]:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for vm in vms:
        groups[(vm["subscription_id"], vm["location"])].append(vm["resource_id"])
    for (_, region), ids in sorted(groups.items()):
        for i in range(0, len(ids), BATCH_SIZE):
            yield region, ids[i : i + BATCH_SIZE]


def hourly(clients: AzureClients, vms: list[Row], start: datetime, end: datetime) -> Iterator[Row]:
    """Rows (resource_id, metric 'cpu'|'gpu', ts, average, maximum) for hours with data."""
    queries = [
        ("cpu", VM_NAMESPACE, CPU_METRIC),
        ("gpu", clients.settings.gpu_metric_namespace, clients.settings.gpu_metric_name),
    ]
    for region, ids in _batches(vms):
        client = clients.metrics(region)
        for metric, namespace, name in queries:
            results = client.query_resources(
                resource_ids=ids,
                metric_namespace=namespace,
                metric_names=[name],
                timespan=(start, end),
                granularity=timedelta(hours=1),
                aggregations=["Average", "Maximum"],
            )
            for result in results:
                for series_metric in result.metrics:
                    resource_id = series_metric.id.lower().split("/providers/microsoft.insights/")[
                        0
                    ]
                    for series in series_metric.timeseries:
                        for point in series.data:
                            if point.average is None and point.maximum is None:
                                continue
                            yield {
                                "resource_id": resource_id,
                                "metric": metric,
                                "ts": point.timestamp,
                                "average": point.average,
                                "maximum": point.maximum,
                            }
