"""What one night's collection hands to the store: plain rows, no Azure types; metric hours
naive UTC, as the store keeps them."""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

Row = dict[str, Any]
CHUNK = 5000


class CostFileError(ValueError):
    """A cost export file that cannot be read: one line naming the file (and the row)."""


class Spool:
    """Rows on their way to the store, held in a temporary file rather than in memory: a large
    tenant's night holds millions of cost rows and metric points, and tens of thousands of VMs
    and disks."""

    def __init__(self, rows: Iterable[Row] = ()):
        # closed (and removed) when the spool is collected
        self._file = tempfile.TemporaryFile(prefix="finops-night-")  # noqa: SIM115
        self._pending: list[Row] = []
        self._stored = 0
        self._offsets: list[int] = []  # where each stored chunk's pickle starts
        self.extend(rows)

    def append(self, row: Row) -> None:
        self._pending.append(row)
        if len(self._pending) >= CHUNK:
            self._flush()

    def extend(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.append(row)

    def _flush(self) -> None:
        if self._pending:
            self._offsets.append(self._file.seek(0, 2))
            pickle.dump(self._pending, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._stored += len(self._pending)
            self._pending = []

    def __len__(self) -> int:
        return self._stored + len(self._pending)

    def __iter__(self) -> Iterator[Row]:
        for pickled in self.pickled():
            yield from pickle.loads(pickled)

    def pickled(self) -> Iterator[bytes]:
        """The stored chunks as they are on disk: each a pickled list of rows, for another
        process to read."""
        self._flush()
        ends = [*self._offsets[1:], self._file.seek(0, 2)][: len(self._offsets)]
        for start, end in zip(self._offsets, ends, strict=True):
            self._file.seek(start)
            yield self._file.read(end - start)

    def absorb(self, other: Spool) -> None:
        """Take over another spool's rows (file to file, without reading them back)."""
        other._flush()
        self._flush()
        other._file.seek(0)
        end = self._file.seek(0, 2)
        shutil.copyfileobj(other._file, self._file)
        self._offsets += [end + offset for offset in other._offsets]
        self._stored += other._stored
        other._file.close()


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
    vms: Spool = field(default_factory=Spool)
    vm_sizes: list[Row] = field(default_factory=list)
    quotas: list[Row] = field(default_factory=list)
    schedules: list[Row] = field(default_factory=list)
    resource_groups: list[Row] = field(default_factory=list)
    disks: Spool = field(default_factory=Spool)
    vm_prices: list[Row] = field(default_factory=list)  # retail prices of the GPU sizes in use
    metrics: Spool = field(default_factory=Spool)  # VMs' and AI deployments' hourly series
    ai_deployments: list[Row] = field(default_factory=list)
    costs: Spool = field(default_factory=Spool)  # from the Query API
    # (subscription, cost type, first day, last day) each fetched from the Query API: the
    # stored query rows of those windows are replaced by `costs`
    cost_windows: list[tuple[str, str, date, date]] = field(default_factory=list)
    cost_files: list[CostFile] = field(default_factory=list)
    failures: list[Row] = field(default_factory=list)  # source, scope, error: what is missing

    def __post_init__(self) -> None:
        # rows given by hand (tests) are spooled like collected ones
        for name in ("vms", "disks", "metrics", "costs"):
            if not isinstance(getattr(self, name), Spool):
                setattr(self, name, Spool(getattr(self, name)))

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
