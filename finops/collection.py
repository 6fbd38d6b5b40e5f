"""What one night's collection hands to the store: plain rows, no Azure types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

Row = dict[str, Any]


@dataclass
class Collection:
    metrics_start: datetime
    metrics_end: datetime
    cost_start: date
    cost_end: date
    subscriptions: list[Row] = field(default_factory=list)
    vms: list[Row] = field(default_factory=list)
    vm_sizes: list[Row] = field(default_factory=list)
    quotas: list[Row] = field(default_factory=list)
    schedules: list[Row] = field(default_factory=list)
    metrics: list[Row] = field(default_factory=list)
    costs: list[Row] = field(default_factory=list)
    failures: list[Row] = field(default_factory=list)  # source, scope, error: what is missing

    def counts(self) -> dict[str, int]:
        return {
            name: len(getattr(self, name))
            for name in (
                "subscriptions",
                "vms",
                "vm_sizes",
                "quotas",
                "schedules",
                "metrics",
                "costs",
            )
        }
