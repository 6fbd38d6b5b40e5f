"""SDK clients built once from settings: credential, endpoint, TLS trust, timeouts."""

from __future__ import annotations

import base64
import json
import time
from functools import cache
from typing import Any

import requests
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    map_error,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.costmanagement import CostManagementClient
from azure.mgmt.devtestlabs import DevTestLabsClient
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.subscriptions import SubscriptionClient
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.monitor.querymetrics import MetricsClient

from finops.azure.retry import retry_policy
from finops.azure.throttle import Pacer
from finops.config import AzureSettings


class StaticTokenCredential:
    """An unsigned, JWT-shaped token for the simulated estate and local emulators (demo and
    tests only; Azure rejects it). It carries the claims those check: issuer, audience, expiry."""

    TENANT = "00000000-0000-4000-8000-000000000f10"

    def __init__(self, identity: str = "finops-demo@simulated.invalid"):
        self.identity = identity

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        now = int(time.time())
        audience = scopes[0].removesuffix("/.default") if scopes else ""
        claims = {
            "upn": self.identity,
            "aud": audience,
            "iat": now,
            "nbf": now - 60,
            "exp": now + 3600,
            "iss": f"https://sts.windows.net/{self.TENANT}/",
            "tid": self.TENANT,
            "oid": "00000000-0000-4000-8000-000000000001",
        }
        header = {"alg": "none", "typ": "JWT"}
        token = ".".join(_b64(part) for part in (header, claims)) + ".simulated"
        return AccessToken(token, now + 3600)


def _b64(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")


def default_credential() -> TokenCredential:
    """Managed identity in Azure Functions, `az login` on a laptop, a service principal by env."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


class AzureClients:
    """One client per (kind, subscription or region), created on first use and reused."""

    def __init__(self, credential: TokenCredential, settings: AzureSettings):
        self.credential = credential
        self.settings = settings
        # one HTTP session (its pool of TLS connections) for every client: a client per
        # subscription each opening its own connections spent more on TLS handshakes than on
        # reading answers
        transport = RequestsTransport(
            session=requests.Session(),
            session_owner=False,
            connection_verify=str(settings.ca_file) if settings.ca_file else True,
            read_timeout=settings.timeout_seconds,
        )
        self._options: dict[str, Any] = {"base_url": settings.arm_endpoint, "transport": transport}
        # one for every client: Azure's budgets are per user, subscription or tenant
        self.pacer = Pacer(settings.retry_backoff_max_seconds)
        self.subscription = cache(self._subscription)
        self.compute = cache(self._compute)
        self.devtestlabs = cache(self._devtestlabs)
        self.resources = cache(self._resources)
        self.costs = cache(self._costs)
        self.cognitive = cache(self._cognitive)
        self.metrics = cache(self._metrics)
        self.graph = cache(self._graph)

    def options(self) -> dict[str, Any]:
        """Client options: endpoint, trust, timeouts, a retry policy of its own, the pacer."""
        return {
            **self._options,
            "retry_policy": retry_policy(self.settings),
            "per_retry_policies": [self.pacer],
        }

    def _subscription(self) -> SubscriptionClient:
        return SubscriptionClient(self.credential, **self.options())

    def _compute(self, subscription_id: str) -> ComputeManagementClient:
        return ComputeManagementClient(self.credential, subscription_id, **self.options())

    def _devtestlabs(self, subscription_id: str) -> DevTestLabsClient:
        return DevTestLabsClient(self.credential, subscription_id, **self.options())

    def _resources(self, subscription_id: str) -> ResourceManagementClient:
        return ResourceManagementClient(self.credential, subscription_id, **self.options())

    def _cognitive(self, subscription_id: str) -> CognitiveServicesManagementClient:
        return CognitiveServicesManagementClient(self.credential, subscription_id, **self.options())

    def _costs(self) -> CostManagementClient:
        return CostManagementClient(self.credential, **self.options())

    def _graph(self) -> ResourceGraphClient:
        return ResourceGraphClient(self.credential, **self.options())

    def actor(self) -> str:
        """Who the credential is (user, app or managed identity), read from its token's claims;
        never the token itself."""
        token = self.credential.get_token("https://management.azure.com/.default").token
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            return "unknown (token without claims)"
        for claim in (
            "upn",
            "unique_name",
            "preferred_username",
            "app_displayname",
            "appid",
            "oid",
        ):
            if claims.get(claim):
                return f"{claim}:{claims[claim]}"
        return "unknown"

    def _metrics(self, region: str) -> MetricsClient:
        endpoint = self.settings.metrics_endpoint.replace("{region}", region)
        options = {k: v for k, v in self.options().items() if k != "base_url"}
        return MetricsClient(endpoint, self.credential, **options)


# The POSTs the job sends to read (cost and metrics queries, Resource Graph) change nothing:
# retried on every status a GET is, where azure-core retries a POST on 500, 503 and 504 only
QUERY_RETRIED = frozenset({"GET", "POST"})


def post_json(
    client: Any, url: str, params: dict[str, str], body: dict[str, Any], no_content: bool = False
) -> Any:
    """POST a query through an SDK client's own pipeline (credential, retries, TLS trust) and
    return the JSON answer as sent; None for 204 No Content where the API documents it
    (`no_content`). For the answers that carry the night's bulk (cost rows, metric points)
    building the SDK's models cost more CPU than all the rest of the job."""
    request = HttpRequest("POST", url, params=params, json=body)
    return _json(client, request, no_content, retry_on_methods=QUERY_RETRIED)


def get_json(client: Any, url: str, params: dict[str, str]) -> Any:
    """GET through an SDK client's own pipeline and return the JSON answer as sent: for the
    calls no SDK the job uses makes (Resource Manager's per-resource metrics)."""
    return _json(client, HttpRequest("GET", url, params=params), no_content=False)


def _json(client: Any, request: HttpRequest, no_content: bool, **options: Any) -> Any:
    # streamed, then read here: otherwise the pipelines that hold a ContentDecodePolicy parse
    # the answer too, and response.json() parses it again (a second decoding of every page)
    response = client.send_request(request, stream=True, **options)
    response.read()
    if response.status_code == 204 and no_content:
        return None
    if response.status_code != 200:
        errors = {401: ClientAuthenticationError, 404: ResourceNotFoundError}
        map_error(status_code=response.status_code, response=response, error_map=errors)
        raise HttpResponseError(response=response)
    return response.json()


def clients_for(settings: AzureSettings) -> AzureClients:
    simulated = settings.credential == "simulated"
    return AzureClients(StaticTokenCredential() if simulated else default_credential(), settings)
