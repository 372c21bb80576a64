"""The ISP feed, ``/feed/v1``: signed artifacts for each ISP with its own token.

* ``Authorization: Bearer <feed token>``, or the token in the path for
  clients that cannot send headers (Unbound's ``url:``):
  ``/feed/v1/t/<token>/rpz/latest.zone``.
* 401 without a valid token, 403 for a revoked ISP, 404 for what is not
  (or no longer) published; every successful pull is recorded.
* ``POST /feed/v1/reports``: what the ISP's resolvers were seen enforcing
  (``blocklist-pull check``); checked strictly (400 for anything else,
  nothing recorded), at most ``REPORTS_PER_HOUR`` an hour (429), audited.
* Versioned artifacts are immutable: strong ``ETag`` (their sha256),
  ``If-None-Match`` answers 304, and they are streamed from this host's
  cache of the artifact store, filled from Redis and checked against the
  recorded sha256 first (or handed to nginx with ``X-Accel-Redirect`` once
  the cache holds them), never built per request. ``gzip`` is offered to clients that accept it, from a compressed
  copy made once per file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_file

from app.core import Core
from app.errors import NotFoundError, ValidationError
from app.isps import REPORTS_PER_HOUR, Isp
from app.web import core_of
from app.web.common import bearer_token

bp = Blueprint("feed", __name__, url_prefix="/feed/v1")

_ARTIFACT = re.compile(
    r"(?P<kind>snapshots|rpz)/(?P<v>\d+|latest)\.(?P<ext>json|zone)(?P<sig>\.minisig)?"
    r"|deltas/(?P<from>\d+)/(?P<to>\d+)\.json(?P<dsig>\.minisig)?"
    r"|(?P<manifest>manifest\.json)(?P<msig>\.minisig)?"
    r"|(?P<key>key\.pub)"
)
_GZIP_MIN = 256
REPORT_MAX_BYTES = 16 * 1024
IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _core() -> Core:
    return core_of(current_app)


def _authenticate(token: str | None) -> Isp:
    if token is None:
        token = bearer_token("feed token", "blf_...")
    isp = _core().isps.authenticate_feed(token)
    g.isp = isp
    return isp


@bp.post("/reports")
def report() -> Any:
    """What ``blocklist-pull check`` saw the ISP's resolvers enforce (see ``Isps.record_report``)."""
    isp = _authenticate(None)
    core = _core()
    if not core.isps.report_allowed(isp):
        resp = jsonify(error=f"too many reports from {isp.name}; at most {REPORTS_PER_HOUR} an hour")
        resp.status_code = 429
        resp.headers["Retry-After"] = "3600"
        return resp
    if request.content_length is not None and request.content_length > REPORT_MAX_BYTES:
        raise ValidationError(f"a report is at most {REPORT_MAX_BYTES} bytes")
    body = request.get_json(silent=True) if request.is_json else None
    if body is None:
        raise ValidationError("the report must be a JSON body (Content-Type: application/json)")
    recorded = core.isps.record_report(isp, body)
    return jsonify(recorded=recorded), 201


@bp.get("/<path:rel>")
def artifact(rel: str) -> Any:
    return _serve(rel, None)


@bp.get("/t/<token>/<path:rel>")
def artifact_token_in_path(token: str, rel: str) -> Any:
    return _serve(rel, token)


