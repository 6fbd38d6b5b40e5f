"""VMs with power state and tags, GPU facts per size, GPU-family quotas, auto-shutdown schedules,
resource groups, managed disks.

Calls per night: VMs, schedules, resource groups and disks each one Resource Graph query over
every subscription (1,000 rows a page); one SKU list per region in use; one usage list per
subscription and region with GPU VMs. Never a call per VM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from azure.core.exceptions import HttpResponseError

from finops.azure import graph
from finops.azure.clients import AzureClients
from finops.catalog import gpu_size
from finops.collection import Row
from finops.store.costs import scope_of

_GPU_FAMILY = re.compile(r"^standardn[cdv]", re.IGNORECASE)


def normalise_family(name: str) -> str:
    """Quota family names differ in case and spacing between APIs: compare them this way."""
    return re.sub(r"\s+", "", name).lower()


def is_gpu_family(name: str) -> bool:
    return bool(_GPU_FAMILY.match(normalise_family(name)))


def subscriptions(clients: AzureClients, configured: list[str]) -> list[Row]:
    visible = {
        s.subscription_id.lower(): s.display_name
        for s in clients.subscription().subscriptions.list()
        if s.subscription_id
    }
    wanted = configured or sorted(visible)
    missing = [s for s in wanted if s not in visible]
    if missing:
        raise LookupError(
            f"subscription {missing[0]} is not visible to this identity "
            "(check the id and the Reader role)"
        )
    return [{"subscription_id": s, "display_name": visible[s]} for s in wanted]


def _power_state(code: str | None) -> str:
    """`PowerState/running` -> `running`; unknown where Azure gives none."""
    code = (code or "").lower()
    return code.split("/", 1)[1] if code.startswith("powerstate/") else "unknown"


def _resource_group(resource_id: str) -> str:
    parts = resource_id.split("/")
    lowered = [p.lower() for p in parts]
    return parts[lowered.index("resourcegroups") + 1] if "resourcegroups" in lowered else ""


def _time(value: str | None) -> datetime | None:
    """An ARM timestamp (UTC where it names no zone)."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


VMS = """Resources
| where type =~ 'microsoft.compute/virtualmachines'
| project id, name, location, tags, size = properties.hardwareProfile.vmSize,
  powerState = properties.extended.instanceView.powerState.code,
  osType = properties.storageProfile.osDisk.osType, priority = properties.priority"""


def _placed(resource: Row) -> Row:
    """What every listed resource is stored with: its lower-cased id, its name, subscription,
    resource group and region."""
    resource_id = resource["id"].lower()
    return {
        "resource_id": resource_id,
        "name": resource.get("name"),
        "subscription_id": scope_of(resource_id)[0],
        "resource_group": _resource_group(resource["id"]),
        "location": (resource.get("location") or "").lower(),
    }


def vms(clients: AzureClients, subscriptions: list[str]) -> Iterator[Row]:
    """The subscriptions' VMs with their power state, from Resource Graph, page by page."""
    return (
        {
            **_placed(vm),
            "size": vm.get("size") or "unknown",
            "power_state": _power_state(vm.get("powerState")),
            "os_type": vm.get("osType") or "unknown",
            "priority": vm.get("priority") or "Regular",
            "tags": dict(vm.get("tags") or {}),
        }
        for vm in graph.query(clients, subscriptions, VMS)
    )


def vm_sizes(clients: AzureClients, subscription_id: str, regions: Iterable[str]) -> list[Row]:
    """GPU facts per VM size: counts from the SKU API, GPU model and memory from the catalog."""
    sizes: dict[str, Row] = {}
    api = clients.compute(subscription_id).resource_skus
    for region in sorted(set(regions)):
        for sku in api.list(filter=f"location eq '{region}'"):
            if sku.resource_type != "virtualMachines" or not sku.name:
                continue
            caps = {c.name: c.value for c in sku.capabilities or []}
            catalog = gpu_size(sku.name)
            gpus = caps.get("GPUs")
            sizes[sku.name.lower()] = {
                "size": sku.name,
                "vcpus": int(caps.get("vCPUs") or 0),
                "memory_gb": float(caps.get("MemoryGB") or 0),
                # the catalog knows fractional GPUs (NVads A10 v5) that the SKU API rounds
                "gpus": catalog.gpus if catalog else int(gpus or 0),
                "gpu_model": catalog.gpu_model if catalog else ("unknown" if gpus else None),
                "gpu_memory_gb": catalog.gpu_memory_gb if catalog else None,
                "family": sku.family or "",
            }
    return list(sizes.values())


