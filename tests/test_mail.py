"""The nightly e-mail against a real SMTP server (aiosmtpd), and the HTML in headless Chromium."""

from __future__ import annotations

import email
import io
import json
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import tempfile
from email import policy
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from PIL import Image

from tests.test_cli import finops

PASSWORD = "canary-smtp-pw-7f3a"


class Inbox:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login == b"finops" and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("smtp-tls")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, ca_file


def _smtp(inbox: Inbox, **kwargs) -> Controller:
    controller = Controller(
        inbox, hostname="127.0.0.1", port=_free_port(), authenticator=_authenticator, **kwargs
    )
    controller.start()
    return controller


@pytest.fixture
def starttls_server(tls):
    context, ca_file = tls
    inbox = Inbox()
    controller = _smtp(inbox, tls_context=context, require_starttls=True, auth_require_tls=True)
    yield inbox, controller.port, ca_file
    controller.stop()


def mail_env(port: int, ca_file: Path, security: str = "starttls", password=PASSWORD) -> dict:
    return {
        "FINOPS_MAIL__SMTP_HOST": "127.0.0.1",
        "FINOPS_MAIL__SMTP_PORT": str(port),
        "FINOPS_MAIL__SECURITY": security,
        "FINOPS_MAIL__USERNAME": "finops",
        "FINOPS_MAIL__PASSWORD": password,
        "FINOPS_MAIL__SENDER": "finops@example.test",
        "FINOPS_MAIL__RECIPIENTS": json.dumps(["lead@example.test", "ops@example.test"]),
        "FINOPS_MAIL__CA_FILE": str(ca_file),
    }


def test_demo_mails_one_well_formed_message(tmp_path, starttls_server):
    inbox, port, ca_file = starttls_server
    result = finops("demo", cwd=tmp_path, env=mail_env(port, ca_file))
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    (envelope,) = inbox.envelopes
    assert envelope.rcpt_tos == ["lead@example.test", "ops@example.test"]
    assert len(envelope.content) < 1_000_000
    msg = email.message_from_bytes(envelope.content, policy=policy.default)
    assert re.fullmatch(
        r"finops \d{4}-\d{2}-\d{2}: save USD [\d,.]+/month \(USD [\d,.]+ new\)",
        msg["Subject"],
    )
    assert msg.get_content_type() == "multipart/alternative"
    text, related = msg.get_payload()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    html = html_part.get_content()
    assert len(html.encode()) < 100_000
    assert "<style" not in html and "<script" not in html.lower()
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html), "external URL in the HTML"
    assert 'src="data:' not in html
    by_cid = {part["Content-ID"].strip("<>"): part for part in images}
    cids = re.findall(r'src="cid:([^"]+)"', html)
    assert len(cids) == 2 and set(cids) == set(by_cid)
    for part in images:
        assert part.get_content_type() == "image/png"
        image = Image.open(io.BytesIO(part.get_content()))
        image.verify()
        assert 500 <= image.size[0] <= 700
    headline = re.search(r'id="headline"[^>]*>([^<]+)<', html).group(1)
    plain = text.get_content()
    assert headline in plain
    for name in ("train-nd-h100-stopped", "train-nd-a100-1", "serve-nd-h100-busy"):
        assert name in plain
    report = Path(result.stdout.strip().splitlines()[-1])
    assert headline in report.read_text()


def test_implicit_tls_and_report_send(tmp_path, tls):
    context, ca_file = tls
    inbox = Inbox()
    controller = _smtp(inbox, ssl_context=context, auth_require_tls=False)  # TLS from the start
    try:
        assert finops("demo", cwd=tmp_path).returncode == 0
        result = finops(
            "report", "--send", cwd=tmp_path, env=mail_env(controller.port, ca_file, security="ssl")
        )
        assert result.returncode == 0, result.stderr
    finally:
        controller.stop()
    (envelope,) = inbox.envelopes
    msg = email.message_from_bytes(envelope.content, policy=policy.default)
    assert msg.get_content_type() == "multipart/alternative"


def test_refused_login_is_one_line_and_keeps_the_night(tmp_path, starttls_server):
    inbox, port, ca_file = starttls_server
    result = finops("demo", cwd=tmp_path, env=mail_env(port, ca_file, password="wrong-canary-99"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("finops:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith(
        f"finops: mail not sent: 127.0.0.1:{port} refused the login of finops (535)"
    )
    assert "wrong-canary-99" not in result.stderr + result.stdout
    report = re.search(r"the report is at (\S+)\)", errors[0]).group(1)
    assert Path(report).is_file()
    with sqlite3.connect(tmp_path / "finops.db") as db:
        assert db.execute("select status from runs").fetchall() == [("succeeded",)]
    assert inbox.envelopes == []


def test_unreachable_server_is_one_line(tmp_path, tls):
    _, ca_file = tls
    result = finops("demo", cwd=tmp_path, env=mail_env(_free_port(), ca_file))
    assert result.returncode == 1
    assert re.search(
        r"^finops: mail not sent via 127\.0\.0\.1:\d+: .*refused", result.stderr, re.MULTILINE
    )


def test_mail_settings_are_checked(tmp_path):
    env = {"FINOPS_MAIL__SMTP_HOST": "mail.example.test"}
    result = finops("demo", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "finops: bad setting mail (FINOPS_MAIL): smtp_host is set but there are no recipients"
    )
    result = finops("report", "--send", cwd=tmp_path)
    assert result.returncode == 2 and "--send needs mail settings" in result.stderr


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("headless Chromium is needed: apt-get install chromium (.ci/run does)")
    return found


def test_report_fits_600_px_in_chromium(tmp_path):
    result = finops("demo", cwd=tmp_path)
    report = Path(result.stdout.strip().splitlines()[-1])
    probe = report.with_name("probe.html")
    script = """<script>
      window.addEventListener('load', () => {
        const h = document.getElementById('headline').getBoundingClientRect();
        const out = {scrollWidth: document.documentElement.scrollWidth,
                     innerWidth: window.innerWidth, headTop: h.top, headHeight: h.height,
                     headWidth: h.width, images: [...document.images].map(i => i.naturalWidth)};
        document.body.setAttribute('data-probe', JSON.stringify(out));
      });
    </script></body>"""
    probe.write_text(report.read_text().replace("</body>", script))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=600,900",
                "--virtual-time-budget=3000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    found = re.search(r"data-probe=\"([^\"]+)\"", dom)
    assert found, "Chromium did not run the probe"
    probe_result = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe_result["innerWidth"] == 600
    assert probe_result["scrollWidth"] <= 600, "the report overflows 600 px horizontally"
    assert 0 <= probe_result["headTop"] < 900 and probe_result["headHeight"] > 0
    assert probe_result["headWidth"] > 300
    assert len(probe_result["images"]) == 2 and all(w > 0 for w in probe_result["images"])


def test_plain_internal_relay_without_login(tmp_path):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        env = {
            "FINOPS_MAIL__SMTP_HOST": "127.0.0.1",
            "FINOPS_MAIL__SMTP_PORT": str(controller.port),
            "FINOPS_MAIL__SECURITY": "none",
            "FINOPS_MAIL__RECIPIENTS": '["lead@example.test"]',
        }
        result = finops("demo", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
    finally:
        controller.stop()
    (envelope,) = inbox.envelopes
    assert envelope.mail_from == "finops@localhost"
    assert envelope.rcpt_tos == ["lead@example.test"]
