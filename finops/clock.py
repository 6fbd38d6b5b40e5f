"""The one clock finops reads for the instant a night, a plan or an audit is about.

`FINOPS_NOW` (ISO 8601 with a UTC offset, e.g. `2027-01-01T02:00:00Z`) pins it: the tests pin
every night to an instant of their choosing, and a demo can be shown as of a given night.
Transport times (token expiry, the scheduler's fire times, LRO polling) keep the wall clock.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

PIN = "FINOPS_NOW"


class ClockError(ValueError):
    pass


def now() -> datetime:
    """The current instant, time-zone aware, in UTC."""
    pinned = os.environ.get(PIN, "").strip()
    if not pinned:
        return datetime.now(UTC)
    return parse(pinned)


def parse(text: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ClockError(f"{PIN}={text!r} is not an ISO 8601 date and time") from None
    if instant.tzinfo is None:
        raise ClockError(f"{PIN}={text!r} needs a UTC offset, e.g. {text}Z")
    return instant.astimezone(UTC)


def environment_without_settings(environ: dict[str, str]) -> dict[str, str]:
    """`environ` for a `finops` process started by the tests or the benchmark: none of the
    caller's FINOPS_* settings, but the pinned clock, which the simulator reads too."""
    return {k: v for k, v in environ.items() if not k.startswith("FINOPS_") or k == PIN}
