"""Azure's official example answers, replayed over HTTPS to the real SDK clients.

Each file in `azure_examples/` holds one example of the Azure REST API specs as published
(`example`) and where it comes from (`source`: repository, path, commit). `Replay` answers the
requests finops makes with those examples' responses and keeps what was asked, so a test can
check both the rows finops reads from Azure's own answer and the request it sent.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from finops.azure.clients import AzureClients, StaticTokenCredential
from finops.config import AzureSettings
from finops.sim.server import https_server

EXAMPLES = Path(__file__).parent / "azure_examples"
ARM = "https://management.azure.com"


def example(name: str) -> dict[str, Any]:
    """The example `name` (its `parameters` and `responses`), as the specs publish it."""
    return json.loads((EXAMPLES / f"{name}.json").read_text())["example"]


@dataclass
class Asked:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class Replay:
    """Answers `method path` (and, where given, requests whose JSON body holds `body_has`)
    with an example's response of `status`, in the order they were added."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str, str, int, Any, dict[str, str]]] = []
        self.asked: list[Asked] = []
        self._dir = tempfile.TemporaryDirectory(prefix="finops-replay-")
        self._httpd, self.ca_file = https_server(_handler(self), 0, self._dir.name)
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._dir.cleanup()

    def answer(
        self, method: str, path: str, name: str, status: str = "200", body_has: str = ""
    ) -> None:
        response = example(name)["responses"][status]
        # links to Azure come back to this server
        body = json.loads(json.dumps(response.get("body")).replace(ARM, self.url))
        # the operations a 202 points to are polled here too, wherever the example points
        headers = {
            name: re.sub(r"^https://[^/]+", self.url, value)
            if name.lower() in ("location", "azure-asyncoperation")
            else value
            for name, value in (response.get("headers") or {}).items()
        }
        self.answers.append((method, path.lower(), body_has, int(status), body, headers))

    def clients(self) -> AzureClients:
        settings = AzureSettings(
            arm_endpoint=self.url,
            metrics_endpoint=self.url,
            ca_file=self.ca_file,
            credential="simulated",
            retries=0,
        )
        return AzureClients(StaticTokenCredential(), settings)

    def reply(self, asked: Asked, raw: str) -> tuple[int, Any, dict[str, str]]:
        self.asked.append(asked)
        for method, path, body_has, status, body, headers in self.answers:
            if method == asked.method and path == asked.path.lower() and body_has in raw:
                return status, body, headers
        return 404, {"error": {"code": "NotInExample", "message": asked.path}}, {}


def _handler(replay: Replay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            asked = Asked(self.command, parts.path, query, json.loads(raw) if raw else None)
            status, body, headers = replay.reply(asked, raw)
            data = b"" if status in (202, 204) or body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = _serve

    return Handler
