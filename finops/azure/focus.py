"""FOCUS 1.x cost export files (CSV, gzip CSV, Parquet) from a folder, a file, or a Blob
container, read as streams so a file of several GB keeps memory flat.

Each file yields one row per charge with a resource: the day (ChargePeriodStart), the resource
and its scope, the meter category (Azure's x_SkuMeterCategory, else ServiceName), BilledCost,
EffectiveCost and ListCost in BillingCurrency, and the descriptive columns. Charges without a
ResourceId (purchases, support, tax) are left out, as the Query API collector leaves them out.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from finops.collection import CostFile, CostFileError, Row
from finops.config import AzureSettings
from finops.store.costs import scope_of

REQUIRED = (
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ResourceId",
    "ResourceName",
    "ServiceName",
    "ServiceCategory",
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "BillingCurrency",
    "SkuId",
    "Tags",
)
METER_CATEGORY = "x_SkuMeterCategory"
BATCH_ROWS = 10_000


def file_format(name: str) -> str | None:
    name = name.lower()
    if name.endswith((".csv.gz", ".csv.gzip")):
        return "csv.gz"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet"):  # also .snappy.parquet, .gz.parquet: compression is inside
        return "parquet"
    return None


# -- finding files ------------------------------------------------------------------------
def find(location: str, azure: AzureSettings | None = None) -> list[CostFile]:
    """The export files at a location: a local file or folder (searched recursively), or a
    Blob container URL with an optional folder prefix."""
    if location.startswith("https://"):
        return _blob_files(location, azure or AzureSettings())
    if location.startswith("http://"):
        raise CostFileError(f"{location}: Blob URLs must be https://")
    path = Path(location).expanduser()
    if path.is_file():
        if file_format(path.name) is None:
            raise CostFileError(f"{path}: not a FOCUS export file (.csv, .csv.gz or .parquet)")
        return [_local_file(path)]
    if path.is_dir():
        return [_local_file(p) for p in sorted(path.rglob("*")) if file_format(p.name)]
    raise CostFileError(f"{location}: no such file or folder")


def _local_file(path: Path) -> CostFile:
    stat = path.stat()
    return CostFile(
        location=str(path.resolve()),
        folder=str(path.resolve().parent),
        fingerprint=f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}",
        modified=datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None),
        read=lambda: read(str(path), file_format(path.name), lambda: path.open("rb")),
    )


def _container_and_prefix(url: str) -> tuple[str, str]:
    """Split a Blob URL into the container URL and a folder prefix. On an emulator (an IP or
    localhost host) the account is the first path segment."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    host = parts.hostname or ""
    lead = 2 if host in ("localhost", "127.0.0.1") or host.replace(".", "").isdigit() else 1
    if len(segments) < lead:
        raise CostFileError(f"{url}: not a Blob container URL")
    container = f"{parts.scheme}://{parts.netloc}/" + "/".join(segments[:lead])
    prefix = "/".join(segments[lead:])
    return container, f"{prefix}/" if prefix else ""


def _blob_files(url: str, azure: AzureSettings) -> list[CostFile]:
    from azure.storage.blob import ContainerClient

    from finops.azure.clients import clients_for

    container_url, prefix = _container_and_prefix(url.split("?", 1)[0])
    options: dict[str, Any] = {}
    if azure.ca_file:
        options["connection_verify"] = str(azure.ca_file)
    container = ContainerClient.from_container_url(
        container_url, credential=clients_for(azure).credential, **options
    )
    files = []
    for blob in container.list_blobs(name_starts_with=prefix or None):
        kind = file_format(blob.name)
        if kind is None:
            continue
        location = f"{container_url}/{blob.name}"
        files.append(
            CostFile(
                location=location,
                folder=location.rsplit("/", 1)[0],
                fingerprint=f"etag={blob.etag} size={blob.size}",
                modified=blob.last_modified.astimezone(UTC).replace(tzinfo=None),
                read=lambda name=blob.name, loc=location, kind=kind: read(
                    loc, kind, lambda: _blob_stream(container, name, kind)
                ),
            )
        )
    return files


