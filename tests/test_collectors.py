"""Collectors through the real Azure SDK clients against the simulated estate over HTTPS."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, date, timedelta
from decimal import Decimal

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from sqlalchemy import select

from finops.azure import costs, inventory, metrics, prices
from finops.azure.clients import AzureClients, StaticTokenCredential
from finops.config import AzureSettings
from finops.pipeline import collect
from finops.sim.estate import Estate
from finops.sim.server import SimServer
from finops.store import schema
from tests.conftest import sim_settings


def _sub(estate: Estate, index: int = 0) -> str:
    return estate.subscriptions[index].subscription_id


def test_subscriptions_lists_every_visible_one(clients, estate):
    rows = inventory.subscriptions(clients, [])
    assert {r["subscription_id"] for r in rows} == {s.subscription_id for s in estate.subscriptions}
    assert {r["display_name"] for r in rows} == {s.display_name for s in estate.subscriptions}


def test_configured_subscription_that_is_not_visible_is_a_clear_error(clients):
    with pytest.raises(LookupError, match="not visible"):
        inventory.subscriptions(clients, ["00000000-0000-0000-0000-000000000000"])


def _all_subs(estate: Estate) -> list[str]:
    return [s.subscription_id for s in estate.subscriptions]


def test_vms_of_every_subscription_come_from_resource_graph_pages(clients, estate, sim):
    before = sim.requests["graph"]
    rows = {r["resource_id"]: r for r in inventory.vms(clients, _all_subs(estate))}
    assert len(rows) == len(estate.vms)
    # page size 25: one query over all subscriptions, paged by $skipToken
    assert sim.requests["graph"] - before == -(-len(estate.vms) // sim.page_size) > 1
    for vm in estate.vms:
        row = rows[vm.id.lower()]
        assert row["power_state"] == (vm.power_state or "unknown")
        assert row["size"] == vm.size
        assert row["tags"] == vm.tags
        assert row["priority"] == vm.priority
        assert row["os_type"] == vm.os_type
        assert row["subscription_id"] == vm.subscription_id.lower()
        assert row["resource_group"] == vm.resource_group
        assert row["resource_id"] == row["resource_id"].lower()


def test_resource_graph_answers_only_the_subscriptions_asked_for(clients, estate):
    sub = _sub(estate, 1)
    rows = list(inventory.vms(clients, [sub]))
    assert {r["resource_id"] for r in rows} == {vm.id.lower() for vm in estate.vms_in(sub)}


def test_subscriptions_beyond_one_querys_share_are_asked_in_further_queries(
    clients, estate, sim, monkeypatch
):
    """Resource Graph is sent at most SUBSCRIPTIONS_PER_QUERY subscriptions a query."""
    from finops.azure import graph

    monkeypatch.setattr(graph, "SUBSCRIPTIONS_PER_QUERY", 2)
    subs = _all_subs(estate)
    before = sim.requests["graph"]
    rows = list(inventory.vms(clients, subs))
    assert {r["resource_id"] for r in rows} == {vm.id.lower() for vm in estate.vms}
    # subscriptions 1-2 in one query, 3 in another, each paged on its own
    first, second = (sum(len(estate.vms_in(s)) for s in part) for part in (subs[:2], subs[2:]))
    pages = -(-first // sim.page_size) + -(-second // sim.page_size)
    assert sim.requests["graph"] - before == pages


def test_a_result_cut_short_without_a_page_token_is_an_error_not_a_short_inventory(clients, estate):
    from finops.azure import graph

    kql = "Resources | where type =~ 'microsoft.compute/virtualmachines' | project name"
    with pytest.raises(graph.TruncatedResult, match="truncated"):
        list(graph.query(clients, _all_subs(estate), kql))


def test_a_query_the_simulator_cannot_answer_is_refused(clients, estate):
    from finops.azure import graph

    with pytest.raises(HttpResponseError, match="does not answer"):
        list(graph.query(clients, _all_subs(estate), "Resources | summarize count()"))


def test_vm_sizes_carry_gpu_facts_from_skus_and_catalog(clients, estate):
    sizes = {s["size"]: s for s in inventory.vm_sizes(clients, _sub(estate), ["eastus"])}
    a100 = sizes["Standard_ND96asr_v4"]
    assert (a100["gpus"], a100["gpu_model"], a100["gpu_memory_gb"]) == (8, "A100", 40)
    assert a100["vcpus"] == 96
    assert sizes["Standard_NV6ads_A10_v5"]["gpus"] == Decimal("0.166667")
    cpu = sizes["Standard_D4s_v5"]
    assert cpu["gpus"] == 0 and cpu["gpu_model"] is None


def test_quotas_keep_gpu_families_only_with_usage_and_limit(clients, estate):
    sub = _sub(estate)
    rows = inventory.quotas(clients, sub, ["eastus", "westeurope"])
    families = {r["family"] for r in rows}
    assert "standardndasv4_a100family" in families
    assert not any(f.startswith("standardd") or f == "cores" for f in families)
    story = next(
        r for r in rows if r["family"] == "standardndasv4_a100family" and r["location"] == "eastus"
    )
    assert (story["current_value"], story["limit"]) == (8 * 96, 800)


def test_schedules_are_one_query_and_name_the_vm_they_stop(clients, estate, sim):
    before = sim.requests["graph"]
    rows = {r["resource_id"]: r for r in inventory.schedules(clients, _all_subs(estate))}
    expected = {vm.id.lower(): vm.schedule for vm in estate.vms if vm.schedule}
    assert {rid: r["status"] for rid, r in rows.items()} == expected
    assert sim.requests["graph"] - before == -(-len(expected) // sim.page_size)
    story = next(vm for vm in estate.vms if vm.schedule)
    row = rows[story.id.lower()]
    assert (row["daily_time"], row["time_zone"]) == (story.schedule_time, story.schedule_time_zone)
    assert row["schedule_id"].endswith(f"/shutdown-computevm-{story.name}".lower())


def test_resource_groups_carry_their_tags(clients, estate):
    rows = inventory.resource_groups(clients, _all_subs(estate))
    tagged = {(r["subscription_id"], r["name"]): r["tags"] for r in rows}
    for (sub, group), tags in estate.group_tags.items():
        assert tagged[(sub.lower(), group.lower())] == tags


def test_disks_carry_their_state_owner_and_when_it_changed(clients, estate, sim):
    before = sim.requests["graph"]
    rows = {r["name"]: r for r in inventory.disks(clients, _all_subs(estate))}
    expected = [d for sub in _all_subs(estate) for d in estate.disks_in(sub)]
    assert set(rows) == {d.name for d in expected}
    assert sim.requests["graph"] - before == -(-len(expected) // sim.page_size)
    for disk in expected:
        row = rows[disk.name]
        assert row["state"] == disk.state and row["size_gb"] == disk.size_gb
        assert row["managed_by"] == (disk.vm.id.lower() if disk.vm else None)
        # Azure spells this one field with a capital L
        assert row["owner_changed"] == estate.now - timedelta(hours=disk.owner_changed_h)
    assert rows["ckpt-a100-2026-10"]["state"] == "Unattached"
    assert rows["train-nc-a100-parked-data"]["state"] == "Reserved"


def test_retail_prices_per_size_and_region_across_pages(sim):
    settings = sim_settings(sim).azure
    before = sim.requests["prices"]
    pairs = [("eastus", "Standard_NC24ads_A100_v4"), ("westeurope", "Standard_NC4as_T4_v3")]
    rows = prices.vm_prices(settings, "USD", pairs)
    found = {(r["location"], r["size"], r["offer"], r["os"]): r["per_hour"] for r in rows}
    a100 = ("eastus", "Standard_NC24ads_A100_v4")
    assert found[(*a100, "payg", "linux")] == Decimal("3.673")  # the catalog's list price
    assert found[(*a100, "spot", "linux")] < found[(*a100, "payg", "linux")]
    assert found[(*a100, "payg", "windows")] > found[(*a100, "payg", "linux")]
    # a reservation row is the whole term's price: per hour it is below pay-as-you-go
    assert found[(*a100, "reservation-3y", "any")] < found[(*a100, "reservation-1y", "any")]
    assert found[(*a100, "reservation-1y", "any")] < found[(*a100, "payg", "linux")]
    assert {offer for (_, _, offer, _) in found} == {
        "payg",
        "spot",
        "low-priority",
        "reservation-1y",
        "reservation-3y",
    }  # dev/test rows are left out
    assert all(r["currency"] == "USD" and isinstance(r["per_hour"], Decimal) for r in rows)
    # 8 rows a pair, 5 a page: two pages each, followed by NextPageLink
    assert sim.requests["prices"] - before == 4
    # filter values are case-sensitive (api-version 2023-01-01-preview): no rows, no error
    assert prices.vm_prices(settings, "USD", [("eastus", "standard_nc24ads_a100_v4")]) == []


def test_retail_prices_come_in_the_billing_currency_from_the_primary_meter_region(sim):
    """The documented form quotes the values (currencyCode='EUR', meterRegion='primary'); the
    API lists rows of non-primary meter regions too (isPrimaryMeterRegion false)."""
    settings = sim_settings(sim).azure
    a100 = ("eastus", "Standard_NC24ads_A100_v4")
    rows = prices.vm_prices(settings, "EUR", [a100])
    assert {r["currency"] for r in rows} == {"EUR"}
    payg = next(r for r in rows if (r["offer"], r["os"]) == ("payg", "linux"))
    assert payg["per_hour"] == (Decimal("3.673") * Decimal("0.92")).quantize(Decimal("0.0001"))


def test_metrics_batch_maps_series_back_to_each_vm(clients, estate, sim):
    found = inventory.vms(clients, [_sub(estate)])
    vms = [r for r in found if r["name"].startswith("train-nd-a100")]
    end = estate.now
    before = sim.request_counts()
    rows = list(metrics.hourly(clients, vms, end - timedelta(days=7), end))
    after = sim.request_counts()
    # 8 VMs in one region: one batch call for CPU, one call per VM for the custom GPU metrics
    assert after["metrics"] - before.get("metrics", 0) == 1
    assert after["vm-metrics"] - before.get("vm-metrics", 0) == 8
    by_vm = {}
    for row in rows:
        by_vm.setdefault((row["resource_id"], row["metric"]), []).append(row)
    assert {rid for rid, _ in by_vm} == {vm["resource_id"] for vm in vms}
    for (rid, metric), points in by_vm.items():
        assert len(points) == 60  # started 60 hours ago: no data before
        vm = estate.by_id[rid]
        first = points[0]
        hour = first["ts"].replace(tzinfo=UTC)  # rows hold naive UTC, as the store does
        assert estate.hourly(vm, metric, [hour]) == [(first["average"], first["maximum"])]


def test_metrics_batches_hold_at_most_50_vms_of_one_region(sim, estate):
    big = Estate(seed=3, vms=400)
    with SimServer(big, page_size=1000) as server:
        settings = sim_settings(server)
        clients = AzureClients(StaticTokenCredential(), settings.azure)
        vms = list(inventory.vms(clients, _all_subs(big)))
        list(metrics.hourly(clients, vms, big.now - timedelta(hours=2), big.now))
        groups = {(vm["subscription_id"], vm["location"]) for vm in vms}
        expected = sum(
            -(-sum(1 for vm in vms if (vm["subscription_id"], vm["location"]) == g) // 50)
            for g in groups
        )
        assert server.requests["metrics"] == expected
        assert server.requests["vm-metrics"] == len(vms)
        assert server.requests["unknown"] == 0


def test_a_vm_without_telegraf_costs_the_others_of_its_batch_nothing(clients, estate, sim, caplog):
    """Azure answers 400 for custom metrics a VM never sent: that VM has CPU rows only, the
    others of its batch keep their GPU rows."""
    found = inventory.vms(clients, _all_subs(estate))
    eastus = [vm for vm in found if vm["location"] == "eastus" and vm["name"].startswith("infer-")]
    silent = next(vm for vm in eastus if vm["name"] == "infer-nc-t4-notelemetry")
    assert len(eastus) > 1
    caplog.set_level(logging.INFO, logger="finops")
    rows = list(metrics.hourly(clients, eastus, estate.now - timedelta(hours=6), estate.now))
    kinds: dict[str, set[str]] = {}
    for row in rows:
        kinds.setdefault(row["resource_id"], set()).add(row["metric"])
    assert kinds[silent["resource_id"]] == {"cpu"}
    assert f"1 of {len(eastus)} GPU VMs in eastus send no Telegraf/nvidia_smi" in caplog.text
    for vm in eastus:
        if vm is not silent and estate.by_id[vm["resource_id"]].gpu is not None:
            assert kinds[vm["resource_id"]] == {"cpu", "gpu", "gpu_memory"}, vm["name"]


def test_the_batch_api_refuses_custom_metrics_as_azure_documents(clients, estate, sim):
    """Microsoft Learn (azure-monitor/metrics/migrate-to-batch-api): metrics:getBatch "doesn't
    support querying custom metrics"; the simulator refuses them, so finops cannot rely on it."""
    vm = next(iter(inventory.vms(clients, [_sub(estate)])))
    with pytest.raises(HttpResponseError) as refused:
        list(
            metrics.query_batch(
                clients,
                vm["location"],
                [vm["resource_id"]],
                "Telegraf/nvidia_smi",
                ["utilization_gpu"],
                ["Average"],
                estate.now - timedelta(hours=2),
                estate.now,
            )
        )
    assert refused.value.status_code == 400


