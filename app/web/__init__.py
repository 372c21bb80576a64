"""The web tier: Flask app factory.

Stateless: everything lives in Redis and the artifact store, so any number
of gunicorn workers on any number of hosts can serve. ``create_app`` makes
no connection at import time; gunicorn loads ``app.web:create_app()``.
"""

from __future__ import annotations

import secrets
from typing import Any

import redis.exceptions
from flask import Flask, g, jsonify, make_response, request
from werkzeug.exceptions import HTTPException

from app.clock import Clock, system_clock
from app.config import Settings
from app.core import Core
from app.errors import BlocklistError, StoreError


def create_app(
    settings: Settings | None = None,
    core: Core | None = None,
    clock: Clock = system_clock,
    test_config: dict[str, Any] | None = None,
) -> Flask:
    settings = settings or (core.settings if core else Settings.from_env())
    core = core or Core.from_settings(settings, clock=clock)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_TIME_LIMIT=None,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["blocklist"] = core

    if settings.trust_proxy:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trust_proxy, x_proto=settings.trust_proxy,
            x_host=settings.trust_proxy,
        )

    from app.web import admin, api, feed, health, metrics, public

    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    feed.init_app(app)
    admin.init_app(app)
    public.init_app(app)
    metrics.init_app(app)

    @app.before_request
    def _request_id() -> None:
        rid = request.headers.get("X-Request-Id", "")
        g.request_id = rid if rid and len(rid) <= 64 and rid.isascii() else secrets.token_hex(8)

    @app.after_request
    def _headers(resp: Any) -> Any:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
        )
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        return resp

    @app.errorhandler(BlocklistError)
    def _blocklist_error(e: BlocklistError) -> Any:
        if _wants_json():
            return jsonify(error=e.message), e.status
        from app.web import pages

        return pages.error_page(e.message, e.status)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        if _wants_json():
            return jsonify(error=_http_message(e)), e.code or 500
        return e

    # --- store outages: Redis down, restarting (loading its AOF) or failing
    # over is a 503 the client may retry, logged in one line, not a 500 with
    # a traceback per request.
    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _store_unavailable(e: Exception) -> Any:
        app.logger.warning("the store is unavailable: %s", e)
        resp = make_response(_blocklist_error(StoreError("the store is unavailable; try again in a moment")))
        resp.headers["Retry-After"] = "5"
        return resp

    return app


def _wants_json() -> bool:
    path = request.path
    return path.startswith(("/api/", "/feed/")) or request.accept_mimetypes.best == "application/json"


def _http_message(e: HTTPException) -> str:
    messages = {
        400: "the request is malformed",
        401: "authentication is required",
        403: "you may not do this",
        404: "there is nothing at this address",
        405: f"{request.method} is not allowed here",
        413: "the request body is too large",
        415: "the request body must be JSON (Content-Type: application/json)",
        429: "too many requests; slow down",
    }
    return messages.get(e.code or 500, e.description or "the request failed")


def core_of(app: Flask) -> Core:
    core: Core = app.extensions["blocklist"]
    return core
