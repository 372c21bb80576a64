"""The service objects of one process, built from settings: no globals.

Every entry point (web app factory, CLI command, worker, transfer server)
makes one :class:`Core` and passes it down; tests make one per test with a
fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.clock import Clock, system_clock
from app.config import Settings
from app.curation import Curation
from app.store import Store
from app.users import Users


@dataclass
class Core:
    settings: Settings
    store: Store
    clock: Clock = system_clock
    curation: Curation = field(init=False)
    users: Users = field(init=False)

    def __post_init__(self) -> None:
        self.curation = Curation(self.store, self.settings, self.clock)
        self.users = Users(self.store, self.clock)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = system_clock) -> Core:
        if not settings.redis_url:
            from app.errors import ConfigError

            raise ConfigError("BLOCKLIST_REDIS_URL is not set (blocklist serve starts an embedded Redis)")
        return cls(settings=settings, store=Store.from_url(settings.redis_url), clock=clock)
