"""azure-core's retry policy with what it lacks for a nightly job (see shared REFERENCE.md):

- jittered back-off, so many clients retrying together do not retry in step;
- Cost Management's throttling answer: a 429 that carries only
  `x-ms-ratelimit-microsoft.costmanagement-{qpu,entity,tenant,clienttype}-retry-after`, on a POST,
  which azure-core would not retry at all;
- Resource Graph's: a 429 that says when the user's quota resets in
  `x-ms-user-quota-resets-after` (hh:mm:ss);
- Azure Monitor metrics' throttling answer, 529 (Microsoft Learn, azure-monitor/metrics/
  migrate-to-batch-api: "implement an exponential backoff retry scheme");
- every wait bounded by `retry_backoff_max`, and the whole call by the `timeout` budget.
"""

from __future__ import annotations

import random
import re

from azure.core.exceptions import ServiceResponseTimeoutError
from azure.core.pipeline.policies import RetryPolicy

from finops.azure.throttle import GRAPH_RESETS, resets_after

LAST_STATUS = "finops_last_retried_status"

THROTTLED = frozenset({429, 529})

RATE_LIMIT_HEADER = re.compile(r"x-ms-ratelimit-microsoft\.costmanagement-[a-z]+-retry-after", re.I)


class FinopsRetryPolicy(RetryPolicy):
    def get_backoff_time(self, settings) -> float:
        return random.uniform(0.5, 1.0) * super().get_backoff_time(settings)

    def get_retry_after(self, response) -> float | None:
        wait = super().get_retry_after(response)
        if wait is None:
            headers = response.http_response.headers
            waits = [
                float(value)
                for name, value in headers.items()
                if RATE_LIMIT_HEADER.fullmatch(name) and value.replace(".", "", 1).isdigit()
            ]
            wait = max(waits) if waits else resets_after(headers.get(GRAPH_RESETS))
        return None if wait is None else min(wait, self.backoff_max)

    def is_retry(self, settings, response) -> bool:
        status = response.http_response.status_code
        # throttled: nothing was done, so even a POST is retried
        retry = status in THROTTLED or super().is_retry(settings, response)
        if retry:
            response.context[LAST_STATUS] = status
        return retry

    def send(self, request):
        try:
            return super().send(request)
        except ServiceResponseTimeoutError:
            status = request.context.get(LAST_STATUS)
            if status is None:
                raise
            raise ServiceResponseTimeoutError(
                f"gave up after the retry budget of {self.timeout:g} s: Azure kept answering "
                f"{status}{' (throttled)' if status in THROTTLED else ''}"
            ) from None


def retry_policy(settings) -> FinopsRetryPolicy:
    """The policy every client of the job uses, from `azure.*` settings. Each kind of retry
    follows `azure.retries`: azure-core keeps retry_status, retry_connect and retry_read at 3
    whatever retry_total says."""
    retries = settings.retries
    return FinopsRetryPolicy(
        retry_total=retries,
        retry_status=retries,
        retry_connect=retries,
        retry_read=retries,
        retry_backoff_max=settings.retry_backoff_max_seconds,
        timeout=settings.retry_budget_seconds,
    )