def quotas(clients: AzureClients, subscription_id: str, regions: Iterable[str]) -> list[Row]:
    rows = []
    api = clients.compute(subscription_id).usage
    for region in sorted(set(regions)):
        try:
            usages = list(api.list(region))
        except HttpResponseError as e:
            if e.status_code == 409 and getattr(e.error, "code", None) == "SubscriptionHasNoUsages":
                continue  # nothing used there, so no quota near its limit
            raise
        for usage in usages:
            family = usage.name.value or ""
            if not is_gpu_family(family):
                continue
            rows.append(
                {
                    "subscription_id": subscription_id.lower(),
                    "location": region,
                    "family": normalise_family(family),
                    "display_name": usage.name.localized_value or family,
                    "current_value": int(usage.current_value),
                    "limit": int(usage.limit),
                }
            )
    return rows


SCHEDULES = """Resources
| where type =~ 'microsoft.devtestlab/schedules'
| where properties.taskType =~ 'ComputeVmShutdownTask'
| project id, target = properties.targetResourceId, status = properties.status,
  shutdownTime = properties.dailyRecurrence['time'], timeZone = properties.timeZoneId"""


def schedules(clients: AzureClients, subscriptions: list[str]) -> list[Row]:
    """Auto-shutdown schedules (DevTest Labs `shutdown-computevm-<vm>`) and the VMs they stop."""
    return [
        {
            "resource_id": schedule["target"].lower(),
            "schedule_id": schedule["id"].lower(),
            "status": schedule.get("status") or "Disabled",
            "daily_time": schedule.get("shutdownTime"),
            "time_zone": schedule.get("timeZone") or "UTC",
        }
        for schedule in graph.query(clients, subscriptions, SCHEDULES)
        if schedule.get("target")
    ]


RESOURCE_GROUPS = """ResourceContainers
| where type =~ 'microsoft.resources/subscriptions/resourcegroups'
| project id, name, tags"""


def resource_groups(clients: AzureClients, subscriptions: list[str]) -> list[Row]:
    """The subscriptions' resource groups with their tags."""
    return [
        {
            "subscription_id": scope_of(group["id"].lower())[0],
            "name": group["name"].lower(),
            "tags": dict(group.get("tags") or {}),
        }
        for group in graph.query(clients, subscriptions, RESOURCE_GROUPS)
    ]


# Azure capitalises LastOwnershipUpdateTime on the wire; the other spelling is read too
DISKS = """Resources
| where type =~ 'microsoft.compute/disks'
| project id, name, location, tags, managedBy, sku = sku.name, sizeGb = properties.diskSizeGB,
  state = properties.diskState, changed = properties.LastOwnershipUpdateTime,
  changedLower = properties.lastOwnershipUpdateTime"""


def disks(clients: AzureClients, subscriptions: list[str]) -> Iterator[Row]:
    """The subscriptions' managed disks with their attachment state, page by page."""
    for disk in graph.query(clients, subscriptions, DISKS):
        yield {
            **_placed(disk),
            "sku": disk.get("sku") or "unknown",
            "size_gb": int(disk.get("sizeGb") or 0),
            "state": disk.get("state") or "unknown",
            "managed_by": disk["managedBy"].lower() if disk.get("managedBy") else None,
            "owner_changed": _time(disk.get("changed") or disk.get("changedLower")),
            "tags": dict(disk.get("tags") or {}),
        }
