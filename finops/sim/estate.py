"""A deterministic simulated Azure estate: the same seed and size give the same estate.

The estate holds scenario VMs (each labelled with the findings the rules must produce for it,
near-misses included) and filler VMs (CPU VMs and busy, scheduled GPU VMs that must produce
nothing). Hourly metrics and daily costs are computed on demand from a hash of
(seed, VM, hour), so an estate of any size costs no memory beyond its VM list.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from finops import clock
from finops.catalog import SCOPES, gpu_size, ptu_models

IDLE = "idle-gpu-vm"
NO_SHUTDOWN = "gpu-vm-no-auto-shutdown"
STOPPED = "gpu-vm-stopped-not-deallocated"
ANOMALY = "gpu-cost-anomaly"  # on a VM: its resource group's GPU spend jumped because of it
PTU_UNDERUSED = "ptu-underused"
PAYG_PTU = "payg-ptu-candidate"
PTU_SATURATED = "ptu-saturated"
QUOTA = "gpu-quota-near-limit"
MISSING_TAGS = "gpu-vm-missing-tags"
OVERSIZED = "gpu-vm-oversized"
ORPHANED_DISK = "gpu-disks-orphaned"
COMMITMENT = "gpu-vm-commitment-candidate"
SPOT = "gpu-vm-spot-candidate"
REQUIRED_TAGS = ("owner", "cost-center", "environment")
EXEMPT = "exempt"  # the VM would be flagged but carries the exempt tag

# Simulated list prices of the CPU sizes the estate uses (USD/hour; GPU prices come from the
# catalog). Only the simulator uses them.
CPU_SIZES = {
    "Standard_D4s_v5": (4, 16, Decimal("0.192"), "standardDSv5Family"),
    "Standard_D8s_v5": (8, 32, Decimal("0.384"), "standardDSv5Family"),
    "Standard_E8s_v5": (8, 64, Decimal("0.504"), "standardESv5Family"),
}
# Sizes a VM may still carry but that neither the SKU API nor the catalog lists any more (NCv3,
# retired): the job must store such VMs without calling them GPU VMs or failing.
RETIRED_SIZES = {"Standard_NC6s_v3": (6, 112, Decimal("3.06"), "standardNCSv3Family")}
NON_GPU_SIZES = {**CPU_SIZES, **RETIRED_SIZES}  # as far as the catalog knows
REGIONS = ("eastus", "westeurope", "westus3", "swedencentral")  # the first two by default
SUBSCRIPTION_NAMES = ("ml-research", "ml-production", "platform-shared")
STORAGE_DAILY_COST = Decimal("12.500000")
LONG_AGO_H = 60 * 24  # "always on": started before any window the job reads


_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix(key: int, hours: np.ndarray, salt: int) -> np.ndarray:
    """A fast deterministic hash of (key, hour, salt) to a float in [0, 1) (splitmix64), for
    many hours at once: the simulator answers a night's hundreds of thousands of metric points,
    and one hash at a time in Python cost it more CPU than the job spent reading them."""
    first, second = _MULTIPLIERS
    x = np.full(hours.shape, 0x9E3779B97F4A7C15, dtype=np.uint64)
    for part in (np.uint64(key & 0xFFFFFFFFFFFFFFFF), hours, np.uint64(salt)):
        x = (x ^ part) * first
        x = (x ^ (x >> np.uint64(27))) * second
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Profile:
    """Hourly utilisation in percent: average uniform in [low, high], with optional bursts."""

    low: float
    high: float
    burst_rate: float = 0.0
    burst_low: float = 0.0
    burst_high: float = 0.0
    max_extra: float = 2.0  # the hourly maximum is the average plus up to this much

    def samples(self, key: int, hours: Sequence[int]) -> list[tuple[float, float]]:
        """(average, maximum) of each hour, numbered from the epoch."""
        numbers = np.asarray(hours, dtype=np.uint64)
        average = self.low + (self.high - self.low) * _mix(key, numbers, 3)
        if self.burst_rate:
            burst = self.burst_low + (self.burst_high - self.burst_low) * _mix(key, numbers, 2)
            average = np.where(_mix(key, numbers, 1) < self.burst_rate, burst, average)
        peak = np.minimum(100.0, average + self.max_extra * _mix(key, numbers, 4))
        pairs = zip(average.tolist(), peak.tolist(), strict=True)
        return [(round(a, 3), round(p, 3)) for a, p in pairs]

    def sample(self, key: int, hour: int) -> tuple[float, float]:
        return self.samples(key, [hour])[0]


IDLE_GPU = Profile(0.2, 2.0)
BUSY = Profile(55.0, 95.0, max_extra=5.0)
LOW_CPU = Profile(0.5, 3.0)
MID_CPU = Profile(15.0, 45.0, max_extra=10.0)


def arm_id(subscription_id: str, group: str, resource_type: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription_id}/resourceGroups/{group}/providers/{resource_type}/{name}"
    )


@dataclass
class SimVM:
    index: int
    subscription_id: str
    resource_group: str
    name: str
    location: str
    size: str
    power_state: str  # running | stopped | deallocated
    on_since_h: int  # hours ago the VM was started (billing began)
    off_since_h: int = 0  # hours ago it stopped running (0 while running)
    cpu: Profile = LOW_CPU
    gpu: Profile | None = None  # None: no GPU telemetry reaches Azure Monitor
    gpu_memory: Profile = Profile(60.0, 85.0, max_extra=5.0)  # percent of each GPU's VRAM
    schedule: str | None = None  # Enabled | Disabled | None (no schedule)
    schedule_time: str = "1900"
    schedule_time_zone: str = "UTC"
    tags: dict[str, str] = field(default_factory=dict)
    priority: str = "Regular"
    # Share of the list price a reservation covering the VM costs (amortized), or None: no
    # reservation. A covered VM's usage is billed at 0; the purchase carries no resource id.
    reserved: Decimal | None = None
    os_type: str = "Linux"
    expect: frozenset[str] = frozenset()
    scenario: str = "filler"

    @property
    def id(self) -> str:
        return arm_id(
            self.subscription_id,
            self.resource_group,
            "Microsoft.Compute/virtualMachines",
            self.name,
        )

    @property
    def is_gpu(self) -> bool:
        return gpu_size(self.size) is not None

    @property
    def vcpus(self) -> int:
        gpu = gpu_size(self.size)
        return gpu.vcpus if gpu else NON_GPU_SIZES[self.size][0]

    @property
    def hourly_price(self) -> Decimal:
        gpu = gpu_size(self.size)
        if gpu:
            return gpu.usd_per_hour or Decimal(0)
        return NON_GPU_SIZES[self.size][2]

    @property
    def billed_until_h(self) -> int:
        """Hours ago billing stopped: a stopped (not deallocated) VM is still billed."""
        return self.off_since_h if self.power_state == "deallocated" else 0


@dataclass
class SimDeployment:
    """A model deployment. Provisioned ones follow a utilization profile (their tokens are what
    that utilization of their PTUs carries); pay-as-you-go ones an input-tokens-a-minute one."""

    name: str
    model: str
    version: str
    sku: str
    capacity: int
    util: Profile | None = None
    tpm_in: Profile | None = None
    out_ratio: float = 0.25  # output tokens per input token
    throttled_per_hour: int = 0  # 429s in each hour that peaks at 99.5 % or more
    expect: frozenset[str] = frozenset()
    scenario: str = ""


@dataclass
class SimAccount:
    index: int
    subscription_id: str
    resource_group: str
    name: str
    location: str
    kind: str
    deployments: list[SimDeployment]
    reservation: str | None = None  # its PTUs' basis when not hourly: yearly-/monthly-reservation

    @property
    def id(self) -> str:
        return arm_id(
            self.subscription_id,
            self.resource_group,
            "Microsoft.CognitiveServices/accounts",
            self.name,
        )


# The simulator's own monthly disk prices by SKU and size tier (near Azure's list prices, used
# only to bill the simulated disks: the job reads billed cost, never these).
DISK_MONTHLY = {
    "Premium_LRS": {128: Decimal("19.71"), 1024: Decimal("135.17"), 2048: Decimal("259.05")},
    "StandardSSD_LRS": {128: Decimal("9.60"), 1024: Decimal("76.80"), 2048: Decimal("153.60")},
}
OS_DISK_GB = 128


@dataclass
class SimDisk:
    """A managed disk: a VM's OS disk, a data disk attached to one, or one left unattached."""

    subscription_id: str
    resource_group: str
    name: str
    location: str
    size_gb: int
    vm: SimVM | None = None
    detached_h: int = 0  # hours since it was detached (unattached disks)
    sku: str = "Premium_LRS"
    expect: frozenset[str] = frozenset()
    scenario: str = ""

    @property
    def id(self) -> str:
        return arm_id(
            self.subscription_id, self.resource_group, "Microsoft.Compute/disks", self.name
        )

    @property
    def state(self) -> str:
        if self.vm is None:
            return "Unattached"
        return "Reserved" if self.vm.power_state == "deallocated" else "Attached"

    @property
    def owner_changed_h(self) -> int:
        """Hours since it was last attached or detached, or its VM deallocated or started."""
        if self.vm is None:
            return self.detached_h
        return self.vm.off_since_h if self.vm.power_state == "deallocated" else self.vm.on_since_h

    @property
    def daily_cost(self) -> Decimal:
        return (DISK_MONTHLY[self.sku][self.size_gb] * 12 / 365).quantize(Decimal("0.000001"))


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    display_name: str


