"""An ISP's onboarding page and bundle, and the ISP form.

The bundle is checked with the tools ISPs use: ``named-checkconf``,
``unbound-checkconf``, the pull tool's own configuration loader, and a real
BIND configured from it that transfers the zone from a live transfer server
and blocks a listed name.
"""

from __future__ import annotations

import io
import re
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from app import audit
from app.core import Core
from app.embedded import free_port
from app.onboarding import PLACEHOLDER
from app.web import create_app
from client import config as pull_config
from tests.conftest import Personas, offline_resolver_conf, publish, require_binary
from tests.test_web_admin import secret_values
from tests.test_web_helpers import post, signed_in, text
from tests.test_xfr_peers import ENTRIES, Peer, answered_not_blocked, blocked
from tests.test_xfr_server import listed, soa_serial, wait_for
from workers.xfrd import ServerThread


def add_isp(client: Any, name: str = "acme", **fields: str) -> tuple[str, dict[str, str]]:
    """Add an ISP through the form; the page shown and its secrets."""
    r = post(client, "/isps", {"name": name, "notify": "", "allow_from": "", "reason": "contract", **fields})
    assert r.status_code == 200, text(r)[:3000]
    page = text(r)
    shown = secret_values(page)
    found = {"feed_token": shown[0]}
    if len(shown) > 3:  # an address-only ISP has no TSIG secret
        found["tsig_secret"] = shown[3]
    return page, found


def download_with_secrets(client: Any, name: str, page: str, secrets: dict[str, str]) -> Any:
    """Press the download button of the page shown after creation or rotation."""
    assert f'action="/isps/{name}/bundle.zip"' in page
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page)
    assert token
    return client.post(f"/isps/{name}/bundle.zip", data={"csrf_token": token.group(1), **secrets})


