"""Signing key files: made once, kept in a 0600 file, never overwritten.

The key file is minisign's unencrypted secret key format, so an operator
can also sign with the stock tool. Its public key is written beside it as
``<key file>.pub``; the key ISPs pin is the one the store records as the
programme's current key (:mod:`app.keys`, ``blocklist keys show``).
Signing itself is :mod:`client.minisign` (pure, shared with the pull tool).
Only :mod:`app.keys` (``keys init``, ``keys rotate``, first start of
``serve``) calls :func:`create_key`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from app.errors import ConfigError, SigningError
from client.minisign import MinisignError, PublicKey, SecretKey, Signature

__all__ = ["PublicKey", "SecretKey", "Signature", "create_key", "ensure_key", "load_key", "public_key_path"]


def public_key_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".pub")


def ensure_key(key_file: Path) -> SecretKey:
    """Load the key in ``key_file``, making it first if the file does not exist
    (for tests and benchmarks; the service records its keys with app.keys)."""
    if key_file.exists():
        return load_key(key_file)
    return create_key(key_file)


def create_key(key_file: Path) -> SecretKey:
    """Make a new key in ``key_file``; refuses if the file exists."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(key_file.parent, 0o700)
    key = SecretKey.generate()
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningError(f"{key_file} already exists; a key file is never overwritten") from None
    with os.fdopen(fd, "w") as f:
        f.write(key.text())
        f.flush()
        os.fsync(f.fileno())
    public_key_path(key_file).write_text(key.public.text())
    return key


def load_key(key_file: Path) -> SecretKey:
    try:
        st = key_file.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"BLOCKLIST_SIGNING_KEY_FILE: {key_file} does not exist (blocklist serve makes one on first start)"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"BLOCKLIST_SIGNING_KEY_FILE: {key_file} is readable by other users; run chmod 600 on it"
        )
    try:
        key = SecretKey.parse(key_file.read_text())
    except MinisignError as e:
        raise SigningError(f"{key_file}: {e}") from e
    except OSError as e:
        raise ConfigError(f"BLOCKLIST_SIGNING_KEY_FILE: cannot read {key_file}: {e.strerror}") from e
    pub = public_key_path(key_file)
    if not pub.exists():
        pub.write_text(key.public.text())
    return key
