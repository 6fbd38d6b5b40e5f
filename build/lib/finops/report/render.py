"""Report data -> mail-safe HTML (CSS inlined, no <style>, no script) and a plain-text part."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import css_inline
from jinja2 import Environment, PackageLoader, select_autoescape

from finops.report.build import ReportData, fmt

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

_env = Environment(
    loader=PackageLoader("finops.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


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


def render_html(data: ReportData, image: Callable[[str], str]) -> str:
    """The report as HTML with every style inlined; `image(name)` gives each chart's src."""
    html = _env.get_template("report.html.j2").render(data=data, image=image)
    return _inliner.inline(html)


def render_text(data: ReportData) -> str:
    lines = [f"finops nightly report, {data.date}", "", data.headline, ""]
    if data.top:
        lines.append("Top findings by money:")
        for vm in data.top:
            actions = ", ".join(f["proposed_action"] or "investigate" for f in vm["findings"])
            why = "; ".join(f["rule_title"] for f in vm["findings"])
            lines.append(
                f"- {fmt(vm['saving'], vm['currency'])}/month  {vm['name']} "
                f"({vm['subscription']}/{vm['resource_group']}): {why} -> {actions}"
            )
        if data.more["count"]:
            lines.append(f"- and {data.more['count']} more VM(s) worth {data.more['savings']}")
    else:
        lines.append("Nothing to act on tonight.")
    lines += [
        "",
        f"Run {data.run['id']}, started {data.run['started_at']:%Y-%m-%d %H:%M} UTC.",
        "The HTML part of this message has the fleet, cost trend and quotas.",
    ]
    return "\n".join(lines) + "\n"
