"""HTTPS server answering the ARM, Cost Management and Metrics REST calls for a simulated estate.

It follows the REST shapes and api-versions the pinned SDKs send: unknown api-versions get 400
as ARM answers them, lists page by absolute `nextLink`, the metrics batch API takes at most 50
resources of one region. It counts requests per route so tests and the benchmark can measure them.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import trustme

from finops import clock
from finops.catalog import gpu_sizes
from finops.sim.estate import CPU_SIZES, STORAGE_DAILY_COST, Estate, SimDisk
from finops.sim.kql import KqlChecker

GPU_NAMESPACE = "Telegraf/nvidia_smi"  # as Telegraf names it: "Telegraf/<input>"
GPU_METRIC = "utilization_gpu"
GPU_MEMORY_METRIC = "memory_used"  # MiB per GPU, as Telegraf's nvidia_smi input reports it
CPU_NAMESPACE = "microsoft.compute/virtualmachines"
CPU_METRIC = "Percentage CPU"
AI_NAMESPACE = "microsoft.cognitiveservices/accounts"
MAX_BATCH_RESOURCES = 50
QUERIES_KEPT = 32  # cost and Resource Graph queries whose rows are kept for their next pages

Reply = tuple[int, Any, dict[str, str]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


@dataclass
class Fault:
    """A fault for requests of `route` whose path or body (a Resource Graph query's text)
    contains `match`: after letting `skip` of them through, `count` of them (None: all) wait
    `delay` seconds, then get `status` with `headers`, or (`kind`) have their connection
    reset or their JSON body cut in half."""

    route: str
    status: int | None = None
    match: str = ""
    count: int | None = 1
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "status"  # status | reset | truncate
    skip: int = 0


@dataclass
class Budgets:
    """Azure's throttling, when asked for: Resource Graph's per-user quota (`graph_queries` a
    `graph_window`), Resource Manager's per-subscription read bucket (`arm_reads`, refilled
    `arm_refill` a second), Cost Management's QPU per minute, each with the headers Azure sends
    on every answer and a 429 past the budget (see finops/azure/throttle.py for the sources)."""

    graph_queries: int = 15
    graph_window: float = 5.0
    arm_reads: int = 250
    arm_refill: float = 25.0
    qpu_per_minute: int = 60
    throttled: Counter = field(default_factory=Counter)  # 429s answered, by budget
    _graph: list[float] = field(default_factory=list)
    _arm: dict[str, tuple[float, float]] = field(default_factory=dict)
    _qpu: list[float] = field(default_factory=list)

    def spend(self, route: str, method: str, path: str) -> tuple[str | None, dict[str, str]]:
        """(the budget that throttled it, or None, and the headers) for one request, its
        budget spent where it is admitted."""
        now = time.monotonic()
        if route == "graph":
            admitted = _admit(self._graph, self.graph_queries, self.graph_window, now)
            resets = (
                self.graph_window - (now - self._graph[0]) if self._graph else self.graph_window
            )
            left = self.graph_queries - len(self._graph)
            hours, rest = divmod(max(resets, 0.0), 3600)
            minutes, seconds = divmod(rest, 60)
            stamp = f"{int(hours):02d}:{int(minutes):02d}:{seconds:06.3f}"
            headers = {
                "x-ms-user-quota-remaining": str(left),
                "x-ms-user-quota-resets-after": stamp,
            }
            return self._count(not admitted, "graph"), headers
        if route == "costs":
            admitted = _admit(self._qpu, self.qpu_per_minute, 60.0, now)
            left = self.qpu_per_minute - len(self._qpu)
            headers = {
                "x-ms-ratelimit-microsoft.costmanagement-qpu-consumed": "1" if admitted else "0",
                "x-ms-ratelimit-microsoft.costmanagement-qpu-remaining": f"QueriesPerMin:{left}",
            }
            if not admitted:
                wait = 60 - (now - self._qpu[0])
                headers["x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after"] = f"{wait:.0f}"
            return self._count(not admitted, "costs"), headers
        match = re.match(r"/subscriptions/([^/]+)", path, re.IGNORECASE)
        if method != "GET" or not match:
            return None, {}
        sub = match.group(1).lower()
        tokens, then = self._arm.get(sub, (float(self.arm_reads), now))
        tokens = min(float(self.arm_reads), tokens + (now - then) * self.arm_refill)
        admitted = tokens >= 1
        if admitted:
            tokens -= 1
        self._arm[sub] = (tokens, now)
        headers = {"x-ms-ratelimit-remaining-subscription-reads": str(int(tokens))}
        if not admitted:
            headers["Retry-After"] = str(max(1, round(1 / self.arm_refill)))
        return self._count(not admitted, "arm"), headers

    def _count(self, throttled: bool, budget: str) -> str | None:
        if not throttled:
            return None
        self.throttled[budget] += 1
        return budget


def _admit(times: list[float], limit: int, window: float, now: float) -> bool:
    """A sliding window of `limit` requests a `window` of seconds: `times` keeps the
    admitted ones still in it; the oldest is first."""
    times[:] = [t for t in times if now - t < window]
    if len(times) >= limit:
        return False
    times.append(now)
    return True


THROTTLED_CODES = {"graph": "RateLimiting", "costs": "429", "arm": "TooManyRequests"}


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

    def __init__(
        self,
        estate: Estate,
        port: int = 0,
        page_size: int = 25,
        cost_page_size: int = 200,
        prices_page_size: int = 5,
        kql: KqlChecker | None = None,
        budgets: Budgets | None = None,
    ):
        self.estate = estate
        self.budgets = budgets  # Azure's throttling, where a test asks for it
        # Microsoft's Kusto parser, where installed: Resource Graph refuses what it rejects
        self.kql = kql or KqlChecker.find()
        self.page_size = page_size
        self.prices_page_size = prices_page_size
        # the rows of the latest cost queries (several run at once), for their next pages
        self.cost_pages: dict[str, list] = {}
        self.cost_page_size = cost_page_size
        # the rows of the latest Resource Graph queries, by the token of their next page
        self.graph_results: dict[str, list] = {}
        self.requests: Counter[str] = Counter()
        # (subscription, cost type, first day, last day) of each cost query asked
        self.cost_periods: list[tuple[str, str, Any, Any]] = []
        self.faults: list[Fault] = []
        self.operation_seconds = 0.0  # how long a deallocation stays InProgress
        self.operations: dict[str, float] = {}  # operation id -> when it started
        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="finops-sim-")
        self._httpd, self.ca_file = https_server(_handler_for(self), port, self._dir.name)
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

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requests)

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _fault_for(self, route: str, text: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.route == route and fault.match.lower() in text.lower():
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def dispatch(self, method: str, raw_path: str, body: bytes) -> tuple[str, Reply, str]:
        """(route name, reply, how to send it: status | reset | truncate)."""
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        for route in self.routes:
            match = route.regex.match(parts.path)
            if not match or route.method != method:
                continue
            version = query.get("api-version")
            if version not in route.versions:
                supported = ", ".join(sorted(route.versions))
                message = (
                    f"The api-version '{version}' is invalid. "
                    f"The supported versions are '{supported}'."
                )
                return route.name, _error(400, "InvalidApiVersionParameter", message), "status"
            spent: dict[str, str] = {}
            if self.budgets is not None:
                with self._lock:
                    throttled, spent = self.budgets.spend(route.name, method, parts.path)
                if throttled:
                    code = THROTTLED_CODES[throttled]
                    status, payload, _ = _error(429, code, "Rate limit exceeded. Retry later.")
                    return route.name, (status, payload, spent), "status"
            fault = self._fault_for(route.name, parts.path + body.decode(errors="replace"))
            if fault and fault.delay:
                time.sleep(fault.delay)
            if fault and fault.status:
                reply = _error(fault.status, "InjectedFault", f"simulated {fault.status}")
                return route.name, (reply[0], reply[1], dict(fault.headers)), "status"
            try:
                payload = json.loads(body) if body else None
                request = Request(self, parts.path, query, payload)
                reply = route.handler(request, *match.groups())
            except ApiError as e:
                reply = _error(e.status, e.code, e.message, e.details)
            except (ValueError, KeyError, TypeError) as e:
                reply = _error(400, "BadRequest", f"Invalid request: {e}")
            reply = (reply[0], reply[1], {**spent, **reply[2]})
            return route.name, reply, fault.kind if fault else "status"
        return "unknown", _error(404, "NotFound", f"No route for {method} {parts.path}"), "status"


def https_server(
    handler: type[BaseHTTPRequestHandler], port: int, folder: str
) -> tuple[ThreadingHTTPServer, str]:
    """A threading HTTPS server on 127.0.0.1 (a free port for 0) with a certificate made at
    start, and the CA file that trusts it, written into `folder`."""
    ca = trustme.CA()
    ca_file = str(Path(folder, "ca.pem"))
    ca.cert_pem.write_to_path(ca_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    return httpd, ca_file


def _error(status: int, code: str, message: str, details: list | None = None) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return status, {"error": error}, {}


def _handler_for(sim: SimServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes

        def log_message(self, *args) -> None:  # quiet: the job's own logs matter
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            how = "status"
            if self.path == "/_sim/requests":  # the counts, for the benchmark: not counted
                self._send(200, sim.request_counts(), {})
                return
            public = self.path.startswith("/api/retail/")  # the Retail Prices API: no auth
            if not public and not self.headers.get("Authorization", "").startswith("Bearer "):
                name = "unauthorized"
                status, payload, headers = _error(
                    401, "AuthenticationFailed", "Authentication failed: no bearer token."
                )
            else:
                name, (status, payload, headers), how = sim.dispatch(method, self.path, body)
            sim.count(name)
            if how == "reset":  # the connection drops without an answer
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send(status, payload, headers, truncate=how == "truncate")

        def _send(self, status: int, payload: Any, headers: dict, truncate: bool = False) -> None:
            data = json.dumps(payload).encode() if payload is not None else b""
            if truncate:
                data = data[: len(data) // 2]
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

        def do_DELETE(self) -> None:
            self._serve("DELETE")

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
    """The instance view statuses; an empty state leaves the power state out, as Azure does
    for a VM whose agent has not reported it."""
    provisioned = "Provisioning succeeded"
    statuses = [
        {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": provisioned}
    ]
    if state:
        display = f"VM {state}"
        statuses.append({"code": f"PowerState/{state}", "level": "Info", "displayStatus": display})
    return statuses


def _vm_item(vm, seed: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": vm.name,
        "id": vm.id,
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
    }
    if vm.tags:
        item["tags"] = dict(vm.tags)
    item["properties"] = {
        "vmId": f"{vm.index:08d}-0000-4000-8000-{seed:012d}",
        "hardwareProfile": {"vmSize": vm.size},
        "storageProfile": {"osDisk": {"osType": vm.os_type, "name": f"{vm.name}_OsDisk"}},
        "priority": vm.priority,
        "provisioningState": "Succeeded",
        "timeCreated": "2026-01-05T09:00:00+00:00",
    }
    return item


def list_vms(req: Request, subscription_id: str) -> Reply:
    sub = _subscription(req, subscription_id)
    status_only = req.query.get("statusOnly", "").lower() == "true"
    items = []
    for vm in req.sim.estate.vms_in(sub.subscription_id):
        if status_only:
            item: dict[str, Any] = {
                "name": vm.name,
                "id": vm.id,
                "type": "Microsoft.Compute/virtualMachines",
                "location": vm.location,
                "properties": {"instanceView": {"statuses": _power_status(vm.power_state)}},
            }
        else:
            item = _vm_item(vm, req.sim.estate.seed)
        items.append(item)
    return 200, req.page(items, req.sim.page_size), {}


def _disk_item(disk: SimDisk, now: datetime) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": disk.name,
        "id": disk.id,
        "type": "Microsoft.Compute/disks",
        "location": disk.location,
        "sku": {"name": disk.sku, "tier": disk.sku.split("_")[0].removesuffix("SSD")},
        "properties": {
            "creationData": {"createOption": "FromImage" if disk.vm else "Empty"},
            "diskSizeGB": disk.size_gb,
            "timeCreated": "2026-01-05T09:00:00+00:00",
            "provisioningState": "Succeeded",
            "diskState": disk.state,
            # capitalised on the wire, as Azure sends it (the SDK reads this spelling)
            "LastOwnershipUpdateTime": _iso(now - timedelta(hours=disk.owner_changed_h)),
        },
    }
    if disk.name.endswith("_OsDisk"):
        item["properties"]["osType"] = disk.vm.os_type if disk.vm else "Linux"
    if disk.vm is not None:
        item["managedBy"] = disk.vm.id
    if disk.vm is not None and disk.vm.tags:
        item["tags"] = dict(disk.vm.tags)
    return item


# The simulator's own price ratios for the Retail Prices API (near typical Azure GPU discounts,
# not Azure's figures): spot and reservations as a share of the pay-as-you-go price.
SPOT_SHARE = Decimal("0.30")
RESERVATION_SHARE = {"1 Year": (Decimal("0.62"), 8760), "3 Years": (Decimal("0.40"), 26280)}
WINDOWS_PER_VCPU_HOUR = Decimal("0.046")
# the simulator's own exchange rates (not Azure's) for the currencies it prices in
RETAIL_RATES = {"USD": Decimal(1), "EUR": Decimal("0.92"), "GBP": Decimal("0.79")}
NON_PRIMARY_SHARE = Decimal("1.10")  # the same meter billed from another region's meter
RETAIL_FIELDS = {"serviceName", "armRegionName", "armSkuName", "priceType"}


REGION_NAMES = {
    "eastus": "US East",
    "westeurope": "EU West",
    "westus3": "US West 3",
    "swedencentral": "Sweden Central",
}


def _retail_items(region: str, size: str, currency: str = "USD") -> list[dict[str, Any]]:
    gpu = gpu_sizes().get(size.lower())
    if gpu is None or gpu.usd_per_hour is None or region not in REGION_NAMES:
        return []
    name = gpu.size.removeprefix("Standard_").replace("_", " ")
    series = f"Virtual Machines {name.split()[0].rstrip('0123456789')} Series"
    payg = gpu.usd_per_hour
    windows = payg + WINDOWS_PER_VCPU_HOUR * gpu.vcpus
    rows = [
        ("Consumption", None, name, series, payg),
        ("Consumption", None, name, f"{series} Windows", windows),
        ("Consumption", None, f"{name} Spot", series, payg * SPOT_SHARE),
        ("Consumption", None, f"{name} Spot", f"{series} Windows", windows * SPOT_SHARE),
        ("Consumption", None, f"{name} Low Priority", series, payg * SPOT_SHARE),
        ("DevTestConsumption", None, name, series, payg),
    ]
    rows += [
        ("Reservation", term, name, series, payg * share * hours)
        for term, (share, hours) in RESERVATION_SHARE.items()
    ]
    rate = RETAIL_RATES[currency]
    items = []
    for kind, term, sku, product, price in rows:
        price = (price * rate).quantize(Decimal("0.0001"))
        item = {
            "currencyCode": currency,
            "tierMinimumUnits": 0.0,
            "retailPrice": float(price),
            "unitPrice": float(price),
            "armRegionName": region,
            "location": REGION_NAMES[region],
            "effectiveStartDate": "2026-01-01T00:00:00Z",
            "meterId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{region}/{sku}/{product}/{kind}")),
            "meterName": sku,
            "productId": f"DZH318Z0{zlib.crc32(product.encode()) % 10_000:04d}",
            "skuId": f"DZH318Z0/{zlib.crc32(sku.encode()) % 1_000:04d}",
            "productName": product,
            "skuName": sku,
            "serviceName": "Virtual Machines",
            "serviceId": "DZH313Z7MMC8",
            "serviceFamily": "Compute",
            "unitOfMeasure": "1 Hour",
            "type": kind,
            "isPrimaryMeterRegion": True,
            "armSkuName": gpu.size,
        }
        if term:
            item["reservationTerm"] = term
        items.append(item)
    # a row of the same offer from a non-primary meter region, as the API lists unless asked
    # for meterRegion='primary'
    other = dict(items[0], isPrimaryMeterRegion=False)
    other["retailPrice"] = other["unitPrice"] = float(
        (Decimal(str(other["unitPrice"])) * NON_PRIMARY_SHARE).quantize(Decimal("0.0001"))
    )
    other["meterId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{other['meterId']}/non-primary"))
    items.append(other)
    return items


def _quoted(req: Request, name: str) -> str | None:
    """A parameter in the documented form, `currencyCode='EUR'`; unquoted it is not read."""
    value = req.query.get(name, "")
    if len(value) > 1 and value[0] == value[-1] == "'":
        return value[1:-1]
    return None


def retail_prices(req: Request) -> Reply:
    """The Retail Prices API (no auth): `$filter` with `eq` clauses joined by `and`, values
    case-sensitive as in api-version 2023-01-01-preview; pages of `$top` items (1000 in Azure)
    linked by an absolute `NextPageLink` with `$skip`."""
    text = req.query.get("$filter", "")
    clauses = re.split(r"\s+and\s+", text.strip()) if text.strip() else []
    wanted: dict[str, str] = {}
    for clause in clauses:
        match = re.fullmatch(r"(\w+) eq '([^']*)'", clause.strip())
        if not match or match.group(1) not in RETAIL_FIELDS:
            raise ApiError(400, "BadRequest", f"Invalid filter clause: {clause}")
        wanted[match.group(1)] = match.group(2)
    if wanted.get("serviceName") != "Virtual Machines" or not {
        "armRegionName",
        "armSkuName",
    } <= set(wanted):
        items: list[dict[str, Any]] = []  # the simulator prices GPU VM sizes only
    else:
        currency = _quoted(req, "currencyCode") or "USD"  # USD: the API's default
        if currency not in RETAIL_RATES:
            raise ApiError(400, "BadRequest", f"Invalid currency code {currency}.")
        items = _retail_items(wanted["armRegionName"], wanted["armSkuName"], currency)
        items = [i for i in items if i["armSkuName"] == wanted["armSkuName"]]
        if _quoted(req, "meterRegion") == "primary":
            items = [i for i in items if i["isPrimaryMeterRegion"]]
    if "priceType" in wanted:
        items = [i for i in items if i["type"] == wanted["priceType"]]
    skip = int(req.query.get("$skip", "0") or 0)
    size = req.sim.prices_page_size
    page = items[skip : skip + size]
    link = None
    if skip + size < len(items):
        link = f"{req.sim.url}{req.path}?{urlencode({**req.query, '$skip': str(skip + size)})}"
    body = {
        "BillingCurrency": "USD",
        "CustomerEntityId": "Default",
        "CustomerEntityType": "Retail",
        "Items": page,
        "NextPageLink": link,
        "Count": len(page),
    }
    return 200, body, {}


def list_skus(req: Request, subscription_id: str) -> Reply:
    _subscription(req, subscription_id)
    match = re.fullmatch(r"\s*location\s+eq\s+'([^']+)'\s*", req.query.get("$filter", ""))
    locations = [match.group(1).lower()] if match else list(req.sim.estate.regions)
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
    used = estate.quota_usage(sub.subscription_id)
    if not any(loc == location.lower() for sid, loc, _ in used if sid == sub.subscription_id):
        # the documented answer for a subscription without usage in the region
        raise ApiError(
            409,
            "SubscriptionHasNoUsages",
            f"Subscription {sub.subscription_id} has no usages in location {location}.",
        )
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
                "limit": estate.quota_limits.get((sid, loc, family), estate.default_quota(value)),
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


def _schedule_items(vms) -> list[dict[str, Any]]:
    items = []
    for vm in vms:
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
                    "dailyRecurrence": {"time": vm.schedule_time},
                    "timeZoneId": vm.schedule_time_zone,
                    "notificationSettings": {"status": "Disabled", "timeInMinutes": 30},
                    "createdDate": "2026-01-05T09:00:00+00:00",
                    "targetResourceId": vm.id,
                    "provisioningState": "Succeeded",
                },
            }
        )
    return items


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# platform metrics of VMs, and Telegraf's (nvidia_smi input, azure_monitor output) custom ones
VM_METRICS = {
    (CPU_NAMESPACE, CPU_METRIC.lower()): ("cpu", "Percent"),
    (GPU_NAMESPACE.lower(), GPU_METRIC): ("gpu", "Percent"),
    (GPU_NAMESPACE.lower(), GPU_MEMORY_METRIC): ("gpu_memory", "Unspecified"),
}


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hours = []
    moment = start.replace(minute=0, second=0, microsecond=0)
    while moment < end:
        hours.append(moment)
        moment += timedelta(hours=1)
    return hours


def _metric_query(req: Request) -> tuple[str, list[str], list[str]]:
    """(namespace lower-cased, metric names, aggregations lower-cased) of a metrics query."""
    if req.query.get("interval", "PT1H").upper() != "PT1H":
        raise ApiError(400, "BadRequest", "The simulator serves hourly metrics only (PT1H).")
    namespace = req.query["metricnamespace"].lower()
    names = [n.strip() for n in req.query["metricnames"].split(",")]
    aggregations = [a.strip().lower() for a in req.query.get("aggregation", "average").split(",")]
    return namespace, names, aggregations


def _vm_metrics(estate, vm, rid, namespace, names, hours, aggregations) -> list[dict[str, Any]]:
    """One VM's metrics as Azure Monitor lists them (a value per metric, one time series)."""
    stamps = [_iso(hour) for hour in hours]
    found = []
    for name in names:
        metric, unit = VM_METRICS[(namespace, name.lower())]
        data = []
        for stamp, sample in zip(stamps, estate.hourly(vm, metric, hours), strict=True):
            point: dict[str, Any] = {"timeStamp": stamp}
            if sample is not None:
                if "average" in aggregations:
                    point["average"] = sample[0]
                if "maximum" in aggregations:
                    point["maximum"] = sample[1]
            data.append(point)
        found.append(
            {
                "id": f"{rid}/providers/Microsoft.Insights/metrics/{name}",
                "type": "Microsoft.Insights/metrics",
                "name": {"value": name, "localizedValue": name},
                "displayDescription": "",
                "unit": unit,
                "timeseries": [{"metadatavalues": [], "data": data}],
                "errorCode": "Success",
            }
        )
    return found


