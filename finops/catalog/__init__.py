"""Facts shipped as data files, each with its source and date in a comment header."""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from decimal import Decimal
from functools import cache
from importlib.resources import files
from pathlib import Path

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


@dataclass(frozen=True)
class PtuModel:
    """One model's provisioned throughput and pay-as-you-go facts for one deployment scope."""

    model: str
    scope: str  # global | datazone | regional
    ptu_min: int
    ptu_increment: int
    input_tpm_per_ptu: int
    output_weight: Decimal  # an output token uses this many input tokens' worth of a PTU
    payg_input_per_1m: Decimal
    payg_output_per_1m: Decimal
    ptu_hour: Decimal
    ptu_month_reserved: Decimal
    ptu_year_reserved: Decimal
    currency: str


# deployment sku -> the scope its PTU and token prices are quoted for
SCOPES = {
    "provisionedmanaged": "regional",
    "globalprovisionedmanaged": "global",
    "datazoneprovisionedmanaged": "datazone",
    "standard": "regional",
    "globalstandard": "global",
    "datazonestandard": "datazone",
}


PTU_COLUMNS = tuple(f.name for f in fields(PtuModel))


class CatalogError(ValueError):
    """A catalog override file that cannot be used: one line naming the file and row."""


def _ptu_rows(lines: list[str], where: str) -> dict[tuple[str, str], PtuModel]:
    reader = csv.DictReader(lines)
    missing = [c for c in PTU_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CatalogError(f"{where}: missing column(s) {', '.join(missing)}")
    models = {}
    for number, row in enumerate(reader, start=1):
        try:
            model = PtuModel(
                model=row["model"].strip().lower(),
                scope=row["scope"].strip().lower(),
                ptu_min=int(row["ptu_min"]),
                ptu_increment=int(row["ptu_increment"]),
                input_tpm_per_ptu=int(row["input_tpm_per_ptu"]),
                **{key: Decimal(row[key]) for key in PTU_COLUMNS[5:11]},
                currency=row["currency"].strip().upper(),
            )
        except (ValueError, ArithmeticError, TypeError):
            raise CatalogError(f"{where} row {number}: not a number where one is needed") from None
        if model.scope not in ("global", "datazone", "regional"):
            raise CatalogError(f"{where} row {number}: scope must be global, datazone or regional")
        if min(model.ptu_min, model.ptu_increment, model.input_tpm_per_ptu) <= 0:
            raise CatalogError(f"{where} row {number}: PTU minimum, increment and TPM must be > 0")
        models[(model.model, model.scope)] = model
    return models


@cache
def ptu_models(override: str | None = None) -> dict[tuple[str, str], PtuModel]:
    """(model, scope) -> PtuModel from the shipped table, with the rows of an override file
    (same columns) replacing or adding to it."""
    text = files(__package__).joinpath("ptu_models.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    models = _ptu_rows(lines, "ptu_models.csv")
    if override:
        try:
            custom = Path(override).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise CatalogError(f"{override}: cannot be read ({e.strerror})") from None
        models.update(_ptu_rows([x for x in custom if x and not x.startswith("#")], override))
    return models
