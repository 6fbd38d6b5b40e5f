"""What remediation does in Azure: read a VM's live state, deallocate it, merge tags, create
its auto-shutdown schedule. Each call is about one resource: actions are few and approved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from finops.azure.clients import AzureClients


@dataclass(frozen=True)
class VmRef:
    subscription_id: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, resource_id: str) -> VmRef:
        parts = resource_id.strip("/").split("/")
        lowered = [p.lower() for p in parts]
        if (
            len(parts) != 8
            or lowered[0] != "subscriptions"
            or lowered[2] != "resourcegroups"
            or (lowered[4:7] != ["providers", "microsoft.compute", "virtualmachines"])
        ):
            raise ValueError(f"not a virtual machine id: {resource_id}")
        return cls(parts[1], parts[3], parts[7])

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{self.name}"
        )

    @property
    def schedule_name(self) -> str:
        return f"shutdown-computevm-{self.name}"


@dataclass(frozen=True)
class LiveState:
    exists: bool
    power_state: str = "unknown"
    location: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    group_tags: dict[str, str] = field(default_factory=dict)
    auto_shutdown: str = "none"  # none | Enabled | Disabled

    def as_dict(self) -> dict[str, Any]:
        return {
            "exists": self.exists,
            "power_state": self.power_state,
            "tags": self.tags,
            "group_tags": self.group_tags,
            "auto_shutdown": self.auto_shutdown,
        }


def power_of(view) -> str:
    """`running`, `deallocated`, ... from an instance view's `PowerState/<state>` status."""
    for status in view.statuses or []:
        if (status.code or "").lower().startswith("powerstate/"):
            return status.code.split("/", 1)[1].lower()
    return "unknown"


def read_live(clients: AzureClients, vm: VmRef) -> LiveState:
    compute = clients.compute(vm.subscription_id).virtual_machines
    try:
        resource = compute.get(vm.resource_group, vm.name)
        view = compute.instance_view(vm.resource_group, vm.name)
    except ResourceNotFoundError:
        return LiveState(exists=False)
    group = clients.resources(vm.subscription_id).resource_groups.get(vm.resource_group)
    try:
        schedule = clients.devtestlabs(vm.subscription_id).global_schedules.get(
            vm.resource_group, vm.schedule_name
        )
        auto_shutdown = schedule.status or "Disabled"
    except ResourceNotFoundError:
        auto_shutdown = "none"
    return LiveState(
        exists=True,
        power_state=power_of(view),
        location=resource.location or "",
        tags=dict(resource.tags or {}),
        group_tags=dict(group.tags or {}),
        auto_shutdown=auto_shutdown,
    )


def deallocate(clients: AzureClients, vm: VmRef, timeout: float) -> None:
    poller = clients.compute(vm.subscription_id).virtual_machines.begin_deallocate(
        vm.resource_group, vm.name
    )
    poller.result(timeout=timeout)
    if not poller.done():
        raise TimeoutError(f"deallocation of {vm.name} still running after {timeout:.0f} s")


def merge_tags(clients: AzureClients, vm: VmRef, tags: dict[str, str]) -> None:
    """Add or update these tags; every other tag stays as it is."""
    clients.resources(vm.subscription_id).tags.begin_update_at_scope(
        vm.id.lstrip("/"), {"operation": "Merge", "properties": {"tags": tags}}
    ).result()


def create_auto_shutdown(
    clients: AzureClients,
    vm: VmRef,
    location: str,
    time_hhmm: str,
    time_zone: str,
    email: str | None,
) -> None:
    notification: dict[str, Any] = {"status": "Disabled", "timeInMinutes": 30}
    if email:
        notification = {"status": "Enabled", "timeInMinutes": 30, "emailRecipient": email}
    clients.devtestlabs(vm.subscription_id).global_schedules.create_or_update(
        vm.resource_group,
        vm.schedule_name,
        {
            "location": location,
            "properties": {
                "status": "Enabled",
                "taskType": "ComputeVmShutdownTask",
                "dailyRecurrence": {"time": time_hhmm},
                "timeZoneId": time_zone,
                "notificationSettings": notification,
                "targetResourceId": vm.id,
            },
        },
    )