def _no_configuration(namespace: str, name: str) -> ApiError:
    """Azure Monitor's answer for a metric it holds no configuration of (as quoted in
    Azure/azure-sdk-for-net#29584)."""
    provider, _, kind = namespace.partition("/")
    return ApiError(
        400,
        "BadRequest",
        f"Failed to find metric configuration for provider: {provider}, resource Type: {kind}, "
        f"metric: {name}, Valid metrics: ",
    )


def _check_known(namespace: str, names: list[str]) -> None:
    unknown = [name for name in names if (namespace, name.lower()) not in VM_METRICS]
    if unknown:
        raise _no_configuration(namespace, unknown[0])


def metrics_batch(req: Request, subscription_id: str) -> Reply:
    sub = _subscription(req, subscription_id)
    estate = req.sim.estate
    ids = (req.body or {}).get("resourceids") or []
    if not ids or len(ids) > MAX_BATCH_RESOURCES:
        raise ApiError(400, "BadRequest", f"resourceids must hold 1 to {MAX_BATCH_RESOURCES} ids.")
    namespace, names, aggregations = _metric_query(req)
    start = datetime.fromisoformat(req.query["starttime"]).astimezone(UTC)
    end = datetime.fromisoformat(req.query["endtime"]).astimezone(UTC)
    if namespace == AI_NAMESPACE:
        return _ai_metrics(req, ids, names, _hours(start, end), aggregations)
    if namespace != CPU_NAMESPACE:
        # Microsoft Learn, azure-monitor/metrics/migrate-to-batch-api: "The metrics:getBatch API
        # doesn't support querying custom metrics, or queries where the metric namespace name
        # isn't a resource type"
        raise ApiError(
            400,
            "BadRequest",
            f"Metric namespace {req.query['metricnamespace']} is not a resource type: "
            "metrics:getBatch does not serve custom metrics.",
        )
    _check_known(namespace, names)
    vms = []
    for rid in ids:
        vm = estate.by_id.get(rid.lower())
        if vm is None or vm.subscription_id != sub.subscription_id:
            raise ApiError(400, "BadRequest", f"Resource {rid} is not in this subscription.")
        vms.append(vm)
    if len({vm.location for vm in vms}) > 1:
        raise ApiError(400, "BadRequest", "All resources of a batch must be in one region.")
    hours = _hours(start, end)
    values = [
        {
            "starttime": _iso(start),
            "endtime": _iso(end),
            "interval": "PT1H",
            "namespace": req.query["metricnamespace"],
            "resourceregion": vm.location,
            "resourceid": rid,
            "value": _vm_metrics(estate, vm, rid, namespace, names, hours, aggregations),
        }
        for rid, vm in zip(ids, vms, strict=True)
    ]
    return 200, {"values": values}, {}


