"""HTTPS server answering the ARM, Cost Management and Metrics REST calls for a simulated estate.

It follows the REST shapes and api-versions the pinned SDKs send: unknown api-versions get 400
as ARM answers them, lists page by absolute `nextLink`, the metrics batch API takes at most 50
resources of one region. It counts requests per route so tests and the benchmark can measure them.
"""

from __future__ import annotations

import json
import re
import ssl
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import trustme

from finops.catalog import gpu_sizes
from finops.sim.estate import CPU_SIZES, REGIONS, STORAGE_DAILY_COST, Estate

GPU_NAMESPACE = "telegraf/nvidia_smi"
GPU_METRIC = "utilization_gpu"
CPU_NAMESPACE = "microsoft.compute/virtualmachines"
CPU_METRIC = "Percentage CPU"
MAX_BATCH_RESOURCES = 50

Reply = tuple[int, Any, dict[str, str]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Route:
    def __init__(self, name: str, method: str, pattern: str, versions: set[str], handler):
        self.name, self.method, self.versions, self.handler = name, method, versions, handler
        self.regex = re.compile(pattern + r"$", re.IGNORECASE)


class Request:
    def __init__(self, sim: SimServer, path: str, query: dict[str, str], body: Any):
        self.sim, self.path, self.query, self.body = sim, path, query, body

    def page(self, items: list[Any], size: int) -> dict[str, Any]:
        """One page of `items` with an absolute nextLink carrying every original parameter."""
        start = int(self.query.get("$skiptoken", "0") or 0)
        result: dict[str, Any] = {"value": items[start : start + size]}
        if start + size < len(items):
            params = {**self.query, "$skiptoken": str(start + size)}
            result["nextLink"] = f"{self.sim.url}{self.path}?{urlencode(params)}"
        return result


class SimServer:
    """The simulated Azure estate over HTTPS on 127.0.0.1 (a free port unless told)."""

    def __init__(self, estate: Estate, port: int = 0, page_size: int = 25, cost_page_size=200):
        self.estate = estate
        self.page_size = page_size
        self.cost_page_size = cost_page_size
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="finops-sim-")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = str(Path(self._dir.name, "ca.pem"))
        ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread: threading.Thread | None = None
        self.routes = _routes()

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._dir.cleanup()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, route: str) -> None:
        with self._lock:
            self.requests[route] += 1

    def dispatch(self, method: str, raw_path: str, body: bytes) -> tuple[str, Reply]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        for route in self.routes:
            match = route.regex.match(parts.path)
            if not match or route.method != method:
                continue
            version = query.get("api-version")
            if version not in route.versions:
                return route.name, _error(
                    400,
                    "InvalidApiVersionParameter",
                    f"The api-version '{version}' is invalid. The supported versions are "
                    f"'{', '.join(sorted(route.versions))}'.",
                )
            try:
                payload = json.loads(body) if body else None
                request = Request(self, parts.path, query, payload)
                return route.name, route.handler(request, *match.groups())
            except ApiError as e:
                return route.name, _error(e.status, e.code, e.message)
            except (ValueError, KeyError, TypeError) as e:
                return route.name, _error(400, "BadRequest", f"Invalid request: {e}")
        return "unknown", _error(404, "NotFound", f"No route for {method} {parts.path}")


def _error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": code, "message": message}}, {}


