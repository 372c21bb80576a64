"""``blocklist-pull check`` against a real Unbound that applies the list as a response policy zone.

The pull tool writes the RPZ file from the real feed; Unbound loads it as a
policy zone; the check asks Unbound for the canaries, compares with the
feed's signed manifest, and reports to the programme, which records it on
the ISP.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.domain import iso
from app.embedded import free_port
from client import dnsquery
from client.pull import main
from tests.conftest import offline_resolver_conf, require_binary
from tests.test_client_pull import seed
from tests.test_client_support import Feed, Result


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def unbound(tmp: Path, stop: list[subprocess.Popen[bytes]], rpz_file: Path | None) -> int:
    """A running Unbound; with ``rpz_file`` it applies that file as the policy zone blocklist.rpz."""
    binary = require_binary("unbound")
    port = free_port()
    conf = tmp / f"unbound-{port}.conf"
    policy = (f'rpz:\n    name: "blocklist.rpz."\n    zonefile: "{rpz_file}"\n' if rpz_file else "")
    conf.write_text(
        f'server:\n    chroot: ""\n    username: ""\n    directory: "{tmp}"\n    pidfile: ""\n'
        f"    interface: 127.0.0.1\n    port: {port}\n    do-ip6: no\n    use-syslog: no\n"
        '    module-config: "respip iterator"\n    do-not-query-localhost: no\n'
        '    local-zone: "test." nodefault\n'
        # Offline: every name that is not answered by the policy fails fast.
        'forward-zone:\n    name: "."\n    forward-addr: 127.0.0.1@9\n' + policy
    )
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop.append(proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, "unbound exited"
        try:
            dnsquery.query(("127.0.0.1", port), "localhost.", dnsquery.A, 0.3)
            return port
        except dnsquery.DnsError:
            time.sleep(0.1)
    pytest.fail("unbound did not start")


def check(feed: Feed, *args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["-c", str(feed.current or feed.config()), "check", "--timeout", "2", *args], clock=feed.clock)
    return Result(code, out.getvalue(), err.getvalue())


def test_check_reads_the_version_a_real_unbound_enforces_and_reports_it(feed: Feed, tmp_path: Path,
                                                                       stop: list[subprocess.Popen[bytes]]) -> None:
    seed(feed)
    assert feed.pull().code == 0
    port = unbound(tmp_path, stop, feed.output("rpz"))

    r = check(feed, "--resolver", f"127.0.0.1:{port}")

    assert r.code == 0, r.out + r.err
    assert "feed: version 1 (the feed's signed manifest)" in r.out
    assert (f"resolver 127.0.0.1:{port}: enforces version 1 (current); "
            "blocked canary: blocked (NXDOMAIN by the policy)") in r.out
    assert "reported to the programme (1 resolver)" in r.out
    isp = feed.core.isps.get("acme")
    assert isp.enforced_version == 1
    assert [(x["resolver"], x["version"], x["blocked"]) for x in isp.resolvers] == [(f"127.0.0.1:{port}", 1, True)]


def test_a_resolver_behind_the_feed_is_reported_with_how_far_and_fails_past_the_bound(
        feed: Feed, tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    seed(feed)
    assert feed.pull().code == 0
    port = unbound(tmp_path, stop, feed.output("rpz"))
    feed.list("second.test")
    feed.publish()
    feed.list("third.test")
    feed.publish()  # the resolver still applies version 1

    lenient = check(feed, "--resolver", f"127.0.0.1:{port}", "--no-report")
    strict = check(feed, "--resolver", f"127.0.0.1:{port}", "--max-behind", "1", "--json")

    assert lenient.code == 0, lenient.out
    assert "enforces version 1, 2 behind;" in lenient.out
    assert "not reported (--no-report)" in lenient.out
    assert strict.code == 1
    assert '"behind": 2' in strict.out and '"ok": false' in strict.out


def test_a_resolver_that_does_not_apply_the_list_is_reported_as_not_enforcing(
        feed: Feed, tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    seed(feed)
    assert feed.pull().code == 0
    enforcing = unbound(tmp_path, stop, feed.output("rpz"))
    plain = unbound(tmp_path, stop, None)  # a resolver someone forgot to configure

    r = check(feed, "--resolver", f"127.0.0.1:{enforcing}", "--resolver", f"127.0.0.1:{plain}")

    assert r.code == 1
    assert f"resolver 127.0.0.1:{enforcing}: enforces version 1 (current)" in r.out
    assert f"resolver 127.0.0.1:{plain}: does not enforce the list: " in r.out  # no canary, or no answer
    assert "blocked canary: NOT blocked" in r.out
    isp = feed.core.isps.get("acme")
    assert isp.enforced_version is None  # one resolver enforcing nothing: the ISP does not enforce the list
    assert {x["resolver"]: x["version"] for x in isp.resolvers} == {
        f"127.0.0.1:{enforcing}": 1, f"127.0.0.1:{plain}": None}


def test_check_refuses_a_resolver_that_is_not_an_address(feed: Feed) -> None:
    seed(feed)
    r = check(feed, "--resolver", "dns.example.net")

    assert r.code == 2
    assert r.err.strip() == "blocklist-pull: --resolver 'dns.example.net' is not an IP address (optionally with :PORT)"
    assert feed.core.isps.get("acme").enforced_at is None


def test_what_the_resolvers_enforce_is_exported_to_prometheus(feed: Feed) -> None:
    from tests.test_deploy_gunicorn import labelled, samples
    from tests.test_metrics import TOKEN, app_for

    seed(feed)
    feed.list("second.test")
    feed.publish()
    isp = feed.core.isps.authenticate_feed(feed.token)
    item = {"resolver": "192.0.2.53", "version": 1, "blocked": True, "checked_at": iso(feed.clock())}
    feed.core.isps.record_report(isp, {"resolvers": [item]})
    client = app_for(feed.core).test_client()

    found = samples(client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True))

    assert labelled(found, "blocklist_isp_enforced_version", isp="acme") == 1  # one behind the latest (2)
    assert labelled(found, "blocklist_isp_resolvers_enforcing", isp="acme") == 1


def test_check_reads_the_version_a_real_bind_enforces_from_the_pull_tools_zone_file(
        feed: Feed, tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    named = require_binary("named")
    seed(feed)
    assert feed.pull().code == 0
    port = free_port()
    # As docs/isp-pull.md wires the rpz output into BIND: a local primary zone used as the policy.
    conf = tmp_path / "named.conf"
    policy = 'response-policy { zone "blocklist.rpz"; } qname-wait-recurse no break-dnssec yes min-update-interval 0;'
    zone = f'zone "blocklist.rpz" {{ type primary; file "{feed.output("rpz")}"; }};\n'
    conf.write_text(offline_resolver_conf(tmp_path, tmp_path, port, policy) + zone)
    stop.append(subprocess.Popen([named, "-g", "-u", "root", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if dnsquery.query(("127.0.0.1", port), "version.canary.", dnsquery.TXT, 0.3).records:
                break
        except dnsquery.DnsError:
            pass
        time.sleep(0.2)

    r = check(feed, "--resolver", f"127.0.0.1:{port}", "--no-report")

    assert r.code == 0, r.out + r.err
    assert (f"resolver 127.0.0.1:{port}: enforces version 1 (current); "
            "blocked canary: blocked (NXDOMAIN by the policy)") in r.out