def resource_metrics(req: Request, subscription_id: str, group: str, name: str) -> Reply:
    """Resource Manager's metrics of one VM (Microsoft.Insights/metrics, as in the REST specs'
    GetMetric.json): platform and custom namespaces alike. A VM without Telegraf has no custom
    metrics, and Azure answers 400 for metrics it holds no configuration of."""
    vm = _vm(req, subscription_id, group, name)
    namespace, names, aggregations = _metric_query(req)
    first, _, last = req.query["timespan"].partition("/")
    start = datetime.fromisoformat(first).astimezone(UTC)
    end = datetime.fromisoformat(last).astimezone(UTC)
    _check_known(namespace, names)
    if namespace != CPU_NAMESPACE and vm.gpu is None:
        raise _no_configuration(namespace, names[0])  # no Telegraf on this VM
    rid = req.path.rsplit("/providers/", 1)[0]
    body = {
        "cost": 0,
        "timespan": f"{_iso(start)}/{_iso(end)}",
        "interval": "PT1H",
        "value": _vm_metrics(
            req.sim.estate, vm, rid, namespace, names, _hours(start, end), aggregations
        ),
        "namespace": req.query["metricnamespace"],
        "resourceregion": vm.location,
    }
    return 200, body, {}


def _account_item(a) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "type": "Microsoft.CognitiveServices/accounts",
        "kind": a.kind,
        "location": a.location,
        "sku": {"name": "S0"},
        "tags": {},
        "properties": {
            "endpoint": f"https://{a.name}.openai.azure.com/",
            "provisioningState": "Succeeded",
        },
    }


