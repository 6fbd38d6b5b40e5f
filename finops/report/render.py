"""Report data -> HTML through the Jinja2 template."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from finops.report.build import ReportData

HIDDEN_EVIDENCE = {"currency", "cost_detail", "estimate", "window_days"}


def evidence_text(evidence: dict[str, Any]) -> str:
    return "; ".join(
        f"{key.replace('_', ' ')}: {value}"
        for key, value in evidence.items()
        if key not in HIDDEN_EVIDENCE
    )


_env = Environment(
    loader=PackageLoader("finops.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["evidence_text"] = evidence_text


def render_html(data: ReportData) -> str:
    return _env.get_template("report.html.j2").render(data=data)
