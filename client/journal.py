"""The journal of the held list: the changes applied since ``entries.jsonl`` was written. No I/O.

Rewriting a list of a million entries (175 MB) and syncing it on every
version costs far more than the change itself. The held list is therefore
kept as a base file (``entries.jsonl``) and a journal (``entries.journal``)
of the changes applied since, one record per run that changed the list::

    {"version":42,"removed":2,"added":1}
    -<canonical line of an entry taken out>
    -<...>
    +<canonical line of an entry put in>

Records are only appended; ``state.json`` records how many bytes of the
journal belong to the list it holds and their sha256, so bytes after that
(an append cut short by a crash, or one whose run never saved its state)
are ignored, and any other change to the journal is found. Reading it back
gives the net change from the base to the list held (changes that cancel
out dropped), which :meth:`client.listfile.Lines.edit` applies in one
splice. What must stay true: a record is the net change of one run, made
from verified deltas, whose result matched the feed's ``entries_digest``;
the journal is read back only when its bytes are exactly those recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

_ENTRY = b'{"type":'


def record(version: int, removed: Sequence[bytes], added: Sequence[bytes]) -> bytes:
    """One journal record: ``removed`` and ``added`` are canonical lines, each ending in a newline."""
    head = json.dumps({"version": version, "removed": len(removed), "added": len(added)},
                      separators=(",", ":")).encode()
    return b"".join([head, b"\n", *(b"-" + line for line in removed), *(b"+" + line for line in added)])


@dataclass
class Net:
    """The net change a journal makes to its base: canonical lines (with their newline) by key."""

    removed: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)
    added: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)
    records: int = 0
    version: int | None = None  # of the last record

    def take(self, removed: Sequence[bytes], added: Sequence[bytes]) -> None:
        for line in removed:
            k = key(line)
            if self.added.get(k) == line:
                del self.added[k]
            else:
                self.removed[k] = line
        for line in added:
            k = key(line)
            if self.removed.get(k) == line:
                del self.removed[k]
            else:
                self.added[k] = line


def key(line: bytes) -> tuple[bytes, bytes]:
    """(type, value) of a canonical line (``{"type":"T","value":"V",...``)."""
    t_end = line.index(b'"', 9)
    v_start = t_end + 11  # past '","value":"'
    return line[9:t_end], line[v_start : line.index(b'"', v_start)]


def read(data: bytes) -> Net:
    """The net change of the journal ``data``; raises ValueError saying what is wrong with it."""
    net = Net()
    if not data:
        return net
    if not data.endswith(b"\n"):
        raise ValueError("ends inside a record")
    lines = data.split(b"\n")
    lines.pop()
    i = 0
    while i < len(lines):
        try:
            head = json.loads(lines[i])
        except ValueError:
            raise ValueError(f"record {net.records + 1} does not start with its header") from None
        if not isinstance(head, dict) or set(head) != {"version", "removed", "added"} \
                or not all(type(v) is int and v >= 0 for v in head.values()):
            raise ValueError(f"record {net.records + 1} has a malformed header")
        r, a = head["removed"], head["added"]
        body = lines[i + 1 : i + 1 + r + a]
        if len(body) != r + a:
            raise ValueError(f"record {net.records + 1} is cut short")
        if not all(x.startswith(b"-" + _ENTRY) for x in body[:r]) \
                or not all(x.startswith(b"+" + _ENTRY) for x in body[r:]):
            raise ValueError(f"record {net.records + 1} holds a line that is not a change")
        try:
            net.take([x[1:] + b"\n" for x in body[:r]], [x[1:] + b"\n" for x in body[r:]])
        except ValueError:
            raise ValueError(f"record {net.records + 1} holds a line that is not an entry") from None
        if net.version is not None and head["version"] <= net.version:
            raise ValueError(f"record {net.records + 1} does not follow the version before it")
        net.version = head["version"]
        net.records += 1
        i += 1 + r + a
    return net
