"""The nightly report: built from the store, charts drawn, rendered for mail and for the
file under reports/ (the same HTML; the file's charts are PNG files beside it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from finops.config import Settings


@dataclass(frozen=True)
class Report:
    path: Path
    subject: str
    text: str
    mail_html: str
    images: dict[str, bytes]  # chart name -> PNG
    cid_domain: str

    def cid(self, name: str) -> str:
        return f"{name}.{self.cid_domain}"


def produce(engine: Engine, settings: Settings, run_id: int) -> Report:
    from finops.report import charts
    from finops.report.build import build, fmt, savings_by_currency
    from finops.report.render import render_html, render_text

    with engine.connect() as conn:
        data = build(conn, run_id, settings)
    images = {}
    if data.gpu_hours["has_data"]:
        hours = data.gpu_hours
        images["gpu-hours"] = charts.gpu_hours(hours["days"], hours["busy"], hours["idle"])
    if data.trend["has_data"]:
        trend = data.trend
        images["cost-trend"] = charts.cost_trend(
            trend["days"], trend["gpu"], trend["rest"], trend["currency"]
        )
    folder = settings.reports_dir
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"finops-{data.date.isoformat()}"
    for name, png in images.items():
        _write(folder / f"{stem}-{name}.png", png)
    path = folder / f"{stem}.html"
    _write(path, render_html(data, lambda name: f"{stem}-{name}.png").encode("utf-8"))
    cid_domain = f"run{run_id}.finops"
    total = data.savings.get(data.currency)
    new = savings_by_currency(data.changes["new"]).get(data.currency)
    if not total:
        subject = f"finops {data.date}: no savings found tonight"
    else:
        subject = f"finops {data.date}: save {fmt(total, data.currency)}/month"
        if new:
            subject += f" ({fmt(new, data.currency)} new)"
    return Report(
        path=path.resolve(),
        subject=subject,
        text=render_text(data),
        mail_html=render_html(data, lambda name: f"cid:{name}.{cid_domain}"),
        images=images,
        cid_domain=cid_domain,
    )


def _write(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
