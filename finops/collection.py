"""What one night's collection hands to the store: plain rows, no Azure types."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

Row = dict[str, Any]


class CostFileError(ValueError):
    """A cost export file that cannot be read: one line naming the file (and the row)."""


@dataclass(frozen=True)
class CostFile:
    """One FOCUS export file, found but not yet read: `read()` streams its rows."""

    location: str  # path or URL, without any query string
    folder: str  # the files of one export run share it
    fingerprint: str  # changes when the file does: size and mtime, or the blob's ETag
    modified: datetime
    read: Callable[[], Iterator[Row]] = field(compare=False, repr=False)


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
    resource_groups: list[Row] = field(default_factory=list)
    disks: list[Row] = field(default_factory=list)
    vm_prices: list[Row] = field(default_factory=list)  # retail prices of the GPU sizes in use
    metrics: list[Row] = field(default_factory=list)  # VMs' and AI deployments' hourly series
    ai_deployments: list[Row] = field(default_factory=list)
    costs: list[Row] = field(default_factory=list)
    # (subscription, cost type, first day, last day) each fetched from the Query API: the
    # stored query rows of those windows are replaced by `costs`
    cost_windows: list[tuple[str, str, date, date]] = field(default_factory=list)
    cost_files: list[CostFile] = field(default_factory=list)
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
                "resource_groups",
                "disks",
                "vm_prices",
                "ai_deployments",
                "metrics",
                "costs",
            )
        }
