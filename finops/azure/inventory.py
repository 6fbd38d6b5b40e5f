"""VMs with power state and tags, GPU facts per size, GPU-family quotas, auto-shutdown schedules,
managed disks.

Calls per night: two paged VM lists per subscription (full, then status-only, joined on id),
one SKU list per region in use, one usage list per subscription and region, one schedule
list and one disk list per subscription. Never a call per VM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from finops.azure.clients import AzureClients
from finops.catalog import gpu_size
from finops.collection import Row

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


def _power_state(statuses: Iterable[Any] | None) -> str:
    for status in statuses or ():
        code = (status.code or "").lower()
        if code.startswith("powerstate/"):
            return code.split("/", 1)[1]
    return "unknown"


def _text(value: Any) -> str | None:
    """SDK enums (str subclasses) as their wire value."""
    return None if value is None else str(getattr(value, "value", value))


def _resource_group(resource_id: str) -> str:
    parts = resource_id.split("/")
    lowered = [p.lower() for p in parts]
    return parts[lowered.index("resourcegroups") + 1] if "resourcegroups" in lowered else ""


def vms(clients: AzureClients, subscription_id: str) -> list[Row]:
    api = clients.compute(subscription_id).virtual_machines
    states = {
        vm.id.lower(): _power_state(vm.properties.instance_view.statuses)
        for vm in api.list_all(status_only="true")
        if vm.properties and vm.properties.instance_view
    }
    rows = []
    for vm in api.list_all():
        props = vm.properties
        hardware = props.hardware_profile if props else None
        storage = props.storage_profile if props else None
        os_disk = storage.os_disk if storage else None
        rows.append(
            {
                "resource_id": vm.id.lower(),
                "name": vm.name,
                "subscription_id": subscription_id.lower(),
                "resource_group": _resource_group(vm.id),
                "location": (vm.location or "").lower(),
                "size": (hardware.vm_size if hardware else None) or "unknown",
                "power_state": states.get(vm.id.lower(), "unknown"),
                "os_type": _text(os_disk.os_type if os_disk else None) or "unknown",
                "priority": _text(props.priority if props else None) or "Regular",
                "tags": dict(vm.tags or {}),
            }
        )
    return rows


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
        for usage in api.list(region):
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


def schedules(clients: AzureClients, subscription_id: str) -> list[Row]:
    rows = []
    for schedule in clients.devtestlabs(subscription_id).global_schedules.list_by_subscription():
        if (schedule.task_type or "").lower() != "computevmshutdowntask":
            continue
        if not schedule.target_resource_id:
            continue
        daily = schedule.daily_recurrence
        rows.append(
            {
                "resource_id": schedule.target_resource_id.lower(),
                "schedule_id": schedule.id.lower(),
                "status": schedule.status or "Disabled",
                "daily_time": daily.time if daily else None,
                "time_zone": schedule.time_zone_id or "UTC",
            }
        )
    return rows


def resource_groups(clients: AzureClients, subscription_id: str) -> list[Row]:
    """The subscription's resource groups with their tags (one paged list)."""
    return [
        {
            "subscription_id": subscription_id,
            "name": group.name.lower(),
            "tags": dict(group.tags or {}),
        }
        for group in clients.resources(subscription_id).resource_groups.list()
    ]


def disks(clients: AzureClients, subscription_id: str) -> list[Row]:
    """The subscription's managed disks with their attachment state (one paged list)."""
    rows = []
    for disk in clients.compute(subscription_id).disks.list():
        props = disk.properties
        changed = props.last_ownership_update_time if props else None
        rows.append(
            {
                "resource_id": disk.id.lower(),
                "name": disk.name,
                "subscription_id": subscription_id.lower(),
                "resource_group": _resource_group(disk.id),
                "location": (disk.location or "").lower(),
                "sku": _text(disk.sku.name if disk.sku else None) or "unknown",
                "size_gb": int((props.disk_size_gb if props else None) or 0),
                "state": _text(props.disk_state if props else None) or "unknown",
                "managed_by": disk.managed_by.lower() if disk.managed_by else None,
                "owner_changed": changed,
                "tags": dict(disk.tags or {}),
            }
        )
    return rows