def test_the_gpu_namespace_is_spelt_as_telegraf_writes_it():
    """Telegraf's azure_monitor output names a namespace "Telegraf/<input>" (its
    defaultNamespacePrefix); the nvidia_smi input's fields are the metric names."""
    settings = AzureSettings()
    assert settings.gpu_metric_namespace == "Telegraf/" + "nvidia_smi"
    assert {settings.gpu_metric_name, settings.gpu_memory_metric_name} == {
        "utilization_gpu",
        "memory_used",
    }


def test_costs_follow_next_link_and_keep_money_exact(clients, estate, sim):
    sub = _sub(estate)
    end = estate.now.date()
    start = end - timedelta(days=30)
    before = sim.requests["costs"]
    rows = list(costs.daily(clients, sub, start, end, "AmortizedCost"))
    assert sim.requests["costs"] - before > 1  # more than one page
    vm = next(v for v in estate.vms_in(sub) if v.name == "train-nd-h100-stopped")
    day = end - timedelta(days=3)
    row = next(r for r in rows if r["resource_id"] == vm.id.lower() and r["usage_date"] == day)
    # covered by a reservation: amortized at 63 % of the list price, billed at nothing
    assert row["cost"] == Decimal("98.32") * 24 * Decimal("0.63")
    assert isinstance(row["cost"], Decimal) and row["currency"] == "USD"
    assert row["meter_category"] == "Virtual Machines" and row["cost_type"] == "AmortizedCost"
    assert (row["subscription_id"], row["resource_group"]) == (sub, "ml-training")
    keys = {(r["resource_id"], r["usage_date"], r["meter_category"]) for r in rows}
    assert len(keys) == len(rows)
    billed = costs.daily(clients, sub, start, end, "ActualCost")
    assert not [r for r in billed if r["resource_id"] == vm.id.lower() and r["cost"]]
    assert all(r["resource_id"] for r in billed)  # the reservation purchase has no resource


