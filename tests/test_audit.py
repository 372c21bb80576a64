"""The hash-chained audit log detects any altered, removed or reordered record, and says which."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app import audit
from app.core import Core
from app.store import K
from tests.conftest import Personas


def make_history(core: Core, p: Personas) -> None:
    e = core.curation.submit(p.alice.actor, "one.example.test", reason="seen")
    core.curation.act(p.bruno.actor, e.id, "approve")
    core.curation.act(p.alice.actor, e.id, "reverify")
    core.curation.allowlist_add(p.ada.actor, "fine.test")
    core.curation.act(p.bruno.actor, e.id, "delist", "gone")


def rewrite(core: Core, change) -> None:
    """Tamper with the stream directly in Redis, as an attacker with Redis access would."""
    rows = core.store.audit.range()
    rows = change(rows)
    core.store.r.delete(K.audit)
    for sid, text in rows:
        core.store.r.xadd(K.audit, {"r": text}, id=sid)


def test_an_intact_log_verifies(core: Core, personas: Personas) -> None:
    make_history(core, personas)
    result = audit.verify(core.store)
    assert result.ok, result.problems
    assert result.checked == result.head_seq == core.store.audit.length()


def test_every_change_is_recorded_with_who_what_and_why(core: Core, personas: Personas) -> None:
    make_history(core, personas)
    records, _ = audit.search(core.store, limit=100)
    by_action = {r.action: r for r in records}
    delist = by_action["entry.delist"]
    assert (delist.actor, delist.agency, delist.reason) == ("bruno", "Agency B (ES)", "gone")
    assert delist.before == {"status": "active"} and delist.after == {"status": "delisted"}
    assert by_action["user.token"].after == {"token": "issued"}
    for r in records:  # no secret ever lands in the log
        text = json.dumps(r.to_dict())
        assert "blu_" not in text and "argon2" not in text


def test_an_edited_record_is_named(core: Core, personas: Personas) -> None:
    make_history(core, personas)
    target = core.store.audit.length() - 2

    def edit(rows):
        out = []
        for sid, text in rows:
            if sid == f"{target}-0":
                d = json.loads(text)
                d["reason"] = "nothing to see"
                text = json.dumps(d)
            out.append((sid, text))
        return out

    rewrite(core, edit)
    result = audit.verify(core.store)
    assert not result.ok
    assert f"record {target} does not match its hash (altered)" in result.problems


def test_a_removed_record_is_named(core: Core, personas: Personas) -> None:
    make_history(core, personas)
    rewrite(core, lambda rows: [r for r in rows if r[0] != "5-0"])
    result = audit.verify(core.store)
    assert not result.ok
    assert any("5" in p and "removed" in p for p in result.problems), result.problems


def test_reordered_records_are_named(core: Core, personas: Personas) -> None:
    make_history(core, personas)

    def swap(rows):
        rows = list(rows)
        (a_id, a), (b_id, b) = rows[3], rows[4]
        rows[3], rows[4] = (a_id, b), (b_id, a)
        return rows

    rewrite(core, swap)
    result = audit.verify(core.store)
    assert not result.ok
    assert any("reordered" in p for p in result.problems), result.problems


def test_a_removed_last_record_is_detected(core: Core, personas: Personas) -> None:
    make_history(core, personas)
    last = core.store.audit.length()
    core.store.r.xdel(K.audit, f"{last}-0")
    result = audit.verify(core.store)
    assert not result.ok
    assert any(f"{last}" in p and "missing at the end" in p for p in result.problems)


def test_the_cli_verifies_and_fails_after_tampering(core: Core, personas: Personas, settings) -> None:
    make_history(core, personas)
    env = {**os.environ, "BLOCKLIST_REDIS_URL": settings.redis_url, "BLOCKLIST_DATA_DIR": str(settings.data_dir)}
    ok = subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout

    approval = next(int(sid.split("-")[0]) for sid, text in core.store.audit.range() if "entry.approve" in text)

    def edit(rows):
        return [(sid, text.replace('"actor":"bruno"', '"actor":"mallory"')) for sid, text in rows]

    rewrite(core, edit)
    bad = subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    assert "BROKEN" in bad.stderr and f"record {approval} does not match its hash" in bad.stderr


@pytest.mark.parametrize("n", [3])
def test_concurrent_writers_keep_one_linear_chain(core: Core, personas: Personas, n: int) -> None:
    import threading

    def work(i: int) -> None:
        for j in range(10):
            core.curation.submit(personas.alice.actor, f"w{i}-{j}.example.test")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = audit.verify(core.store)
    assert result.ok, result.problems
    assert core.curation.counts()["pending"] == 10 * n
