"""Throttling as Azure documents it: the simulator spends the budgets and sends the headers
Azure sends, and finops paces itself by them and waits out what a 429 says."""

from __future__ import annotations

import requests

from finops.azure.clients import AzureClients, StaticTokenCredential
from finops.azure.inventory import VMS
from finops.azure.throttle import pause, resets_after
from finops.pipeline import collect
from finops.sim.estate import Estate
from finops.sim.server import Budgets, SimServer
from tests.conftest import sim_settings


def _ask(server: SimServer, method: str, path: str, body=None) -> requests.Response:
    token = StaticTokenCredential().get_token("https://management.azure.com/.default").token
    return requests.request(
        method,
        server.url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        verify=server.ca_file,
        timeout=10,
    )


def test_the_simulator_spends_each_budget_and_says_what_is_left():
    estate = Estate(seed=7, vms=60)
    budgets = Budgets(graph_queries=2, graph_window=30.0, arm_reads=3, arm_refill=0.01)
    with SimServer(estate, budgets=budgets) as server:
        sub = estate.subscriptions[0].subscription_id
        query = {"subscriptions": [sub], "query": VMS}
        graph = "/providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01"
        answers = [_ask(server, "POST", graph, query) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert [a.headers["x-ms-user-quota-remaining"] for a in answers] == ["1", "0", "0"]
        assert 0 < resets_after(answers[2].headers["x-ms-user-quota-resets-after"]) <= 30
        assert answers[2].json()["error"]["code"] == "RateLimiting"
        listed = f"/subscriptions/{sub}/providers/Microsoft.Compute/skus?api-version=2021-07-01"
        reads = [_ask(server, "GET", listed) for _ in range(4)]
        assert [r.status_code for r in reads] == [200, 200, 200, 429]
        left = [r.headers["x-ms-ratelimit-remaining-subscription-reads"] for r in reads]
        assert left == ["2", "1", "0", "0"]
        assert int(reads[3].headers["Retry-After"]) >= 1
        assert budgets.throttled == {"graph": 1, "arm": 1}


def test_a_night_paces_itself_and_waits_out_resource_graphs_429():
    """Three Resource Graph queries a second (Azure's 15 per 5 s) and a small read bucket: the
    night's concurrent inventory queries meet a 429 or two, wait until the quota resets
    (hh:mm:ss), and from then on wait before they are throttled; nothing is lost."""
    estate = Estate(seed=7, vms=60)
    budgets = Budgets(graph_queries=3, graph_window=1.0, arm_reads=40, arm_refill=25.0)
    with SimServer(estate, page_size=10, cost_page_size=5000, budgets=budgets) as server:
        settings = sim_settings(server)
        clients = AzureClients(StaticTokenCredential(), settings.azure)
        night = collect(clients, settings, estate.now)
        assert night.failures == []
        assert len(night.vms) == 60 and night.metrics
        assert budgets.throttled.get("arm", 0) == 0  # paced: the bucket never ran dry
        assert clients.pacer.waited > 0
        graph_queries = server.request_counts()["graph"]
        assert budgets.throttled.get("graph", 0) < graph_queries / 2


def test_pauses_follow_each_budgets_headers():
    assert (
        pause(
            "graph", {"x-ms-user-quota-remaining": "1", "x-ms-user-quota-resets-after": "00:00:03"}
        )
        == 3
    )
    assert (
        pause(
            "graph", {"x-ms-user-quota-remaining": "9", "x-ms-user-quota-resets-after": "00:00:03"}
        )
        == 0
    )
    qpu = "x-ms-ratelimit-microsoft.costmanagement-qpu-remaining"
    assert pause("costs", {qpu: "QueriesPerHour:577,QueriesPerMin:0"}) == 60
    assert pause("costs", {qpu: "QueriesPerHour:577,QueriesPerMin:59"}) == 0
    reads = "x-ms-ratelimit-remaining-subscription-reads"
    assert pause("arm:s", {reads: "20"}) == 0.2  # 5 reads short of the reserve, 25 a second
    assert pause("arm:s", {reads: "249"}) == 0
    assert pause("arm:s", {reads: "not a number"}) == 0
    assert resets_after("01:02:03") == 3723 and resets_after("soon") is None