def unpack(body: bytes, into: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        names = z.namelist()
        assert all(n.startswith("blocklist-") and ".." not in n for n in names)
        z.extractall(into)
    (folder,) = list(into.iterdir())
    return folder


def bundle_text(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*")) if p.is_file())


def named_conf(tmp: Path, bundle: Path, port: int) -> Path:
    """A resolver's named.conf that takes the zones and policy from the bundle, unchanged."""
    conf = tmp / "named.conf"
    policy = f'include "{bundle}/bind/response-policy.conf";'
    conf.write_text(offline_resolver_conf(bundle, tmp, port, policy) + f'include "{bundle}/bind/blocklist-rpz.conf";\n')
    return conf


def checkconf(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("named-checkconf"), str(conf)], capture_output=True, text=True,
                          check=False, timeout=60)


# --------------------------------------------------------------------------- the ISP form


def test_the_isp_form_reports_every_mistake_at_once_and_adds_nothing(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    records = core.store.audit.length()
    r = post(ada, "/isps", {"name": "Bad Name!", "notify": "192.0.2.53:53\nnot-an-address\n192.0.2.9",
                            "allow_from": "192.0.2.0/24\nten-dot-something", "reason": "contract"})
    assert r.status_code == 400
    page = text(r)
    assert "ISP name is 1-40 lower-case letters" in page
    assert "notify target &#39;not-an-address&#39; must be an IP address and port" in page
    assert "notify target &#39;192.0.2.9&#39; must be an IP address and port" in page
    assert "&#39;ten-dot-something&#39; is not an IP address or CIDR prefix" in page
    # Each message sits under its own field, too.
    assert page.count('class="error"') >= 4
    assert core.isps.list() == []
    assert core.store.audit.length() == records

    core.isps.add(personas.ada.actor, "acme")
    r = post(ada, "/isps", {"name": "acme", "notify": "", "allow_from": "300.1.1.1/8", "reason": ""})
    assert r.status_code == 400
    assert "an ISP named &#39;acme&#39; already exists" in text(r)
    assert "&#39;300.1.1.1/8&#39; is not an IP address" in text(r)

    r = post(ada, "/isps", {"name": "Nope", "address_only": "y", "notify": "", "allow_from": "", "reason": ""})
    assert "ISP name is 1-40" in text(r)
    assert "an address-only ISP needs at least one allowed address" in text(r)

    r = post(ada, "/isps/acme/edit", {"notify": "x:1\n192.0.2.1", "allow_from": "nope"}, follow_redirects=True)
    page = text(r)
    assert "notify target &#39;x:1&#39;" in page
    assert "notify target &#39;192.0.2.1&#39;" in page
    assert "&#39;nope&#39; is not an IP address" in page
    assert core.isps.get("acme").notify == []


# --------------------------------------------------------------------------- onboarding page and bundle


def test_after_adding_an_isp_the_bundle_with_its_secrets_configures_bind_unbound_and_the_pull_tool(
        app, core: Core, personas: Personas, tmp_path: Path) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    page, secrets = add_isp(ada, "acme", allow_from="192.0.2.0/24", notify="192.0.2.53:53")
    # The page that shows the secrets shows the rest of the onboarding too.
    assert "http://127.0.0.1:8000/feed/v1" in page
    assert "blocklist.rpz." in page
    key = core.publisher.key.public
    assert key.id_hex in page
    assert key.base64() in page

    r = download_with_secrets(ada, "acme", page, secrets)
    assert r.status_code == 200, text(r)[:2000]
    assert r.headers["Content-Type"] == "application/zip"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Disposition"] == 'attachment; filename="blocklist-acme-with-secrets.zip"'
    folder = unpack(r.data, tmp_path / "bundle")
    assert (folder / "feed-token").read_text().strip() == secrets["feed_token"]
    with zipfile.ZipFile(io.BytesIO(r.data)) as z:
        modes = {i.filename.split("/", 1)[1]: (i.external_attr >> 16) & 0o777 for i in z.infolist()}
    for secret_file in ("feed-token", "bind/blocklist-rpz.conf", "unbound/blocklist-rpz.conf",
                        "powerdns/recursor.lua"):
        assert modes[secret_file] == 0o600, secret_file
    assert modes["README.txt"] == 0o644
    assert PLACEHOLDER not in bundle_text(folder)

    cfg = pull_config.load(folder / "pull.toml", environ={})
    assert cfg.token == secrets["feed_token"]
    assert cfg.feed_url == "http://127.0.0.1:8000/feed/v1"
    assert [k.id_hex for k in cfg.keys] == [key.id_hex]
    assert cfg.list_name == core.settings.list_name
    assert [(o.format, o.zone) for o in cfg.outputs] == [("rpz", "blocklist.rpz.")]

    result = checkconf(named_conf(tmp_path, folder, free_port()))
    assert result.returncode == 0, result.stdout + result.stderr
    bind = (folder / "bind" / "blocklist-rpz.conf").read_text()
    assert f'secret "{secrets["tsig_secret"]}"' in bind
    assert 'primaries { 127.0.0.1 port 8053 key "acme.tsig"; }' in bind

    unbound_conf = tmp_path / "unbound.conf"
    unbound_conf.write_text(f"""server:
    directory: "{tmp_path}"
    chroot: ""
    username: ""
    pidfile: "{tmp_path}/unbound.pid"
include: "{folder}/unbound/blocklist-rpz.conf"
""")
    result = subprocess.run([require_binary("unbound-checkconf"), str(unbound_conf)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # Unbound cannot sign: for an ISP with a TSIG key it takes the zone file over HTTPS.
    unbound_text = (folder / "unbound" / "blocklist-rpz.conf").read_text()
    assert f'url: "http://127.0.0.1:8000/feed/v1/t/{secrets["feed_token"]}/rpz/latest.zone"' in unbound_text
    assert "\n    primary:" not in unbound_text
    lua = (folder / "powerdns" / "recursor.lua").read_text()
    assert f'tsigsecret = "{secrets["tsig_secret"]}"' in lua
    readme = (folder / "README.txt").read_text()
    assert key.id_hex in readme
    assert "second channel" in readme

    record = audit.search(core.store, action="isp.bundle")[0][0]
    assert record.actor == "ada"
    assert record.reason == "credentials bundle downloaded"
    assert record.after == {"secrets": "included"}
    raw = str(core.store.audit.range())
    assert secrets["feed_token"] not in raw
    assert secrets["tsig_secret"] not in raw


def test_later_the_onboarding_page_and_bundle_hold_marked_placeholders_and_no_secret(
        app, core: Core, personas: Personas, tmp_path: Path) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    _page, secrets = add_isp(ada, "acme")
    page = text(ada.get("/isps/acme/onboarding"))
    assert "http://127.0.0.1:8000/feed/v1" in page
    assert core.publisher.key.public.id_hex in page
    assert secrets["feed_token"] not in page
    assert secrets["tsig_secret"] not in page
    assert PLACEHOLDER in page

    r = ada.get("/isps/acme/bundle.zip")
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    folder = unpack(r.data, tmp_path / "bundle")
    everything = bundle_text(folder)
    assert secrets["feed_token"] not in everything
    assert secrets["tsig_secret"] not in everything
    assert not (folder / "feed-token").exists()
    bind = (folder / "bind" / "blocklist-rpz.conf").read_text()
    assert f'secret "{PLACEHOLDER}' in bind
    # A configuration with the placeholder left in fails loudly, never runs with a dummy secret.
    result = checkconf(named_conf(tmp_path, folder, free_port()))
    assert result.returncode != 0
    # The pull configuration is complete but for the token file.
    cfg = pull_config.load(folder / "pull.toml", environ={}, need_token=False)
    assert cfg.feed_url == "http://127.0.0.1:8000/feed/v1"
    assert "feed-token" in (folder / "pull.toml").read_text()
    record = audit.search(core.store, action="isp.bundle")[0][0]
    assert record.after == {"secrets": "placeholders"}
    assert record.reason == "credentials bundle downloaded"


def test_after_a_rotation_the_bundle_carries_the_new_token(app, core: Core, personas: Personas,
                                                           tmp_path: Path) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    _page, old = add_isp(ada, "acme")
    r = post(ada, "/isps/acme/rotate", {"token": "y", "reason": "staff change"})
    page = text(r)
    new_token = secret_values(page)[0]
    assert new_token != old["feed_token"]
    r = download_with_secrets(ada, "acme", page, {"feed_token": new_token})
    assert r.status_code == 200
    folder = unpack(r.data, tmp_path / "bundle")
    assert pull_config.load(folder / "pull.toml", environ={}).token == new_token
    # The TSIG secret was not part of this rotation: it stays a placeholder.
    assert old["tsig_secret"] not in bundle_text(folder)


def test_a_bind_resolver_configured_from_the_bundle_transfers_the_zone_and_blocks(
        core: Core, personas: Personas, tmp_path: Path, settings) -> None:
    dns_port = free_port()
    live = Core(settings=replace(settings, dns_listen=("127.0.0.1", dns_port), xfrd_metrics_listen=None),
                store=core.store, clock=core.clock)
    live.publisher._key = core.publisher._key
    app = create_app(core=live, test_config={"TESTING": True})
    ada = signed_in(app.test_client(), personas.ada)
    page, secrets = add_isp(ada, "acme")
    folder = unpack(download_with_secrets(ada, "acme", page, secrets).data, tmp_path / "bundle")

    listed(core, personas, ENTRIES)
    version = publish(core).version
    port = free_port()
    conf = named_conf(tmp_path, folder, port)
    with ServerThread(live.settings, core.store) as xfrd:
        assert xfrd.port == dns_port
        wait_for(lambda: soa_serial(dns_port) == version)
        bind = Peer([require_binary("named"), "-g", "-u", "root", "-c", str(conf)], tmp_path / "named.log", port)
        bind.start()
        try:
            wait_for(lambda: blocked(bind.ask("csam-forum.example")), timeout=20, step=0.1)
            assert blocked(bind.ask("www.csam-forum.example"))
            assert answered_not_blocked(bind.ask("innocent.example"))
            log = bind.log
        finally:
            bind.stop()
    assert re.search(r"Transfer completed: \d+ messages, \d+ records", log), log[-3000:]
    assert (folder / "blocklist.rpz.db").exists()


def test_an_address_only_isps_bundle_has_no_tsig_and_its_bind_and_unbound_files_load(
        app, core: Core, personas: Personas, tmp_path: Path) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    page, secrets = add_isp(ada, "uniq", allow_from="192.0.2.0/24", address_only="y")
    assert set(secrets) == {"feed_token"}
    assert "address-only mode" in page
    r = download_with_secrets(ada, "uniq", page, secrets)
    assert r.status_code == 200, text(r)[:2000]
    folder = unpack(r.data, tmp_path / "bundle")
    bind = (folder / "bind" / "blocklist-rpz.conf").read_text()
    assert "key " not in bind
    assert PLACEHOLDER not in bundle_text(folder)
    result = checkconf(named_conf(tmp_path, folder, free_port()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tsig" not in (folder / "powerdns" / "recursor.lua").read_text()
    unbound_text = (folder / "unbound" / "blocklist-rpz.conf").read_text()
    assert "\n    primary: 127.0.0.1@8053" in unbound_text
    assert "192.0.2.0/24" in unbound_text
    unbound_conf = tmp_path / "unbound.conf"
    unbound_conf.write_text(f"""server:
    directory: "{tmp_path}"
    chroot: ""
    username: ""
    pidfile: "{tmp_path}/unbound.pid"
include: "{folder}/unbound/blocklist-rpz.conf"
""")
    result = subprocess.run([require_binary("unbound-checkconf"), str(unbound_conf)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_when_xot_is_offered_the_bind_file_transfers_over_tls_with_the_certificate(
        core: Core, personas: Personas, tmp_path: Path, settings) -> None:
    from app.xot import self_signed, spki_pin

    pem = self_signed("transfer.example.org")[0].decode()
    core.store.isps.set_xot_cert(pem)
    xot_core = Core(settings=replace(settings, xot_listen=("0.0.0.0", 853), xot_name="transfer.example.org",
                                     dns_public=(("192.0.2.53", 53),)),
                    store=core.store, clock=core.clock)
    app = create_app(core=xot_core, test_config={"TESTING": True})
    ada = signed_in(app.test_client(), personas.ada)
    page, secrets = add_isp(ada, "acme")
    assert spki_pin(pem) in page
    folder = unpack(download_with_secrets(ada, "acme", page, secrets).data, tmp_path / "bundle")
    assert (folder / "blocklist-xot.pem").read_text() == pem
    bind = (folder / "bind" / "blocklist-rpz.conf").read_text()
    assert 'primaries { 192.0.2.53 port 853 key "acme.tsig" tls blocklist-xot; }' in bind
    assert 'remote-hostname "transfer.example.org";' in bind
    bind_dir = tmp_path / "etc"
    bind_dir.mkdir()
    (bind_dir / "blocklist-xot.pem").write_text(pem)
    (folder / "bind" / "blocklist-rpz.conf").write_text(bind.replace("/etc/bind/", f"{bind_dir}/"))
    result = checkconf(named_conf(tmp_path, folder, free_port()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert spki_pin(pem) in (folder / "README.txt").read_text()


def test_with_an_overlay_zone_every_resolver_file_lists_it_first_and_bind_accepts_them(tmp_path: Path) -> None:
    from app.onboarding import Onboarding, zones_in_order
    from app.signing import SecretKey

    zones = zones_in_order("blocklist.rpz.", "overlay.blocklist.rpz.")
    assert zones == ("overlay.blocklist.rpz.", "blocklist.rpz.")
    ob = Onboarding(isp="acme", public_url="https://blocklist.example.org", list_name="worst-of", zones=zones,
                    primaries=(("192.0.2.53", 53), ("2001:db8::53", 53)), tsig_name="acme.tsig.",
                    tsig_algorithm="hmac-sha256", tsig_secret="c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=",
                    feed_token="blf_" + "x" * 43, public_key=SecretKey.generate().public,
                    generated_at=1_800_000_000)
    files = ob.files()
    policy = files["bind/response-policy.conf"]
    assert policy.index('zone "overlay.blocklist.rpz"') < policy.index('zone "blocklist.rpz"')
    # Unbound cannot sign: with a TSIG key it takes the whole list over HTTPS, as the base zone.
    assert 'name: "blocklist.rpz"' in files["unbound/blocklist-rpz.conf"]
    assert "url: \"https://blocklist.example.org/feed/v1/t/blf_" in files["unbound/blocklist-rpz.conf"]
    by_address = replace(ob, address_only=True, tsig_secret=None, allow_from=("192.0.2.0/24",)).unbound()
    assert by_address.index('name: "overlay.blocklist.rpz"') < by_address.index('name: "blocklist.rpz"')
    assert "primary: 2001:db8::53@53" in by_address
    assert '"[2001:db8::53]:53"' in files["powerdns/recursor.lua"]
    folder = tmp_path / "bundle"
    for path, body in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(body)
    result = checkconf(named_conf(tmp_path, folder, free_port()))
    assert result.returncode == 0, result.stdout + result.stderr
    # The pull tool writes the base zone (the feed carries the whole list).
    assert pull_config.load(folder / "pull.toml", environ={}, need_token=False).outputs[0].zone == "blocklist.rpz."


def test_the_command_line_writes_the_bundle_with_the_secrets_it_prints_and_never_overwrites(
        core: Core, settings, tmp_path: Path) -> None:
    import json
    import os
    import stat

    from tests.test_cli import run

    target = tmp_path / "acme.zip"
    r = run(settings, "isp", "add", "acme", "--notify", "192.0.2.53:53", "--bundle", str(target))
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert f"onboarding bundle written to {target}" in r.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    folder = unpack(target.read_bytes(), tmp_path / "bundle")
    assert pull_config.load(folder / "pull.toml", environ={}).token == created["feed_token"]
    assert created["tsig_secret"] in (folder / "bind" / "blocklist-rpz.conf").read_text()
    record = audit.search(core.store, action="isp.bundle")[0][0]
    assert record.actor.startswith("cli:")
    assert record.after == {"secrets": "included"}

    before = target.read_bytes()
    r = run(settings, "isp", "rotate", "acme", "--bundle", str(target))
    assert r.returncode == 1
    assert "already exists" in r.stderr
    assert target.read_bytes() == before
    assert core.isps.authenticate_feed(created["feed_token"]).name == "acme"  # nothing was rotated


def test_the_pull_tool_run_with_the_bundles_pull_toml_fetches_verifies_and_writes_the_list(
        core: Core, personas: Personas, settings, clock, tmp_path: Path) -> None:
    import contextlib

    from client.pull import main as pull_main
    from tests.conftest import LiveServer

    holder: dict[str, Any] = {}
    # The feed URL in the bundle must name the server's port, known only once it exists.
    server = LiveServer(lambda environ, start: holder["app"](environ, start))  # noqa: PLW0108 (app bound later)
    live = Core(settings=replace(settings, public_url=server.url), store=core.store, clock=core.clock)
    live.publisher._key = core.publisher._key
    holder["app"] = create_app(core=live, test_config={"TESTING": True})
    ada = signed_in(holder["app"].test_client(), personas.ada)
    page, secrets = add_isp(ada, "acme")
    folder = unpack(download_with_secrets(ada, "acme", page, secrets).data, tmp_path / "bundle")
    listed(core, personas, ENTRIES)
    publish(core)

    # Only the system paths change, as an ISP installing it elsewhere would do.
    toml = folder / "pull.toml"
    toml.write_text(toml.read_text().replace("/var/lib/blocklist-pull", str(tmp_path / "state")))
    out, err = io.StringIO(), io.StringIO()
    with server, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = pull_main(["-c", str(toml), "once"], clock=clock)
    assert code == 0, err.getvalue()
    zone = (tmp_path / "state" / "blocklist.rpz.zone").read_text()
    assert "csam-forum.example" in zone
    assert core.isps.get("acme").last_version == core.latest_version()


def test_the_bundles_resolver_files_keep_every_setting_of_the_guides_templates() -> None:
    """deploy/isp/ is the guide an ISP may read; the bundle must not drift from it."""
    from app.onboarding import Onboarding

    deploy = Path(__file__).resolve().parent.parent / "deploy" / "isp"
    ob = Onboarding(isp="acme", public_url="https://blocklist.example.org", list_name="worst-of",
                    zones=("overlay.blocklist.rpz.", "blocklist.rpz."), primaries=(("192.0.2.53", 53),),
                    tsig_name="acme.tsig.",
                    tsig_algorithm="hmac-sha256", allow_from=("192.0.2.0/24",), address_only=False)
    pairs = [("bind/blocklist-rpz.conf", ob.bind_zones()), ("bind/response-policy.conf", ob.bind_response_policy()),
             ("unbound/blocklist-rpz.conf", replace(ob, address_only=True).unbound())]
    for template, generated in pairs:
        fixed = [line.strip() for line in (deploy / template).read_text().splitlines()
                 if line.strip() and "{{" not in line and not line.lstrip().startswith(("//", "#", "--"))]
        assert fixed, template
        missing = [line for line in fixed if line not in generated]
        assert missing == [], f"{template}: the bundle lacks {missing}"


def test_the_public_transfer_address_is_read_strictly() -> None:
    import pytest

    from app.config import Settings
    from app.errors import ConfigError

    s = Settings.from_env({"BLOCKLIST_DNS_PUBLIC": "192.0.2.53:53, [2001:db8::53]:5353"})
    assert s.dns_primaries == (("192.0.2.53", 53), ("2001:db8::53", 5353))
    assert Settings.from_env({"BLOCKLIST_DNS_LISTEN": "127.0.0.1:9053"}).dns_primaries == (("127.0.0.1", 9053),)
    for bad in ("dns.example.org:53", "192.0.2.53", "192.0.2.53:0"):
        with pytest.raises(ConfigError, match="BLOCKLIST_DNS_PUBLIC"):
            Settings.from_env({"BLOCKLIST_DNS_PUBLIC": bad})
