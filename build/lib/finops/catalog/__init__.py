"""Facts shipped as data files, each with its source and date in a comment header."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib.resources import files

CATALOG_CURRENCY = "USD"
HOURS_PER_MONTH = Decimal(730)


@dataclass(frozen=True)
class GpuSize:
    size: str
    vcpus: int
    gpus: Decimal
    gpu_model: str
    gpu_memory_gb: int
    quota_family: str
    usd_per_hour: Decimal | None

    @property
    def monthly_list_price(self) -> Decimal | None:
        return None if self.usd_per_hour is None else self.usd_per_hour * HOURS_PER_MONTH


def _rows(name: str) -> list[dict[str, str]]:
    text = files(__package__).joinpath(name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


@cache
def gpu_sizes() -> dict[str, GpuSize]:
    """GPU VM sizes keyed by lower-cased size name."""
    sizes = {}
    for row in _rows("gpu_sizes.csv"):
        price = row["usd_per_hour"].strip()
        sizes[row["size"].lower()] = GpuSize(
            size=row["size"],
            vcpus=int(row["vcpus"]),
            gpus=Decimal(row["gpus"]),
            gpu_model=row["gpu_model"],
            gpu_memory_gb=int(row["gpu_memory_gb"]),
            quota_family=row["quota_family"],
            usd_per_hour=Decimal(price) if price else None,
        )
    return sizes


def gpu_size(size: str) -> GpuSize | None:
    return gpu_sizes().get(size.lower())


def size_family(size: str) -> str:
    """The size family shown to people: Standard_NC24ads_A100_v4 -> NC A100 v4."""
    parts = size.removeprefix("Standard_").split("_")
    series = "".join(ch for ch in parts[0] if ch.isalpha() and ch.isupper())
    gpu = gpu_size(size)
    model = gpu.gpu_model.split()[0] if gpu else None
    return " ".join(p for p in [series, model, parts[-1] if len(parts) > 1 else None] if p)
