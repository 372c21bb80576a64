"""First start: the things a new installation needs before anyone can sign in.

Idempotent: every step checks whether it was already done, so ``blocklist
serve`` can run it on every start.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from app.core import Core
from app.domain import SYSTEM
from app.errors import BlocklistError

ADMIN_NAME = "admin"
ADMIN_AGENCY = "Programme administration"


@dataclass
class FirstStart:
    admin_password: str | None = None
    allowlist_seeded: int = 0


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def ensure_secret_file(path: Path) -> Path:
    """A random secret in a 0600 file, made once (the Flask session key)."""
    if not path.exists():
        write_secret(path, secrets.token_hex(32))
    return path


def seed_lines() -> list[tuple[str, bool, str]]:
    out = []
    text = files("app").joinpath("data/allowlist_seed.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        content, _, comment = line.partition("#")
        parts = content.split()
        if not parts:
            continue
        out.append((parts[0], len(parts) > 1 and parts[1] == "subdomains", comment.strip()))
    return out


def first_start(core: Core) -> FirstStart:
    result = FirstStart()
    if not core.users.exists_any():
        password = secrets.token_urlsafe(15)
        # Printed on a terminal, so temporary: the first sign-in must replace it.
        core.users.add(SYSTEM, ADMIN_NAME, "admin", ADMIN_AGENCY, password, must_change=True)
        result.admin_password = password
    core.users.agencies()  # an upgrade from free-text agencies puts them on the list
    if core.store.settings.once("allowlist_seeded") and not core.curation.allowlist():
        for domain, sub, reason in seed_lines():
            try:
                core.curation.allowlist_add(SYSTEM, domain, sub, reason or "seeded on first start")
                result.allowlist_seeded += 1
            except BlocklistError:
                continue
    return result
