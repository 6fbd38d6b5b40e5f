"""The report's charts as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

WIDTH_IN, HEIGHT_IN, DPI = 6.2, 2.3, 100  # 620 x 230 px: fits a 600-700 px mail column
BLUE, GREY, RED = "#0b3d91", "#9aa5b1", "#d64545"


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _axes(title: str):
    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN))
    ax.set_title(title, fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    return fig, ax


def gpu_hours(days: list[date], busy: list[float], idle: list[float]) -> bytes:
    """Stacked bars: GPU-hours running busy and running idle per day."""
    fig, ax = _axes("GPU-hours running per day: busy vs idle")
    positions = range(len(days))
    ax.bar(positions, busy, color=BLUE, label="busy")
    ax.bar(positions, idle, bottom=busy, color=RED, label="idle")
    ax.set_xticks(positions, [d.strftime("%d %b") for d in days])
    ax.legend(fontsize=8, frameon=False)
    ax.set_ylabel("GPU-hours", fontsize=8)
    return _png(fig)


def cost_trend(days: list[date], gpu: list[Decimal], rest: list[Decimal], currency: str) -> bytes:
    """Stacked areas: daily cost of GPU VMs and of everything else."""
    fig, ax = _axes(f"Daily cost, last {len(days)} days ({currency})")
    ax.stackplot(
        days,
        [float(v) for v in gpu],
        [float(v) for v in rest],
        colors=[BLUE, GREY],
        labels=["GPU VMs", "everything else"],
    )
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)
