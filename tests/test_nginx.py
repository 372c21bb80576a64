"""deploy/nginx/blocklist.conf under Debian's nginx, in front of the real app.

The shipped site is wrapped in a minimal nginx.conf whose paths point into a
temporary directory; the test changes only addresses, ports, certificate and
directory paths (each replacement must find its target, so the test notices
when the site changes shape). ``nginx -t`` must accept it. Then nginx serves
feed files with the X-Accel-Redirect offload: the app authenticates the ISP
and records the pull, nginx sends the bytes. A request without a valid
token, or one aimed at the internal location, gets none of them.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.core import Core
from app.domain import SYSTEM
from app.embedded import free_port
from app.web import create_app
from tests.conftest import LiveServer, Personas, require_binary
from tests.test_deploy_gunicorn import METRICS_TOKEN

SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "blocklist.conf"
ADMIN_HOST = "localhost"
STOP_HOST = "stop.localhost"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(ADMIN_HOST), x509.DNSName(STOP_HOST),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    chain = directory / "fullchain.pem"
    private = directory / "privkey.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return chain, private


def site_for_test(directory: Path, *, app_port: int, http_port: int, https_port: int, artifacts: Path) -> str:
    chain, private = make_certificate(directory)
    (directory / "logs").mkdir()
    text = SITE.read_text()
    replacements = [
        ("    listen [::]:80;\n", ""),
        ("    listen [::]:443 ssl http2;\n", ""),
        ("    listen [::]:80 default_server;\n", ""),
        ("    listen [::]:443 ssl http2 default_server;\n", ""),
        ("listen 80", f"listen 127.0.0.1:{http_port}"),
        ("listen 443", f"listen 127.0.0.1:{https_port}"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};"),
        ("/etc/ssl/blocklist/fullchain.pem", str(chain)),
        ("/etc/ssl/blocklist/privkey.pem", str(private)),
        ("/var/lib/blocklist/artifacts/", f"{artifacts}/"),
        ("/var/log/nginx/", f"{directory / 'logs'}/"),
        ("/var/www/acme", str(directory / "acme")),
        ("server_name blocklist.example.org;", f"server_name {ADMIN_HOST};"),
        ("server_name stop.example.org;", f"server_name {STOP_HOST};"),
    ]
    for old, new in replacements:
        assert old in text, f"the shipped site no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def wrapper(directory: Path, site: Path) -> Path:
    conf = directory / "nginx.conf"
    # As in production, nginx's workers are not the user that wrote the artifacts.
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    conf.write_text(f"""
{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log info;
events {{ worker_connections 128; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {directory}/tmp-body;
    proxy_temp_path {directory}/tmp-proxy;
    fastcgi_temp_path {directory}/tmp-fastcgi;
    uwsgi_temp_path {directory}/tmp-uwsgi;
    scgi_temp_path {directory}/tmp-scgi;
    access_log {directory}/logs/default.access.log;
    include {site};
}}
""")
    return conf


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Nginx:
    def __init__(self, directory: Path, app_port: int, artifacts: Path) -> None:
        self.binary = require_binary("nginx")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.https_port = free_port()
        site = directory / "site.conf"
        site.write_text(site_for_test(directory, app_port=app_port, http_port=self.http_port,
                                      https_port=self.https_port, artifacts=artifacts))
        self.conf = wrapper(directory, site)
        self.tls = ssl.create_default_context(cafile=str(directory / "fullchain.pem"))
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *extra: str) -> list[str]:
        return [self.binary, "-c", str(self.conf), "-p", str(self.dir), "-e", str(self.dir / "logs" / "error.log"),
                *extra]

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(self.argv("-g", "daemon off;"), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.get("/livez", host=STOP_HOST, tls=False)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError((self.dir / "logs" / "error.log").read_text()) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, headers: Mapping[str, str] | None = None, *, host: str = ADMIN_HOST,
            tls: bool = True) -> Answer:
        conn: http.client.HTTPConnection
        if tls:
            conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=self.tls, timeout=10)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            # The certificate names 127.0.0.1 too; the Host header picks the server block.
            conn.request("GET", path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def access_log(self) -> str:
        path = self.dir / "logs" / "blocklist.access.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def shared_artifacts() -> Iterator[Path]:
    """An artifact directory nginx's unprivileged workers can reach (pytest's own is private)."""
    top = Path(tempfile.mkdtemp(prefix="blocklist-nginx-"))
    top.chmod(0o755)
    yield top / "artifacts"
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def offload_core(core: Core, shared_artifacts: Path) -> Core:
    settings = replace(core.settings, feed_accel_prefix="/_artifacts", trust_proxy=1, stop_host=STOP_HOST,
                       public_url=f"https://{ADMIN_HOST}", metrics_token=METRICS_TOKEN,
                       artifact_dir=shared_artifacts)
    c = Core(settings=settings, store=core.store, clock=core.clock)
    c.publisher._key = core.publisher._key
    return c


@pytest.fixture
def stack(offload_core: Core, tmp_path: Path) -> Iterator[tuple[Nginx, LiveServer]]:
    app = create_app(core=offload_core, test_config={"TESTING": True})
    with LiveServer(app) as server:
        proxy = Nginx(tmp_path / "nginx", server.port, offload_core.settings.artifact_dir)
        proxy.start()
        try:
            yield proxy, server
        finally:
            proxy.stop()


def publish_list(core: Core, personas: Personas, n: int = 30) -> int:
    for i in range(n):
        entry = core.curation.submit(personas.alice.actor, f"nginx-offload-{i}.test", "domain", True, "csam",
                                     "seen", "case-7")
        core.curation.act(personas.bruno.actor, entry.id, "approve", "checked")
    outcome = core.publisher.publish()
    assert outcome.status == "published"
    assert outcome.version is not None
    return outcome.version


def test_nginx_accepts_the_shipped_site(tmp_path: Path) -> None:
    proxy = Nginx(tmp_path, free_port(), tmp_path / "artifacts")
    result = proxy.check()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
    assert "test is successful" in result.stderr


def test_nginx_sends_feed_files_only_after_the_app_authorised_the_request(
    stack: tuple[Nginx, LiveServer], offload_core: Core, personas: Personas
) -> None:
    proxy, _server = stack
    core = offload_core
    version = publish_list(core, personas)
    isp = core.isps.add(SYSTEM, "isp-nginx")
    token = isp["feed_token"]
    auth = {"Authorization": f"Bearer {token}"}
    snapshot = core.artifacts.read(f"snapshots/{version}.json")
    sha = hashlib.sha256(snapshot).hexdigest()
    assert len(snapshot) > 1024  # large enough for the gzip copy

    got = proxy.get(f"/feed/v1/snapshots/{version}.json", auth)
    assert got.status == 200
    assert got.body == snapshot
    assert got.headers["etag"] == f'"{sha}"'
    assert got.headers["content-type"].startswith("application/json")
    assert "x-accel-redirect" not in got.headers
    assert got.headers["strict-transport-security"].startswith("max-age=")
    assert core.isps.get("isp-nginx").last_version == version

    zipped = proxy.get(f"/feed/v1/snapshots/{version}.json", {**auth, "Accept-Encoding": "gzip"})
    assert zipped.status == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == snapshot

    again = proxy.get(f"/feed/v1/snapshots/{version}.json", {**auth, "If-None-Match": f'"{sha}"'})
    assert again.status == 304
    assert again.body == b""

    zone = core.artifacts.read(f"rpz/{version}.zone")
    in_path = proxy.get(f"/feed/v1/t/{token}/rpz/latest.zone")
    assert in_path.status == 200
    assert in_path.body == zone

    marker = b"nginx-offload-0.test"
    refused = [
        proxy.get(f"/feed/v1/snapshots/{version}.json"),
        proxy.get(f"/feed/v1/snapshots/{version}.json", {"Authorization": "Bearer blf_" + "x" * 43}),
        proxy.get(f"/feed/v1/t/blf_{'y' * 43}/snapshots/{version}.json"),
        proxy.get(f"/_artifacts/snapshots/{version}.json", auth),
        proxy.get(f"/%5Fartifacts/snapshots/{version}.json", auth),
        proxy.get(f"/feed/v1/../_artifacts/snapshots/{version}.json", auth),
        proxy.get("/_artifacts/HIGHWATER", auth),
        proxy.get(f"/_artifacts/snapshots/{version}.json", auth, host=STOP_HOST, tls=False),
        proxy.get(f"/feed/v1/snapshots/{version}.json", auth, host="blocked-name.test", tls=False),
    ]
    for answer in refused:
        assert answer.status in (401, 404), answer
        assert marker not in answer.body
        assert snapshot[:200] not in answer.body

    core.isps.revoke(SYSTEM, "isp-nginx", "contract ended")
    revoked = proxy.get(f"/feed/v1/snapshots/{version}.json", auth)
    assert revoked.status == 403
    assert marker not in revoked.body

    log = proxy.access_log()
    # The offloaded answer is logged under the internal path nginx sent it from;
    # the refused token-in-path request under its redacted path.
    assert f"/_artifacts/rpz/{version}.zone" in log
    assert "/feed/v1/t/[REDACTED]/snapshots/" in log
    assert token not in log
    lines = [json.loads(line) for line in log.splitlines()]
    assert all(line["component"] == "nginx" and line["request_id"] for line in lines)


def test_nginx_redirects_plain_http_and_keeps_metrics_to_the_token(
    stack: tuple[Nginx, LiveServer]
) -> None:
    proxy, _server = stack
    redirect = proxy.get("/api/v1/me", tls=False)
    assert redirect.status == 301
    assert redirect.headers["location"] == f"https://{ADMIN_HOST}/api/v1/me"
    # Through the proxy the app no longer sees a local client.
    assert proxy.get("/metrics").status == 403
    scraped = proxy.get("/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status == 200
    assert b"blocklist_http_requests_total" in scraped.body


def test_the_stop_page_answers_every_other_name_and_is_not_logged(
    stack: tuple[Nginx, LiveServer], offload_core: Core, personas: Personas
) -> None:
    proxy, _server = stack
    entry = offload_core.curation.submit(personas.alice.actor, "blocked-name.test", "domain", True, "csam",
                                         "seen", "case-8")
    offload_core.curation.act(personas.bruno.actor, entry.id, "approve", "checked")
    page = proxy.get("/", host="blocked-name.test", tls=False)
    assert page.status == 451
    assert b"blocked-name.test" in page.body
    other = proxy.get("/", host="unlisted-name.test", tls=False)
    assert other.status == 404
    assert b"unlisted-name.test" not in other.body
    assert "blocked-name.test" not in proxy.access_log()


def test_nginx_rate_limits_the_feed(stack: tuple[Nginx, LiveServer], offload_core: Core) -> None:
    proxy, _server = stack
    isp = offload_core.isps.add(SYSTEM, "isp-eager")
    auth = {"Authorization": f"Bearer {isp['feed_token']}"}
    statuses = [proxy.get("/feed/v1/manifest.json", auth).status for _ in range(80)]
    assert 429 in statuses
    # The burst allowance: the first requests go through (404: nothing published yet).
    assert statuses[:30] == [404] * 30
