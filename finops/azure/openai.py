"""Azure OpenAI (and AI Services) accounts, their model deployments, and hourly per-deployment
metrics: provisioned-managed utilization (V2), prompt and generated tokens, throttled requests.

Accounts are listed once per subscription, deployments once per account (there is no
subscription-wide list); metrics go through the batch API, 50 accounts a call, split by the
`ModelDeploymentName` dimension, so no call is made per deployment.
"""

from __future__ import annotations

from datetime import datetime

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


def deployments(clients: AzureClients, subscription_id: str) -> tuple[list[Row], list[Row]]:
    """(accounts, deployments) of kind OpenAI or AIServices in one subscription."""
    client = clients.cognitive(subscription_id)
    accounts, found = [], []
    for account in client.accounts.list():
        if (account.kind or "").lower() not in KINDS:
            continue
        account_id = account.id.lower()
        sub, group = scope_of(account_id)
        accounts.append(
            {
                "resource_id": account_id,
                "subscription_id": sub,
                "location": (account.location or "").lower().replace(" ", ""),
            }
        )
        for d in client.deployments.list(group, account.name):
            model = d.properties.model if d.properties else None
            found.append(
                {
                    "resource_id": d.id.lower(),
                    "account_id": account_id,
                    "account_name": account.name,
                    "subscription_id": sub,
                    "resource_group": group,
                    "location": (account.location or "").lower().replace(" ", ""),
                    "kind": account.kind,
                    "name": d.name,
                    "model": (model.name if model else "") or "",
                    "model_version": (model.version if model else "") or "",
                    "sku": d.sku.name if d.sku else "",
                    "capacity": int(d.sku.capacity or 0) if d.sku else 0,
                }
            )
    return accounts, found


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
