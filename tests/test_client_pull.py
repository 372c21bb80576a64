"""blocklist-pull against the real server (real Redis, the app on a real socket).

A first pull writes every output; a change arrives as a delta; the
post-apply command runs once per change and never when nothing changed;
key rotation, dry runs, status, and the exit codes an operator sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.domain import SYSTEM
from client.minisign import SecretKey
from client.state import StateDir
from tests.conftest import record_key
from tests.test_client_support import OUTPUTS, Feed, Proxy


def body(path: Path) -> str:
    """An output without its comment header."""
    return "".join(ln for ln in path.read_text().splitlines(keepends=True) if not ln.startswith(("#", ";")))


def seed(feed: Feed) -> int:
    feed.list("bad-site.test", subdomains=True)
    feed.list("exact.example")
    feed.list("https://host.example/a/b?x=1", etype="url")
    return feed.publish()


def test_a_first_pull_verifies_the_snapshot_and_writes_every_output(feed: Feed) -> None:
    seed(feed)

    r = feed.pull()

    assert r.code == 0, r.err
    assert r.err == ""
    assert "applied version 1 (the full snapshot" in r.out
    assert feed.held_version() == 1
    assert body(feed.output("rpz")).splitlines()[4:] == [
        'version.canary TXT "1"', "blocked.canary CNAME .",  # the canaries `blocklist-pull check` asks for
        "bad-site.test CNAME .", "*.bad-site.test CNAME .", "exact.example CNAME ."]
    assert body(feed.output("unbound")) == (
        "server:\n"
        '''    local-data: 'version.canary. TXT "1"'\n'''
        '    local-zone: "blocked.canary." always_nxdomain\n'
        '    local-zone: "bad-site.test." always_nxdomain\n'
        '    local-zone: "exact.example." transparent\n'
        '    local-data: "exact.example. A 0.0.0.0"\n'
        '    local-data: "exact.example. AAAA ::"\n'
    )
    assert body(feed.output("dnsmasq")) == ('txt-record=version.canary,"1"\naddress=/blocked.canary/\n'
                                           "address=/bad-site.test/\nhost-record=exact.example,0.0.0.0,::\n")
    assert body(feed.output("hosts")) == (
        "0.0.0.0 bad-site.test\n:: bad-site.test\n0.0.0.0 exact.example\n:: exact.example\n")
    assert "cannot express 'a name and all its subdomains'" in feed.output("hosts").read_text()
    assert body(feed.output("domains")) == "bad-site.test\n*.bad-site.test\nexact.example\n"
    assert body(feed.output("urls")) == "^https?://host\\.example(:(80|443))?/a/b\\?x=1$\n"
    assert feed.post_apply_runs() == ["1"]


def test_a_change_is_applied_as_a_delta_and_matches_a_fresh_snapshot_pull(feed: Feed) -> None:
    seed(feed)
    assert feed.pull().code == 0
    feed.list("second.test", subdomains=True)
    feed.delist("exact.example")
    version = feed.publish()
    # Without the snapshot on the server only the delta can bring version 2.
    feed.core.artifacts.remove(f"snapshots/{version}.json")

    r = feed.pull()

    assert r.code == 0, r.err
    assert "applied version 2 (1 delta from version 1, 1 added and 1 removed; 3 entries)" in r.out
    assert "unchanged urls" in r.out  # only the domain outputs changed
    assert feed.held_version() == 2
    assert "exact.example" not in feed.output("hosts").read_text()
    assert 'local-zone: "second.test." always_nxdomain' in feed.output("unbound").read_text()
    state = json.loads((feed.state / "state.json").read_text())
    assert state["applied_via"] == "delta"
    assert state["snapshot_sha256"] == feed.core.publisher.version_meta(2)["snapshot"]["sha256"]


def test_a_fresh_client_and_a_delta_client_write_the_same_outputs(feed: Feed) -> None:
    seed(feed)
    assert feed.pull().code == 0
    feed.list("second.test", subdomains=True)
    feed.list("www.bad-site.test")  # covered by bad-site.test: left out where it would shadow it
    feed.delist("exact.example")
    feed.publish()
    assert "1 delta" in feed.pull().out

    fresh = Feed(**{**feed.__dict__, "dir": feed.dir / "fresh", "current": None})
    fresh.dir.mkdir()
    r = fresh.pull()

    assert "the full snapshot" in r.out
    for fmt in OUTPUTS:
        assert body(fresh.output(fmt)) == body(feed.output(fmt)), fmt
    assert held(fresh.state) == held(feed.state)
    assert (feed.state / "entries.journal").stat().st_size > 0  # the delta client keeps its change in the journal


def held(state_dir: Path) -> bytes:
    """The list a state directory holds: its base with the journal read back."""
    d = StateDir(state_dir)
    lines = d.load_lines(d.load())
    assert lines is not None
    return lines.data


def test_several_versions_behind_are_caught_up_through_the_delta_chain(feed: Feed) -> None:
    for i in range(20):  # deltas are fetched while together they are smaller than the snapshot
        feed.list(f"site-{i:02}.example")
    seed(feed)
    assert feed.pull().code == 0
    feed.list("two.test")
    feed.publish()
    feed.list("three.test")
    feed.delist("bad-site.test")
    feed.publish()

    r = feed.pull()

    assert r.code == 0, r.err
    assert "applied version 3 (2 deltas from version 1, 2 added and 1 removed; 24 entries)" in r.out
    assert body(feed.output("domains")).splitlines()[-3:] == ["site-19.example", "three.test", "two.test"]
    assert "bad-site.test" not in feed.output("domains").read_text()


def test_the_post_apply_command_runs_once_per_change_and_not_when_nothing_changed(feed: Feed) -> None:
    seed(feed)
    assert feed.pull().code == 0
    assert feed.post_apply_runs() == ["1"]
    before = feed.snapshot_outputs()

    again = feed.pull()
    assert again.code == 0
    assert "version 1 is current" in again.out
    assert feed.post_apply_runs() == ["1"]
    assert feed.snapshot_outputs() == before  # not even rewritten

    feed.list("second.test")
    feed.publish()
    assert feed.pull().code == 0
    assert feed.pull().code == 0
    assert feed.post_apply_runs() == ["1", "2"]


def test_a_version_that_leaves_an_output_unchanged_does_not_rewrite_it(feed: Feed) -> None:
    seed(feed)
    assert feed.pull().code == 0
    urls_before = feed.output("urls").stat().st_mtime_ns
    feed.list("second.test")
    feed.publish()

    r = feed.pull()

    assert "unchanged urls" in r.out
    assert feed.output("urls").stat().st_mtime_ns == urls_before
    assert "version 1" in feed.output("urls").read_text().splitlines()[1]
    assert "version 2" in feed.output("hosts").read_text().splitlines()[1]


def test_a_failed_post_apply_command_exits_5_and_runs_again_on_the_next_pull(feed: Feed) -> None:
    seed(feed)
    flag = feed.dir / "reload-fails"
    flag.write_text("yes")
    script = ("import os, sys\n"
              f"if os.path.exists({str(flag)!r}): sys.exit('rndc: connection refused')\n"
              f"open({str(feed.runs_file)!r}, 'a').write(os.environ['BLOCKLIST_PULL_VERSION'] + '\\n')\n")
    cfg = feed.config(post_apply=[sys.executable, "-c", script])

    failed = feed.pull(config=cfg)
    assert failed.code == 5
    assert failed.err.count("\n") == 1
    assert "post-apply command" in failed.err
    assert "rndc: connection refused" in failed.err
    assert feed.output("hosts").exists()  # the outputs are in place; only the reload failed
    assert feed.pull("status", config=cfg).code == 1

    flag.unlink()
    retried = feed.pull(config=cfg)
    assert retried.code == 0
    assert "ran the post-apply command" in retried.out
    assert feed.post_apply_runs() == ["1"]
    assert feed.pull("status", config=cfg).code == 0


def test_dry_run_shows_what_would_change_and_writes_nothing(feed: Feed) -> None:
    seed(feed)
    assert feed.pull().code == 0
    feed.list("second.test")
    feed.publish()
    before = feed.snapshot_outputs()
    state_before = (feed.state / "state.json").read_bytes()

    r = feed.pull("once", "--dry-run")

    assert r.code == 0
    assert "would apply version 2 (1 delta from version 1, 1 added and 0 removed; 4 entries)" in r.out
    assert f"would write hosts {feed.output('hosts')} (+2 -0 lines, patched)" in r.out
    assert "unchanged urls" in r.out
    assert "would run the post-apply command" in r.out
    assert feed.snapshot_outputs() == before
    assert (feed.state / "state.json").read_bytes() == state_before
    assert feed.post_apply_runs() == ["1"]


def test_status_shows_the_version_held_its_age_and_the_last_error(feed: Feed, proxy: Proxy) -> None:
    seed(feed)
    cfg = feed.config(url=proxy.url)
    never = feed.pull("status", config=cfg)
    assert never.code == 1
    assert "no version has been applied yet" in never.out

    assert feed.pull(config=cfg).code == 0
    feed.clock.advance(600)
    ok = feed.pull("status", config=cfg)
    assert ok.code == 0
    assert "version         1, published 2027-01-15T08:00:00Z (10 min ago), 3 entries, via snapshot" in ok.out
    assert "health          ok" in ok.out

    proxy.answers["manifest.json"] = b"{}"
    assert feed.pull(config=cfg).code == 1
    failing = feed.pull("status", "--json", config=cfg)
    info = json.loads(failing.out)
    assert failing.code == 1
    assert info["version"] == 1
    assert info["last_error_code"] == 1
    assert "signature" in info["last_error"]
    assert not info["healthy"]


def test_a_rotated_key_is_accepted_while_both_keys_are_pinned(feed: Feed) -> None:
    seed(feed)
    old_key = feed.public_key()
    new = SecretKey.generate()
    both = feed.config(keys=[old_key, new.public.base64()])
    assert feed.pull(config=both).code == 0

    feed.core.publisher._key = new  # the programme switches its signing key
    record_key(feed.core, new)
    feed.list("second.test")
    feed.publish()
    r = feed.pull(config=both)
    assert r.code == 0, r.err
    state = json.loads((feed.state / "state.json").read_text())
    assert state["key_id"] == new.public.id_hex

    only_old = feed.config(keys=[old_key], name="old.toml")
    refused = feed.pull(config=only_old)
    assert refused.code == 1
    assert f"signed by key {new.public.id_hex}, which is not a pinned key" in refused.err


def test_an_existing_file_not_written_by_the_tool_is_never_replaced(feed: Feed) -> None:
    seed(feed)
    feed.out.mkdir()
    feed.output("hosts").write_text("127.0.0.1 localhost\n")

    r = feed.pull()

    assert r.code == 4
    assert "was not written by blocklist-pull; refusing to replace it" in r.err
    assert feed.output("hosts").read_text() == "127.0.0.1 localhost\n"
    assert not feed.output("unbound").exists()  # nothing else was written either
    assert feed.held_version() is None


def test_a_wrong_token_and_a_revoked_isp_exit_3_with_one_line(feed: Feed) -> None:
    seed(feed)
    assert feed.pull().code == 0
    token = feed.token
    feed.token = "blf_" + "x" * 43
    wrong = feed.pull()
    assert wrong.code == 3
    assert wrong.err == ("blocklist-pull: the feed refused the token (401): check token_file; "
                         "outputs unchanged (version 1 held)\n")

    feed.token = token
    feed.core.isps.revoke(SYSTEM, "acme")
    revoked = feed.pull()
    assert revoked.code == 3
    assert revoked.err.count("\n") == 1
    assert "the feed refused this ISP (403): its access has been revoked" in revoked.err


def test_configuration_mistakes_exit_2_naming_the_setting(feed: Feed) -> None:
    cfg = feed.config(extra='max_version_jmp = 5')
    r = feed.pull(config=cfg)
    assert r.code == 2
    assert r.err == f"blocklist-pull: {cfg}: unknown setting 'max_version_jmp'\n"
    no_keys = feed.config(keys=[], name="nokeys.toml")
    assert "no public key is pinned" in feed.pull(config=no_keys).err
    remote = feed.config(url="http://feed.example.org", name="http.toml")
    assert "must use https://" in feed.pull(config=remote).err


def test_the_console_script_runs_and_reports_a_refusal_on_one_line(feed: Feed) -> None:
    # The real clock of this machine is before the test clock's publication
    # time, so the manifest is fresh for the child process too.
    seed(feed)
    exe = Path(sys.executable).parent / "blocklist-pull"
    cfg = feed.config()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_PULL")}
    ok = subprocess.run([str(exe), "-c", str(cfg), "once"], capture_output=True, text=True, env=env, timeout=60,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    assert "applied version 1" in ok.stdout

    other = feed.config(keys=[SecretKey.generate().public.base64()], name="other.toml")
    bad = subprocess.run([str(exe), "once", "-c", str(other)], capture_output=True, text=True, env=env, timeout=60,
                        check=False)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1
    assert "which is not a pinned key" in bad.stderr


def test_the_post_apply_command_sees_the_version_and_changed_paths_but_never_the_token(
        feed: Feed, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(feed)
    monkeypatch.setenv("BLOCKLIST_PULL_TOKEN", feed.token)
    dump = feed.dir / "env.json"
    cfg = feed.config(post_apply=[sys.executable, "-c",
                                  f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"])

    assert feed.pull(config=cfg).code == 0

    env = json.loads(dump.read_text())
    assert feed.token not in json.dumps(env)
    assert env["BLOCKLIST_PULL_VERSION"] == "1"
    assert env["BLOCKLIST_PULL_CHANGED"].split() == [str(feed.output(f)) for f in OUTPUTS]


def test_a_deleted_output_or_a_damaged_held_list_is_repaired_on_the_next_pull(feed: Feed) -> None:
    seed(feed)
    assert feed.pull().code == 0
    expected = feed.output("unbound").read_bytes()
    feed.output("unbound").unlink()
    (feed.state / "entries.jsonl").write_text("damaged\n")

    r = feed.pull()

    assert r.code == 0, r.err
    assert "applied version 1 (the full snapshot; 3 entries)" in r.out
    assert f"write unbound {feed.output('unbound')}" in r.out
    assert "unchanged hosts" in r.out
    assert feed.output("unbound").read_bytes() == expected
    assert feed.post_apply_runs() == ["1", "1"]


def test_an_output_in_a_missing_directory_stops_the_run_before_anything_is_written(feed: Feed) -> None:
    seed(feed)
    cfg = feed.config(extra=f'[[output]]\nformat = "hosts"\npath = "{feed.dir}/nowhere/hosts"\n')

    r = feed.pull(config=cfg)

    assert r.code == 4
    assert r.err == f"blocklist-pull: the directory of output {feed.dir}/nowhere/hosts does not exist\n"
    assert feed.snapshot_outputs() == {}
    assert feed.held_version() is None
