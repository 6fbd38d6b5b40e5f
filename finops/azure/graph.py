"""Azure Resource Graph: the inventory of every subscription in pages of 1,000 rows, where ARM
needs a list per subscription and resource type (at 50 subscriptions, 6 lists each: 300 calls
a night against a handful).

Resource Graph answers from an index that follows ARM within seconds to minutes; a night reads
it, and remediation re-reads each VM's live state from ARM before acting.
"""

from __future__ import annotations

from collections.abc import Iterator

from azure.core.exceptions import HttpResponseError
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from finops.azure.clients import QUERY_RETRIED, AzureClients
from finops.collection import Row

PAGE = 1000  # the most rows Resource Graph returns a page
# Subscriptions named in one query. Unconfirmed against live Azure: the REST API states no
# limit; Azure's own tools send at most 1,000 a query, so this does too.
SUBSCRIPTIONS_PER_QUERY = 1000


class TruncatedResult(ValueError):
    """Resource Graph cut the result short without a page token to read on."""


class InvalidQuery(ValueError):
    """Resource Graph refused the query's text (400 BadRequest, details InvalidQuery)."""


def _refusal(error: HttpResponseError, kql: str) -> InvalidQuery | None:
    """Resource Graph's 400 for a query it cannot parse says so only in its details (the
    top-level message asks to quote a correlation id): one line naming the parser's words."""
    details = (getattr(error.error, "details", None) or []) if error.status_code == 400 else []
    if "InvalidQuery" not in {d.code for d in details}:
        return None
    said = "; ".join(d.message for d in details if d.code != "InvalidQuery" and d.message)
    what = kql.splitlines()[0].strip() + " ..."
    return InvalidQuery(f"Resource Graph refused the query {what!r}: {said or 'invalid query'}")


def query(clients: AzureClients, subscriptions: list[str], kql: str) -> Iterator[Row]:
    """Every row `kql` selects in `subscriptions`, page after page (`$skipToken`)."""
    client = clients.graph()
    for first in range(0, len(subscriptions), SUBSCRIPTIONS_PER_QUERY):
        scope = subscriptions[first : first + SUBSCRIPTIONS_PER_QUERY]
        token = None
        while True:
            options = QueryRequestOptions(top=PAGE, skip_token=token, result_format="objectArray")
            try:
                answer = client.resources(
                    QueryRequest(subscriptions=scope, query=kql, options=options),
                    retry_on_methods=QUERY_RETRIED,
                )
            except HttpResponseError as e:
                raise _refusal(e, kql) or e from None
            yield from answer.data or []
            token = answer.skip_token
            if token:
                continue
            if str(answer.result_truncated).lower() == "true":
                raise TruncatedResult(f"Resource Graph truncated the result of {kql.split()[0]}")
            break
