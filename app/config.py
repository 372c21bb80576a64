"""Settings, read once from ``BLOCKLIST_*`` environment variables.

Every variable is listed, with its default and meaning, in
``deploy/env.example``; keep the two in step. Parsing is strict: a value that
does not parse stops the process with a message naming the variable, because
a typo in a safety threshold must never silently fall back to a default.
Secrets may also be given as ``NAME_FILE`` pointing at a file that holds them
(the systemd ``LoadCredential=``/Docker secrets convention).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import dns.exception
import dns.name

from app.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Env:
    """Strict accessors over an environment mapping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        file_name = self.environ.get(name + "_FILE")
        if value is not None and file_name is not None:
            raise ConfigError(f"set either {name} or {name}_FILE, not both")
        if file_name is not None:
            try:
                return Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"{name}_FILE: cannot read {file_name}: {e.strerror}") from e
        if value is not None and value.strip() == "":
            return None
        return value

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value.strip()

    def opt(self, name: str) -> str | None:
        value = self.raw(name)
        return None if value is None else value.strip()

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, not {value!r}")

    def whole(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            n = int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
        if n < minimum or (maximum is not None and n > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(f"{name} must be {bounds}, not {n}")
        return n

    def number(self, name: str, default: float, minimum: float = 0.0, maximum: float | None = None) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            n = float(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {value!r}") from None
        if n < minimum or (maximum is not None and n > maximum):
            raise ConfigError(f"{name} is out of range: {n}")
        return n

    def hostport(self, name: str, default: str) -> tuple[str, int]:
        return parse_hostport(self.text(name, default), name)

    def items(self, name: str, default: list[str]) -> list[str]:
        value = self.raw(name)
        if value is None:
            return list(default)
        return [part.strip() for part in value.split(",") if part.strip()]


def parse_hostport(value: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` to a tuple; a clear error otherwise."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value.strip())
    if not m:
        raise ConfigError(f"{what} must look like HOST:PORT, not {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ConfigError(f"{what}: port {port} is out of range")
    return host, port


def url_host(url: str) -> str:
    """The host name (or address) of a URL, without brackets or port."""
    m = re.match(r"[a-z][a-z0-9+.-]*://(?:[^@/]*@)?(\[[^\]]*\]|[^:/?#]*)", url.strip(), re.IGNORECASE)
    host = m.group(1) if m else ""
    return host.strip("[]") or "localhost"


def optional_hostport(env: Env, name: str, default: str) -> tuple[str, int] | None:
    """``HOST:PORT``; set but empty turns the listener off, unset is the default."""
    if name in env.environ and not env.environ[name].strip():
        return None
    return env.hostport(name, default)


def _ip_ports(env: Env, name: str) -> tuple[tuple[str, int], ...]:
    """A comma-separated list of ``IP:PORT`` (``[V6]:PORT``); empty when unset."""
    out = []
    for item in env.items(name, []):
        host, port = parse_hostport(item, name)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{name}: {host!r} is not an IP address (resolvers name their primaries by address)"
            ) from None
        out.append((host, port))
    return tuple(out)


_CATEGORY_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def _zone_name(env: Env, name: str, default: str) -> str:
    """A zone name from the environment: lower case, absolute, a valid DNS name."""
    zone = env.text(name, default).lower()
    if not zone.endswith("."):
        zone += "."
    try:
        dns.name.from_text(zone)
    except dns.exception.DNSException as e:
        raise ConfigError(f"{name}: {zone!r} is not a DNS name ({e})") from e
    if zone == ".":
        raise ConfigError(f"{name} cannot be the root zone")
    return zone


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with production-safe defaults."""

    # Store and files
    redis_url: str | None = None
    # With replicas (Sentinel): how many must confirm each committed step,
    # and how long to wait for them (docs/operations.md section 8).
    redis_wait_replicas: int = 0
    redis_wait_timeout: float = 1.0
    data_dir: Path = Path("var")
    artifact_dir: Path = Path("var/artifacts")
    signing_key_file: Path = Path("var/keys/blocklist.key")
    secret_key: str | None = None

    # What is published
    list_name: str = "worst-of"
    rpz_zone: str = "blocklist.rpz."
    rpz_ttl: int = 60
    rpz_soa_refresh: int = 300
    rpz_soa_retry: int = 60
    rpz_soa_expire: int = 2592000
    rpz_ns: str = "localhost."
    # The overlay policy zone (recent changes, listed first by resolvers) and
    # when its changes are folded into the base zone (see app.rpz.Layout).
    rpz_overlay_zone: str = "overlay.blocklist.rpz."
    rpz_fold_changes: int = 2000
    rpz_fold_age: int = 900
    rpz_fold_grace: int = 300
    categories: tuple[str, ...] = ("csam",)

    # Publication
    publish_interval: int = 300
    # A change is published once the change feed has been quiet this long,
    # and at the latest this long after the first unpublished change.
    publish_quiet: float = 0.5
    publish_quiet_max: float = 10.0
    manifest_ttl: int = 3600
    manifest_refresh: int = 900
    artifact_ttl: int = 30 * 86400
    retain_snapshots: int = 5
    retain_deltas: int = 100
    # Background compaction: a full snapshot and zone file are written when
    # the deltas since the last ones reach this share of its size, half of
    # retain_deltas versions, or this age; lists up to compact_small_bytes
    # are written in full with every version.
    compact_ratio: float = 0.1
    compact_age: int = 3600
    compact_small_bytes: int = 1_000_000
    expire_interval: int = 60
    # How long "publish now" waits for a publisher to take the request.
    publish_answer_timeout: int = 30
    # How long a next signing key is announced before it may sign.
    key_rotation_overlap: int = 7 * 86400

    # Curation policy defaults (admins may override them at run time; see app.policy)
    reverify_days: int = 90
    require_other_agency: bool = True
    guard_remove_pct: float = 10.0
    guard_add_pct: float = 25.0
    guard_add_max: int = 1000
    guard_min_changes: int = 10

    # Web
    web_listen: tuple[str, int] = ("127.0.0.1", 8000)
    public_url: str = "http://127.0.0.1:8000"
    cookie_secure: bool = True
    require_mfa: bool = False
    session_idle: int = 1800
    session_max: int = 43200
    login_max_failures: int = 10
    trust_proxy: int = 0
    feed_accel_prefix: str | None = None

    # Stop page
    programme_name: str = "Child Sexual Abuse Material blocking programme"
    programme_operator: str = "National police"
    programme_law: str = "the applicable national law on child sexual abuse material"
    programme_help_url: str = "https://www.inhope.org/"
    stop_host: str | None = None
    stop_names_per_hour: int = 100

    # DNS transfer server
    dns_listen: tuple[str, int] = ("127.0.0.1", 8053)
    # Where ISPs' resolvers reach the transfer server(s), as IP:PORT (their
    # configurations need addresses); empty: the listen address.
    dns_public: tuple[tuple[str, int], ...] = ()
    dns_history: int = 100
    dns_tcp_idle: float = 30.0
    dns_max_connections: int = 512
    # Per source address (IPv6: per /64): open connections, and queries a
    # second with a burst allowance, over UDP, TCP and TLS together.
    dns_max_connections_per_address: int = 16
    dns_queries_per_second: float = 20.0
    dns_query_burst: int = 40
    # Zone transfers over TLS (RFC 9103, XoT); None: off.
    xot_listen: tuple[str, int] | None = None
    xot_cert_file: Path | None = None
    xot_key_file: Path | None = None
    # The name in the self-signed certificate (default: the host of public_url).
    xot_name: str = ""
    notify_retries: int = 8
    notify_timeout: float = 2.0
    # Prometheus metrics of the transfer server (None: off).
    xfrd_metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9153)

    # Operations
    log_level: str = "INFO"
    log_format: str = "json"
    health_dir: Path | None = None

    # Monitoring
    metrics_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = Env(os.environ if environ is None else environ)
        data_dir = Path(env.text("BLOCKLIST_DATA_DIR", "var"))
        cats = tuple(env.items("BLOCKLIST_CATEGORIES", ["csam"]))
        for c in cats:
            if not _CATEGORY_RE.fullmatch(c):
                raise ConfigError(
                    f"BLOCKLIST_CATEGORIES: {c!r} is not a category name "
                    "(lower-case letters, digits and dashes, at most 32)"
                )
        if not cats:
            raise ConfigError("BLOCKLIST_CATEGORIES must name at least one category")
        zone = _zone_name(env, "BLOCKLIST_RPZ_ZONE", "blocklist.rpz.")
        overlay = _zone_name(env, "BLOCKLIST_RPZ_OVERLAY_ZONE", "overlay." + zone)
        if overlay == zone:
            raise ConfigError("BLOCKLIST_RPZ_OVERLAY_ZONE must differ from BLOCKLIST_RPZ_ZONE")
        log_format = env.text("BLOCKLIST_LOG_FORMAT", "json")
        if log_format not in ("json", "text"):
            raise ConfigError(f"BLOCKLIST_LOG_FORMAT must be json or text, not {log_format!r}")
        health = env.opt("BLOCKLIST_HEALTH_DIR")
        public_url = env.text("BLOCKLIST_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
        xot_cert, xot_key = env.opt("BLOCKLIST_XOT_CERT_FILE"), env.opt("BLOCKLIST_XOT_KEY_FILE")
        if bool(xot_cert) != bool(xot_key):
            raise ConfigError("set both BLOCKLIST_XOT_CERT_FILE and BLOCKLIST_XOT_KEY_FILE, or neither "
                              "(then a self-signed pair is made in the data directory)")
        s = cls(
            redis_url=env.opt("BLOCKLIST_REDIS_URL"),
            redis_wait_replicas=env.whole("BLOCKLIST_REDIS_WAIT_REPLICAS", 0, 0, 16),
            redis_wait_timeout=env.number("BLOCKLIST_REDIS_WAIT_TIMEOUT", 1.0, 0.01, 60.0),
            data_dir=data_dir,
            artifact_dir=Path(env.text("BLOCKLIST_ARTIFACT_DIR", str(data_dir / "artifacts"))),
            signing_key_file=Path(
                env.text("BLOCKLIST_SIGNING_KEY_FILE", str(data_dir / "keys" / "blocklist.key"))
            ),
            secret_key=env.opt("BLOCKLIST_SECRET_KEY"),
            list_name=env.text("BLOCKLIST_LIST_NAME", "worst-of"),
            rpz_zone=zone,
            rpz_ttl=env.whole("BLOCKLIST_RPZ_TTL", 60, 0, 86400),
            rpz_soa_refresh=env.whole("BLOCKLIST_RPZ_REFRESH", 300, 1),
            rpz_soa_retry=env.whole("BLOCKLIST_RPZ_RETRY", 60, 1),
            rpz_soa_expire=env.whole("BLOCKLIST_RPZ_EXPIRE", 2592000, 60),
            rpz_ns=env.text("BLOCKLIST_RPZ_NS", "localhost."),
            rpz_overlay_zone=overlay,
            rpz_fold_changes=env.whole("BLOCKLIST_RPZ_FOLD_CHANGES", 2000, 1),
            rpz_fold_age=env.whole("BLOCKLIST_RPZ_FOLD_AGE", 900, 1),
            rpz_fold_grace=env.whole("BLOCKLIST_RPZ_FOLD_GRACE", 300, 0),
            categories=cats,
            publish_interval=env.whole("BLOCKLIST_PUBLISH_INTERVAL", 300, 1),
            publish_quiet=env.number("BLOCKLIST_PUBLISH_QUIET", 0.5, 0.0, 60.0),
            publish_quiet_max=env.number("BLOCKLIST_PUBLISH_QUIET_MAX", 10.0, 0.0, 600.0),
            manifest_ttl=env.whole("BLOCKLIST_MANIFEST_TTL", 3600, 60),
            manifest_refresh=env.whole("BLOCKLIST_MANIFEST_REFRESH", 900, 1),
            artifact_ttl=env.whole("BLOCKLIST_ARTIFACT_TTL", 30 * 86400, 3600),
            retain_snapshots=env.whole("BLOCKLIST_RETAIN_SNAPSHOTS", 5, 1),
            retain_deltas=env.whole("BLOCKLIST_RETAIN_DELTAS", 100, 1),
            compact_ratio=env.number("BLOCKLIST_COMPACT_RATIO", 0.1, 0.0, 100.0),
            compact_age=env.whole("BLOCKLIST_COMPACT_AGE", 3600, 1),
            compact_small_bytes=env.whole("BLOCKLIST_COMPACT_SMALL_BYTES", 1_000_000, 0),
            expire_interval=env.whole("BLOCKLIST_EXPIRE_INTERVAL", 60, 1),
            publish_answer_timeout=env.whole("BLOCKLIST_PUBLISH_ANSWER_TIMEOUT", 30, 1, 3600),
            key_rotation_overlap=env.whole("BLOCKLIST_KEY_ROTATION_OVERLAP", 7 * 86400, 0),
            reverify_days=env.whole("BLOCKLIST_REVERIFY_DAYS", 90, 1),
            require_other_agency=env.flag("BLOCKLIST_REQUIRE_OTHER_AGENCY", True),
            guard_remove_pct=env.number("BLOCKLIST_GUARD_REMOVE_PCT", 10.0, 0.0, 100.0),
            guard_add_pct=env.number("BLOCKLIST_GUARD_ADD_PCT", 25.0, 0.0),
            guard_add_max=env.whole("BLOCKLIST_GUARD_ADD_MAX", 1000, 0),
            guard_min_changes=env.whole("BLOCKLIST_GUARD_MIN_CHANGES", 10, 0),
            web_listen=env.hostport("BLOCKLIST_WEB_LISTEN", "127.0.0.1:8000"),
            public_url=public_url,
            cookie_secure=env.flag("BLOCKLIST_COOKIE_SECURE", True),
            require_mfa=env.flag("BLOCKLIST_REQUIRE_MFA", False),
            session_idle=env.whole("BLOCKLIST_SESSION_IDLE", 1800, 60),
            session_max=env.whole("BLOCKLIST_SESSION_MAX", 43200, 60),
            login_max_failures=env.whole("BLOCKLIST_LOGIN_MAX_FAILURES", 10, 1),
            trust_proxy=env.whole("BLOCKLIST_TRUST_PROXY", 0, 0, 5),
            feed_accel_prefix=env.opt("BLOCKLIST_FEED_ACCEL_PREFIX"),
            programme_name=env.text("BLOCKLIST_PROGRAMME_NAME", cls.programme_name),
            programme_operator=env.text("BLOCKLIST_PROGRAMME_OPERATOR", cls.programme_operator),
            programme_law=env.text("BLOCKLIST_PROGRAMME_LAW", cls.programme_law),
            programme_help_url=env.text("BLOCKLIST_PROGRAMME_HELP_URL", cls.programme_help_url),
            stop_host=env.opt("BLOCKLIST_STOP_HOST"),
            stop_names_per_hour=env.whole("BLOCKLIST_STOP_NAMES_PER_HOUR", 100, 1),
            dns_listen=env.hostport("BLOCKLIST_DNS_LISTEN", "127.0.0.1:8053"),
            dns_public=_ip_ports(env, "BLOCKLIST_DNS_PUBLIC"),
            dns_history=env.whole("BLOCKLIST_DNS_HISTORY", 100, 1),
            dns_tcp_idle=env.number("BLOCKLIST_DNS_TCP_IDLE", 30.0, 0.1),
            dns_max_connections=env.whole("BLOCKLIST_DNS_MAX_CONNECTIONS", 512, 1),
            dns_max_connections_per_address=env.whole("BLOCKLIST_DNS_MAX_CONNECTIONS_PER_ADDRESS", 16, 1),
            dns_queries_per_second=env.number("BLOCKLIST_DNS_QUERIES_PER_SECOND", 20.0, 0.1),
            dns_query_burst=env.whole("BLOCKLIST_DNS_QUERY_BURST", 40, 1),
            xot_listen=env.hostport("BLOCKLIST_XOT_LISTEN", "") if env.opt("BLOCKLIST_XOT_LISTEN") else None,
            xot_cert_file=Path(xot_cert) if xot_cert else None,
            xot_key_file=Path(xot_key) if xot_key else None,
            xot_name=env.text("BLOCKLIST_XOT_NAME", url_host(public_url)),
            notify_retries=env.whole("BLOCKLIST_NOTIFY_RETRIES", 8, 0),
            notify_timeout=env.number("BLOCKLIST_NOTIFY_TIMEOUT", 2.0, 0.05),
            xfrd_metrics_listen=optional_hostport(env, "BLOCKLIST_XFRD_METRICS_LISTEN", "127.0.0.1:9153"),
            log_level=env.text("BLOCKLIST_LOG_LEVEL", "INFO").upper(),
            log_format=log_format,
            health_dir=Path(health) if health else None,
            metrics_token=env.opt("BLOCKLIST_METRICS_TOKEN"),
        )
        if s.publish_quiet_max < s.publish_quiet:
            raise ConfigError("BLOCKLIST_PUBLISH_QUIET_MAX must not be below BLOCKLIST_PUBLISH_QUIET")
        if overrides:
            s = replace(s, **overrides)  # type: ignore[arg-type]
        return s

    @property
    def dns_primaries(self) -> tuple[tuple[str, int], ...]:
        """The transfer server addresses ISPs configure as primaries."""
        return self.dns_public or (self.dns_listen,)

    def with_data_dir(self, data_dir: Path) -> Settings:
        """Re-root the file locations that were left at their defaults."""
        default = Settings()
        changes: dict[str, object] = {"data_dir": data_dir}
        if self.artifact_dir == self.data_dir / "artifacts" or self.artifact_dir == default.artifact_dir:
            changes["artifact_dir"] = data_dir / "artifacts"
        if (
            self.signing_key_file == self.data_dir / "keys" / "blocklist.key"
            or self.signing_key_file == default.signing_key_file
        ):
            changes["signing_key_file"] = data_dir / "keys" / "blocklist.key"
        return replace(self, **changes)  # type: ignore[arg-type]


def setting_names() -> list[str]:
    """Field names, for docs and tests that env.example stays complete."""
    return [f.name for f in fields(Settings)]
