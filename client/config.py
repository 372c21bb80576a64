"""Configuration of the pull tool: a TOML file, environment variables and flags.

Precedence: command-line flags, then ``BLOCKLIST_PULL_*`` environment
variables, then the file. What must stay true:

* Configuration is read once and strictly: an unknown key, a wrong type or
  a malformed key, URL or address stops the program with a sentence naming
  the setting (a typo must never silently drop an output or a check).
* At least one public key is pinned; the feed URL is ``https://`` (plain
  ``http://`` only to a loopback address, where nothing crosses a network).
* The feed token is read from a file (``token_file``, or
  ``BLOCKLIST_PULL_TOKEN_FILE``, e.g. a systemd credential) or given inline;
  it is never printed.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from client.errors import ConfigError
from client.minisign import MinisignError, PublicKey
from client.verify import is_zone_name

DEFAULT_CONFIG = Path("/etc/blocklist-pull/pull.toml")
DEFAULT_STATE_DIR = Path("/var/lib/blocklist-pull")
TOKEN_PREFIX = "blf_"  # noqa: S105 (the prefix that marks feed tokens, not a secret)

# format -> options it takes besides format, path and mode
FORMATS: dict[str, frozenset[str]] = {
    "rpz": frozenset({"zone", "ttl"}),
    "unbound": frozenset({"redirect"}),
    "dnsmasq": frozenset({"redirect"}),
    "hosts": frozenset({"addresses"}),
    "domains": frozenset({"style"}),
    "urls": frozenset({"style"}),
}
STYLES = {"domains": ("wildcard", "squid"), "urls": ("squid", "plain")}
_TOP_KEYS = frozenset({
    "feed_url", "token", "token_file", "public_keys", "public_key_files", "state_dir", "list",
    "max_version_jump", "max_download_mb", "timeout", "download_timeout", "ca_file", "post_apply",
    "post_apply_timeout", "output",
})


@dataclass(frozen=True)
class OutputSpec:
    format: str
    path: Path
    mode: int = 0o644
    zone: str | None = None
    ttl: int = 60
    redirect: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ("0.0.0.0", "::")  # noqa: S104 (null addresses written into a hosts file)
    style: str = ""

    @property
    def label(self) -> str:
        return f"{self.format} {self.path}"


@dataclass(frozen=True)
class Config:
    feed_url: str
    token: str
    keys: tuple[PublicKey, ...]
    state_dir: Path
    outputs: tuple[OutputSpec, ...]
    list_name: str | None = None
    max_version_jump: int = 10_000
    max_download: int = 256 << 20
    timeout: float = 30.0
    download_timeout: float = 600.0
    ca_file: Path | None = None
    post_apply: tuple[str, ...] = ()
    post_apply_timeout: float = 300.0
    source: str = "flags"


@dataclass
class Overrides:
    """Settings given as flags; None (or empty) means not given."""

    feed_url: str | None = None
    token_file: str | None = None
    public_keys: list[str] = field(default_factory=list)
    public_key_files: list[str] = field(default_factory=list)
    state_dir: str | None = None
    outputs: list[str] = field(default_factory=list)
    post_apply: str | None = None
    max_version_jump: int | None = None
    list_name: str | None = None


def load(path: Path | None, overrides: Overrides | None = None, environ: Mapping[str, str] | None = None,
         need_token: bool = True) -> Config:
    """The configuration from ``path`` (or the default file if it exists), the
    environment and flags."""
    env = os.environ if environ is None else environ
    over = overrides or Overrides()
    if path is None and env.get("BLOCKLIST_PULL_CONFIG"):
        path = Path(env["BLOCKLIST_PULL_CONFIG"])
    doc: dict[str, Any] = {}
    base = Path.cwd()
    source = "flags"
    if path is not None or DEFAULT_CONFIG.exists():
        file = path or DEFAULT_CONFIG
        source = str(file)
        try:
            with open(file, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"the configuration file {file} does not exist") from None
        except OSError as e:
            raise ConfigError(f"cannot read the configuration file {file}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file} is not valid TOML: {e}") from None
        base = file.resolve().parent
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown setting {unknown[0]!r}")
    r = _Reader(doc, source, base)

    feed_url = over.feed_url or env.get("BLOCKLIST_PULL_FEED_URL") or r.opt_str("feed_url")
    if not feed_url:
        raise ConfigError("no feed_url is configured (the feed's address, e.g. https://host/feed/v1)")
    feed_url = check_feed_url(feed_url)

    token = ""
    if need_token:
        token = _token(over, env, r)

    keys = _keys(over, r)
    state_dir = Path(over.state_dir) if over.state_dir else r.opt_path("state_dir") or DEFAULT_STATE_DIR
    outputs = [_output(item, f"{source}: output {i + 1}", base) for i, item in enumerate(r.tables("output"))]
    outputs += [_flag_output(text) for text in over.outputs]
    seen: set[Path] = set()
    for o in outputs:
        p = o.path.resolve()
        if p in seen:
            raise ConfigError(f"two outputs write to {o.path}")
        seen.add(p)

    if over.post_apply is not None:
        try:
            post_apply = tuple(shlex.split(over.post_apply))
        except ValueError as e:
            raise ConfigError(f"--post-apply is not a command line ({e})") from None
    else:
        post_apply = r.command("post_apply")
    list_name = over.list_name or r.opt_str("list")
    jump = over.max_version_jump if over.max_version_jump is not None else r.int("max_version_jump", 10_000, 1)
    if jump < 1:
        raise ConfigError("max_version_jump must be at least 1")
    return Config(
        feed_url=feed_url, token=token, keys=keys, state_dir=state_dir, outputs=tuple(outputs),
        list_name=list_name, max_version_jump=jump,
        max_download=r.int("max_download_mb", 256, 1, 1 << 14) << 20,
        timeout=r.number("timeout", 30.0, 1.0, 3600.0),
        download_timeout=r.number("download_timeout", 600.0, 1.0, 86400.0),
        ca_file=r.opt_path("ca_file"), post_apply=post_apply,
        post_apply_timeout=r.number("post_apply_timeout", 300.0, 1.0, 86400.0),
        source=source,
    )


def check_feed_url(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ConfigError(f"feed_url {url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"feed_url {url!r} must be an https:// URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("feed_url must not carry user information, a query or a fragment")
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(
            "feed_url must use https:// (plain http would expose the token and the list); "
            "http:// is accepted only for a loopback address"
        )
    return url.strip().rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(over: Overrides, env: Mapping[str, str], r: _Reader) -> str:
    if over.token_file:
        return read_token(Path(over.token_file))
    if env.get("BLOCKLIST_PULL_TOKEN"):
        return check_token(env["BLOCKLIST_PULL_TOKEN"], "BLOCKLIST_PULL_TOKEN")
    if env.get("BLOCKLIST_PULL_TOKEN_FILE"):
        return read_token(Path(env["BLOCKLIST_PULL_TOKEN_FILE"]))
    file = r.opt_path("token_file")
    inline = r.opt_str("token")
    if file and inline:
        raise ConfigError(f"{r.source}: give token or token_file, not both")
    if file:
        return read_token(file)
    if inline:
        return check_token(inline, "token")
    raise ConfigError("no feed token is configured (token_file, or BLOCKLIST_PULL_TOKEN_FILE)")


def read_token(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the token file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {path} is not text") from None
    return check_token(text.strip(), f"the token file {path}")


def check_token(token: str, where: str) -> str:
    token = token.strip()
    body = token.removeprefix(TOKEN_PREFIX)
    if not token.startswith(TOKEN_PREFIX) or len(body) < 16 or not all(c.isalnum() or c in "-_" for c in body):
        raise ConfigError(f"{where} does not hold a feed token (blf_ followed by letters, digits, - or _)")
    return token


def _keys(over: Overrides, r: _Reader) -> tuple[PublicKey, ...]:
    texts: list[tuple[str, str]] = [(t, "a --public-key") for t in over.public_keys]
    files = [Path(f) for f in over.public_key_files]
    if not texts and not files:
        texts = [(t, f"{r.source}: public_keys") for t in r.str_list("public_keys")]
        files = [r.path_of(f) for f in r.str_list("public_key_files")]
    for f in files:
        try:
            texts.append((f.read_text(encoding="utf-8"), str(f)))
        except (OSError, UnicodeDecodeError) as e:
            detail = e.strerror if isinstance(e, OSError) else "not text"
            raise ConfigError(f"cannot read the public key file {f}: {detail}") from None
    keys: list[PublicKey] = []
    for text, where in texts:
        try:
            key = PublicKey.parse(text)
        except MinisignError as e:
            raise ConfigError(f"{where}: {e.args[0]}") from None
        if key.key_id not in {k.key_id for k in keys}:
            keys.append(key)
    if not keys:
        raise ConfigError("no public key is pinned (public_keys or public_key_files): nothing could be verified")
    return tuple(keys)


def _output(item: Any, where: str, base: Path) -> OutputSpec:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} is not a table")
    fmt = item.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: format must be one of {', '.join(FORMATS)}")
    unknown = sorted(set(item) - {"format", "path", "mode"} - FORMATS[fmt])
    if unknown:
        raise ConfigError(f"{where}: the {fmt} format has no setting {unknown[0]!r}")
    r = _Reader(item, where, base)
    path = r.opt_path("path")
    if path is None:
        raise ConfigError(f"{where}: path is required")
    spec = OutputSpec(format=fmt, path=path, mode=_mode(item.get("mode", 0o644), where))
    if fmt == "rpz":
        zone = r.opt_str("zone")
        if zone is not None:
            zone = zone.lower().rstrip(".") + "."
            if not is_zone_name(zone):
                raise ConfigError(f"{where}: zone {item['zone']!r} is not a domain name")
        return OutputSpec(fmt, path, spec.mode, zone=zone, ttl=r.int("ttl", 60, 0, 86400))
    if fmt in ("unbound", "dnsmasq"):
        return OutputSpec(fmt, path, spec.mode, redirect=_addresses(r.str_list("redirect"), where))
    if fmt == "hosts":
        addrs = _addresses(r.str_list("addresses"), where) if "addresses" in item else spec.addresses
        if not addrs:
            raise ConfigError(f"{where}: addresses must name at least one address")
        return OutputSpec(fmt, path, spec.mode, addresses=addrs)
    styles = STYLES[fmt]
    style = r.opt_str("style") or styles[0]
    if style not in styles:
        raise ConfigError(f"{where}: style must be one of {', '.join(styles)}")
    return OutputSpec(fmt, path, spec.mode, style=style)


def _flag_output(text: str) -> OutputSpec:
    fmt, sep, path = text.partition(":")
    if not sep or not path:
        raise ConfigError(f"--output {text!r}: give FORMAT:PATH, e.g. unbound:/etc/unbound/blocklist.conf")
    return _output({"format": fmt, "path": path}, f"--output {text}", Path.cwd())


def _mode(value: Any, where: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise ConfigError(f"{where}: mode {value!r} is not an octal number such as \"0644\"") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ConfigError(f"{where}: mode must be a permission such as \"0644\"")
    return value


def _addresses(values: Sequence[str], where: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_address(v)))
        except ValueError:
            raise ConfigError(f"{where}: {v!r} is not an IPv4 or IPv6 address") from None
    return tuple(out)


class _Reader:
    """Typed access to one TOML table, with errors that name the setting."""

    def __init__(self, doc: Mapping[str, Any], source: str, base: Path) -> None:
        self.doc = doc
        self.source = source
        self.base = base

    def _fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key} must be {what}")

    def opt_str(self, key: str) -> str | None:
        v = self.doc.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise self._fail(key, "a non-empty string")
        return v.strip()

    def path_of(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base / p

    def opt_path(self, key: str) -> Path | None:
        text = self.opt_str(key)
        return None if text is None else self.path_of(text)

    def str_list(self, key: str) -> list[str]:
        v = self.doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._fail(key, "a list of strings")
        return list(v)

    def tables(self, key: str) -> list[Any]:
        v = self.doc.get(key, [])
        if not isinstance(v, list):
            raise self._fail(key, "a list of tables ([[output]])")
        return v

    def int(self, key: str, default: int, low: int, high: int | None = None) -> int:
        v = self.doc.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            bound = f" and at most {high}" if high is not None else ""
            raise self._fail(key, f"a whole number of at least {low}{bound}")
        return v

    def number(self, key: str, default: float, low: float, high: float) -> float:
        v = self.doc.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            raise self._fail(key, f"a number of seconds from {low:g} to {high:g}")
        return float(v)

    def command(self, key: str) -> tuple[str, ...]:
        v = self.doc.get(key)
        if v is None:
            return ()
        if isinstance(v, str):
            try:
                return tuple(shlex.split(v))
            except ValueError as e:
                raise self._fail(key, f"a command line ({e})") from None
        if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
            return tuple(v)
        raise self._fail(key, "a command: a string, or a list of program and arguments")
