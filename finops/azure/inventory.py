"""VMs with power state and tags, GPU facts per size, GPU-family quotas, auto-shutdown schedules,
managed disks.

Calls per night: two paged VM lists per subscription (full, then status-only, joined on id),
one SKU list per region in use, one usage list per subscription and region with GPU VMs, one
schedule list and one disk list per subscription. Never a call per VM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from azure.mgmt.compute.operations._operations import (
    build_disks_list_request as list_disks_request,
)
from azure.mgmt.compute.operations._operations import (
    build_virtual_machines_list_all_request as list_vms_request,
)

from finops.azure.clients import AzureClients, list_items
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


def _power_state(statuses: Iterable[dict[str, Any]] | None) -> str:
    for status in statuses or ():
        code = str(status.get("code") or "").lower()
        if code.startswith("powerstate/"):
            return code.split("/", 1)[1]
    return "unknown"


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


def vms(clients: AzureClients, subscription_id: str) -> list[Row]:
    """The subscription's VMs: the full list joined on id with the status-only list, both as
    the SDK requests them, read as JSON (10k VMs: 0.5 s of CPU, against 4.9 s through the
    SDK's models)."""
    client = clients.compute(subscription_id)
    states = {
        vm["id"].lower(): _power_state(
            ((vm.get("properties") or {}).get("instanceView") or {}).get("statuses")
        )
        for vm in list_items(client, list_vms_request(subscription_id, status_only="true"))
    }
    rows = []
    for vm in list_items(client, list_vms_request(subscription_id)):
        props = vm.get("properties") or {}
        os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
        rid = vm["id"].lower()
        rows.append(
            {
                "resource_id": rid,
                "name": vm.get("name"),
                "subscription_id": subscription_id.lower(),
                "resource_group": _resource_group(vm["id"]),
                "location": (vm.get("location") or "").lower(),
                "size": (props.get("hardwareProfile") or {}).get("vmSize") or "unknown",
                "power_state": states.get(rid, "unknown"),
                "os_type": os_disk.get("osType") or "unknown",
                "priority": props.get("priority") or "Regular",
                "tags": dict(vm.get("tags") or {}),
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
    """The subscription's managed disks with their attachment state (one paged list, as the SDK
    requests it, read as JSON like the VMs: 10k disks 0.24 s of CPU against 3.0 s)."""
    rows = []
    for disk in list_items(clients.compute(subscription_id), list_disks_request(subscription_id)):
        props = disk.get("properties") or {}
        # Azure capitalises this one on the wire; the SDK reads that spelling
        changed = props.get("LastOwnershipUpdateTime") or props.get("lastOwnershipUpdateTime")
        rows.append(
            {
                "resource_id": disk["id"].lower(),
                "name": disk.get("name"),
                "subscription_id": subscription_id.lower(),
                "resource_group": _resource_group(disk["id"]),
                "location": (disk.get("location") or "").lower(),
                "sku": (disk.get("sku") or {}).get("name") or "unknown",
                "size_gb": int(props.get("diskSizeGB") or 0),
                "state": props.get("diskState") or "unknown",
                "managed_by": disk["managedBy"].lower() if disk.get("managedBy") else None,
                "owner_changed": _time(changed),
                "tags": dict(disk.get("tags") or {}),
            }
        )
    return rows