class Estate:
    """The estate; its VMs change when actions are applied, and with a `state_file` those
    changes persist from one process to the next (the demo's plan, apply, next night)."""

    def __init__(
        self,
        seed: int = 7,
        vms: int = 60,
        now: datetime | None = None,
        state_file: Path | None = None,
        subscriptions: int = 3,
        regions: int = 2,
        gpu_share: float = 0.2,
    ):
        """`vms` in all: the scenarios, then fillers spread over `subscriptions` (at least 3)
        and `regions` (1 to 4), a `gpu_share` of them busy GPU VMs (the benchmark's knobs)."""
        self.seed = seed
        self.regions = REGIONS[: max(1, min(regions, len(REGIONS)))]
        self.gpu_share = gpu_share
        self.now = (now or clock.now()).replace(minute=0, second=0, microsecond=0)
        rng = random.Random(seed)
        self.tenant_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        names = [*SUBSCRIPTION_NAMES, *(f"team-{i:03d}" for i in range(3, subscriptions))]
        self.subscriptions = [
            Subscription(str(uuid.UUID(int=rng.getrandbits(128), version=4)), name)
            for name in names
        ]
        self.vms: list[SimVM] = []
        self.by_id: dict[str, SimVM] = {}
        self._vms_by_subscription: dict[str, list[SimVM]] = {}
        self.data_disks: list[SimDisk] = []
        self._scenarios()
        self._fillers(rng, vms - len(self.vms))
        self.ai_accounts = self._ai_accounts()
        self.accounts_by_id = {a.id.lower(): a for a in self.ai_accounts}
        self._account_costs: dict[tuple[int, date, str], Decimal] = {}
        self.quota_limits = self._quota_limits()
        self.group_tags: dict[tuple[str, str], dict[str, str]] = {
            (self.subscriptions[0].subscription_id, "ml-training"): {"owner": "dana"},
            # the render VMs carry no tags: their group's owner and cost center can be merged
            (self.subscriptions[2].subscription_id, "render"): {
                "owner": "mika",
                "cost-center": "cc-5300",
            },
        }
        self.lock = threading.RLock()
        self.state_file = state_file
        self.changes: dict[str, dict[str, Any]] = {}
        if state_file and state_file.is_file():
            self._restore(json.loads(state_file.read_text(encoding="utf-8")))

    # -- building ------------------------------------------------------------------------
    def _add(self, sub: int, rg: str, name: str, location: str, size: str, state: str, **kw):
        sub_id = self.subscriptions[sub].subscription_id
        vm = SimVM(len(self.vms), sub_id, rg, name, location, size, state, **kw)
        self.vms.append(vm)
        self.by_id[vm.id.lower()] = vm
        self._vms_by_subscription.setdefault(sub_id, []).append(vm)

    def _scenarios(self) -> None:
        month = LONG_AGO_H
        team = {"owner": "dana", "cost-center": "cc-4100", "environment": "research"}
        # The story: eight A100 nodes left running after a training job crashed on Friday.
        for i in range(1, 9):
            self._add(
                0,
                "ml-training",
                f"train-nd-a100-{i}",
                "eastus",
                "Standard_ND96asr_v4",
                "running",
                on_since_h=60,
                gpu=IDLE_GPU,
                tags={**team, "workload": "training"},
                expect=frozenset({IDLE, NO_SHUTDOWN, ANOMALY}),
                scenario="crashed training job",
            )
        add = self._add
        add(
            0,
            "ml-dev",
            "dev-nc-a100-idle",
            "eastus",
            "Standard_NC24ads_A100_v4",
            "running",
            on_since_h=month,
            gpu=IDLE_GPU,
            schedule="Enabled",
            tags=team,
            expect=frozenset({IDLE}),
            scenario="idle, has a schedule",
        )
        add(
            1,
            "inference",
            "infer-nc-t4-notelemetry",
            "eastus",
            "Standard_NC8as_T4_v3",
            "running",
            on_since_h=month,
            gpu=None,
            cpu=Profile(0.5, 3.0),
            schedule="Enabled",
            expect=frozenset({IDLE}),
            scenario="idle by CPU, no GPU telemetry",
        )
        add(
            1,
            "inference",
            "infer-nc-t4-gpu6",
            "eastus",
            "Standard_NC4as_T4_v3",
            "running",
            on_since_h=month,
            gpu=Profile(5.2, 6.8),
            schedule="Enabled",
            scenario="near-miss: GPU average 6 %",
        )
        add(
            1,
            "inference",
            "infer-nc-a100-bursty",
            "westeurope",
            "Standard_NC24ads_A100_v4",
            "running",
            on_since_h=month,
            gpu=Profile(1.0, 2.0, 0.10, 12.0, 18.0),
            schedule="Enabled",
            scenario="near-miss: GPU p95 above 10 %",
        )
        add(
            1,
            "inference",
            "infer-nc-t4-cpu7",
            "westeurope",
            "Standard_NC16as_T4_v3",
            "running",
            on_since_h=month,
            gpu=None,
            cpu=Profile(6.0, 8.0),
            schedule="Enabled",
            scenario="near-miss: no GPU telemetry, CPU average 7 %",
        )
        add(
            2,
            "notebooks",
            "nb-nc-t4-busy",
            "eastus",
            "Standard_NC4as_T4_v3",
            "running",
            on_since_h=month,
            gpu=BUSY,
            cpu=MID_CPU,
            tags=team,
            expect=frozenset({NO_SHUTDOWN}),
            scenario="busy, no schedule",
        )
        add(
            2,
            "notebooks",
            "nb-nc-a100-schedoff",
            "eastus",
            "Standard_NC48ads_A100_v4",
            "running",
            on_since_h=month,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Disabled",
            expect=frozenset({NO_SHUTDOWN}),
            scenario="busy, schedule disabled",
        )
        add(
            0,
            "viz",
            "viz-nv-a10-stopped",
            "westeurope",
            "Standard_NV36ads_A10_v5",
            "stopped",
            on_since_h=month,
            off_since_h=100,
            gpu=IDLE_GPU,
            tags=team,
            expect=frozenset({STOPPED}),
            scenario="stopped from the OS, still billed",
        )
        add(
            0,
            "ml-training",
            "train-nd-h100-stopped",
            "eastus",
            "Standard_ND96isr_H100_v5",
            "stopped",
            on_since_h=month,
            off_since_h=40,
            gpu=IDLE_GPU,
            schedule="Enabled",
            tags=team,
            reserved=Decimal("0.63"),
            expect=frozenset({STOPPED}),
            scenario="stopped, still billed, covered by a reservation",
        )
        add(
            0,
            "ml-training",
            "train-nc-a100-dealloc",
            "eastus",
            "Standard_NC96ads_A100_v4",
            "deallocated",
            on_since_h=month,
            off_since_h=12 * 24,
            gpu=BUSY,
            tags=team,
            scenario="near-miss: deallocated, no schedule",
        )
        add(
            1,
            "serving",
            "serve-nd-h100-busy",
            "eastus",
            "Standard_ND96isr_H100_v5",
            "running",
            on_since_h=month,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            tags={
                "owner": "lee",
                "cost-center": "cc-7200",
                "environment": "prod",
                "workload": "inference",
            },
            scenario="busy, scheduled; near-miss for spot: inference work",
        )
        add(
            0,
            "ml-dev",
            "dev-nc-a100-exempt",
            "eastus",
            "Standard_NC24ads_A100_v4",
            "running",
            on_since_h=month,
            gpu=IDLE_GPU,
            tags={**team, "finops-exempt": "true"},
            expect=frozenset({EXEMPT}),
            scenario="idle, no schedule, exempt",
        )
        add(
            0,
            "ml-dev",
            "dev-nc-t4-notexempt",
            "westeurope",
            "Standard_NC4as_T4_v3",
            "running",
            on_since_h=month,
            gpu=IDLE_GPU,
            schedule="Enabled",
            tags={**team, "finops-exempt": "false"},
            expect=frozenset({IDLE}),
            scenario="idle, exempt tag set to false",
        )
        add(
            2,
            "render",
            "render-nv-a10-spot",
            "westeurope",
            "Standard_NV36ads_A10_v5",
            "running",
            on_since_h=month,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            priority="Spot",
            tags={"workload": "batch"},
            scenario="near-miss: batch work already on spot",
        )
        add(
            2,
            "render",
            "render-nd-a100-80",
            "eastus",
            "Standard_ND96amsr_A100_v4",
            "running",
            on_since_h=month,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            scenario="busy, untagged",
        )
        add(
            1,
            "inference",
            "infer-nc-t4-new",
            "eastus",
            "Standard_NC4as_T4_v3",
            "running",
            on_since_h=10,
            gpu=IDLE_GPU,
            schedule="Enabled",
            scenario="near-miss: idle but started 10 hours ago",
        )
        add(
            2,
            "web",
            "web-cpu-idle",
            "eastus",
            "Standard_D4s_v5",
            "running",
            on_since_h=month,
            scenario="near-miss: idle CPU VM, no schedule",
        )
        add(
            2,
            "web",
            "web-cpu-stopped",
            "eastus",
            "Standard_D8s_v5",
            "stopped",
            on_since_h=month,
            off_since_h=50,
            scenario="near-miss: stopped CPU VM",
        )

        add(
            1,
            "serving",
            "serve-nd-a100-scaleout",
            "eastus",
            "Standard_ND96asr_v4",
            "running",
            on_since_h=36,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            tags={"owner": "lee", "cost-center": "cc-7200", "environment": "prod"},
            scenario="near-miss: resource group GPU spend up 28 %, over 500 a day",
        )
        add(
            2,
            "notebooks",
            "nb-nc-a100-new",
            "eastus",
            "Standard_NC48ads_A100_v4",
            "running",
            on_since_h=36,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            tags=team,
            scenario="near-miss: resource group GPU spend up 93 %, under 500 a day",
        )
        serving = {"owner": "ravi", "cost-center": "cc-4200", "environment": "prod"}
        for name, size, gpu, memory, expect, scenario in (
            (
                "infer-nc48-a100-half",
                "Standard_NC48ads_A100_v4",
                Profile(20.0, 32.0, max_extra=4.0),
                Profile(15.0, 25.0, max_extra=3.0),
                frozenset({OVERSIZED}),
                "2 A100s, a quarter of their memory and a third of their compute used",
            ),
            (
                "infer-nc48-a100-mem55",
                "Standard_NC48ads_A100_v4",
                Profile(20.0, 32.0, max_extra=4.0),
                Profile(50.0, 56.0, max_extra=3.0),
                frozenset(),
                "near-miss: GPU memory peaks near 57 %",
            ),
            (
                "train-nc96-a100-spread",
                "Standard_NC96ads_A100_v4",
                Profile(30.0, 44.0, max_extra=4.0),
                Profile(20.0, 30.0, max_extra=3.0),
                frozenset(),
                "near-miss: memory would fit 2 GPUs, its compute would not",
            ),
        ):
            add(
                1,
                "llm-serving",
                name,
                "eastus",
                size,
                "running",
                on_since_h=month,
                gpu=gpu,
                gpu_memory=memory,
                cpu=MID_CPU,
                schedule="Enabled",
                tags=serving,
                expect=expect,
                scenario=scenario,
            )
        self._disk_scenarios(team)
        prod = {"owner": "lee", "cost-center": "cc-7200", "environment": "prod"}
        add(
            1,
            "serving",
            "serve-nc-a100-reserved",
            "eastus",
            "Standard_NC24ads_A100_v4",
            "running",
            on_since_h=month,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            tags=prod,
            reserved=Decimal("0.62"),
            scenario="near-miss: always on, covered by a reservation",
        )
        add(
            1,
            "serving",
            "serve-nc-a100-28d",
            "eastus",
            "Standard_NC24ads_A100_v4",
            "running",
            on_since_h=28 * 24,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            tags=prod,
            scenario="near-miss: started 28 days ago, 93 % of the 30 days",
        )
        add(
            2,
            "batch",
            "batch-nc-a100-embed",
            "westeurope",
            "Standard_NC24ads_A100_v4",
            "running",
            on_since_h=month,
            gpu=BUSY,
            cpu=MID_CPU,
            schedule="Enabled",
            tags={
                "owner": "mika",
                "cost-center": "cc-5300",
                "environment": "prod",
                "workload": "Batch",
            },
            expect=frozenset({SPOT}),
            scenario="batch work on regular priority",
        )

    def _disk_scenarios(self, team: dict[str, str]) -> None:
        sub = self.subscriptions[0].subscription_id
        self._add(
            0,
            "ml-training",
            "train-nc-a100-parked",
            "eastus",
            "Standard_NC96ads_A100_v4",
            "deallocated",
            on_since_h=LONG_AGO_H,
            off_since_h=30 * 24,
            gpu=BUSY,
            tags=team,
            scenario="deallocated 30 days: its disks are billed for nothing",
        )
        parked, recent = (
            self.vms[-1],
            next(v for v in self.vms if v.name == "train-nc-a100-dealloc"),
        )
        cpu = {"owner": "ops", "cost-center": "cc-1000", "environment": "prod"}
        self._add(
            2,
            "web",
            "web-cpu-parked",
            "eastus",
            "Standard_D8s_v5",
            "deallocated",
            on_since_h=LONG_AGO_H,
            off_since_h=40 * 24,
            tags=cpu,
            scenario="near-miss: a CPU VM's disks, deallocated 40 days",
        )
        group = "ml-training"
        self.data_disks += [
            SimDisk(
                sub,
                group,
                "train-nc-a100-parked-data",
                "eastus",
                2048,
                vm=parked,
                expect=frozenset({ORPHANED_DISK}),
                scenario="data disk of a VM deallocated 30 days",
            ),
            SimDisk(
                sub,
                group,
                "ckpt-a100-2026-10",
                "eastus",
                1024,
                detached_h=20 * 24,
                expect=frozenset({ORPHANED_DISK}),
                scenario="checkpoints left unattached 20 days",
            ),
            SimDisk(
                sub,
                group,
                "train-nc-a100-dealloc-data",
                "eastus",
                1024,
                vm=recent,
                scenario="near-miss: its VM deallocated 12 days ago",
            ),
            SimDisk(
                sub,
                group,
                "scratch-redeploy",
                "eastus",
                128,
                sku="StandardSSD_LRS",
                detached_h=6,
                scenario="near-miss: detached 6 hours ago (a redeploy)",
            ),
        ]

    def _ai_accounts(self) -> list[SimAccount]:
        subs = [s.subscription_id for s in self.subscriptions]
        production = [
            SimDeployment(
                "chat-gpt4o-ptu",
                "gpt-4o",
                "2024-08-06",
                "GlobalProvisionedManaged",
                100,
                util=Profile(12.0, 28.0, max_extra=4.0),
                expect=frozenset({PTU_UNDERUSED}),
                scenario="100 PTU peaking near 30 %",
            ),
            SimDeployment(
                "rag-gpt4o-mini-ptu",
                "gpt-4o-mini",
                "2024-07-18",
                "GlobalProvisionedManaged",
                30,
                util=Profile(55.0, 80.0, max_extra=5.0),
                scenario="near-miss: right-sized PTU, peaks near 84 %",
            ),
            SimDeployment(
                "support-gpt41-ptu",
                "gpt-4.1",
                "2025-04-14",
                "ProvisionedManaged",
                50,
                util=Profile(93.0, 100.0, max_extra=3.0),
                throttled_per_hour=40,
                expect=frozenset({PTU_SATURATED}),
                scenario="saturated, throttling",
            ),
            SimDeployment(
                "batch-gpt4o-payg",
                "gpt-4o",
                "2024-08-06",
                "GlobalStandard",
                1000,
                tpm_in=Profile(150_000.0, 165_000.0),
                out_ratio=0.1,
                expect=frozenset({PAYG_PTU}),
                scenario="heavy, steady pay-as-you-go",
            ),
        ]
        research = [
            SimDeployment(
                "lab-gpt4o-mini-payg",
                "gpt-4o-mini",
                "2024-07-18",
                "GlobalStandard",
                200,
                tpm_in=Profile(500.0, 3_000.0),
                scenario="light pay-as-you-go",
            ),
            SimDeployment(
                "chat-gpt4o-payg",
                "gpt-4o",
                "2024-08-06",
                "GlobalStandard",
                500,
                tpm_in=Profile(60_000.0, 120_000.0),
                out_ratio=0.1,
                scenario="near-miss: busy pay-as-you-go, still cheaper than PTU",
            ),
            SimDeployment(
                "eval-gpt41-mini-ptu",
                "gpt-4.1-mini",
                "2025-04-14",
                "DataZoneProvisionedManaged",
                30,
                util=Profile(40.0, 52.0, max_extra=4.0),
                scenario="near-miss: PTU peaking just above 50 %",
            ),
            SimDeployment(
                "peak-gpt4o-ptu",
                "gpt-4o",
                "2024-08-06",
                "GlobalProvisionedManaged",
                15,
                util=Profile(95.0, 99.0, max_extra=0.4),
                scenario="near-miss: near its limit, never throttled",
            ),
        ]
        return [
            SimAccount(
                0,
                subs[1],
                "ai-serving",
                "oai-prod-eastus",
                "eastus",
                "OpenAI",
                production,
                reservation="yearly-reservation",
            ),
            SimAccount(
                1, subs[0], "ai-lab", "ais-research-weu", "westeurope", "AIServices", research
            ),
        ]

    def _fillers(self, rng: random.Random, count: int) -> None:
        gpu_sizes = ("Standard_NC8as_T4_v3", "Standard_NC24ads_A100_v4", "Standard_NV36ads_A10_v5")
        rgs = ("app", "data", "batch", "analytics")
        for n in range(max(0, count)):
            sub = rng.randrange(len(self.subscriptions))
            location = self.regions[rng.randrange(len(self.regions))]
            tags = {} if rng.random() < 0.3 else {"owner": "ops", "environment": "prod"}
            rg = rgs[rng.randrange(len(rgs))]
            if rng.random() < self.gpu_share:
                self._add(
                    sub,
                    rg,
                    f"gpu-{n:05d}",
                    location,
                    rng.choice(gpu_sizes),
                    "running",
                    on_since_h=LONG_AGO_H,
                    gpu=BUSY,
                    cpu=MID_CPU,
                    schedule="Enabled",
                    tags=tags,
                )
                continue
            state = "running" if rng.random() < 0.8 else "deallocated"
            self._add(
                sub,
                rg,
                f"vm-{n:05d}",
                location,
                rng.choice(tuple(CPU_SIZES)),
                state,
                on_since_h=LONG_AGO_H,
                off_since_h=0 if state == "running" else 5 * 24,
                cpu=MID_CPU,
                tags=tags,
            )

    def _quota_limits(self) -> dict[tuple[str, str, str], int]:
        """(subscription, region, family) -> vCPU limit: twice the use, but for the scenarios."""
        limits = {key: self.default_quota(used) for key, used in self.quota_usage().items()}
        for key, (limit, _) in self.quota_scenarios().items():
            if key in limits:
                limits[key] = limit
        return limits

    def quota_scenarios(self) -> dict[tuple[str, str, str], tuple[int, bool]]:
        """(subscription, region, family) -> (limit, whether gpu-quota-near-limit must name it)."""
        subs = [s.subscription_id for s in self.subscriptions]
        return {
            # the eight A100 nodes use 768 of 800 vCPUs: the next job cannot start
            (subs[0], "eastus", "standardNDASv4_A100Family"): (800, True),
            # near-miss: 96 of 125 vCPUs, 77 %
            (subs[1], "eastus", "standardNDSH100v5Family"): (125, False),
        }

    def expected_quotas(self) -> set[str]:
        """Lower-cased ids the quota rule gives the quotas it must name."""
        return {
            f"/subscriptions/{sub}/providers/microsoft.compute/locations/{region}/usages/"
            f"{family.lower()}"
            for (sub, region, family), (_, expect) in self.quota_scenarios().items()
            if expect
        }

    @staticmethod
    def default_quota(used: int) -> int:
        """Twice the use, rounded up to a hundred vCPUs, at least 100."""
        return max(100, -(-used * 2 // 100) * 100)

    # -- changes (what applied actions do) ------------------------------------------------
    def change(self, vm: SimVM, **fields: Any) -> None:
        """Change a VM (power state, tags, schedule) and persist it when there is a state file."""
        with self.lock:
            if fields.get("power_state") == "deallocated" and vm.power_state != "deallocated":
                fields["deallocated_at"] = self.now.isoformat()
            self._set(vm, fields)
            self.changes.setdefault(vm.id.lower(), {}).update(fields)
            self._save()

    def change_group_tags(self, subscription_id: str, group: str, tags: dict[str, str]) -> None:
        with self.lock:
            self.group_tags[(subscription_id, group.lower())] = dict(tags)
            self._save()

    def _set(self, vm: SimVM, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key == "deallocated_at":
                gone = (self.now - datetime.fromisoformat(value)) / timedelta(hours=1)
                vm.off_since_h = max(0, int(gone))
            elif key == "power_state" and value == "running" and vm.power_state != "running":
                vm.power_state, vm.off_since_h = value, 0
            else:
                setattr(vm, key, value)

    def _restore(self, state: dict[str, Any]) -> None:
        for rid, fields in state.get("vms", {}).items():
            if rid in self.by_id:
                self._set(self.by_id[rid], fields)
                self.changes[rid] = fields
        for key, tags in state.get("group_tags", {}).items():
            sub, group = key.split("/", 1)
            self.group_tags[(sub, group)] = tags

    def _save(self) -> None:
        if not self.state_file:
            return
        state = {
            "seed": self.seed,
            "vms": self.changes,
            "group_tags": {f"{s}/{g}": t for (s, g), t in self.group_tags.items()},
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_file)

    # -- queries -------------------------------------------------------------------------
    def vms_in(self, subscription_id: str) -> list[SimVM]:
        return list(self._vms_by_subscription.get(subscription_id, ()))

    def disks_in(self, subscription_id: str) -> list[SimDisk]:
        """Every VM's OS disk, then the data disks and the unattached ones."""
        os_disks = [
            SimDisk(
                vm.subscription_id,
                vm.resource_group,
                f"{vm.name}_OsDisk",
                vm.location,
                OS_DISK_GB,
                vm=vm,
                expect=frozenset({ORPHANED_DISK})
                if vm.is_gpu and vm.power_state == "deallocated" and vm.off_since_h > 14 * 24
                else frozenset(),
            )
            for vm in self.vms_in(subscription_id)
        ]
        return os_disks + [d for d in self.data_disks if d.subscription_id == subscription_id]

    def quota_family(self, size: str) -> str:
        gpu = gpu_size(size)
        return gpu.quota_family if gpu else NON_GPU_SIZES[size][3]

    def quota_usage(self, subscription_id: str | None = None) -> dict[tuple[str, str, str], int]:
        used: dict[tuple[str, str, str], int] = {}
        for vm in self.vms if subscription_id is None else self.vms_in(subscription_id):
            key = (vm.subscription_id, vm.location, self.quota_family(vm.size))
            active = vm.power_state != "deallocated"
            used[key] = used.get(key, 0) + (vm.vcpus if active else 0)
        return used

    def hourly(
        self, vm: SimVM, metric: str, hours: Sequence[datetime]
    ) -> list[tuple[float, float] | None]:
        """(average, maximum) of a metric for each hour starting at `hours`, or None: no data."""
        scale = None
        if metric == "gpu_memory":  # MiB used per GPU, as the guest reports it
            profile = vm.gpu_memory if vm.gpu is not None else None
            key = self.seed * 1_000_003 + vm.index * 2 + 500_000
            scale = gpu_size(vm.size).gpu_memory_gb * 1024 / 100 if profile else None
        else:
            profile = vm.gpu if metric == "gpu" else vm.cpu
            key = self.seed * 1_000_003 + vm.index * 2 + (metric == "gpu")
        if profile is None:
            return [None] * len(hours)
        numbers = [int(hour.timestamp()) // 3600 for hour in hours]
        samples = profile.samples(key, numbers)
        if scale is not None:
            samples = [(round(a * scale, 1), round(p * scale, 1)) for a, p in samples]
        # whole hours ago (rounded up: the bounds are whole hours, so that decides the same)
        now = int(self.now.timestamp()) // 3600
        return [
            sample if vm.off_since_h < now - number <= vm.on_since_h else None
            for number, sample in zip(numbers, samples, strict=True)
        ]

    def billed_hours(self, vm: SimVM, day: date) -> Decimal:
        """Hours the VM was billed on that UTC day (up to the estate's `now`)."""
        return _billed_hours(self.now, vm.on_since_h, vm.billed_until_h, day)

    def daily_cost(self, vm: SimVM, day: date, cost_type: str = "ActualCost") -> Decimal:
        """The VM's compute cost on that UTC day: ActualCost (billed: 0 under a reservation),
        AmortizedCost (the reservation's share), or ListCost."""
        price = vm.hourly_price
        if vm.reserved is not None and cost_type == "ActualCost":
            price = Decimal(0)
        elif vm.reserved is not None and cost_type == "AmortizedCost":
            price = price * vm.reserved
        return (price * self.billed_hours(vm, day)).quantize(Decimal("0.000001"))

    def storage_account_id(self, subscription_id: str) -> str:
        return (
            f"/subscriptions/{subscription_id}/resourceGroups/shared"
            f"/providers/Microsoft.Storage/storageAccounts/st{subscription_id[:8]}"
        )

    def accounts_in(self, subscription_id: str) -> list[SimAccount]:
        return [a for a in self.ai_accounts if a.subscription_id == subscription_id]

    def deployment_hour(
        self, account: SimAccount, deployment: SimDeployment, hour: datetime
    ) -> dict[str, float] | None:
        """One hour of a deployment: ptu_average, ptu_maximum (provisioned only), tokens_in,
        tokens_out, throttled; None outside the estate's 30 days of history."""
        if not (timedelta(0) < self.now - hour <= timedelta(days=30)):
            return None
        key = self.seed * 7_000_003 + account.index * 101 + account.deployments.index(deployment)
        hour_number = int(hour.timestamp()) // 3600
        if deployment.util is not None:
            average, peak = deployment.util.sample(key, hour_number)
            model = ptu_models()[(deployment.model, SCOPES[deployment.sku.lower()])]
            units = average / 100 * deployment.capacity * model.input_tpm_per_ptu * 60
            tokens_in = units / (1 + float(model.output_weight) * deployment.out_ratio)
            throttled = deployment.throttled_per_hour if peak >= 99.5 else 0
            result = {"ptu_average": average, "ptu_maximum": peak}
        else:
            per_minute, _ = deployment.tpm_in.sample(key, hour_number)
            tokens_in, throttled, result = per_minute * 60, 0, {}
        return {
            **result,
            "tokens_in": round(tokens_in),
            "tokens_out": round(tokens_in * deployment.out_ratio),
            "throttled": throttled,
        }

    def account_daily_cost(
        self, account: SimAccount, day: date, cost_type: str = "ActualCost"
    ) -> Decimal:
        """The account's cost on that UTC day: its PTUs every hour of history (nothing billed
        under a reservation, whose share shows in AmortizedCost) and its pay-as-you-go tokens."""
        key = (account.index, day, cost_type)
        if key not in self._account_costs:
            self._account_costs[key] = self._account_cost(account, day, cost_type)
        return self._account_costs[key]

    def _account_cost(self, account: SimAccount, day: date, cost_type: str) -> Decimal:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        hours = [start + timedelta(hours=h) for h in range(24)]
        hours = [h for h in hours if timedelta(0) < self.now - h <= timedelta(days=30)]
        total = Decimal(0)
        for deployment in account.deployments:
            model = ptu_models()[(deployment.model, SCOPES[deployment.sku.lower()])]
            if deployment.util is not None:
                per_hour = model.ptu_hour
                if account.reservation and cost_type == "ActualCost":
                    per_hour = Decimal(0)
                elif account.reservation == "yearly-reservation" and cost_type != "ListCost":
                    per_hour = model.ptu_year_reserved / 8760
                elif account.reservation == "monthly-reservation" and cost_type != "ListCost":
                    per_hour = model.ptu_month_reserved / 730
                total += deployment.capacity * per_hour * len(hours)
                continue
            for hour in hours:
                used = self.deployment_hour(account, deployment, hour)
                total += (
                    used["tokens_in"] * model.payg_input_per_1m
                    + used["tokens_out"] * model.payg_output_per_1m
                ) / 1_000_000
        return total.quantize(Decimal("0.000001"))

    def missing_tags(self, vm: SimVM) -> list[str]:
        have = {k.lower() for k, v in vm.tags.items() if v}
        return [t for t in REQUIRED_TAGS if t not in have]

    def expected_groups(self, rule: str) -> set[str]:
        """Lower-cased ids of the resource groups of the VMs labelled with `rule`."""
        return {vm.id.lower().split("/providers/")[0] for vm in self.vms if rule in vm.expect}

    def reservation_purchase(self, subscription_id: str, day: date) -> Decimal:
        """Monthly reservation payments (VMs and PTUs) fall on the 1st; they carry no resource
        id."""
        if day.day != 1:
            return Decimal(0)
        vms = sum(
            (
                vm.hourly_price * vm.reserved * 730
                for vm in self.vms_in(subscription_id)
                if vm.reserved is not None
            ),
            Decimal(0),
        )
        ptus = sum(
            (
                d.capacity
                * (
                    model.ptu_year_reserved / 12
                    if a.reservation == "yearly-reservation"
                    else model.ptu_month_reserved
                )
                for a in self.accounts_in(subscription_id)
                if a.reservation
                for d in a.deployments
                if d.util is not None and (model := ptu_models()[(d.model, SCOPES[d.sku.lower()])])
            ),
            Decimal(0),
        )
        return (vms + ptus).quantize(Decimal("0.000001"))

    def expected(self, rule: str) -> set[str]:
        """Lower-cased ids of the VMs or AI deployments the given rule (or EXEMPT) must name."""
        deployments = {
            f"{a.id}/deployments/{d.name}".lower()
            for a in self.ai_accounts
            for d in a.deployments
            if rule in d.expect
        }
        if rule == ORPHANED_DISK:
            return {
                d.id.lower()
                for sub in self.subscriptions
                for d in self.disks_in(sub.subscription_id)
                if rule in d.expect
            }
        if rule == COMMITMENT:  # every GPU VM on pay-as-you-go, on all month and working
            return {
                vm.id.lower()
                for vm in self.vms
                if vm.is_gpu
                and vm.power_state == "running"
                and vm.priority == "Regular"
                and vm.reserved is None
                and vm.on_since_h > 31 * 24
                and not vm.expect & {IDLE, EXEMPT}
            }
        if rule == MISSING_TAGS:  # every GPU VM without the required tags, fillers included
            return {vm.id.lower() for vm in self.vms if vm.is_gpu and self.missing_tags(vm)}
        return {vm.id.lower() for vm in self.vms if rule in vm.expect} | deployments


@lru_cache(maxsize=1 << 16)
def _billed_hours(now: datetime, on_since_h: float, billed_until_h: float, day: date) -> Decimal:
    # most VMs share their on/off hours: large estates answer their cost queries from here
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    billed_from = now - timedelta(hours=on_since_h)
    billed_to = now - timedelta(hours=billed_until_h)
    lo, hi = max(start, billed_from), min(start + timedelta(days=1), billed_to)
    return Decimal(max(0.0, (hi - lo) / timedelta(hours=1)))
