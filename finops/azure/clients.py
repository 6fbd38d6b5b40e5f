"""SDK clients built once from settings: credential, endpoint, TLS trust, timeouts."""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.costmanagement import CostManagementClient
from azure.mgmt.devtestlabs import DevTestLabsClient
from azure.mgmt.resource.subscriptions import SubscriptionClient
from azure.monitor.querymetrics import MetricsClient

from finops.config import AzureSettings


class StaticTokenCredential:
    """A fixed bearer token: for the simulated estate only (demo and tests), never for Azure."""

    def __init__(self, token: str = "simulated-token"):
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


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
        self.costs = cache(self._costs)
        self.metrics = cache(self._metrics)

    def _subscription(self) -> SubscriptionClient:
        return SubscriptionClient(self.credential, **self._options)

    def _compute(self, subscription_id: str) -> ComputeManagementClient:
        return ComputeManagementClient(self.credential, subscription_id, **self._options)

    def _devtestlabs(self, subscription_id: str) -> DevTestLabsClient:
        return DevTestLabsClient(self.credential, subscription_id, **self._options)

    def _costs(self) -> CostManagementClient:
        return CostManagementClient(self.credential, **self._options)

    def _metrics(self, region: str) -> MetricsClient:
        endpoint = self.settings.metrics_endpoint.replace("{region}", region)
        options = {k: v for k, v in self._options.items() if k != "base_url"}
        return MetricsClient(endpoint, self.credential, **options)
