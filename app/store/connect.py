"""Clients for the Redis URLs the service accepts (plain, TLS, socket, Sentinel)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis

from app.errors import ConfigError


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URLs.

    Sentinel form: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
    with optional ``?sentinel_password=...&sentinel_username=...`` for the Sentinels themselves.
    """
    options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30}
    options.update(kwargs)
    if url.startswith(("redis+sentinel://", "sentinel://")):
        return _connect_sentinel(url, options)
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as e:
        raise ConfigError(f"BLOCKLIST_REDIS_URL is not a Redis URL: {e}") from e


def _connect_sentinel(url: str, options: dict[str, Any]) -> redis.Redis:
    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        # user:password (a Redis ACL user, as deploy/redis-users.acl sets up) or :password.
        user, sep, secret = cred.partition(":")
        if sep:
            username, password = unquote(user) or None, unquote(secret) or None
        else:
            password = unquote(user) or None
    hosts: list[tuple[str, int]] = []
    for hp in netloc.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"BLOCKLIST_REDIS_URL: sentinel address {hp!r} is not HOST:PORT")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError("BLOCKLIST_REDIS_URL: a sentinel URL needs the service name as its path")
    service = path[0]
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError("BLOCKLIST_REDIS_URL: a sentinel URL's path is /service or /service/db-number")
    db = int(path[1]) if len(path) > 1 else 0
    query = parse_qs(parts.query)
    sentinel_kwargs: dict[str, Any] = {}
    # Sentinels have their own credentials (requirepass or an ACL user on them).
    for key in ("sentinel_username", "sentinel_password"):
        if query.get(key):
            sentinel_kwargs[key.removeprefix("sentinel_")] = query[key][0]
    timeout = options.pop("socket_timeout", 5.0)
    sentinel = Sentinel(hosts, sentinel_kwargs={**sentinel_kwargs, "socket_timeout": timeout},  # type: ignore[no-untyped-call]
                        socket_timeout=timeout)
    options.pop("health_check_interval", None)
    # The client asks the Sentinels for the primary on every new connection,
    # so it follows a failover without being rebuilt.
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service, username=username, password=password, db=db, **options)
    return client
