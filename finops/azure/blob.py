"""Upload the report (HTML and its charts) to a Blob container: Azure Functions keep no disk."""

from __future__ import annotations

from pathlib import Path

from azure.storage.blob import ContainerClient, ContentSettings

from finops.azure.clients import clients_for
from finops.config import Settings

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}


def upload_report(report: Path, settings: Settings) -> int:
    """Upload the report and the chart files beside it; returns how many files."""
    credential = clients_for(settings.azure).credential
    options = {}
    if settings.azure.ca_file:
        options["connection_verify"] = str(settings.azure.ca_file)
    container = ContainerClient.from_container_url(
        settings.report_container_url, credential=credential, **options
    )
    files = [report, *sorted(report.parent.glob(f"{report.stem}-*.png"))]
    for path in files:
        with path.open("rb") as data:
            container.upload_blob(
                path.name,
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=CONTENT_TYPES[path.suffix]),
            )
    return len(files)
