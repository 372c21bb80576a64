"""The outputs, read by the real programs that ISPs run.

``unbound-checkconf``, ``named-checkzone``, ``dnsmasq --test`` and
``squid -k parse`` accept them; and a running Unbound, dnsmasq and Squid
block what each entry covers (a name with its subdomains, or one name only)
and nothing else.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from app.embedded import free_port
from client.config import OutputSpec
from client.outputs import ListInfo, render, url_regex
from client.verify import Record
from tests.conftest import require_binary

T = "2027-01-15T08:00:00Z"
INFO = ListInfo(list_name="worst-of", version=7, published_at=T, rpz_zone="blocklist.rpz.")


def rec(value: str, subdomains: bool = False, etype: str = "domain") -> Record:
    return Record(etype, value, subdomains, "csam", T, T)


# Sorted as the feed sorts them: by (type, value).
RECORDS = sorted([
    rec("bad-site.test", subdomains=True),              # the name and everything under it
    rec("www.bad-site.test"),                            # already covered by bad-site.test
    rec("exact.test"),                                   # this one name only
    rec("deep.exact.test", subdomains=True),             # a wider entry under an exact one
    rec("xn--bcher-kva.example", subdomains=True),       # an IDN in A-label form
    rec("plain.example"),
    rec("https://host.example/a/b?x=1", etype="url"),
    rec("http://files.example:8080/p(1)/*+$;,='@!~%20.jpg", etype="url"),
    rec("http://files.example/caf%C3%A9?q=%22x%22", etype="url"),
])


def write(tmp: Path, fmt: str, **options: object) -> Path:
    spec = OutputSpec(format=fmt, path=tmp / f"out.{fmt}", **options)  # type: ignore[arg-type]
    spec.path.write_bytes(render(spec, RECORDS, INFO).data())
    return spec.path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- syntax checks by the real programs


@pytest.mark.parametrize("redirect", [(), ("192.0.2.10", "2001:db8::10")])
def test_unbound_checkconf_accepts_the_unbound_output(tmp_path: Path, redirect: tuple[str, ...]) -> None:
    checkconf = require_binary("unbound-checkconf")
    out = write(tmp_path, "unbound", redirect=redirect)
    main = tmp_path / "unbound.conf"
    main.write_text(f'server:\n    chroot: ""\n    username: ""\n    directory: "{tmp_path}"\n'
                    f'    pidfile: ""\ninclude: "{out}"\n')

    r = run(checkconf, str(main))

    assert r.returncode == 0, r.stdout + r.stderr
    assert "no errors" in r.stdout


def test_named_checkzone_accepts_the_rpz_output(tmp_path: Path) -> None:
    checkzone = require_binary("named-checkzone")
    out = write(tmp_path, "rpz")

    r = run(checkzone, "-i", "local", "blocklist.rpz", str(out))

    assert r.returncode == 0, r.stdout + r.stderr
    assert "loaded serial 7" in r.stdout
    dump = run(checkzone, "-D", "-o", "-", "blocklist.rpz", str(out)).stdout
    assert "*.bad-site.test.blocklist.rpz." in dump
    assert "*.exact.test.blocklist.rpz." not in dump  # one name only


@pytest.mark.parametrize("redirect", [(), ("192.0.2.10", "2001:db8::10")])
def test_dnsmasq_test_accepts_the_dnsmasq_output(tmp_path: Path, redirect: tuple[str, ...]) -> None:
    dnsmasq = require_binary("dnsmasq")
    out = write(tmp_path, "dnsmasq", redirect=redirect)

    r = run(dnsmasq, "--test", f"--conf-file={out}")

    assert r.returncode == 0, r.stdout + r.stderr
    assert "syntax check OK" in r.stdout + r.stderr


def squid_conf(tmp: Path, port: int) -> Path:
    urls = write(tmp, "urls")
    domains = write(tmp, "domains", style="squid")
    conf = tmp / "squid.conf"
    conf.write_text(
        f"http_port 127.0.0.1:{port}\n"
        "pid_filename none\naccess_log none\ncache_log /dev/null\ncache deny all\ncache_mem 8 MB\n"
        "coredump_dir none\nshutdown_lifetime 0 seconds\n"
        f'acl blocked_urls url_regex "{urls}"\n'
        f'acl blocked_domains dstdomain "{domains}"\n'
        "http_access deny blocked_urls\nhttp_access deny blocked_domains\n"
        "http_access allow localhost\nhttp_access deny all\n"
    )
    return conf


def test_squid_parses_both_acl_outputs_without_an_error_or_warning(tmp_path: Path) -> None:
    squid = require_binary("squid")
    conf = squid_conf(tmp_path, free_port())

    r = run(squid, "-k", "parse", "-f", str(conf))

    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert "blocked_urls" in log
    problems = [ln for ln in log.splitlines() if "ERROR" in ln or "WARNING" in ln]
    assert problems == []


# ---------------------------------------------------------------- the running programs block what entries cover


def ask(port: int, name: str, rdtype: str = "A") -> str:
    """NXDOMAIN, the addresses answered, or "unanswered" (sent on to an upstream that is not there)."""
    q = dns.message.make_query(name, rdtype)
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)
    except dns.exception.Timeout:
        return "unanswered"
    rcode = dns.rcode.to_text(r.rcode())
    if rcode in ("SERVFAIL", "REFUSED"):
        return "unanswered"
    if rcode != "NOERROR":
        return rcode
    return " ".join(sorted(rr.to_text() for rrset in r.answer for rr in rrset)) or "NODATA"


def wait_for(port: int, name: str, expected: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the resolver exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        if ask(port, name) == expected:
            return
        time.sleep(0.1)
    pytest.fail(f"the resolver on port {port} never answered {expected} for {name}")


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
        if p.stderr:
            p.stderr.close()


def test_a_running_unbound_blocks_what_each_entry_covers(tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    unbound = require_binary("unbound")
    out = write(tmp_path, "unbound")
    port = free_port()
    conf = tmp_path / "unbound.conf"
    conf.write_text(
        f'server:\n    chroot: ""\n    username: ""\n    directory: "{tmp_path}"\n    pidfile: ""\n'
        f"    interface: 127.0.0.1\n    port: {port}\n    do-ip6: no\n    use-syslog: no\n"
        '    module-config: "iterator"\n    do-not-query-localhost: no\n'
        # Unbound answers .test itself by default: without this the test would pass for the wrong reason.
        '    local-zone: "test." nodefault\n'
        'forward-zone:\n    name: "."\n    forward-addr: 127.0.0.1@9\n'
        f'include: "{out}"\n'
    )
    stop.append(subprocess.Popen([unbound, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE))
    wait_for(port, "bad-site.test.", "NXDOMAIN", stop[0])

    assert ask(port, "www.bad-site.test.") == "NXDOMAIN"
    assert ask(port, "a.b.bad-site.test.", "MX") == "NXDOMAIN"
    assert ask(port, "exact.test.") == "0.0.0.0"
    assert ask(port, "exact.test.", "AAAA") == "::"
    assert ask(port, "other.exact.test.") == "unanswered"  # one name only: names under it resolve
    assert ask(port, "x.deep.exact.test.") == "NXDOMAIN"
    assert ask(port, "www.xn--bcher-kva.example.") == "NXDOMAIN"
    assert ask(port, "unlisted.test.") == "unanswered"


def test_a_running_dnsmasq_blocks_what_each_entry_covers(tmp_path: Path,
                                                         stop: list[subprocess.Popen[bytes]]) -> None:
    dnsmasq = require_binary("dnsmasq")
    out = write(tmp_path, "dnsmasq")
    port = free_port()
    stop.append(subprocess.Popen(
        [dnsmasq, "--keep-in-foreground", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
         "--no-resolv", "--no-hosts", "--server=127.0.0.1#9", f"--conf-file={out}", "--user=root",
         f"--pid-file={tmp_path / 'dnsmasq.pid'}", f"--log-facility={tmp_path / 'dnsmasq.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    wait_for(port, "bad-site.test.", "NXDOMAIN", stop[0])

    assert ask(port, "www.bad-site.test.") == "NXDOMAIN"
    assert ask(port, "exact.test.") == "0.0.0.0"
    assert ask(port, "exact.test.", "AAAA") == "::"
    assert ask(port, "other.exact.test.") == "unanswered"
    assert ask(port, "x.deep.exact.test.") == "NXDOMAIN"
    assert ask(port, "unlisted.test.") == "unanswered"


def test_a_running_squid_denies_listed_urls_and_domains_only(tmp_path: Path,
                                                             stop: list[subprocess.Popen[bytes]]) -> None:
    squid = require_binary("squid")
    port = free_port()
    conf = squid_conf(tmp_path, port)
    stop.append(subprocess.Popen([squid, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE))
    deadline = time.monotonic() + 15
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline, "squid did not start"
        assert stop[0].poll() is None, stop[0].stderr.read().decode() if stop[0].stderr else ""
        time.sleep(0.1)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))

    def status(url: str) -> int:
        try:
            with opener.open(url, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return e.code

    assert status("http://host.example/a/b?x=1") == 403  # the listed https URL, fetched over http
    assert status("http://host.example:443/a/b?x=1") == 403
    assert status("http://files.example:8080/p(1)/*+$;,='@!~%20.jpg") == 403
    assert status("http://files.example/caf%C3%A9?q=%22x%22") == 403
    assert status("http://files.example/caf%C3%A9?q=%22y%22") != 403
    assert status("http://www.bad-site.test/anything") == 403
    assert status("http://exact.test/") == 403
    # Not listed: Squid tries to fetch them (and fails offline), it does not deny them.
    assert status("http://host.example/a/b?x=2") != 403
    assert status("http://host.example/a/b?x=1&more") != 403
    assert status("http://other.exact.test/") != 403


# ---------------------------------------------------------------- the renderers themselves


def test_url_regex_matches_exactly_the_listed_url_over_either_scheme_as_squid_decodes_it() -> None:
    listed = "http://files.example:8080/p(1)/*+$;,='@!~%20.jpg"
    pattern = re.compile(url_regex(listed))
    assert pattern.search(unquote(listed))
    assert pattern.search(unquote(listed.replace("http:", "https:")))
    assert not pattern.search(unquote(listed.replace(":8080", "")))
    assert not pattern.search(unquote(listed + "x"))
    assert not pattern.search(unquote(listed.replace("files", "xfiles")))
    assert url_regex("https://a.example/%0A%C3%A9") == "^https?://a\\.example(:(80|443))?/...$"


def test_names_covered_by_a_listed_parent_are_left_out_where_they_would_shadow_it(tmp_path: Path) -> None:
    unbound = write(tmp_path, "unbound").read_text()
    dnsmasq = write(tmp_path, "dnsmasq").read_text()
    squid = write(tmp_path, "domains", style="squid").read_text()
    hosts = write(tmp_path, "hosts").read_text()

    assert "www.bad-site.test" not in unbound + dnsmasq + squid
    assert "0.0.0.0 www.bad-site.test" in hosts  # a hosts file lists every name: nothing shadows there
    assert '"deep.exact.test." always_nxdomain' in unbound


def test_each_output_names_the_list_and_version_and_the_hosts_file_its_limit(tmp_path: Path) -> None:
    for fmt in ("rpz", "unbound", "dnsmasq", "hosts", "domains", "urls"):
        head = write(tmp_path, fmt).read_text().splitlines()[:2]
        c = ";" if fmt == "rpz" else "#"
        assert head[0].startswith(f"{c} blocklist-pull output: {fmt}.")
        assert "List worst-of version 7, published 2027-01-15T08:00:00Z" in head[1]
    hosts = write(tmp_path, "hosts", addresses=("192.0.2.10",)).read_text()
    assert "cannot express 'a name and all its subdomains'" in hosts
    assert "192.0.2.10 bad-site.test\n" in hosts
    assert ":: " not in hosts