def _serve(rel: str, token: str | None) -> Any:
    isp = _authenticate(token)
    m = _ARTIFACT.fullmatch(rel)
    if not m:
        raise NotFoundError(f"there is no feed artifact {rel!r}")
    core = _core()
    if m.group("key"):
        # The programme's current key as the store records it, the same from
        # every host (a web host holds no key file).
        from app.keys import Keyring

        rec = Keyring(core.store, core.settings.signing_key_file).record()
        if rec is None:
            raise NotFoundError("no signing key yet")
        return _bytes_response(rec.current.public().text().encode(), "text/plain; charset=utf-8", REVALIDATE)
    if m.group("manifest"):
        manifest = core.store.pubs.manifest()
        if manifest is None:
            raise NotFoundError("nothing has been published yet")
        body, sig, _ = manifest
        core.isps.record_pull(isp, None, "feed:manifest")
        if m.group("msig"):
            return _bytes_response(sig.encode(), "text/plain; charset=utf-8", REVALIDATE)
        return _bytes_response(body.encode(), "application/json", REVALIDATE)
    publisher = core.publisher
    if m.group("kind"):
        kind = m.group("kind")
        want_sig = bool(m.group("sig"))
        if m.group("v") == "latest":
            latest = publisher.latest_record()
            if latest is None:
                raise NotFoundError("nothing has been published yet")
            # The newest version with full files (see docs/isp-pull.md).
            version = latest.base or latest.version
            cache = REVALIDATE
        else:
            version = int(m.group("v"))
            cache = IMMUTABLE
        ext = "json" if kind == "snapshots" else "zone"
        if (kind == "snapshots") != (m.group("ext") == "json"):
            raise NotFoundError(f"there is no feed artifact {rel!r}")
        pub = publisher.record(version)
        info = pub and (pub.snapshot if kind == "snapshots" else pub.rpz)
        target = f"{kind}/{version}.{ext}"
        if not info or not core.artifacts.exists(target):
            raise NotFoundError(f"version {version} is not available; fetch the latest snapshot")
        core.isps.record_pull(isp, version, f"feed:{kind}")
        if want_sig:
            return _file_response(target + ".minisig", None, cache, "text/plain; charset=utf-8")
        mime = "application/json" if ext == "json" else "text/dns; charset=utf-8"
        return _file_response(target, info.sha256, cache, mime)
    frm, to = int(m.group("from")), int(m.group("to"))
    target = f"deltas/{frm}/{to}.json"
    pub = publisher.record(to)
    delta = pub.delta if pub else None
    if not delta or delta.frm != frm or not core.artifacts.exists(target):
        raise NotFoundError(
            f"no delta from version {frm} to {to}: history does not reach it; fetch the full snapshot"
        )
    core.isps.record_pull(isp, to, "feed:delta")
    if m.group("dsig"):
        return _file_response(target + ".minisig", None, IMMUTABLE, "text/plain; charset=utf-8")
    return _file_response(target, delta.sha256, IMMUTABLE, "application/json")


def _accepts_gzip() -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


def _bytes_response(data: bytes, mime: str, cache: str) -> Response:
    etag = hashlib.sha256(data).hexdigest()
    if _etag_matches(etag):
        return _not_modified(etag, cache)
    encoding = None
    if _accepts_gzip() and len(data) >= _GZIP_MIN:
        data = gzip.compress(data, 6)
        encoding = "gzip"
    resp = Response(data, mimetype=mime)
    _headers(resp, etag, cache, encoding)
    return resp


def _etag_matches(etag: str) -> bool:
    inm = request.headers.get("If-None-Match")
    if not inm:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in inm.split(",")}
    return "*" in tags or etag in tags or f"{etag}-gzip" in tags


def _not_modified(etag: str, cache: str) -> Response:
    resp = Response(status=304)
    resp.headers["ETag"] = f'"{etag}"'
    resp.headers["Cache-Control"] = cache
    resp.headers["Vary"] = "Accept-Encoding"
    return resp


def _headers(resp: Response, etag: str, cache: str, encoding: str | None) -> None:
    resp.headers["ETag"] = f'"{etag}-gzip"' if encoding else f'"{etag}"'
    resp.headers["Cache-Control"] = cache
    resp.headers["Vary"] = "Accept-Encoding"
    if encoding:
        resp.headers["Content-Encoding"] = encoding


def _file_response(rel: str, sha256: str | None, cache: str, mime: str) -> Response:
    core = _core()
    path = core.artifacts.path(rel)
    if sha256 is None:
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    if _etag_matches(sha256):
        return _not_modified(sha256, cache)
    encoding = None
    if _accepts_gzip() and path.stat().st_size >= _GZIP_MIN:
        path = _gzip_copy(path)
        encoding = "gzip"
    prefix = core.settings.feed_accel_prefix
    if prefix:
        # nginx serves the bytes from its own copy of the artifact store;
        # the app has already authenticated and recorded the pull.
        resp = Response(status=200, mimetype=mime)
        resp.headers["X-Accel-Redirect"] = prefix.rstrip("/") + "/" + str(path.relative_to(core.artifacts.root))
        _headers(resp, sha256, cache, encoding)
        return resp
    resp = send_file(path, mimetype=mime, conditional=False, etag=False, max_age=None)
    _headers(resp, sha256, cache, encoding)
    return resp


def _gzip_copy(path: Path) -> Path:
    """The gzip-compressed copy of an immutable artifact, made on first request."""
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gz
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{gz.name}.")
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as raw, gzip.GzipFile(
            fileobj=raw, mode="wb", compresslevel=6, mtime=0
        ) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        # Readable like the artifact itself: nginx sends it (X-Accel-Redirect).
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, gz)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return gz