def test_a_cost_window_longer_than_a_month_is_asked_a_month_at_a_time(clients, estate, sim):
    """The Query API moves a Daily query's `from` up to `to` - 1 month + 1 day without a word
    (the simulator too): 76 days are asked in windows it answers whole, and every day with a
    cost comes back."""
    sub = _sub(estate)
    end = estate.now.date()
    start = end - timedelta(days=75)
    asked = len(sim.cost_periods)
    rows = list(costs.daily(clients, sub, start, end, "ActualCost"))
    windows = [(first, last) for _, _, first, last in sim.cost_periods[asked:]]
    assert len(windows) == 3 and windows[0][0] == start and windows[-1][1] == end
    for (_, last), (first, _) in itertools.pairwise(windows):
        assert first == last + timedelta(days=1)  # contiguous, none asked twice
    vm = next(v for v in estate.vms_in(sub) if v.name == "dev-nc-a100-idle")  # on for months
    days = [start + timedelta(days=n) for n in range(76)]
    billed = {d for d in days if estate.daily_cost(vm, d) > 0}
    got = {r["usage_date"] for r in rows if r["resource_id"] == vm.id.lower() and r["cost"]}
    assert min(billed) < end - timedelta(days=45) and got == billed


@pytest.mark.parametrize("end", [date(2026, 3, 1), date(2026, 3, 31), date(2028, 2, 29)])
def test_cost_windows_tile_the_days_and_each_is_answered_whole(end):
    start = end - timedelta(days=400)
    found = costs.windows(start, end)
    assert found[0][0] == start and found[-1][1] == end
    for first, last in found:
        assert first >= costs.month_before(last) + timedelta(days=1)
    covered = sum((last - first).days + 1 for first, last in found)
    assert covered == (end - start).days + 1


