"""Pacing before Azure throttles: every answer says how much of its budget is left, and the
next request to that budget waits when little is.

The budgets and their headers, as Microsoft documents them:

- Resource Graph, per user: about 15 queries per 5 s; `x-ms-user-quota-remaining` (queries)
  and `x-ms-user-quota-resets-after` (hh:mm:ss) on every answer ("Guidance for throttled
  requests in Azure Resource Graph"). Out of quota: wait until it resets.
- Resource Manager reads, per subscription: a token bucket of 250 refilled at 25 a second;
  `x-ms-ratelimit-remaining-subscription-reads` ("Understand how Azure Resource Manager
  throttles requests"). Low: wait for the bucket to refill.
- Cost Management queries, per tenant: QPU quotas per window;
  `x-ms-ratelimit-microsoft.costmanagement-qpu-remaining` lists what is left of each
  (`QueriesPerHour:577,QueriesPerMin:59`; "Manage costs with automation"). One spent: wait for
  its window.

What a 429 says to wait is the retry policy's (retry.py); this only keeps the job from being
throttled in the first place. No wait is longer than `retry_backoff_max_seconds`.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

from azure.core.pipeline.policies import HTTPPolicy

GRAPH_REMAINING = "x-ms-user-quota-remaining"
GRAPH_RESETS = "x-ms-user-quota-resets-after"
ARM_READS = "x-ms-ratelimit-remaining-subscription-reads"
QPU_REMAINING = "x-ms-ratelimit-microsoft.costmanagement-qpu-remaining"

GRAPH_RESERVE = 2  # queries kept for those already in flight
ARM_RESERVE, ARM_REFILL = 25, 25.0  # reads kept, and refilled a second
QPU_WINDOWS = {"sec": 10.0, "min": 60.0, "hour": 3600.0}  # by how each quota's name ends
# once a budget is held, waiting requests go one at a time at its documented pace, not all
# at once when the wait ends (15 queries per 5 s; 25 reads a second; 12 QPU per 10 s)
SPACING = {"graph": 5 / 15, "arm": 1 / ARM_REFILL, "costs": 10 / 12}
_SUBSCRIPTION = re.compile(r"/subscriptions/([^/?]+)", re.IGNORECASE)


def resets_after(value: str | None) -> float | None:
    """Seconds in Resource Graph's hh:mm:ss, None where it is not one."""
    match = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*", value or "")
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds)).total_seconds()


def budget_of(method: str, url: str) -> str | None:
    """The budget a request spends: graph, costs, arm:<subscription> (reads), or none known."""
    path = url.split("?", 1)[0].lower()
    if "/providers/microsoft.resourcegraph/" in path:
        return "graph"
    if "/providers/microsoft.costmanagement/" in path:
        return "costs"
    match = _SUBSCRIPTION.search(path)
    if method == "GET" and match:
        return f"arm:{match.group(1)}"
    return None


def pause(budget: str, headers) -> float:
    """Seconds the next request to `budget` waits, from the last answer's headers."""
    if budget == "graph":
        remaining = _int(headers.get(GRAPH_REMAINING))
        wait = resets_after(headers.get(GRAPH_RESETS))
        return wait if remaining is not None and wait and remaining <= GRAPH_RESERVE else 0.0
    if budget == "costs":
        waits = [0.0]
        for part in (headers.get(QPU_REMAINING) or "").split(","):
            name, _, left = part.partition(":")
            window = next(
                (s for end, s in QPU_WINDOWS.items() if name.strip().lower().endswith(end)), None
            )
            if window and (_int(left) or 0) <= 0:
                waits.append(window)
        return max(waits)
    reads = _int(headers.get(ARM_READS))
    return (ARM_RESERVE - reads) / ARM_REFILL if reads is not None and reads < ARM_RESERVE else 0.0


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


class Pacer(HTTPPolicy):
    """Holds each request to a budget until the wait its last answer asked for is over. One
    pacer serves every client of a night (budgets are per user, subscription or tenant)."""

    def __init__(self, longest: float):
        super().__init__()
        self.longest = longest
        self.waited = 0.0  # seconds spent waiting, for the night's log
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def send(self, request):
        budget = budget_of(request.http_request.method, request.http_request.url)
        if budget is None:
            return self.next.send(request)
        with self._lock:
            until = self._until.get(budget, 0.0)
            wait = until - time.monotonic()
            if wait > 0:
                self._until[budget] = until + SPACING[budget.split(":")[0]]
                self.waited += wait
        if wait > 0:
            time.sleep(wait)
        response = self.next.send(request)
        wait = min(pause(budget, response.http_response.headers), self.longest)
        if wait > 0:
            with self._lock:
                until = time.monotonic() + wait
                self._until[budget] = max(self._until.get(budget, 0.0), until)
        return response
