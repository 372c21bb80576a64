"""One pull: fetch, verify, render and apply the feed, or change nothing.

The order of a run, and why:

1. Fetch and verify the manifest (signature with a pinned key, freshness,
   rollback and fast-forward bounds) before anything else is fetched.
2. Build the new list in memory: nothing (the version held is current), the
   chain of deltas from the version held, or the full snapshot; every file
   is checked against the manifest's size and sha256 and its own
   signature, and the result against the manifest's ``entries_sha256``.
3. Render every output in memory; refuse to replace a file this tool did not
   write; find which outputs change.
4. Only then write: mark a reload as pending, stage every changed output
   (temp file + fsync), rename them all into place, store the new list and
   state, run the post-apply command once, and clear the pending mark.

Any failure before step 4 leaves outputs and state as they were (the error
is recorded for ``status``). A post-apply command that fails is run again on
the next pull even if nothing new arrives, so a resolver never stays on old
data because one reload failed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from client import files
from client.config import Config, OutputSpec
from client.errors import LocalError, NotFoundError, PostApplyError, PullError, RefusedError
from client.fetch import Transport
from client.minisign import PublicKey
from client.outputs import ListInfo, Rendered, is_ours, render, same_content
from client.state import State, StateDir
from client.verify import (
    MANIFEST_MAX,
    SIGNATURE_MAX,
    ArtifactRef,
    EntryList,
    Held,
    KeyRing,
    Manifest,
    TrustPolicy,
    apply_delta,
    check_artifact,
    check_final,
    check_manifest,
    parse_delta,
    parse_snapshot,
    plan,
)


@dataclass
class OutputChange:
    spec: OutputSpec
    rendered: Rendered
    changed: bool
    lines_added: int = 0
    lines_removed: int = 0


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

    @property
    def changed(self) -> list[OutputChange]:
        return [o for o in self.outputs if o.changed]


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
        held_entries = self.dir.load_entries(state) if held is not None else None
        entries, via, steps, snapshot_sha, published_at = self._obtain(manifest, state, held_entries)
        check_final(entries, manifest)
        added = removed = None
        if held_entries is not None:
            before, after = set(held_entries.records), set(entries.records)
            added, removed = len(after - before), len(before - after)
        info = ListInfo(manifest.list_name, manifest.version, published_at, manifest.rpz_zone)
        report = Report(version=manifest.version, previous=state.version, via=via, steps=steps,
                        count=len(entries), added=added, removed=removed,
                        outputs=[self._prepare(spec, entries, info) for spec in self.config.outputs],
                        dry_run=dry_run)
        changed = report.changed
        if dry_run:
            if self.config.post_apply and (changed or state.reload_pending):
                report.post_apply = "would-run"
            return report

        was_pending = state.reload_pending
        if changed and self.config.post_apply:
            # Recorded before the files change: a run killed after the renames
            # still reloads the resolver on the next run.
            state.reload_pending = True
            self.dir.save(state)
        try:
            self._write(changed)
        except LocalError:
            state.reload_pending = was_pending  # nothing was renamed into place
            raise
        if via != "held":
            self.dir.save_entries(entries)
        new = replace(
            state, list_name=manifest.list_name, version=manifest.version, published_at=published_at,
            snapshot_sha256=snapshot_sha, entries_sha256=entries.digest, count=len(entries),
            key_id=manifest.key_id, manifest_signed_at=manifest.signed_at,
            manifest_expires_at=manifest.expires_at, last_attempt=now, last_check=now,
            applied_via=via if via != "held" else state.applied_via,
            last_change=now if changed else state.last_change,
        )
        self.dir.save(new)
        self.state = new
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
        # The download stops one byte past the size the signed manifest states.
        data = self.transport.get(ref.path, ref.size)
        sig = self.transport.get(ref.path + ".minisig", SIGNATURE_MAX)
        check_artifact(data, sig, ref, manifest, self.keys)
        return data

    def _obtain(self, manifest: Manifest, state: State, held_entries: EntryList | None
                ) -> tuple[EntryList, str, int, str, str]:
        """(list, how it was obtained, files applied, snapshot sha256, published_at)."""
        held = state.held()
        if held is not None and held_entries is not None:
            steps = plan(manifest, held, have_entries=True)
            if not steps:
                return held_entries, "held", 0, held.snapshot_sha256, state.published_at or manifest.published_at
            if steps[0].kind == "delta":
                try:
                    return self._apply_deltas(manifest, held, held_entries, steps)
                except NotFoundError:
                    pass  # history was pruned since the manifest was signed: take the snapshot
        data = self._fetch(manifest.snapshot, manifest)
        entries, published_at = parse_snapshot(data, manifest)
        return entries, "snapshot", 1, manifest.snapshot.sha256, published_at

    def _apply_deltas(self, manifest: Manifest, held: Held, base: EntryList, chain: Sequence[ArtifactRef]
                      ) -> tuple[EntryList, str, int, str, str]:
        current, version, sha, published_at = base, held.version, held.snapshot_sha256, ""
        for ref in chain:
            delta = parse_delta(self._fetch(ref, manifest), ref, manifest)
            current = apply_delta(current, version, sha, delta, ref)
            version, sha, published_at = delta.to_version, delta.to_sha256, delta.published_at
        if sha != manifest.snapshot.sha256:
            raise RefusedError(
                f"the deltas lead to a version {manifest.version} whose snapshot differs from the manifest's"
            )
        return current, "delta", len(chain), sha, published_at

    # ------------------------------------------------------------------ outputs

    def _prepare(self, spec: OutputSpec, entries: EntryList, info: ListInfo) -> OutputChange:
        rendered = render(spec, entries.records, info)
        if not spec.path.parent.is_dir():
            raise LocalError(f"the directory of output {spec.path} does not exist")
        try:
            existing = spec.path.read_bytes()
        except FileNotFoundError:
            existing = None
        except OSError as e:
            raise LocalError(f"cannot read output {spec.path}: {e.strerror}") from None
        if existing is None:
            return OutputChange(spec, rendered, True, rendered.body.count("\n"), 0)
        if not is_ours(existing, spec):
            raise LocalError(
                f"{spec.path} was not written by blocklist-pull; refusing to replace it "
                "(move it away or choose another path)"
            )
        if same_content(existing, rendered, spec):
            return OutputChange(spec, rendered, False)
        old = {ln for ln in existing.decode("utf-8", "replace").splitlines() if not ln.startswith(("#", ";"))}
        new = {ln for ln in rendered.body.splitlines() if not ln.startswith(("#", ";"))}
        return OutputChange(spec, rendered, True, len(new - old), len(old - new))

    def _write(self, changed: Sequence[OutputChange]) -> None:
        staged: list[files.Staged] = []
        try:
            for o in changed:
                staged.append(files.stage(o.spec.path, o.rendered.data(), o.spec.mode))
            files.commit(staged)
        except OSError as e:
            files.discard(staged)
            where = e.filename or "an output"
            raise LocalError(f"cannot write {where}: {e.strerror}; no output was changed") from None

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