def test_a_cost_window_without_usage_is_answered_204_and_reads_as_no_rows(clients, estate, sim):
    """Query_Usage's spec (and azure-mgmt-costmanagement) accept 204 No Content."""
    before = sim.requests["costs"]
    ahead = estate.now.date() + timedelta(days=5)  # no usage yet
    assert list(costs.daily(clients, _sub(estate), ahead, ahead, "ActualCost")) == []
    assert sim.requests["costs"] - before == 1


def test_quotas_of_a_region_without_usage_are_none(clients, estate):
    """Compute's usage list answers 409 SubscriptionHasNoUsages for such a region."""
    sub = _sub(estate)
    with pytest.raises(HttpResponseError) as answered:
        list(clients.compute(sub).usage.list("southafricanorth"))
    assert answered.value.status_code == 409
    assert answered.value.error.code == "SubscriptionHasNoUsages"
    used = {loc for s, loc, _ in estate.quota_usage(sub) if s == sub}
    rows = inventory.quotas(clients, sub, {"southafricanorth", *used})
    assert rows and {r["location"] for r in rows} == used


def test_cost_rows_are_the_same_when_the_parsed_values_are_dropped_between_pages(
    clients, estate, monkeypatch
):
    """The query keeps parsed days, amounts and scopes at hand, and drops them past a bound so
    that memory stays flat: dropping them after every page changes no row."""
    sub = _sub(estate)
    end = estate.now.date()
    start = end - timedelta(days=30)
    kept = list(costs.daily(clients, sub, start, end, "ActualCost"))
    monkeypatch.setattr(costs, "PARSED_KEPT", 1)
    dropped = list(costs.daily(clients, sub, start, end, "ActualCost"))
    assert len(kept) > 100 and dropped == kept  # more than one page of 100 rows


