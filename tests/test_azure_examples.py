"""finops read against Azure's own answers: the REST API specs' example responses (kept under
azure_examples/ with their source path and commit), replayed over HTTPS to the SDK clients
finops uses, and the simulator's answers checked against the same examples."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from finops.azure import actions, costs, graph, inventory, metrics, openai
from finops.azure.clients import get_json, post_json
from tests.replay import Replay, example

RG_PATH = "/providers/Microsoft.ResourceGraph/resources"


@pytest.fixture
def replay():
    server = Replay()
    yield server
    server.close()


def test_resource_graph_pages_are_read_on_by_their_skip_token(replay):
    first, second = example("ResourcesFirstPageQuery"), example("ResourcesNextPageQuery")
    token = first["responses"]["200"]["body"]["$skipToken"]
    replay.answer("POST", RG_PATH, "ResourcesNextPageQuery", body_has=token)
    replay.answer("POST", RG_PATH, "ResourcesFirstPageQuery")
    asked = first["parameters"]["query"]
    rows = graph.query(replay.clients(), asked["subscriptions"], asked["query"])
    got = list(itertools.islice(rows, 6))
    documented = [
        row["id"] for page in (first, second) for row in page["responses"]["200"]["body"]["data"]
    ]
    assert [row["id"] for row in got] == documented
    sent = [a.body for a in replay.asked]
    assert sent[0]["subscriptions"] == asked["subscriptions"]
    assert sent[0]["query"] == asked["query"]
    assert (
        sent[1]["options"]["$skipToken"] == second["parameters"]["query"]["options"]["$skipToken"]
    )
    assert {a.query["api-version"] for a in replay.asked} == {first["parameters"]["api-version"]}


def test_every_projected_property_is_named_as_finops_reads_it(replay):
    """Resource Graph names an unaliased property column after its path
    (`properties_storageProfile_osDisk_osType` in the example): each query finops sends names
    the properties it projects, so the columns are the ones it reads."""
    replay.answer("POST", RG_PATH, "ResourcesPropertiesQuery")
    asked = example("ResourcesPropertiesQuery")["parameters"]["query"]
    rows = list(graph.query(replay.clients(), asked["subscriptions"], asked["query"]))
    assert "properties_storageProfile_osDisk_osType" in rows[0]
    queries = [
        inventory.VMS,
        inventory.SCHEDULES,
        inventory.RESOURCE_GROUPS,
        inventory.DISKS,
        openai.ACCOUNTS,
    ]
    for kql in queries:
        projected = kql.split("| project", 1)[1]
        for column in re.split(r",(?![^\[]*\])", projected):
            if "." in column or "[" in column:
                assert "=" in column, f"unnamed projection {column.strip()!r}"


def test_vm_sizes_are_read_from_the_sku_list(replay):
    documented = example("ListAvailableResourceSkusForARegion")
    sub = "00000000-0000-4000-8000-00000000c0de"
    path = f"/subscriptions/{sub}/providers/Microsoft.Compute/skus"
    replay.answer("GET", path, "ListAvailableResourceSkusForARegion")
    sizes = {s["size"]: s for s in inventory.vm_sizes(replay.clients(), sub, ["westus"])}
    assert sizes["Standard_A0"] == {
        "size": "Standard_A0",
        "vcpus": 1,
        "memory_gb": 0.75,
        "gpus": 0,
        "gpu_model": None,
        "gpu_memory_gb": None,
        "family": "standardA0_A7Family",
    }
    assert sizes["Standard_A1"]["memory_gb"] == 1.75
    assert replay.asked[0].query["$filter"] == documented["parameters"]["$filter"]


def test_the_metrics_batch_maps_each_series_to_its_resource(replay):
    documented = example("MetricBatchExample")
    params = documented["parameters"]
    replay.answer(
        "POST", f"/subscriptions/{params['subscriptionId']}/metrics:getBatch", "MetricBatchExample"
    )
    ids = params["batchRequest"]["resourceids"]
    start = datetime.fromisoformat(params["starttime"])
    end = datetime.fromisoformat(params["endtime"])
    answer = metrics.query_batch(
        replay.clients(),
        "eastus",
        ids,
        params["metricnamespace"],
        params["metricnames"].split(","),
        params["aggregation"].split(","),
        start,
        end,
        filter=params["filter"],
        top=str(params["top"]),
    )
    rows: dict[tuple[str, str], list] = {}
    for rid, metric in answer:
        for series in metric["timeseries"]:
            rows.setdefault((rid, metric["name"]["value"]), []).extend(
                metrics.points(rid, metric["name"]["value"], series)
            )
    one, two = (rid.lower() for rid in ids)
    # hours without a value are left out: 12 of GetBlob and 1 of GetBlobServiceProperties
    assert len(rows[(one, "Ingress")]) == 13
    assert [(r["ts"], r["average"]) for r in rows[(two, "Egress")]] == [
        (datetime(2023, 2, 1, 22), 880)
    ]
    sent = replay.asked[0]
    assert sent.body == params["batchRequest"]
    assert set(sent.query) <= set(params)


def test_guest_metrics_are_read_from_resource_managers_metrics_api(replay):
    documented = example("GetMetric")
    params = documented["parameters"]
    resource = "/" + params["resourceUri"]
    replay.answer("GET", f"{resource}/providers/Microsoft.Insights/metrics", "GetMetric")
    first, _, last = params["timespan"].partition("/")
    found = metrics.guest_metrics(
        replay.clients(),
        resource,
        params["metricnamespace"],
        params["metricnames"].split(","),
        datetime.fromisoformat(first),
        datetime.fromisoformat(last),
    )
    assert [m["name"]["value"] for m in found] == ["BlobCount", "BlobCapacity"]
    hot = found[0]["timeseries"][0]
    assert [r["average"] for r in metrics.points(resource, "gpu", hot)] == [7.0] * 5
    sent = replay.asked[0]
    assert set(sent.query) <= set(params)
    assert sent.query["timespan"] == params["timespan"]  # the documented form, to the ms


def test_a_resource_without_the_metrics_has_none(replay):
    """No answer for the resource (here 404): no rows, not a failed batch."""
    rid = "/subscriptions/0/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v"
    now = datetime(2026, 11, 25, tzinfo=UTC)
    assert (
        metrics.guest_metrics(replay.clients(), rid, "Telegraf/nvidia_smi", ["x"], now, now) == []
    )


def test_deployments_are_read_with_model_sku_and_capacity(replay):
    params = example("ListDeployments")["parameters"]
    account_id = (
        f"/subscriptions/{params['subscriptionId']}/resourceGroups/{params['resourceGroupName']}"
        f"/providers/Microsoft.CognitiveServices/accounts/{params['accountName']}"
    )
    replay.answer("GET", account_id + "/deployments", "ListDeployments")
    account = {
        "resource_id": account_id.lower(),
        "name": params["accountName"],
        "location": "eastus",
        "kind": "OpenAI",
    }
    (row,) = openai.deployments(replay.clients(), account)
    assert (row["name"], row["model"], row["model_version"]) == ("deploymentName", "ada", "1")
    assert (row["sku"], row["capacity"]) == ("Standard", 1)
    assert row["resource_id"] == (account_id + "/deployments/deploymentName").lower()


def test_cost_answers_without_a_resource_column_are_refused_in_one_line(replay):
    """The specs' daily query groups by resource group: finops, which stores costs per
    resource, refuses it by name rather than storing costs it cannot attribute."""
    replay.answer(
        "POST", "/subscriptions/0000/providers/Microsoft.CostManagement/query", "SubscriptionQuery"
    )
    with pytest.raises(ValueError, match=r"unexpected columns \['PreTaxCost', 'ResourceGroup'"):
        list(costs.daily(replay.clients(), "0000", date(2018, 3, 1), date(2018, 4, 30), "Usage"))


def test_cost_values_are_read_exactly_in_their_documented_forms():
    """UsageDate is a Number (yyyymmdd), the cost a JSON number read to the micro-unit."""
    body = example("SubscriptionQuery")["responses"]["200"]["body"]["properties"]
    names = [c["name"] for c in body["columns"]]
    row = body["rows"][1]
    assert costs._day(row[names.index("UsageDate")]) == date(2018, 3, 31)
    assert costs._amount(row[names.index("PreTaxCost")]) == Decimal("218.687957")


def test_no_content_is_no_cost(replay):
    """Query_Usage documents 204 No Content: an empty window, no rows and no error."""
    replay.answer(
        "POST",
        "/subscriptions/0000/providers/Microsoft.CostManagement/query",
        "SubscriptionQuery",
        status="204",
    )
    assert (
        list(costs.daily(replay.clients(), "0000", date(2018, 3, 1), date(2018, 3, 2), "x")) == []
    )


# -- the simulator answers as the examples do, in every field finops reads ---------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    return "number" if isinstance(value, int | float) else type(value).__name__


def _shape(value: Any, path: str = "") -> set[tuple[str, str]]:
    """(path, JSON type) of every value; list items share the path `[]`."""
    found = {(path, _kind(value))}
    if isinstance(value, dict):
        for key, item in value.items():
            found |= _shape(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            found |= _shape(item, f"{path}[]")
    return found


# (example, how to ask the simulator the same, the paths finops reads of the answer)
SIM_CHECKS = {
    "ResourcesFirstPageQuery": (
        lambda c, sub, vm: post_json(
            c.resources(sub),  # the same Resource Manager endpoint
            RG_PATH,
            {"api-version": "2021-03-01"},
            {"subscriptions": [sub], "query": inventory.VMS},
        ),
        {".data[].id", ".data[].name", ".data[].location", ".resultTruncated", ".count"},
    ),
    "MetricBatchExample": (
        lambda c, sub, vm: post_json(
            c.metrics(vm["location"]),
            f"/subscriptions/{sub}/metrics:getBatch",
            {
                "api-version": "2024-02-01",
                "metricnamespace": metrics.VM_NAMESPACE,
                "metricnames": metrics.CPU_METRIC,
                "aggregation": "Average,Maximum",
                "interval": "PT1H",
                "starttime": "2026-11-24T00:00:00.000Z",
                "endtime": "2026-11-24T03:00:00.000Z",
            },
            {"resourceids": [vm["resource_id"]]},
        ),
        {
            ".values[].resourceid",
            ".values[].value[].id",
            ".values[].value[].name.value",
            ".values[].value[].timeseries[].data[].timeStamp",
            ".values[].value[].timeseries[].data[].average",
            ".values[].value[].timeseries[].data[].maximum",
            ".values[].value[].errorCode",
        },
    ),
    "GetMetric": (
        lambda c, sub, vm: get_json(
            c.resources(sub),
            vm["resource_id"] + "/providers/Microsoft.Insights/metrics",
            {
                "api-version": "2024-02-01",
                "metricnamespace": "Telegraf/nvidia_smi",
                "metricnames": "utilization_gpu",
                "aggregation": "Average,Maximum",
                "interval": "PT1H",
                "timespan": "2026-11-24T00:00:00.000Z/2026-11-24T03:00:00.000Z",
            },
        ),
        {
            ".value[].name.value",
            ".value[].timeseries[].data[].timeStamp",
            ".value[].timeseries[].data[].average",
            ".value[].timeseries[].data[].maximum",
            ".value[].errorCode",
        },
    ),
}


@pytest.mark.parametrize("name", sorted(SIM_CHECKS))
def test_the_simulator_answers_as_the_example_does(name, clients, estate, sim):
    ask, reads = SIM_CHECKS[name]
    vm = next(
        vm
        for vm in inventory.vms(clients, [s.subscription_id for s in estate.subscriptions])
        if estate.by_id[vm["resource_id"]].gpu is not None
    )
    sim_shape = _shape(ask(clients, vm["subscription_id"], vm))
    azure_shape = _shape(example(name)["responses"]["200"]["body"])
    for path in sorted(reads):
        documented = {kind for p, kind in azure_shape if p == path}
        answered = {kind for p, kind in sim_shape if p == path}
        assert documented, f"{name}: the example has no {path}"
        assert answered and answered <= documented, (
            f"{name}: {path} is {answered} in the simulator, {documented} in Azure's example"
        )


# -- the remediation calls -----------------------------------------------------------------


def _vm(sub: str, group: str, name: str) -> actions.VmRef:
    return actions.VmRef.parse(
        f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"
    )


def test_the_power_state_is_read_from_the_instance_view(replay):
    params = example("VirtualMachine_Get_InstanceView")["parameters"]
    vm = _vm("0000", params["resourceGroupName"], params["vmName"])
    replay.answer("GET", vm.id + "/instanceView", "VirtualMachine_Get_InstanceView")
    compute = replay.clients().compute(vm.subscription_id).virtual_machines
    view = compute.instance_view(vm.resource_group, vm.name)
    assert actions.power_of(view) == "running"


def test_a_schedules_status_is_read_and_one_is_created_in_the_documented_form(replay):
    params = example("GlobalSchedules_Get")["parameters"]
    vm = _vm("0000", params["resourceGroupName"], "gpu-1")
    path = f"/subscriptions/0000/resourceGroups/{vm.resource_group}"
    path += f"/providers/Microsoft.DevTestLab/schedules/{vm.schedule_name}"
    replay.answer("GET", path, "GlobalSchedules_Get")
    replay.answer("PUT", path, "GlobalSchedules_CreateOrUpdate", status="201")
    clients = replay.clients()
    got = clients.devtestlabs("0000").global_schedules.get(vm.resource_group, vm.schedule_name)
    assert got.status == "Enabled"  # what read_live keeps of it
    actions.create_auto_shutdown(clients, vm, "eastus", "1900", "UTC", None)
    sent = replay.asked[-1].body["properties"]
    documented = example("GlobalSchedules_CreateOrUpdate")["parameters"]["schedule"]["properties"]
    assert re.fullmatch(r"\d{4}", documented["weeklyRecurrence"]["time"])  # "0700": HHmm
    assert sent["dailyRecurrence"]["time"] == "1900"
    assert {"status", "timeZoneId", "taskType"} <= set(sent) & set(documented)


@pytest.mark.parametrize("status", ["200", "202"])
def test_tags_are_merged_whether_azure_answers_at_once_or_later(replay, status):
    documented = example("PatchTagsResource")
    scope = documented["parameters"]["scope"]
    vm = actions.VmRef.parse(
        "/" + scope.replace("myPRNameSpace/VM", "Microsoft.Compute/virtualMachines")
    )
    path = f"/{vm.id.lstrip('/')}/providers/Microsoft.Resources/tags/default"
    replay.answer("PATCH", path, "PatchTagsResource", status=status)
    if status == "202":  # polled where the answer's location points, until done
        replay.answer(
            "GET",
            "/subscriptions/00000000-0000-0000-0000-000000000000/operationresults/"
            "c9bbccf4-e16a-4eb7-befb-2e2e5195c347",
            "PatchTagsResource",
        )
    actions.merge_tags(replay.clients(), vm, {"finops-exempt": "false"})
    sent = replay.asked[0].body
    assert set(sent) == set(documented["parameters"]["parameters"])
    assert sent == {"operation": "Merge", "properties": {"tags": {"finops-exempt": "false"}}}
    assert len(replay.asked) == (2 if status == "202" else 1)


@pytest.mark.parametrize("status", ["200", "202"])
def test_a_deallocation_completes_whether_azure_answers_at_once_or_later(replay, status):
    params = example("VirtualMachine_Deallocate_MinimumSet_Gen")["parameters"]
    vm = _vm("0000", params["resourceGroupName"], params["vmName"])
    replay.answer("POST", vm.id + "/deallocate", "VirtualMachine_Deallocate_MinimumSet_Gen", status)
    replay.answer("GET", "/operationstatus", "VirtualMachine_Deallocate_MinimumSet_Gen")
    actions.deallocate(replay.clients(), vm, timeout=30)
    assert [a.method for a in replay.asked] == (["POST", "GET"] if status == "202" else ["POST"])
