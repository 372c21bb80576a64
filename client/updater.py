"""One pull: fetch, verify, render and apply the feed, or change nothing.

The order of a run, and why:

1. Fetch and verify the manifest (signature with a pinned key, freshness,
   rollback and fast-forward bounds) before anything else is fetched.
2. Build the new list: nothing (the version held is current), the chain of
   deltas from the version held, or the full snapshot; every file is
   checked against the manifest's size and sha256 and its own signature,
   and the result against the manifest's ``entries_digest``. The list is
   kept as bytes (:mod:`client.listfile`), never as one object per entry.
3. Work out each output: after deltas, the previous file is patched (the
   lines of removed entries cut out, those of added entries put in at
   their place), which gives the same bytes a full rendering would; it is
   rendered in full after a snapshot, or when the file is not exactly the
   one this tool last wrote. Refuse to replace a file this tool did not
   write. Changed outputs are staged (temp file + fsync), one at a time,
   so only one output's bytes are in memory at once.
4. Only then apply: mark a reload as pending, rename every staged output
   into place, store the new list and state, run the post-apply command
   once, and clear the pending mark.

Any failure before step 4 leaves outputs and state as they were (the error
is recorded for ``status``). A post-apply command that fails is run again on
the next pull even if nothing new arrives, so a resolver never stays on old
data because one reload failed.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar

from client import files
from client.config import Config, OutputSpec
from client.errors import LocalError, NotFoundError, PostApplyError, PullError, RefusedError
from client.fetch import Transport
from client.listfile import Lines, parse_snapshot_lines, record_line
from client.minisign import PublicKey, prehash
from client.outputs import (
    Change,
    ListInfo,
    ListView,
    ancestors,
    fingerprint,
    format_of,
    is_ours,
    patch,
    render_into,
    split_file,
)
from client.state import StagedJournal, StagedLines, State, StateDir
from client.verify import (
    MANIFEST_MAX,
    SIGNATURE_MAX,
    ArtifactRef,
    KeyRing,
    Manifest,
    Record,
    TrustPolicy,
    check_artifact,
    check_manifest,
    parse_delta,
    plan,
)

T = TypeVar("T")

# Counting changed lines of a fully rewritten output means holding both versions' lines
# in sets; above this size the report says "rewritten" instead.
_DIFF_MAX = 8 << 20


@dataclass
class OutputChange:
    spec: OutputSpec
    changed: bool
    lines_added: int | None = 0
    lines_removed: int | None = 0
    how: str = "render"  # render | patch
    record: dict[str, Any] | None = None  # what state.json keeps about the file once written
    staged: files.Staged | None = None


@dataclass
class Report:
    version: int
    previous: int | None
    via: str  # held | delta | snapshot
    steps: int
    count: int
    added: int | None
    removed: int | None
    outputs: list[OutputChange] = field(default_factory=list)
    post_apply: str = "none"  # none | ran | would-run | not-configured
    dry_run: bool = False
    snapshot_version: int | None = None  # the version of the snapshot taken, if one was
    notes: list[str] = field(default_factory=list)  # why the run did what it did, when it was unusual

    @property
    def changed(self) -> list[OutputChange]:
        return [o for o in self.outputs if o.changed]


@dataclass
class NetChange:
    """What a chain of deltas did to the held list, changes that cancel out removed."""

    removed: dict[tuple[str, str], Record] = field(default_factory=dict)
    added: dict[tuple[str, str], Record] = field(default_factory=dict)

    def take(self, removed: Sequence[Record], added: Sequence[Record]) -> None:
        for r in removed:
            if self.added.get(r.key) == r:
                del self.added[r.key]
            else:
                self.removed[r.key] = r
        for r in added:
            if self.removed.get(r.key) == r:
                del self.removed[r.key]
            else:
                self.added[r.key] = r


@dataclass
class Obtained:
    lines: Lines
    via: str
    steps: int
    snapshot_sha256: str | None  # None when the version was published as a delta only
    published_at: str
    net: NetChange | None = None  # set when the list came from deltas


class Updater:
    def __init__(self, config: Config, transport: Transport, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.transport = transport
        self.clock = clock
        self.dir = StateDir(config.state_dir)
        self.state = State()
        self.ring = KeyRing()

    @property
    def keys(self) -> tuple[PublicKey, ...]:
        """The pinned keys and those learned from signed announcements, less retired ones."""
        return self.ring.trusted(self.config.keys)

    @property
    def policy(self) -> TrustPolicy:
        c = self.config
        return TrustPolicy(keys=self.keys, max_version_jump=c.max_version_jump, max_artifact_size=c.max_download,
                           list_name=c.list_name)

    def run(self, dry_run: bool = False) -> Report:
        with self.dir.lock():
            self.state = self.dir.load()
            self.ring = self.dir.load_keys()
            now = self.clock()
            try:
                return self._run(now, dry_run)
            except PullError as e:
                if not dry_run:
                    self._record_failure(e, now)
                raise

    def _record_failure(self, error: PullError, now: float) -> None:
        self.state.last_attempt = now
        self.state.last_error = error.message
        self.state.last_error_at = now
        self.state.last_error_code = error.exit_code
        try:
            self.dir.save(self.state)
        except LocalError:
            pass  # the error itself is reported; a state directory we cannot write is reported next time

    # ------------------------------------------------------------------ steps

    def _run(self, now: float, dry_run: bool) -> Report:
        state = self.state
        held = state.held()
        body = self.transport.get("manifest.json", MANIFEST_MAX)
        sig = self.transport.get("manifest.json.minisig", SIGNATURE_MAX)
        manifest = check_manifest(body, sig, self.policy, held, now)
        in_place = self._in_place(manifest, state)
        if in_place is not None:
            return self._keep(manifest, state, in_place, now, dry_run)
        notes: list[str] = []
        kept = self.dir.load_held(state) if held is not None else None
        if isinstance(kept, str):
            notes.append(f"the list held cannot be used ({kept}): taking the full snapshot")
            kept = None
        base = None
        if kept is not None:
            base, kept.lines = kept.lines, None  # the list is let go below, once the outputs no longer need it
        got = self._obtain(manifest, state, base)
        lines = got.lines
        if lines.digest.hexdigest() != manifest.entries_digest or len(lines) != manifest.count:
            raise RefusedError(
                f"the list built for version {manifest.version} does not match the manifest's "
                "entries_digest and count"
            )
        added, removed = _counts(base, got)
        info = ListInfo(manifest.list_name, manifest.version, got.published_at, manifest.rpz_zone)
        # The new list is written while the outputs are worked out; it goes into place after them.
        staged_lines: StagedLines | StagedJournal | None = None
        if got.via != "held" and not dry_run:
            if got.via == "delta" and got.net is not None and kept is not None:
                # Appended to the journal, or written in full when the journal has grown enough.
                staged_lines = self.dir.stage_change(kept, lines, manifest.version,
                                                     [record_line(r) for r in sorted(got.net.removed.values())],
                                                     [record_line(r) for r in sorted(got.net.added.values())])
            else:
                staged_lines = self.dir.stage_lines(lines)
        outputs = _Outputs(self, state, base, got, info, stage=not dry_run)
        del base  # a patch needs only the change worked out above
        try:
            report = Report(version=manifest.version, previous=state.version, via=got.via, steps=got.steps,
                            count=len(lines), added=added, removed=removed,
                            outputs=outputs.prepare(self.config.outputs), dry_run=dry_run,
                            snapshot_version=manifest.full_version if got.via == "snapshot" else None,
                            notes=notes)
        except BaseException:
            outputs.discard()
            if staged_lines is not None:
                staged_lines.discard()
            raise
        changed = report.changed
        if dry_run:
            if self.config.post_apply and (changed or state.reload_pending):
                report.post_apply = "would-run"
            return report

        was_pending = state.reload_pending
        try:
            if changed and self.config.post_apply:
                # Recorded before the files change: a run killed after the renames
                # still reloads the resolver on the next run.
                state.reload_pending = True
                self.dir.save(state)
            self._commit(changed)
        except BaseException:
            outputs.discard()
            if staged_lines is not None:
                staged_lines.discard()
            state.reload_pending = was_pending  # nothing was renamed into place
            raise
        stored = staged_lines.commit() if staged_lines is not None else None
        if outputs.parents is not None:
            self.dir.save_parents(lines.digest.hexdigest(), outputs.parents)
        records = dict(state.outputs)
        for o in report.outputs:
            if o.record is not None:
                if o.changed:
                    o.record["stamp"] = _stamp(o.spec.path)  # as renamed into place
                records[str(o.spec.path)] = o.record
        new = replace(
            state, list_name=manifest.list_name, version=manifest.version, published_at=got.published_at,
            snapshot_sha256=got.snapshot_sha256, entries_digest=lines.digest.hexdigest(), count=len(lines),
            key_id=manifest.key_id, manifest_signed_at=manifest.signed_at,
            manifest_expires_at=manifest.expires_at, last_attempt=now, last_check=now,
            applied_via=got.via if got.via != "held" else state.applied_via,
            last_change=now if changed else state.last_change, wide_count=outputs.wide_count,
            outputs={k: v for k, v in records.items() if k in {str(o.path) for o in self.config.outputs}},
        )
        if stored is not None:
            new = replace(new, entries_stamp=None, base_stamp=stored.base_stamp, journal_size=stored.journal_size,
                          journal_sha256=stored.journal_sha256, journal_records=stored.journal_records)
        return self._finish(manifest, report, new, now, new_base=stored is not None and stored.journal_size == 0)

    def _in_place(self, manifest: Manifest, state: State) -> list[OutputChange] | None:
        """Each output, unchanged, when the manifest brings nothing new and everything is as the
        last run left it: the manifest names the list held (version, entries_digest and count),
        the held list's files are those written (by their stamps: they are not read) and so is
        every output (its options, size, modification time and inode are those recorded).
        None when any of that is not so: the run then reads the list and checks everything."""
        held = state.held()
        if held is None or state.wide_count is None or plan(manifest, held, have_entries=True) \
                or not self.dir.held_in_place(state):
            return None
        out: list[OutputChange] = []
        for spec in self.config.outputs:
            record = _trusted(state, spec)
            if record is None:
                return None
            out.append(OutputChange(spec, False, record=record))
        return out

    def _keep(self, manifest: Manifest, state: State, outputs: list[OutputChange], now: float,
              dry_run: bool) -> Report:
        """A run with nothing new whose outputs are in place: the list held is not read, no
        output is written; the state records the manifest checked (and a pending reload runs)."""
        assert state.count is not None  # state.held() is not None
        report = Report(version=manifest.version, previous=state.version, via="held", steps=0, count=state.count,
                        added=0, removed=0, outputs=outputs, dry_run=dry_run)
        if dry_run:
            if self.config.post_apply and state.reload_pending:
                report.post_apply = "would-run"
            return report
        new = replace(
            state, list_name=manifest.list_name, published_at=state.published_at or manifest.published_at,
            key_id=manifest.key_id, manifest_signed_at=manifest.signed_at, manifest_expires_at=manifest.expires_at,
            last_attempt=now, last_check=now,
            outputs={k: v for k, v in state.outputs.items() if k in {str(o.path) for o in self.config.outputs}},
        )
        return self._finish(manifest, report, new, now)

    def _finish(self, manifest: Manifest, report: Report, new: State, now: float, *, new_base: bool = False) -> Report:
        """Save the state of a run whose outputs are in place, run the post-apply command if a
        reload is pending, and take in the keys the manifest announces."""
        self.dir.save(new)
        self.state = new
        if new_base:
            self.dir.trim_journal(0)  # a new base: the old journal's bytes are past the size recorded
        changed = report.changed
        if new.reload_pending and self.config.post_apply:
            self._post_apply(manifest.version, changed)
            new.reload_pending = False
            report.post_apply = "ran"
        elif not self.config.post_apply:
            report.post_apply = "not-configured"
        ring = self.ring.after(manifest, self.config.keys, now)
        if ring != self.ring:
            self.dir.save_keys(ring)
            self.ring = ring
        new.last_success = now
        new.last_error = None
        new.last_error_at = None
        new.last_error_code = None
        self.dir.save(new)
        return report

    def _fetch(self, ref: ArtifactRef, manifest: Manifest) -> bytes:
        data, checked = self._fetch_checking(ref, manifest)
        checked()
        return data

    def _fetch_checking(self, ref: ArtifactRef, manifest: Manifest) -> tuple[bytes, Callable[[], None]]:
        """The file, and a call that returns once it is checked against the manifest (size,
        sha256 and signature), or raises why it is not. The hashing runs in a thread (hashlib
        releases the GIL), so the caller may start reading the bytes meanwhile; nothing made
        from them is used before the call returns."""
        # The download stops one byte past the size the signed manifest states.
        data = self.transport.get(ref.path, ref.size)
        sig = self.transport.get(ref.path + ".minisig", SIGNATURE_MAX)
        # One thread per hash: each holds the GIL only to start and to end.
        sha256 = _in_background(lambda: hashlib.sha256(data).hexdigest())
        blake2b = _in_background(lambda: prehash(data))

        done: list[bool] = []

        def checked() -> None:
            if not done:
                check_artifact(data, sig, ref, manifest, self.keys, sha256=sha256(), prehashed=blake2b())
                done.append(True)

        return data, checked

    def _obtain(self, manifest: Manifest, state: State, base: Lines | None) -> Obtained:
        held = state.held()
        if held is not None and base is not None:
            steps = plan(manifest, held, have_entries=True)
            if not steps:
                return Obtained(base, "held", 0, held.snapshot_sha256,
                                state.published_at or manifest.published_at)
            if steps[0].kind == "delta":
                try:
                    return self._apply_deltas(manifest, held.version, held.snapshot_sha256, base, steps)
                except NotFoundError:
                    pass  # history was pruned since the manifest was signed: take the snapshot
                except RefusedError:
                    if StateDir.verify_lines(base.data, state):
                        raise  # the list held is intact: the feed is at fault
                    # The list held was damaged on this host since it was written: start from the snapshot.
        # The newest full snapshot, then the deltas from its version to the manifest's.
        steps = plan(manifest, None, have_entries=False)
        data, checked = self._fetch_checking(manifest.snapshot, manifest)
        try:
            lines, published_at = parse_snapshot_lines(data, manifest, checked)
        except RefusedError:
            checked()  # a file that is not the one signed is refused as such, whatever else is wrong with it
            raise
        checked()
        del data
        if len(steps) == 1:
            return Obtained(lines, "snapshot", 1, manifest.snapshot.sha256, published_at)
        got = self._apply_deltas(manifest, manifest.full_version, manifest.snapshot.sha256, lines, steps[1:])
        # The outputs are rendered in full: the deltas were applied to the snapshot, not to what was held.
        return Obtained(got.lines, "snapshot", len(steps), got.snapshot_sha256, got.published_at)

    def _apply_deltas(self, manifest: Manifest, version: int, sha: str | None, base: Lines,
                      chain: Sequence[ArtifactRef]) -> Obtained:
        current, published_at = base, ""
        net = NetChange()
        for ref in chain:
            delta = parse_delta(self._fetch(ref, manifest), ref, manifest)
            current = current.apply(delta, ref, version, sha)
            net.take(delta.removed, delta.added)
            version, sha, published_at = delta.to_version, delta.to_sha256, delta.published_at
        if manifest.full_version == manifest.version and sha is not None and sha != manifest.snapshot.sha256:
            raise RefusedError(
                f"the deltas lead to a version {manifest.version} whose snapshot differs from the manifest's"
            )
        return Obtained(current, "delta", len(chain), sha, published_at, net)

    def _commit(self, changed: Sequence[OutputChange]) -> None:
        try:
            files.commit([o.staged for o in changed if o.staged is not None])
        except OSError as e:
            where = e.filename or "an output"
            raise LocalError(f"cannot write {where}: {e.strerror}; outputs may be partly replaced") from None

    def _post_apply(self, version: int, changed: Sequence[OutputChange]) -> None:
        cmd = list(self.config.post_apply)
        shown = " ".join(shlex.join(cmd).split())  # one line, whatever the arguments hold
        if len(shown) > 60:
            shown = shown[:57] + "..."
        # The command sees the version and the changed paths, never the feed token.
        env = {k: v for k, v in os.environ.items() if k not in ("BLOCKLIST_PULL_TOKEN", "BLOCKLIST_PULL_TOKEN_FILE")}
        env.update(BLOCKLIST_PULL_VERSION=str(version),
                   BLOCKLIST_PULL_CHANGED=" ".join(str(o.spec.path) for o in changed))
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=self.config.post_apply_timeout, check=False)
        except FileNotFoundError:
            raise PostApplyError(f"the post-apply command {cmd[0]!r} was not found; it runs again on the next pull") \
                from None
        except subprocess.TimeoutExpired:
            raise PostApplyError(
                f"the post-apply command {shown} did not finish within {self.config.post_apply_timeout:g} s; "
                "it runs again on the next pull"
            ) from None
        except OSError as e:
            raise PostApplyError(f"cannot run the post-apply command {shown}: {e.strerror}") from None
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
            detail = f": {out[-1][:200]}" if out else ""
            raise PostApplyError(
                f"the post-apply command {shown} failed with exit status {proc.returncode}{detail}; "
                "the outputs are written and it runs again on the next pull"
            )


def _in_background(fn: Callable[[], T]) -> Callable[[], T]:
    """Start ``fn()`` in a thread; the call returned waits for it, and returns what it returned
    or raises what it raised."""
    result: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller
            failed.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def wait() -> T:
        thread.join()
        if failed:
            raise failed[0]
        return result[0]

    return wait


def _counts(base: Lines | None, got: Obtained) -> tuple[int | None, int | None]:
    """(entries added, entries removed) against the list held before, where that is cheap to know."""
    if got.net is not None:
        return len(got.net.added), len(got.net.removed)
    if got.via == "held":
        return 0, 0
    if base is None or len(base.buf) + len(got.lines.buf) > 2 * _DIFF_MAX:
        return None, None
    # The lists may be bytearrays (a snapshot is cut in place): compare their lines as bytes.
    before = set(map(bytes, base.data.split(b"\n")[:-1]))
    after = set(map(bytes, got.lines.data.split(b"\n")[:-1]))
    return len(after - before), len(before - after)


def _covered(lines: Lines, records: Sequence[Record]) -> list[bool]:
    """For each domain record, whether a parent of its name is listed with its subdomains in ``lines``."""
    # A listed name has at least two labels: the last label alone is never one.
    parents = [[".".join(labels[i:]).encode() for i in range(1, len(labels) - 1)]
               for labels in (r.value.split(".") for r in records)]
    wide = lines.wide_among(p for ps in parents for p in ps)
    return [any(p in wide for p in ps) for ps in parents]


def _trusted(state: State, spec: OutputSpec) -> dict[str, Any] | None:
    """The state's record of an output if the file is the one this tool last wrote with the
    same options: its size, modification time and inode are those recorded after writing it
    (an edit, a restore or a copy changes them)."""
    record = state.outputs.get(str(spec.path))
    if record is not None and record.get("fingerprint") == fingerprint(spec) \
            and isinstance(record.get("count"), int) and record.get("stamp") == _stamp(spec.path):
        return record
    return None


def _stamp(path: Path) -> list[int] | None:
    """(size, modification time in ns, inode) of a file, or None if it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class _Outputs:
    """Works out and stages each output of one run (see step 3 of the module docstring)."""

    def __init__(self, updater: Updater, state: State, base: Lines | None, got: Obtained, info: ListInfo,
                 *, stage: bool) -> None:
        self.state = state
        self.got = got
        self.info = info
        self.stage = stage
        self.staged: list[files.Staged] = []
        self.syncing: list[tuple[OutputChange, files.StagedWriter]] = []  # patched outputs being synced
        self.parents: dict[str, int] | None = None  # to save with the new list, when known
        self.change: Change | None = None
        self.nested_ok = False
        self._view: ListView | None = None
        nested = any(o.format != "urls" and format_of(o).nested for o in updater.config.outputs)
        if got.net is not None and base is not None:
            removed = [r for r in got.net.removed.values() if r.type == "domain"]
            added = [r for r in got.net.added.values() if r.type == "domain"]
            wide_delta = sum(r.subdomains for r in added) - sum(r.subdomains for r in removed)
            self.change = Change(
                removed=[(r.value.encode(), r.subdomains, c) for r, c in zip(removed, _covered(base, removed),
                                                                              strict=True)],
                added=[(r.value.encode(), r.subdomains, c) for r, c in zip(added, _covered(got.lines, added),
                                                                            strict=True)],
            )
            self.wide_count = state.wide_count + wide_delta if state.wide_count is not None \
                else self.view.wide_count
            if nested:
                parents = updater.dir.load_parents(base.digest.hexdigest())
                if parents is None:
                    parents = ListView(base).parent_counts()
                # Names listed under a parent whose subdomain flag changes would change
                # coverage: only a full rendering gets those right.
                above = ancestors(parents)
                self.nested_ok = not any(r.subdomains and r.value in above for r in (*removed, *added))
                for r in removed:
                    p = r.value.partition(".")[2]
                    parents[p] -= 1
                    if not parents[p]:
                        del parents[p]
                for r in added:
                    p = r.value.partition(".")[2]
                    parents[p] = parents.get(p, 0) + 1
                self.parents = parents
        elif got.via == "held" and state.wide_count is not None:
            self.wide_count = state.wide_count
        else:
            self.wide_count = self.view.wide_count
            if nested and got.via != "held":
                self.parents = self.view.parent_counts()

    @property
    def view(self) -> ListView:
        if self._view is None:
            self._view = ListView(self.got.lines)
        return self._view

    def discard(self) -> None:
        for _, writer in self.syncing:
            try:
                self.staged.append(writer.finished())
            except OSError:
                pass  # its temp file is removed
        self.syncing = []
        files.discard(self.staged)
        self.staged = []

    def prepare(self, specs: Sequence[OutputSpec]) -> list[OutputChange]:
        """Each output's change, staged (unless this is a dry run). Patches are made one
        output at a time; outputs that need a full rendering are rendered together."""
        done: dict[int, OutputChange] = {}
        pending: list[tuple[int, OutputSpec, _Existing | None]] = []
        for i, spec in enumerate(specs):
            result = self._patch_or_keep(spec)
            if isinstance(result, OutputChange):
                done[i] = result
            else:
                pending.append((i, spec, result))
        if pending:
            for i, change in zip([i for i, _, _ in pending], self._render([(s, e) for _, s, e in pending]),
                                 strict=True):
                done[i] = change
        while self.syncing:
            change, writer = self.syncing.pop(0)
            try:
                change.staged = writer.finished()
            except OSError as e:
                self._failed(e, change.spec)
            self.staged.append(change.staged)
        return [done[i] for i in range(len(specs))]

    def _patch_or_keep(self, spec: OutputSpec) -> OutputChange | _Existing | None:
        """The change if the output is kept or patched; else what the file holds now (None: no file)."""
        if not spec.path.parent.is_dir():
            raise LocalError(f"the directory of output {spec.path} does not exist")
        record = _trusted(self.state, spec)
        trusted = record is not None
        if trusted and record is not None and self.got.via == "held":
            return OutputChange(spec, False, record=record)
        if trusted and record is not None and spec.format == "urls" and self.got.net is not None \
                and not any(r.type == "url" for r in (*self.got.net.removed.values(), *self.got.net.added.values())):
            return OutputChange(spec, False, record=record)  # no URL changed: same content
        try:
            source = open(spec.path, "rb")  # noqa: SIM115 (closed below, after the map made from it)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise LocalError(f"cannot read output {spec.path}: {e.strerror}") from None
        try:
            try:
                mapped = files.map_file(source.fileno())
            except OSError as e:
                raise LocalError(f"cannot read output {spec.path}: {e.strerror}") from None
            try:
                return self._patch_or_read(spec, mapped, record if trusted else None, source)
            finally:
                if isinstance(mapped, mmap.mmap):
                    try:
                        mapped.close()
                    except BufferError:
                        pass  # a view of it is still alive (an error on the way): closed when collected
        finally:
            source.close()

    def _patch_or_read(self, spec: OutputSpec, existing: mmap.mmap | bytes,
                       record: dict[str, Any] | None, source: BinaryIO) -> OutputChange | _Existing:
        """Patch the output (``record``: it is the file last written), or read what it holds."""
        if not is_ours(existing[:200], spec):
            raise LocalError(
                f"{spec.path} was not written by blocklist-pull; refusing to replace it "
                "(move it away or choose another path)"
            )
        if record is not None and self.change is not None \
                and spec.format != "urls" and (self.nested_ok or not format_of(spec).nested):
            try:
                patched = patch(spec, existing, record["count"], self.change, self.info, self.wide_count)
                laid_out = True
            except ValueError:
                patched, laid_out = None, False  # not laid out as written (changed in place): rendered in full
            if patched is None and laid_out:
                return OutputChange(spec, False, record=record)
            if patched is not None:
                change = OutputChange(spec, True, patched.lines_added, patched.lines_removed, "patch",
                                      {"fingerprint": fingerprint(spec), "count": patched.count})
                if self.stage:
                    writer = self._writer(spec)
                    # Written and synced in a thread, which overlaps the next output's work; the
                    # old file's unchanged ranges are copied from it by the kernel, not read here.
                    try:
                        copy_from = os.dup(source.fileno())
                    except OSError as e:
                        writer.abandon()
                        raise LocalError(f"cannot read output {spec.path}: {e.strerror}") from None
                    writer.finish_in_background(patched.parts, copy_from)
                    self.syncing.append((change, writer))
                return change
        h = split_file(existing, spec)
        body = hashlib.sha256(memoryview(existing)[h:]).hexdigest()
        return _Existing(body, bytes(existing) if len(existing) <= _DIFF_MAX else None)

    def _render(self, items: Sequence[tuple[OutputSpec, _Existing | None]]) -> list[OutputChange]:
        # The files are written by a thread while the next pieces are rendered.
        spooler = files.Spooler() if self.stage else None
        sinks = [_Sink(self._writer(spec) if self.stage else None, existing is not None, spooler)
                 for spec, existing in items]
        try:
            counts = render_into([s for s, _ in items], self.view, self.info, [k.write for k in sinks])
            if spooler is not None:
                spooler.close()
        except BaseException as e:
            if spooler is not None:
                spooler.abandon()
            for k in sinks:
                k.abandon()
            if isinstance(e, OSError):
                self._failed(e, items[0][0])
            raise
        out: list[OutputChange] = []
        for (spec, existing), sink, count in zip(items, sinks, counts, strict=True):
            record: dict[str, Any] = {"fingerprint": fingerprint(spec), "count": count}
            if existing is not None and sink.body is not None and existing.body_sha256 == sink.body.hexdigest():
                sink.abandon()
                # Same content: the file keeps its header (the version that last changed it).
                out.append(OutputChange(spec, False, record=dict(record, stamp=_stamp(spec.path))))
                continue
            added, removed = _line_changes(existing, sink)
            change = OutputChange(spec, True, added, removed, "render", record)
            if sink.writer is not None:
                sink.writer.finish_in_background()  # synced in a thread, all of them at once (see prepare)
                self.syncing.append((change, sink.writer))
                sink.writer = None
            out.append(change)
        return out

    def _writer(self, spec: OutputSpec) -> files.StagedWriter:
        try:
            return files.StagedWriter(spec.path, spec.mode)
        except OSError as e:
            self._failed(e, spec)

    def _failed(self, error: OSError, spec: OutputSpec) -> NoReturn:
        self.discard()
        where = error.filename or spec.path
        raise LocalError(f"cannot write {where}: {error.strerror}; no output was changed") from None


