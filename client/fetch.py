"""Fetching feed files over HTTPS, with hard limits. The only module that talks to the network.

What must stay true:

* A download never reads more than the limit it is given plus one byte
  (after gzip decoding, so a small compressed body cannot expand without
  bound either); the caller passes the size the signed manifest states, so
  an endless or oversized answer is cut off and refused, never buffered.
* Every download has a deadline as well as a socket timeout, so a server
  that trickles bytes cannot hold a run forever.
* The token goes only to the configured feed: redirects are not followed
  (a redirect would carry the ``Authorization`` header elsewhere), and the
  token never appears in a message.
* The transport is a small interface (:class:`Transport`): the updater is
  tested with the real server through :class:`HttpTransport`, and anything
  else only has to implement ``get``.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import zlib
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Any, Protocol

from client import __version__
from client.errors import FeedError, NotFoundError, RefusedError

_CHUNK = 1 << 16


class Transport(Protocol):
    def get(self, rel: str, limit: int) -> bytes:
        """The body of feed file ``rel``; refuses more than ``limit`` bytes."""
        ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


class HttpTransport:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, deadline: float = 600.0,
                 ca_file: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.deadline = deadline
        handlers: list[Any] = [_NoRedirect()]
        if self.base_url.startswith("https:"):
            try:
                ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            except (OSError, ssl.SSLError) as e:
                raise FeedError(f"cannot load the CA file {ca_file}: {e}") from None
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self._opener = urllib.request.build_opener(*handlers)

    def url(self, rel: str) -> str:
        return f"{self.base_url}/{rel}"

    def get(self, rel: str, limit: int) -> bytes:
        # The URL's scheme was checked when the configuration was read (https, or http to loopback).
        req = urllib.request.Request(self.url(rel), headers={  # noqa: S310
            "Authorization": f"Bearer {self._token}",
            "Accept-Encoding": "gzip",
            "User-Agent": f"blocklist-pull/{__version__}",
        })
        started = time.monotonic()
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return _read_body(resp, rel, limit, started + self.deadline)
        except urllib.error.HTTPError as e:
            raise _status_error(e.code, rel, e.headers.get("Location")) from None
        except urllib.error.URLError as e:
            raise FeedError(f"cannot reach the feed at {self.base_url}: {_reason(e.reason)}") from None
        except (TimeoutError, OSError, HTTPException) as e:
            raise FeedError(f"fetching {rel} from {self.base_url} failed: {_reason(e)}") from None


    def post_json(self, rel: str, body: object) -> None:
        """POST ``body`` as JSON to feed path ``rel``; FeedError unless the feed accepts it."""
        data = json.dumps(body, separators=(",", ":")).encode()
        req = urllib.request.Request(self.url(rel), data=data, method="POST", headers={  # noqa: S310
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "User-Agent": f"blocklist-pull/{__version__}",
        })
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read(1 << 16)
        except urllib.error.HTTPError as e:
            detail = ""
            try:
                detail = str(json.loads(e.read(1 << 14)).get("error", ""))[:200]
            except (ValueError, AttributeError, OSError):
                pass
            if e.code in (400, 429) and detail:
                raise FeedError(f"the feed refused the report ({e.code}): {detail}") from None
            raise _status_error(e.code, rel, e.headers.get("Location")) from None
        except urllib.error.URLError as e:
            raise FeedError(f"cannot reach the feed at {self.base_url}: {_reason(e.reason)}") from None
        except (TimeoutError, OSError, HTTPException) as e:
            raise FeedError(f"sending {rel} to {self.base_url} failed: {_reason(e)}") from None


def _reason(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not trusted ({reason.verify_message})"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _status_error(code: int, rel: str, location: str | None) -> FeedError:
    if code == 401:
        return FeedError("the feed refused the token (401): check token_file")
    if code == 403:
        return FeedError("the feed refused this ISP (403): its access has been revoked")
    if code == 404:
        return NotFoundError(f"the feed has no {rel} (404)")
    if 300 <= code < 400:
        return FeedError(
            f"the feed redirects {rel} ({code}) to {location or 'elsewhere'}: redirects are not "
            "followed; set feed_url to the final address"
        )
    return FeedError(f"the feed answered {code} for {rel}")


def _read_body(resp: HTTPResponse, rel: str, limit: int, deadline: float) -> bytes:
    encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise FeedError(f"the feed sent {rel} with the unsupported encoding {encoding!r}")
    length = resp.headers.get("Content-Length")
    if encoding == "identity" and length is not None and length.isdigit() and int(length) > limit:
        raise RefusedError(f"{rel} is announced as {length} bytes, more than the {limit} expected: not downloaded")
    # gzip adds a few bytes to incompressible data; anything beyond that is not ours.
    raw_limit = limit + limit // 64 + 1024 if encoding == "gzip" else limit
    inflate = zlib.decompressobj(wbits=31) if encoding == "gzip" else None
    out = bytearray()
    raw = 0
    while True:
        if time.monotonic() > deadline:
            raise FeedError(f"downloading {rel} took longer than download_timeout; stopped")
        # read1 returns whatever one read brings, so the deadline is checked while data trickles in.
        chunk = resp.read1(_CHUNK)
        if not chunk:
            break
        raw += len(chunk)
        if raw > raw_limit:
            raise _too_large(rel, limit)
        if inflate is None:
            out += chunk
        else:
            data = chunk
            # max_length bounds what one call may produce; the rest waits in unconsumed_tail.
            try:
                while data and len(out) <= limit:
                    out += inflate.decompress(data, limit + 1 - len(out))
                    data = inflate.unconsumed_tail
            except zlib.error:
                raise FeedError(f"the feed sent {rel} as damaged gzip") from None
        if len(out) > limit:
            raise _too_large(rel, limit)
    if inflate is not None:
        try:
            out += inflate.flush()
        except zlib.error:
            raise FeedError(f"the feed sent {rel} as damaged gzip") from None
        if not inflate.eof:
            raise FeedError(f"the feed sent {rel} as truncated gzip")
        if len(out) > limit:
            raise _too_large(rel, limit)
    # Not copied into bytes: a snapshot can be a few hundred megabytes. A bytearray reads like
    # bytes everywhere it goes (hashing, slicing, decoding), and nothing writes to it.
    return out  # type: ignore[return-value]


def _too_large(rel: str, limit: int) -> RefusedError:
    return RefusedError(f"{rel} is larger than the {limit} bytes expected: download stopped")
