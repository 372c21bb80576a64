"""Liveness and readiness for load balancers and systemd."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from app.errors import BlocklistError
from app.web import core_of

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez() -> Any:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Any:
    core = core_of(current_app)
    checks: dict[str, Any] = {}
    ok = True
    try:
        core.store.ping()
        checks["redis"] = "ok"
    except BlocklistError as e:
        checks["redis"] = e.message
        ok = False
    readiness = getattr(core, "readiness", None)
    if ok and readiness is not None:
        for name, (good, detail) in readiness().items():
            checks[name] = detail
            ok = ok and good
    return jsonify(status="ok" if ok else "unavailable", checks=checks), 200 if ok else 503