def _account(req: Request, subscription_id: str, group: str, name: str):
    account = req.sim.estate.accounts_by_id.get(
        f"/subscriptions/{subscription_id}/resourcegroups/{group}"
        f"/providers/microsoft.cognitiveservices/accounts/{name}".lower()
    )
    if account is None:
        raise ApiError(404, "ResourceNotFound", f"The Resource '{name}' was not found.")
    return account


def list_ai_deployments(req: Request, subscription_id: str, group: str, name: str) -> Reply:
    account = _account(req, subscription_id, group, name)
    items = [
        {
            "id": f"{account.id}/deployments/{d.name}",
            "name": d.name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": {"name": d.sku, "capacity": d.capacity},
            "properties": {
                "model": {"format": "OpenAI", "name": d.model, "version": d.version},
                "provisioningState": "Succeeded",
            },
        }
        for d in account.deployments
    ]
    return 200, req.page(items, req.sim.page_size), {}


AI_METRICS = {
    "azureopenaiprovisionedmanagedutilizationv2": ("ptu", "Percent"),
    "processedprompttokens": ("tokens_in", "Count"),
    "generatedtokens": ("tokens_out", "Count"),
    "azureopenairequests": ("throttled", "Count"),
}


def _ai_metrics(req: Request, ids: list[str], names: list[str], hours, aggregations) -> Reply:
    """Per account, per metric, one time series per deployment (the ModelDeploymentName
    split); AzureOpenAIRequests only with the StatusCode eq '429' filter the job sends."""
    estate = req.sim.estate
    flt = re.sub(r"\s+", " ", req.query.get("$filter", req.query.get("filter", ""))).lower()
    if "modeldeploymentname eq '*'" not in flt:
        raise ApiError(400, "BadRequest", "The simulator answers the ModelDeploymentName split.")
    unknown = [n for n in names if n.lower() not in AI_METRICS]
    if unknown:
        raise _no_configuration(AI_NAMESPACE, unknown[0])
    if any(n.lower() == "azureopenairequests" for n in names) and "statuscode eq '429'" not in flt:
        raise ApiError(400, "BadRequest", "The simulator answers requests filtered by 429.")
    top = int(req.query.get("top", "10"))
    accounts = []
    for rid in ids:
        account = estate.accounts_by_id.get(rid.lower())
        if account is None:
            raise ApiError(400, "BadRequest", f"Resource {rid} is not an AI account here.")
        accounts.append(account)
    if len({a.location for a in accounts}) > 1:
        raise ApiError(400, "BadRequest", "All resources of a batch must be in one region.")
    values = []
    for rid, account in zip(ids, accounts, strict=True):
        hourly = {
            d.name: [(h, estate.deployment_hour(account, d, h)) for h in hours]
            for d in account.deployments
        }
        metrics = []
        for name in names:
            ours, unit = AI_METRICS[name.lower()]
            series = []
            for deployment in account.deployments:
                if ours == "ptu" and deployment.util is None:
                    continue  # no utilization series for pay-as-you-go deployments
                data = []
                for hour, sample in hourly[deployment.name]:
                    point: dict[str, Any] = {"timeStamp": _iso(hour)}
                    if sample is not None:
                        if ours == "ptu":
                            if "average" in aggregations:
                                point["average"] = sample["ptu_average"]
                            if "maximum" in aggregations:
                                point["maximum"] = sample["ptu_maximum"]
                        elif "total" in aggregations:
                            point["total"] = float(sample[ours])
                    data.append(point)
                dimensions = [("modeldeploymentname", "ModelDeploymentName", deployment.name)]
                if ours == "throttled":
                    dimensions.append(("statuscode", "StatusCode", "429"))
                series.append(
                    {
                        "metadatavalues": [
                            {"name": {"value": key, "localizedValue": label}, "value": value}
                            for key, label, value in dimensions
                        ],
                        "data": data,
                    }
                )
            metrics.append(
                {
                    "id": f"{rid}/providers/Microsoft.Insights/metrics/{name}",
                    "type": "Microsoft.Insights/metrics",
                    "name": {"value": name, "localizedValue": name},
                    "displayDescription": "",
                    "unit": unit,
                    "timeseries": series[:top],
                    "errorCode": "Success",
                }
            )
        values.append(
            {
                "starttime": _iso(hours[0]) if hours else "",
                "endtime": _iso(hours[-1]) if hours else "",
                "interval": "PT1H",
                "namespace": req.query["metricnamespace"],
                "resourceregion": account.location,
                "resourceid": rid,
                "value": metrics,
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
    # as Azure does, without a word: a Daily query answers from `to` - 1 month + 1 day at most
    first = max(first, _earliest_daily_from(last))
    (alias,) = dataset["aggregation"].values()
    groups = [g["name"] for g in dataset.get("grouping", [])]
    if not set(groups) <= {"ResourceId", "MeterCategory", "ServiceName"}:
        raise ApiError(400, "BadRequest", f"Unsupported grouping {groups}.")
    cost_type = body["type"]
    dimensions = (dataset.get("filter") or {}).get("dimensions") or {}
    if dimensions and (dimensions.get("name"), dimensions.get("operator")) != ("ResourceId", "In"):
        raise ApiError(400, "BadRequest", "The simulator filters on ResourceId In only.")
    only = {v.lower() for v in dimensions.get("values", [])} if dimensions else None
    key = json.dumps([sub.subscription_id, body], sort_keys=True, default=str)
    if "$skiptoken" in req.query and key in req.sim.cost_pages:
        rows = req.sim.cost_pages[key]  # a continuation: the rows the first page was cut from
    else:
        req.sim.cost_periods.append((sub.subscription_id, cost_type, first, last))
        rows = _cost_rows(estate, sub.subscription_id, cost_type, first, last, groups, only)
        pages = req.sim.cost_pages
        pages[key] = rows
        for old in list(pages)[:-QUERIES_KEPT]:
            pages.pop(old, None)
    columns = [{"name": alias["name"], "type": "Number"}, {"name": "UsageDate", "type": "Number"}]
    columns += [{"name": g, "type": "String"} for g in groups]
    columns.append({"name": "Currency", "type": "String"})
    if not rows:
        # no usage in the window: Query_Usage's spec answers 204 No Content, without a body
        return 204, None, {}
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


def _earliest_daily_from(to: date) -> date:
    """`to` - 1 month + 1 day (the month before clamped to its length), written apart from
    finops's own code so that the two are checked against each other."""
    month_back = date(to.year - (to.month == 1), (to.month - 2) % 12 + 1, 1)
    days = (
        date(month_back.year + month_back.month // 12, month_back.month % 12 + 1, 1) - month_back
    ).days
    return month_back.replace(day=min(to.day, days)) + timedelta(days=1)


def _cost_rows(estate, subscription_id, cost_type, first, last, groups, only) -> list[list]:
    """The Query API's rows for one subscription: every resource's daily cost (only those in
    `only` when a ResourceId filter is given)."""
    rows: list[list] = []

    def grouped(rid: str, category: str) -> list[Any] | None:
        """A resource's values after cost and day: its grouping columns, then the currency."""
        if only is not None and rid not in only:
            return None
        values = {"ResourceId": rid, "MeterCategory": category, "ServiceName": category}
        return [*(values[g] for g in groups), "USD"]

    def add(cost, number: int, tail: list[Any] | None) -> None:
        if cost and tail is not None:
            rows.append([float(cost), number, *tail])

    vms = [
        (vm, grouped(vm.id.lower(), "Virtual Machines")) for vm in estate.vms_in(subscription_id)
    ]
    accounts = [(a, grouped(a.id.lower(), AI_METERS)) for a in estate.accounts_in(subscription_id)]
    disks = [
        (d.daily_cost, grouped(d.id.lower(), "Storage")) for d in estate.disks_in(subscription_id)
    ]
    storage = grouped(estate.storage_account_id(subscription_id).lower(), "Storage")
    purchases = grouped("", "Virtual Machines")
    day = first
    while day <= min(last, estate.now.date()):
        number = int(day.strftime("%Y%m%d"))
        for vm, tail in vms:
            add(estate.daily_cost(vm, day, cost_type), number, tail)
        for account, tail in accounts:
            add(estate.account_daily_cost(account, day, cost_type), number, tail)
        for cost, tail in disks:
            add(cost, number, tail)
        add(STORAGE_DAILY_COST, number, storage)
        if cost_type == "ActualCost":
            add(estate.reservation_purchase(subscription_id, day), number, purchases)
        day += timedelta(days=1)
    return rows


AI_METERS = "Cognitive Services"


def _vm(req: Request, subscription_id: str, group: str, name: str):
    vm = req.sim.estate.by_id.get(
        f"/subscriptions/{subscription_id}/resourcegroups/{group}"
        f"/providers/microsoft.compute/virtualmachines/{name}".lower()
    )
    if vm is None:
        raise ApiError(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource group "
            f"'{group}' was not found.",
        )
    return vm


def get_vm(req: Request, subscription_id: str, group: str, name: str) -> Reply:
    vm = _vm(req, subscription_id, group, name)
    return 200, _vm_item(vm, req.sim.estate.seed), {}


def vm_instance_view(req: Request, subscription_id: str, group: str, name: str) -> Reply:
    vm = _vm(req, subscription_id, group, name)
    return 200, {"computerName": vm.name, "statuses": _power_status(vm.power_state)}, {}


def deallocate_vm(req: Request, subscription_id: str, group: str, name: str) -> Reply:
    vm = _vm(req, subscription_id, group, name)
    req.sim.estate.change(vm, power_state="deallocated")
    op = str(uuid.uuid4())
    req.sim.operations[op] = time.monotonic()
    operation = (
        f"{req.sim.url}/subscriptions/{vm.subscription_id}/providers/Microsoft.Compute"
        f"/locations/{vm.location}/operations/{op}"
    )
    version = req.query["api-version"]
    return (
        202,
        None,
        {
            "Azure-AsyncOperation": f"{operation}?api-version={version}",
            "Location": f"{operation}?monitor=true&api-version={version}",
            "Retry-After": "1",
        },
    )


def compute_operation(req: Request, subscription_id: str, location: str, op: str) -> Reply:
    if req.query.get("monitor") == "true":
        return 200, None, {}
    now = _iso(clock.now())
    started = req.sim.operations.get(op, 0.0)
    if time.monotonic() - started < req.sim.operation_seconds:
        return 200, {"name": op, "status": "InProgress", "startTime": now}, {"Retry-After": "1"}
    return 200, {"name": op, "status": "Succeeded", "startTime": now, "endTime": now}, {}


def get_group(req: Request, subscription_id: str, group: str) -> Reply:
    sub = _subscription(req, subscription_id)
    estate = req.sim.estate
    vms = [
        v for v in estate.vms_in(sub.subscription_id) if v.resource_group.lower() == group.lower()
    ]
    if not vms:
        raise ApiError(
            404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found."
        )
    item = {
        "id": f"/subscriptions/{sub.subscription_id}/resourceGroups/{vms[0].resource_group}",
        "name": vms[0].resource_group,
        "type": "Microsoft.Resources/resourceGroups",
        "location": vms[0].location,
        "properties": {"provisioningState": "Succeeded"},
    }
    tags = estate.group_tags.get((sub.subscription_id, group.lower()))
    if tags:
        item["tags"] = dict(tags)
    return 200, item, {}


def _group_items(estate: Estate, sub) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    for vm in estate.vms_in(sub.subscription_id):
        names.setdefault(vm.resource_group.lower(), vm.resource_group)
    for account in estate.accounts_in(sub.subscription_id):
        names.setdefault(account.resource_group.lower(), account.resource_group)
    names.setdefault("shared", "shared")
    items = []
    for key, name in sorted(names.items()):
        item = {
            "id": f"/subscriptions/{sub.subscription_id}/resourceGroups/{name}",
            "name": name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": "eastus",
            "properties": {"provisioningState": "Succeeded"},
        }
        tags = estate.group_tags.get((sub.subscription_id, key))
        if tags:
            item["tags"] = dict(tags)
        items.append(item)
    return items


# Resource Graph: the tables and types the simulator indexes, each row as ARM describes the
# resource plus Resource Graph's own columns
def _graph_items(estate: Estate, sub, kind: str) -> list[dict[str, Any]]:
    sub_id = sub.subscription_id
    if kind == "resourcecontainers/microsoft.resources/subscriptions/resourcegroups":
        return _group_items(estate, sub)
    if kind == "resources/microsoft.compute/virtualmachines":
        items = []
        for vm in estate.vms_in(sub_id):
            item = _vm_item(vm, estate.seed)
            statuses = _power_status(vm.power_state)
            if len(statuses) > 1:
                item["properties"]["extended"] = {"instanceView": {"powerState": statuses[1]}}
            items.append(item)
        return items
    if kind == "resources/microsoft.compute/disks":
        return [_disk_item(d, estate.now) for d in estate.disks_in(sub_id)]
    if kind == "resources/microsoft.devtestlab/schedules":
        return _schedule_items(estate.vms_in(sub_id))
    if kind == "resources/microsoft.cognitiveservices/accounts":
        return [_account_item(a) for a in estate.accounts_in(sub_id)]
    return []


_WHERE = re.compile(r"where\s+([\w.]+)\s*=~\s*'([^']*)'", re.IGNORECASE)
_PROJECTED = re.compile(r"(?:(\w+)\s*=\s*)?((?:\w+|\['\w+'\])(?:\.\w+|\['\w+'\])*)")
_STEP = re.compile(r"(\w+)|\['(\w+)'\]")


def _path(row: dict[str, Any], path: str) -> Any:
    """A column or property path, `properties.dailyRecurrence['time']` as KQL writes it."""
    value: Any = row
    for plain, bracketed in _STEP.findall(path):
        key = plain or bracketed
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _graph_rows(estate: Estate, subscriptions: list[str], kql: str) -> list[dict[str, Any]]:
    """The rows of the KQL the job sends: a table, `where <column or path> =~ '<value>'`
    clauses, then `project`. Anything else is refused, so a query the simulator would misread
    fails loudly."""
    table, *stages = (part.strip() for part in kql.split("|"))
    if table.lower() not in ("resources", "resourcecontainers"):
        raise ApiError(400, "BadRequest", f"The simulator indexes no table {table!r}.")
    wanted = {s.lower() for s in subscriptions}
    filters, projection = [], None
    for stage in stages:
        where = _WHERE.fullmatch(stage)
        if where:
            filters.append((where.group(1), where.group(2).lower()))
        elif stage.lower().startswith("project ") and projection is None:
            projection = []
            for part in stage[len("project ") :].split(","):
                found = _PROJECTED.fullmatch(part.strip())
                if not found:
                    raise ApiError(400, "BadRequest", f"Unsupported projection {part!r}.")
                projection.append((found.group(1) or found.group(2), found.group(2)))
        else:
            raise ApiError(400, "BadRequest", f"The simulator does not answer {stage!r}.")
    types = [value for column, value in filters if column == "type"]
    if len(types) != 1:
        raise ApiError(400, "BadRequest", "The simulator answers one `type =~` a query.")
    rows = []
    for sub in estate.subscriptions:
        if sub.subscription_id.lower() not in wanted:
            continue
        for item in _graph_items(estate, sub, f"{table.lower()}/{types[0]}"):
            row = {
                **item,
                "type": item["type"].lower(),
                "location": item.get("location", "").lower(),
                "subscriptionId": sub.subscription_id,
                "resourceGroup": item["id"].split("/")[4].lower(),
                "tenantId": estate.tenant_id,
            }
            if all(str(_path(row, c) or "").lower() == v for c, v in filters if c != "type"):
                if projection is not None:
                    row = {name: _path(row, path) for name, path in projection}
                rows.append(row)
    return rows


def _check_kql(checker: KqlChecker | None, query: str) -> None:
    """Refuse, as Resource Graph does, a query Microsoft's Kusto parser rejects: 400, code
    BadRequest, details InvalidQuery and one ParserFailure each (the shape of Resource Graph's
    error answer, `ErrorResponse` in the resourcegraph REST API spec)."""
    if checker is None:
        return
    errors = checker.errors(query)
    if errors:
        details = [
            {
                "code": "InvalidQuery",
                "message": "Query is invalid. Please refer to the documentation for the Azure "
                "Resource Graph service and fix the error before retrying.",
            }
        ] + [
            {
                "code": "ParserFailure",
                "message": e["message"],
                "line": query.count("\n", 0, e["start"]) + 1,
                "characterPositionInLine": e["start"] - query.rfind("\n", 0, e["start"]) - 1,
                "token": query[e["start"] : e["start"] + e["length"]],
            }
            for e in errors
        ]
        support = f"timestamp = {clock.now():%Y-%m-%dT%H:%M:%S}, correlationId = {uuid.uuid4()}"
        message = f"Please provide below info when asking for support: {support}."
        raise ApiError(400, "BadRequest", message, details)


def resource_graph(req: Request) -> Reply:
    """POST /providers/Microsoft.ResourceGraph/resources: one query over the given
    subscriptions, `$top` rows a page (at most the simulator's page size, as Azure may send
    fewer than asked), continued by `$skipToken`."""
    body = req.body or {}
    options = body.get("options") or {}
    if options.get("resultFormat", "objectArray") != "objectArray":
        raise ApiError(400, "BadRequest", "The simulator answers resultFormat objectArray.")
    size = min(int(options.get("$top") or 100), 1000, req.sim.page_size)
    token = options.get("$skipToken")
    if token:
        query_id, _, start_text = token.partition(":")
        if query_id not in req.sim.graph_results:
            raise ApiError(400, "BadRequest", "The $skipToken has expired.")
        rows, start = req.sim.graph_results[query_id], int(start_text)
    else:
        _check_kql(req.sim.kql, body["query"])
        rows, start = _graph_rows(req.sim.estate, body.get("subscriptions") or [], body["query"]), 0
        query_id = uuid.uuid4().hex
        results = req.sim.graph_results
        results[query_id] = rows
        for old in list(results)[:-QUERIES_KEPT]:
            results.pop(old, None)
    page = rows[start : start + size]
    answer: dict[str, Any] = {
        "totalRecords": len(rows),
        "count": len(page),
        "data": page,
        "facets": [],
        "resultTruncated": "false",
    }
    if start + size < len(rows):
        if rows and "id" not in rows[0]:
            # Resource Graph pages by id: without it the answer is cut short, with no token
            answer["resultTruncated"] = "true"
        else:
            answer["$skipToken"] = f"{query_id}:{start + size}"
    return 200, answer, {}


def patch_tags(req: Request, scope: str) -> Reply:
    estate = req.sim.estate
    body = req.body or {}
    operation = body.get("operation")
    tags = (body.get("properties") or {}).get("tags")
    if operation not in ("Merge", "Replace", "Delete") or not isinstance(tags, dict):
        raise ApiError(400, "InvalidRequestContent", "operation and properties.tags are required.")
    parts = scope.strip("/").split("/")
    vm = estate.by_id.get("/" + scope.strip("/").lower())
    if vm is not None:
        current = dict(vm.tags)
    elif len(parts) == 4 and parts[2].lower() == "resourcegroups":
        get_group(req, parts[1], parts[3])  # 404 when missing
        current = dict(estate.group_tags.get((parts[1], parts[3].lower()), {}))
    else:
        raise ApiError(404, "ResourceNotFound", f"The resource '{scope}' was not found.")
    if operation == "Merge":
        current.update(tags)
    elif operation == "Replace":
        current = dict(tags)
    else:
        current = {k: v for k, v in current.items() if k not in tags}
    if vm is not None:
        estate.change(vm, tags=current)
    else:
        estate.change_group_tags(parts[1], parts[3], current)
    return (
        200,
        {
            "id": f"/{scope.strip('/')}/providers/Microsoft.Resources/tags/default",
            "name": "default",
            "type": "Microsoft.Resources/tags",
            "properties": {"tags": current},
        },
        {},
    )


def _schedule_item(vm) -> dict[str, Any]:
    return next(i for i in _schedule_items([vm]) if i["properties"]["targetResourceId"] == vm.id)


def _schedule_target(req: Request, subscription_id: str, group: str, name: str):
    if not name.lower().startswith("shutdown-computevm-"):
        raise ApiError(400, "BadRequest", "Only shutdown-computevm-<vm> schedules are simulated.")
    return _vm(req, subscription_id, group, name[len("shutdown-computevm-") :])


def get_schedule(req: Request, subscription_id: str, group: str, name: str) -> Reply:
    vm = _schedule_target(req, subscription_id, group, name)
    if vm.schedule is None:
        raise ApiError(404, "ResourceNotFound", f"The schedule '{name}' was not found.")
    return 200, _schedule_item(vm), {}


def put_schedule(req: Request, subscription_id: str, group: str, name: str) -> Reply:
    vm = _schedule_target(req, subscription_id, group, name)
    props = (req.body or {}).get("properties") or {}
    if props.get("taskType") != "ComputeVmShutdownTask":
        raise ApiError(400, "BadRequest", "taskType must be ComputeVmShutdownTask.")
    if (props.get("targetResourceId") or "").lower() != vm.id.lower():
        raise ApiError(400, "BadRequest", "targetResourceId must be the VM of the schedule.")
    daily = (props.get("dailyRecurrence") or {}).get("time", "")
    if not re.fullmatch(r"([01]\d|2[0-3])[0-5]\d", daily):
        raise ApiError(400, "BadRequest", "dailyRecurrence.time must be HHmm.")
    existed = vm.schedule is not None
    req.sim.estate.change(
        vm,
        schedule=props.get("status", "Enabled"),
        schedule_time=daily,
        schedule_time_zone=props.get("timeZoneId", "UTC"),
    )
    return (200 if existed else 201), _schedule_item(vm), {}


def _routes() -> list[Route]:
    sub = r"/subscriptions/([^/]+)"
    group = sub + r"/resourceGroups/([^/]+)"
    compute = sub + r"/providers/Microsoft\.Compute"
    vm = group + r"/providers/Microsoft\.Compute/virtualMachines/([^/]+)"
    schedule = group + r"/providers/Microsoft\.DevTestLab/schedules/([^/]+)"
    account = group + r"/providers/Microsoft\.CognitiveServices/accounts/([^/]+)"
    ai_api = "2025-09-01"
    arm, compute_api, labs, cost_api = "2025-04-01", "2026-04-01", "2018-09-15", "2025-03-01"
    table: list[tuple[str, str, str, str, Callable[..., Reply]]] = [
        ("subscriptions", "GET", r"/subscriptions", "2022-12-01", list_subscriptions),
        (
            "graph",
            "POST",
            r"/providers/Microsoft\.ResourceGraph/resources",
            "2021-03-01",
            resource_graph,
        ),
        ("vms", "GET", compute + "/virtualMachines", compute_api, list_vms),
        ("skus", "GET", compute + "/skus", "2021-07-01", list_skus),
        ("prices", "GET", r"/api/retail/prices", "2023-01-01-preview", retail_prices),
        ("usages", "GET", compute + "/locations/([^/]+)/usages", compute_api, list_usages),
        (
            "operation",
            "GET",
            compute + "/locations/([^/]+)/operations/([^/]+)",
            compute_api,
            compute_operation,
        ),
        ("metrics", "POST", sub + r"/metrics:getBatch", "2024-02-01", metrics_batch),
        ("ai-deployments", "GET", account + "/deployments", ai_api, list_ai_deployments),
        ("costs", "POST", r"/(.+)/providers/Microsoft\.CostManagement/query", cost_api, cost_query),
        ("vm", "GET", vm, compute_api, get_vm),
        (
            "vm-metrics",
            "GET",
            vm + r"/providers/Microsoft\.Insights/metrics",
            "2024-02-01",
            resource_metrics,
        ),
        ("instance-view", "GET", vm + "/instanceView", compute_api, vm_instance_view),
        ("deallocate", "POST", vm + "/deallocate", compute_api, deallocate_vm),
        ("group", "GET", group, arm, get_group),
        ("tags", "PATCH", r"/(.+)/providers/Microsoft\.Resources/tags/default", arm, patch_tags),
        ("schedule", "GET", schedule, labs, get_schedule),
        ("schedule-put", "PUT", schedule, labs, put_schedule),
    ]
    return [
        Route(name, method, pattern, {version}, handler)
        for name, method, pattern, version, handler in table
    ]