def _handler_for(sim: SimServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the job's own logs matter
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not self.headers.get("Authorization", "").startswith("Bearer "):
                name, (status, payload, headers) = (
                    "unauthorized",
                    _error(401, "AuthenticationFailed", "Authentication failed: no bearer token."),
                )
            else:
                name, (status, payload, headers) = sim.dispatch(method, self.path, body)
            sim.count(name)
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", f"sim-{sum(sim.requests.values())}")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

    return Handler


# -- handlers ---------------------------------------------------------------------------------


def _subscription(req: Request, subscription_id: str):
    for sub in req.sim.estate.subscriptions:
        if sub.subscription_id.lower() == subscription_id.lower():
            return sub
    raise ApiError(
        404, "SubscriptionNotFound", f"The subscription '{subscription_id}' could not be found."
    )


def list_subscriptions(req: Request) -> Reply:
    estate = req.sim.estate
    items = [
        {
            "id": f"/subscriptions/{s.subscription_id}",
            "subscriptionId": s.subscription_id,
            "tenantId": estate.tenant_id,
            "displayName": s.display_name,
            "state": "Enabled",
            "subscriptionPolicies": {"spendingLimit": "Off", "quotaId": "EnterpriseAgreement_2014"},
            "authorizationSource": "RoleBased",
        }
        for s in estate.subscriptions
    ]
    return 200, req.page(items, req.sim.page_size), {}


def _power_status(state: str) -> list[dict[str, str]]:
    display = {"running": "VM running", "stopped": "VM stopped", "deallocated": "VM deallocated"}
    provisioned = "Provisioning succeeded"
    return [
        {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": provisioned},
        {"code": f"PowerState/{state}", "level": "Info", "displayStatus": display[state]},
    ]


def list_vms(req: Request, subscription_id: str) -> Reply:
    sub = _subscription(req, subscription_id)
    status_only = req.query.get("statusOnly", "").lower() == "true"
    items = []
    for vm in req.sim.estate.vms_in(sub.subscription_id):
        item: dict[str, Any] = {
            "name": vm.name,
            "id": vm.id,
            "type": "Microsoft.Compute/virtualMachines",
            "location": vm.location,
        }
        if status_only:
            item["properties"] = {"instanceView": {"statuses": _power_status(vm.power_state)}}
        else:
            if vm.tags:
                item["tags"] = dict(vm.tags)
            item["properties"] = {
                "vmId": f"{vm.index:08d}-0000-4000-8000-{req.sim.estate.seed:012d}",
                "hardwareProfile": {"vmSize": vm.size},
                "storageProfile": {"osDisk": {"osType": vm.os_type, "name": f"{vm.name}_OsDisk"}},
                "priority": vm.priority,
                "provisioningState": "Succeeded",
                "timeCreated": "2026-01-05T09:00:00+00:00",
            }
        items.append(item)
    return 200, req.page(items, req.sim.page_size), {}


def list_skus(req: Request, subscription_id: str) -> Reply:
    _subscription(req, subscription_id)
    match = re.fullmatch(r"\s*location\s+eq\s+'([^']+)'\s*", req.query.get("$filter", ""))
    locations = [match.group(1).lower()] if match else list(REGIONS)
    items = []
    for location in locations:
        for gpu in gpu_sizes().values():
            caps = {"vCPUs": gpu.vcpus, "GPUs": max(1, int(gpu.gpus)), "MemoryGB": gpu.vcpus * 9}
            items.append(_sku(gpu.size, gpu.quota_family, location, caps))
        for size, (vcpus, memory, _, family) in CPU_SIZES.items():
            items.append(_sku(size, family, location, {"vCPUs": vcpus, "MemoryGB": memory}))
        items.append(
            {
                "resourceType": "disks",
                "name": "Premium_LRS",
                "tier": "Premium",
                "kind": "",
                "locations": [location],
                "capabilities": [{"name": "MaxSizeGiB", "value": "4"}],
                "restrictions": [],
            }
        )
    return 200, {"value": items}, {}


def _sku(size: str, family: str, location: str, caps: dict[str, int]) -> dict[str, Any]:
    return {
        "resourceType": "virtualMachines",
        "name": size,
        "tier": "Standard",
        "size": size.removeprefix("Standard_"),
        "family": family,
        "locations": [location],
        "locationInfo": [{"location": location, "zones": ["1", "2", "3"]}],
        "capabilities": [{"name": k, "value": str(v)} for k, v in caps.items()],
        "restrictions": [],
    }


def list_usages(req: Request, subscription_id: str, location: str) -> Reply:
    sub = _subscription(req, subscription_id)
    estate = req.sim.estate
    used = estate.quota_usage()
    items = []
    total = 0
    for (sid, loc, family), value in sorted(used.items()):
        if sid != sub.subscription_id or loc != location.lower():
            continue
        total += value
        items.append(
            {
                "unit": "Count",
                "currentValue": value,
                "limit": estate.quota_limits[(sid, loc, family)],
                "name": {"value": family, "localizedValue": f"{family} vCPUs"},
            }
        )
    items.insert(
        0,
        {
            "unit": "Count",
            "currentValue": total,
            "limit": 5000,
            "name": {"value": "cores", "localizedValue": "Total Regional vCPUs"},
        },
    )
    return 200, req.page(items, 100), {}


def list_schedules(req: Request, subscription_id: str) -> Reply:
    sub = _subscription(req, subscription_id)
    items = []
    for vm in req.sim.estate.vms_in(sub.subscription_id):
        if vm.schedule is None:
            continue
        items.append(
            {
                "id": (
                    f"/subscriptions/{vm.subscription_id}/resourcegroups/{vm.resource_group}"
                    f"/providers/microsoft.devtestlab/schedules/shutdown-computevm-{vm.name}"
                ),
                "name": f"shutdown-computevm-{vm.name}",
                "type": "microsoft.devtestlab/schedules",
                "location": vm.location,
                "properties": {
                    "status": vm.schedule,
                    "taskType": "ComputeVmShutdownTask",
                    "dailyRecurrence": {"time": "1900"},
                    "timeZoneId": "UTC",
                    "notificationSettings": {"status": "Disabled", "timeInMinutes": 30},
                    "createdDate": "2026-01-05T09:00:00+00:00",
                    "targetResourceId": vm.id,
                    "provisioningState": "Succeeded",
                },
            }
        )
    return 200, req.page(items, req.sim.page_size), {}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def metrics_batch(req: Request, subscription_id: str) -> Reply:
    sub = _subscription(req, subscription_id)
    estate = req.sim.estate
    ids = (req.body or {}).get("resourceids") or []
    if not ids or len(ids) > MAX_BATCH_RESOURCES:
        raise ApiError(400, "BadRequest", f"resourceids must hold 1 to {MAX_BATCH_RESOURCES} ids.")
    namespace = req.query["metricnamespace"].lower()
    names = [n.strip() for n in req.query["metricnames"].split(",")]
    if req.query.get("interval", "PT1H").upper() != "PT1H":
        raise ApiError(400, "BadRequest", "The simulator serves hourly metrics only (PT1H).")
    start = datetime.fromisoformat(req.query["starttime"]).astimezone(UTC)
    end = datetime.fromisoformat(req.query["endtime"]).astimezone(UTC)
    aggregations = [a.strip().lower() for a in req.query.get("aggregation", "average").split(",")]
    if namespace == CPU_NAMESPACE and names == [CPU_METRIC]:
        metric, unit = "cpu", "Percent"
    elif namespace == GPU_NAMESPACE and names == [GPU_METRIC]:
        metric, unit = "gpu", "Percent"
    else:
        raise ApiError(
            400, "BadRequest", f"Failed to find metric configuration for {namespace}: {names}."
        )
    vms = []
    for rid in ids:
        vm = estate.by_id.get(rid.lower())
        if vm is None or vm.subscription_id != sub.subscription_id:
            raise ApiError(400, "BadRequest", f"Resource {rid} is not in this subscription.")
        vms.append(vm)
    if len({vm.location for vm in vms}) > 1:
        raise ApiError(400, "BadRequest", "All resources of a batch must be in one region.")
    hours = []
    moment = start.replace(minute=0, second=0, microsecond=0)
    while moment < end:
        hours.append(moment)
        moment += timedelta(hours=1)
    values = []
    for rid, vm in zip(ids, vms, strict=True):
        series_values = []
        if metric == "cpu" or vm.gpu is not None:
            data = []
            for hour in hours:
                point: dict[str, Any] = {"timeStamp": _iso(hour)}
                sample = estate.hourly(vm, metric, hour)
                if sample is not None:
                    if "average" in aggregations:
                        point["average"] = sample[0]
                    if "maximum" in aggregations:
                        point["maximum"] = sample[1]
                data.append(point)
            series_values.append(
                {
                    "id": f"{rid}/providers/Microsoft.Insights/metrics/{names[0]}",
                    "type": "Microsoft.Insights/metrics",
                    "name": {"value": names[0], "localizedValue": names[0]},
                    "displayDescription": "",
                    "unit": unit,
                    "timeseries": [{"metadatavalues": [], "data": data}],
                    "errorCode": "Success",
                }
            )
        values.append(
            {
                "starttime": _iso(start),
                "endtime": _iso(end),
                "interval": "PT1H",
                "namespace": req.query["metricnamespace"],
                "resourceregion": vm.location,
                "resourceid": rid,
                "value": series_values,
            }
        )
    return 200, {"values": values}, {}


def cost_query(req: Request, scope: str) -> Reply:
    match = re.fullmatch(r"subscriptions/([^/]+)", scope.strip("/"), re.IGNORECASE)
    if not match:
        raise ApiError(
            400, "BadRequest", f"The simulator answers subscription scopes, not {scope}."
        )
    sub = _subscription(req, match.group(1))
    estate = req.sim.estate
    body = req.body or {}
    if body.get("type") not in ("ActualCost", "AmortizedCost", "Usage"):
        raise ApiError(400, "BadRequest", "type must be ActualCost, AmortizedCost or Usage.")
    dataset = body["dataset"]
    if body.get("timeframe") != "Custom" or dataset.get("granularity") != "Daily":
        raise ApiError(400, "BadRequest", "The simulator answers Custom timeframes, Daily.")
    first = datetime.fromisoformat(body["timePeriod"]["from"]).date()
    last = datetime.fromisoformat(body["timePeriod"]["to"]).date()
    (alias,) = dataset["aggregation"].values()
    groups = [g["name"] for g in dataset.get("grouping", [])]
    if not set(groups) <= {"ResourceId", "MeterCategory", "ServiceName"}:
        raise ApiError(400, "BadRequest", f"Unsupported grouping {groups}.")
    rows = []
    day = first
    while day <= min(last, estate.now.date()):
        number = int(day.strftime("%Y%m%d"))
        for vm in estate.vms_in(sub.subscription_id):
            cost = estate.daily_cost(vm, day)
            if cost:
                rows.append(_cost_row(cost, number, vm.id.lower(), "Virtual Machines", groups))
        storage = estate.storage_account_id(sub.subscription_id).lower()
        rows.append(_cost_row(STORAGE_DAILY_COST, number, storage, "Storage", groups))
        day += timedelta(days=1)
    columns = [{"name": alias["name"], "type": "Number"}, {"name": "UsageDate", "type": "Number"}]
    columns += [{"name": g, "type": "String"} for g in groups]
    columns.append({"name": "Currency", "type": "String"})
    page = req.page(rows, req.sim.cost_page_size)
    return (
        200,
        {
            "id": f"subscriptions/{sub.subscription_id}/query/sim",
            "name": "sim",
            "type": "Microsoft.CostManagement/query",
            "properties": {
                "nextLink": page.get("nextLink"),
                "columns": columns,
                "rows": page["value"],
            },
        },
        {},
    )


def _cost_row(cost, number: int, rid: str, category: str, groups: list[str]) -> list[Any]:
    values = {"ResourceId": rid, "MeterCategory": category, "ServiceName": category}
    return [float(cost), number, *(values[g] for g in groups), "USD"]


def _routes() -> list[Route]:
    sub = r"/subscriptions/([^/]+)"
    table: list[tuple[str, str, str, set[str], Callable[..., Reply]]] = [
        ("subscriptions", "GET", r"/subscriptions", {"2022-12-01"}, list_subscriptions),
        (
            "vms",
            "GET",
            sub + r"/providers/Microsoft\.Compute/virtualMachines",
            {"2026-04-01"},
            list_vms,
        ),
        ("skus", "GET", sub + r"/providers/Microsoft\.Compute/skus", {"2021-07-01"}, list_skus),
        (
            "usages",
            "GET",
            sub + r"/providers/Microsoft\.Compute/locations/([^/]+)/usages",
            {"2026-04-01"},
            list_usages,
        ),
        (
            "schedules",
            "GET",
            sub + r"/providers/Microsoft\.DevTestLab/schedules",
            {"2018-09-15"},
            list_schedules,
        ),
        ("metrics", "POST", sub + r"/metrics:getBatch", {"2024-02-01"}, metrics_batch),
        (
            "costs",
            "POST",
            r"/(.+)/providers/Microsoft\.CostManagement/query",
            {"2025-03-01"},
            cost_query,
        ),
    ]
    return [Route(*row) for row in table]
