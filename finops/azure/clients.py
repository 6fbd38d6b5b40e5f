"""SDK clients built once from settings: credential, endpoint, TLS trust, timeouts."""

from __future__ import annotations

import base64
import json
import time
from functools import cache
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.costmanagement import CostManagementClient
from azure.mgmt.devtestlabs import DevTestLabsClient
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.subscriptions import SubscriptionClient
from azure.monitor.querymetrics import MetricsClient

from finops.azure.retry import FinopsRetryPolicy
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
        self._options: dict[str, Any] = {
            "base_url": settings.arm_endpoint,
            "read_timeout": settings.timeout_seconds,
        }
        if settings.ca_file:
            self._options["connection_verify"] = str(settings.ca_file)
        self.subscription = cache(self._subscription)
        self.compute = cache(self._compute)
        self.devtestlabs = cache(self._devtestlabs)
        self.resources = cache(self._resources)
        self.costs = cache(self._costs)
        self.cognitive = cache(self._cognitive)
        self.metrics = cache(self._metrics)

    def options(self) -> dict[str, Any]:
        """Client options: endpoint, trust, timeouts, and a retry policy of its own."""
        retry = FinopsRetryPolicy(
            retry_total=self.settings.retries,
            retry_backoff_max=self.settings.retry_backoff_max_seconds,
            timeout=self.settings.retry_budget_seconds,
        )
        return {**self._options, "retry_policy": retry}

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


def clients_for(settings: AzureSettings) -> AzureClients:
    simulated = settings.credential == "simulated"
    return AzureClients(StaticTokenCredential() if simulated else default_credential(), settings)