def test_unsupported_api_version_is_refused_like_arm(clients, estate):
    api = clients.compute(_sub(estate)).virtual_machines
    with pytest.raises(HttpResponseError) as error:
        list(api.list_all(api_version="2020-01-01"))
    assert error.value.status_code == 400
    assert "InvalidApiVersionParameter" in str(error.value)


def test_collection_makes_no_call_per_vm_but_the_gpu_guest_metrics(estate):
    """Requests grow with pages and batches, not with VMs: 10x the VMs, same order of calls.
    The one call per VM is for the custom GPU metrics the batch API does not serve, and it is
    made for GPU VMs only."""
    counts = {}
    for size in (60, 600):
        with SimServer(Estate(seed=7, vms=size), page_size=1000, cost_page_size=5000) as server:
            settings = sim_settings(server)
            clients = AzureClients(StaticTokenCredential(), settings.azure)
            night = collect(clients, settings, server.estate.now)
            assert len(night.vms) == size
            gpu_sizes = {s["size"].lower() for s in night.vm_sizes if s["gpus"] > 0}
            gpu_vms = sum(1 for vm in night.vms if vm["size"].lower() in gpu_sizes)
            requests = server.request_counts()
            assert 0 < requests.pop("vm-metrics") == gpu_vms < size
            counts[size] = sum(requests.values())
    assert counts[600] <= counts[60] + 2 * 3 * (600 // 50)  # only more metric batches
    assert counts[600] < 600 / 5


def test_quotas_are_asked_for_only_where_gpu_vms_are():
    """gpu-quota-near-limit judges quotas where GPU VMs are: one usage list per subscription
    and region that holds one, none for regions with only other VMs."""
    estate = Estate(seed=7, vms=80, subscriptions=10, regions=4, gpu_share=0.1)
    with SimServer(estate) as server:
        settings = sim_settings(server)
        night = collect(AzureClients(StaticTokenCredential(), settings.azure), settings, estate.now)
        asked = server.requests["usages"]
    gpu_places = {(vm.subscription_id, vm.location) for vm in estate.vms if vm.is_gpu}
    all_places = {(vm.subscription_id, vm.location) for vm in estate.vms}
    assert asked == len(gpu_places) < len(all_places)
    assert {(q["subscription_id"], q["location"]) for q in night.quotas} == gpu_places


def test_unexpected_api_shapes_are_stored_and_judged_safely(world):
    """A power state the job does not know, one Azure left out, a size neither the SKU API
    nor the catalog lists, a VM without tags, an id in upper case: the night stores them all,
    judges none of the unusual ones idle or wasteful, and still flags the idle VM whose id is
    in upper case."""
    from finops.sim.estate import IDLE_GPU, LONG_AGO_H

    estate = world.estate
    odd = dict(on_since_h=LONG_AGO_H, gpu=IDLE_GPU, schedule="Enabled")
    estate._add(
        0, "GPU-Lab", "Hibernated-A100", "eastus", "Standard_NC24ads_A100_v4", "hibernated", **odd
    )
    estate._add(0, "GPU-Lab", "no-power-state", "eastus", "Standard_NC24ads_A100_v4", "", **odd)
    estate._add(0, "GPU-Lab", "retired-size", "eastus", "Standard_NC6s_v3", "running", **odd)
    estate._add(0, "GPU-Lab", "Idle-Upper", "eastus", "Standard_NC4as_T4_v3", "running", **odd)
    result = world.night()
    assert result.missing is None
    with world.engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(schema.vms.c.name, schema.vms.c.power_state).where(
                    schema.vms.c.run_id == result.run_id
                )
            ).all()
        )
        ids = conn.execute(select(schema.vms.c.resource_id)).scalars().all()
    assert stored["Hibernated-A100"] == "hibernated" and stored["no-power-state"] == "unknown"
    assert stored["retired-size"] == "running"
    assert all(rid == rid.lower() for rid in ids)
    # Missing tags are a fair thing to say of these VMs; a verdict on their use is not.
    flagged = {
        name.lower()
        for rule, name in world.findings(result.run_id)
        if rule != "gpu-vm-missing-tags"
    }
    assert "idle-upper" in flagged
    assert not {"hibernated-a100", "no-power-state", "retired-size"} & flagged