@dataclass
class _Existing:
    body_sha256: str  # of everything after the comment header
    data: bytes | None  # the file, when small enough to count changed lines


class _Sink:
    """Receives an output in pieces: the first piece is its header. Hashes its body when there
    is a file to compare it with, keeps a small body for counting lines, and writes to the
    staged file if any."""

    def __init__(self, writer: files.StagedWriter | None, compare: bool, spooler: files.Spooler | None = None) -> None:
        self.writer = writer
        self.spooler = spooler
        self.body = hashlib.sha256() if compare else None
        self.pieces = 0
        self.kept: list[bytes] | None = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.pieces:
            if self.body is not None:
                self.body.update(data)
            self.size += len(data)
            if self.kept is not None:
                self.kept.append(data)
                if self.size > _DIFF_MAX:
                    self.kept = None
        self.pieces += 1
        if self.writer is not None:
            if self.spooler is not None:
                self.spooler.write(self.writer, data)
            else:
                self.writer.write(data)

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.abandon()
            self.writer = None


def _line_changes(existing: _Existing | None, sink: _Sink) -> tuple[int | None, int | None]:
    if sink.kept is None:
        return (None, None)
    body = b"".join(sink.kept)
    if existing is None:
        return body.count(b"\n"), 0
    if existing.data is None:
        return None, None
    c = (b"#", b";")
    old = {ln for ln in existing.data.splitlines() if not ln.startswith(c)}
    new = {ln for ln in body.splitlines() if not ln.startswith(c)}
    return len(new - old), len(old - new)
