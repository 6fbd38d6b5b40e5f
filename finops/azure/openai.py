"""Azure OpenAI (and AI Services) accounts, their model deployments, and hourly per-deployment
metrics: provisioned-managed utilization (V2), prompt and generated tokens, throttled requests.

Accounts come from one Resource Graph query over every subscription, deployments from one list
per account (there is no wider list); metrics go through the batch API, 50 accounts a call,
split by the `ModelDeploymentName` dimension, so no call is made per deployment.
"""

from __future__ import annotations

from datetime import datetime

from finops.azure import graph
from finops.azure.clients import AzureClients
from finops.azure.metrics import points, query_batch
from finops.collection import Row
from finops.store.costs import scope_of

KINDS = ("openai", "aiservices")
NAMESPACE = "Microsoft.CognitiveServices/accounts"
UTILIZATION = "AzureOpenAIProvisionedManagedUtilizationV2"
PROMPT_TOKENS = "ProcessedPromptTokens"
GENERATED_TOKENS = "GeneratedTokens"
REQUESTS = "AzureOpenAIRequests"
MAX_SERIES = 1000  # the API returns 10 series unless told: an account may hold more deployments
# (metric names, aggregations, filter) -> our metric names, one batch call each
QUERIES = (
    (
        (UTILIZATION, PROMPT_TOKENS, GENERATED_TOKENS),
        ("Average", "Maximum", "Total"),
        "ModelDeploymentName eq '*'",
    ),
    ((REQUESTS,), ("Total",), "ModelDeploymentName eq '*' and StatusCode eq '429'"),
)
OUR_NAMES = {
    UTILIZATION: "ptu_util",
    PROMPT_TOKENS: "tokens_in",
    GENERATED_TOKENS: "tokens_out",
    REQUESTS: "throttled",
}


ACCOUNTS = """Resources
| where type =~ 'microsoft.cognitiveservices/accounts'
| project id, name, kind, location"""


def accounts(clients: AzureClients, subscriptions: list[str]) -> list[Row]:
    """The subscriptions' accounts of kind OpenAI or AIServices, from Resource Graph."""
    return [
        {
            "resource_id": account["id"].lower(),
            "subscription_id": scope_of(account["id"].lower())[0],
            "name": account["name"],
            "kind": account.get("kind"),
            "location": (account.get("location") or "").lower().replace(" ", ""),
        }
        for account in graph.query(clients, subscriptions, ACCOUNTS)
        if (account.get("kind") or "").lower() in KINDS
    ]


def deployments(clients: AzureClients, account: Row) -> list[Row]:
    """One account's model deployments (there is no list across accounts)."""
    sub, group = scope_of(account["resource_id"])
    found = []
    for d in clients.cognitive(sub).deployments.list(group, account["name"]):
        model = d.properties.model if d.properties else None
        found.append(
            {
                "resource_id": d.id.lower(),
                "account_id": account["resource_id"],
                "account_name": account["name"],
                "subscription_id": sub,
                "resource_group": group,
                "location": account["location"],
                "kind": account["kind"],
                "name": d.name,
                "model": (model.name if model else "") or "",
                "model_version": (model.version if model else "") or "",
                "sku": d.sku.name if d.sku else "",
                "capacity": int(d.sku.capacity or 0) if d.sku else 0,
            }
        )
    return found


def hourly_batch(
    clients: AzureClients, region: str, account_ids: list[str], start: datetime, end: datetime
) -> list[Row]:
    """Hourly rows per deployment (resource id = account id + /deployments/NAME): ptu_util
    (average, maximum), tokens_in, tokens_out and throttled (total)."""
    rows = []
    for names, aggregations, dimension_filter in QUERIES:
        answer = query_batch(
            clients,
            region,
            account_ids,
            NAMESPACE,
            names,
            aggregations,
            start,
            end,
            filter=dimension_filter,
            top=str(MAX_SERIES),
        )
        for account_id, metric in answer:
            ours = OUR_NAMES.get(metric["name"]["value"])
            if ours is None:
                continue
            for series in metric.get("timeseries") or []:
                values = {
                    m["name"]["value"].lower(): m.get("value")
                    for m in series.get("metadatavalues") or []
                }
                deployment = values.get("modeldeploymentname")
                if not deployment:
                    continue
                rid = f"{account_id}/deployments/{deployment.lower()}"
                rows += points(rid, ours, series)
    return rows