def test_clients_refuse_a_server_their_trust_does_not_cover(sim):
    """The clients share one HTTP session; it still checks the server's certificate."""
    untrusting = sim_settings(sim).azure.model_copy(update={"ca_file": None, "retries": 0})
    clients = AzureClients(StaticTokenCredential(), untrusting)
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        inventory.subscriptions(clients, [])


def test_metrics_are_asked_for_from_the_newest_stored_hour(clients, estate, sim):
    """VMs whose series the store holds up to an hour ago get their last few hours again, not
    the whole week; VMs the store has never seen get the whole week."""
    settings = sim_settings(sim)
    now = estate.now.replace(minute=0, second=0, microsecond=0)
    full = collect(clients, settings, estate.now)
    vm_ids = {vm["resource_id"] for vm in full.vms}
    newest = dict.fromkeys(vm_ids, now - timedelta(hours=1))
    night = collect(clients, settings, estate.now, stored_metrics=newest)
    hours = [row["ts"] for row in night.metrics if row["resource_id"] in vm_ids]
    hour = now.replace(tzinfo=None)  # rows hold naive UTC, as the store does
    assert hours and min(hours) >= hour - timedelta(hours=4)
    first = min(row["ts"] for row in full.metrics if row["resource_id"] in vm_ids)
    assert first <= hour - timedelta(days=6)