class _ChunkStream(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (a blob download)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            self._buffer = next(self._chunks, b"")
            if not self._buffer:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n


@contextmanager
def _blob_stream(container, name: str, kind: str) -> Iterator[IO[bytes]]:
    chunks = container.download_blob(name).chunks()
    if kind != "parquet":
        yield io.BufferedReader(_ChunkStream(chunks), buffer_size=1 << 20)
        return
    # Parquet is read from its footer backwards: spool the blob to disk, not to memory.
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(_ChunkStream(chunks), spool, 1 << 20)
        spool.seek(0)
        yield spool


# -- reading rows -------------------------------------------------------------------------
def read(location: str, kind: str, opener) -> Iterator[Row]:
    """Stream a file's rows; CostFileError names the file and the row of the first problem."""
    from azure.core.exceptions import AzureError
    from pyarrow import ArrowException

    try:
        with opener() as raw:
            if kind == "parquet":
                records = _parquet_records(raw, location)
            else:
                records = _csv_records(raw, kind, location)
            for number, record in records:
                row = _row(record, location, number)
                if row is not None:
                    yield row
    except CostFileError:
        raise
    except (OSError, EOFError, zlib.error, ArrowException, AzureError) as e:
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        raise CostFileError(f"{location}: cannot be read: {first_line}") from None


def _csv_lines(binary: IO[bytes], location: str) -> Iterator[str]:
    """Decoded lines, each on its own, so a decoding error names its row."""
    for number, raw in enumerate(binary):
        try:
            yield raw.decode("utf-8-sig" if number == 0 else "utf-8")
        except UnicodeDecodeError:
            where = f"row {number}" if number else "header"
            raise CostFileError(f"{location} {where}: not UTF-8 text") from None


def _csv_records(raw: IO[bytes], kind: str, location: str) -> Iterator[tuple[int, dict]]:
    binary = gzip.GzipFile(fileobj=raw) if kind == "csv.gz" else raw
    reader = csv.DictReader(_csv_lines(binary, location))
    _check_columns(reader.fieldnames or [], location)
    number = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise CostFileError(f"{location} row {number}: {e}") from None
        if None in record:
            raise CostFileError(f"{location} row {number}: more fields than the header has")
        yield number, record
        number += 1


def _parquet_records(raw: IO[bytes], location: str) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(raw)
    except (pa.ArrowException, OSError) as e:
        raise CostFileError(f"{location}: not a Parquet file ({e})") from None
    _check_columns(parquet.schema_arrow.names, location)
    number = 1
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        for record in batch.to_pylist():
            yield number, record
            number += 1


def _check_columns(header: list[str], location: str) -> None:
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CostFileError(
            f"{location}: not a FOCUS 1.x cost export: missing column(s) {', '.join(missing)}"
        )


def _number(record: dict, column: str, location: str, number: int) -> Decimal:
    value = record.get(column)
    if value is None or value == "":
        if column == "ListCost":
            return Decimal(0)
        raise CostFileError(f"{location} row {number}: {column} is empty")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        result = None
    if result is None or not result.is_finite():
        raise CostFileError(f"{location} row {number}: {column} {value!r} is not a number")
    return result


def _day(value: Any, location: str, number: int) -> date:
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    try:
        moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise CostFileError(
            f"{location} row {number}: ChargePeriodStart {value!r} is not a date and time"
        ) from None
    return moment.astimezone(UTC).date() if moment.tzinfo else moment.date()


def _tags(value: Any, location: str, number: int) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):  # Parquet maps arrive as (key, value) pairs
        return {str(k): str(v) for k, v in value}
    text = str(value).strip()
    if not text.startswith("{"):
        text = "{" + text + "}"  # older Azure exports leave the braces out
    try:
        tags = json.loads(text)
    except json.JSONDecodeError:
        raise CostFileError(f"{location} row {number}: Tags is not a JSON object") from None
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def _row(record: dict, location: str, number: int) -> Row | None:
    rid = str(record.get("ResourceId") or "").strip().lower()
    if not rid:
        return None
    currency = str(record.get("BillingCurrency") or "").strip().upper()
    if len(currency) != 3 or not currency.isalpha():
        raise CostFileError(
            f"{location} row {number}: BillingCurrency {currency!r} is not a currency code"
        )
    sub, group = scope_of(rid)
    return {
        "resource_id": rid,
        "usage_date": _day(record.get("ChargePeriodStart"), location, number),
        "meter_category": str(record.get(METER_CATEGORY) or record.get("ServiceName") or ""),
        "subscription_id": sub,
        "resource_group": group,
        "currency": currency,
        "billed": _number(record, "BilledCost", location, number),
        "effective": _number(record, "EffectiveCost", location, number),
        "list": _number(record, "ListCost", location, number),
        "resource_name": str(record.get("ResourceName") or rid.rsplit("/", 1)[-1])[:256],
        "service_name": str(record.get("ServiceName") or "")[:128],
        "service_category": str(record.get("ServiceCategory") or "")[:64],
        "sku_id": str(record.get("SkuId") or "")[:128],
        "tags": _tags(record.get("Tags"), location, number),
    }
