"""The service objects of one process, built from settings: no globals.

Every entry point (web app factory, CLI command, worker, transfer server)
makes one :class:`Core` and passes it down; tests make one per test with a
fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.appeals import Appeals
from app.artifacts import ArtifactStore
from app.clock import Clock, system_clock
from app.config import Settings
from app.curation import Curation
from app.errors import ConfigError
from app.isps import Isps
from app.publishing import Publisher
from app.store import Store
from app.users import Users


@dataclass
class Core:
    settings: Settings
    store: Store
    clock: Clock = system_clock
    curation: Curation = field(init=False)
    users: Users = field(init=False)
    isps: Isps = field(init=False)
    publisher: Publisher = field(init=False)
    artifacts: ArtifactStore = field(init=False)
    appeals: Appeals = field(init=False)

    def __post_init__(self) -> None:
        self.curation = Curation(self.store, self.settings, self.clock)
        self.users = Users(self.store, self.clock)
        self.isps = Isps(self.store, self.clock)
        # The signing key is loaded on first use: only the worker (and the
        # `publish` command) ever signs; the web tier never needs it.
        self.publisher = Publisher(self.store, self.settings, self.curation, self.clock)
        self.artifacts = self.publisher.artifacts
        self.appeals = Appeals(self.store, self.curation, self.clock)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = system_clock) -> Core:
        if not settings.redis_url:
            raise ConfigError("BLOCKLIST_REDIS_URL is not set (blocklist serve starts an embedded Redis)")
        store = Store.from_url(settings.redis_url)
        store.wait_replicas, store.wait_timeout = settings.redis_wait_replicas, settings.redis_wait_timeout
        store.upgrade_key_names()
        return cls(settings=settings, store=store, clock=clock)

    def latest_version(self) -> int | None:
        latest = self.publisher.latest_record()
        return latest.version if latest else None

    def readiness(self) -> dict[str, tuple[bool, Any]]:
        """Checks beyond Redis for /readyz: a publisher holds the signing key,
        and the manifest exists and is not near expiry."""
        out: dict[str, tuple[bool, Any]] = {}
        signer = self.store.health.signer_status()
        if signer is None:
            out["signing"] = (False, "no publisher holding the signing key has reported in the last 5 minutes")
        elif signer.get("problem"):
            out["signing"] = (False, f"the publisher cannot sign: {signer['problem']}")
        else:
            out["signing"] = (True, f"key {signer['key_id']} loaded by the publisher")
        workers = self.store.health.workers_alive()
        signing = [w["name"] for w in workers if w.get("signs")]
        keyless = [w["name"] for w in workers if not w.get("signs")]
        detail = f"{len(signing)} can publish ({', '.join(signing) or 'none'})"
        if keyless:
            detail += f"; without the signing key, never publishing: {', '.join(keyless)}"
        # Informational: the "signing" check above decides readiness.
        out["workers"] = (True, detail)
        m = self.store.pubs.manifest()
        if m is None:
            out["manifest"] = (True, "no publication yet")
        else:
            left = m[2] + self.settings.manifest_ttl - self.clock()
            ok = left > self.settings.manifest_ttl * 0.25
            out["manifest"] = (ok, f"expires in {int(left)} s" if left > 0 else "EXPIRED")
        return out
