"""The nightly report: built from the store, rendered to HTML, written under reports/."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from finops.config import Settings


def write_report(engine: Engine, settings: Settings, run_id: int) -> Path:
    from finops.report.build import build
    from finops.report.render import render_html

    with engine.connect() as conn:
        data = build(conn, run_id, settings.currency)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    path = settings.reports_dir / f"finops-{data.date.isoformat()}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(data), encoding="utf-8")
    tmp.replace(path)
    return path.resolve()
