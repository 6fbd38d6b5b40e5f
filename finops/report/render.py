"""Report data -> HTML through the Jinja2 template."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from finops.report.build import ReportData

# How each evidence key reads in the report; keys not listed read as "key: value".
EVIDENCE_LABELS = {
    "gpu_avg_percent": "GPU avg {} %",
    "gpu_p95_max_percent": "p95 {} %",
    "cpu_avg_percent": "CPU avg {} %",
    "hours_with_data": "over {} h",
    "gpu_telemetry": "GPU telemetry {}",
    "power_state": "power state {}",
    "off_hours_share": "{} of the week outside working hours",
}
HIDDEN_EVIDENCE = {
    "signal",
    "thresholds",
    "currency",
    "cost_basis",
    "cost_detail",
    "estimate",
    "window_days",
    "working_hours",
    "working_days",
    "monthly_cost",
}


def evidence_text(evidence: dict[str, Any]) -> str:
    parts = [
        EVIDENCE_LABELS.get(key, key.replace("_", " ") + ": {}").format(value)
        for key, value in evidence.items()
        if key not in HIDDEN_EVIDENCE
    ]
    if "monthly_cost" in evidence:
        parts.append(
            f"costs {evidence.get('currency', '')} {evidence['monthly_cost']} a month "
            f"({evidence.get('cost_basis', '')})"
        )
    return ", ".join(parts)


_env = Environment(
    loader=PackageLoader("finops.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["evidence_text"] = evidence_text


def render_html(data: ReportData) -> str:
    return _env.get_template("report.html.j2").render(data=data)
