"""Logging: JSON lines on stdout (UTC time, level, component, request id).

Secrets never reach the logs: tokens, passwords and TSIG secrets are not
passed to loggers anywhere, and :class:`RedactFilter` masks anything that
looks like one of our tokens as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from app.config import Settings

_TOKEN = re.compile(r"\b(bl[uf]_)[A-Za-z0-9_-]{8,}")
# The password of a connection URL (redis://user:password@host), which a
# driver error or a start-up message could echo.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)


def redact(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1[REDACTED]@", _TOKEN.sub(r"\1[REDACTED]", text))


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None)
        if rid is None:
            rid = _current_request_id()
        if rid:
            out["request_id"] = rid
        for key in ("peer", "isp", "reason", "version", "qtype", "zone", *HTTP_FIELDS):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def _current_request_id() -> str | None:
    try:
        from flask import g, has_request_context

        if has_request_context():
            return str(g.get("request_id", "")) or None
    except ImportError:
        return None
    return None


def setup_logging(settings: Settings, component: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(component))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- web access log under gunicorn

#: Request fields of an access-log line (also accepted as ``extra=`` on any record).
HTTP_FIELDS = ("method", "path", "status", "bytes", "duration_ms", "remote", "user_agent")


class AccessJsonFormatter(JsonFormatter):
    """gunicorn's access log as JSON: one line per request, with its request id.

    gunicorn hands the formatter its "atoms" (every request and response
    header, the raw request line...). Only the fields below are kept: the
    ``Authorization`` header and cookies are never written, and the path is
    redacted because the feed accepts a token in it (Unbound's ``url:``).
    """

    def format(self, record: logging.LogRecord) -> str:
        atoms: Mapping[str, Any] = record.args if isinstance(record.args, Mapping) else {}
        if not atoms:
            return super().format(record)

        def atom(key: str) -> str:
            # gunicorn escapes double quotes for its Apache-style format; undo it for JSON.
            value = atoms.get(key)
            return "" if value in (None, "-") else str(value).replace('\\"', '"')

        path = redact(atom("U"))
        query = atom("q")
        if query:
            path += "?" + redact(query)
        try:
            status: int | str = int(atom("s"))
        except ValueError:
            status = atom("s")
        out: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": f"{atom('m')} {path} {status}",
        }
        rid = atom("{x-request-id}o")
        if rid:
            out["request_id"] = rid
        out.update({
            "method": atom("m"),
            "path": path,
            "status": status,
            "bytes": int(atoms.get("B") or 0),
            "duration_ms": round(int(atoms.get("D") or 0) / 1000.0, 3),
            "remote": atom("h"),
            "user_agent": redact(atom("a")),
        })
        return json.dumps(out, ensure_ascii=False)


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def gunicorn_logconfig(settings: Settings, component: str = "web") -> dict[str, Any]:
    """``logconfig_dict`` for gunicorn: the app, gunicorn itself and the access
    log all write JSON lines (or text) to stdout through the redaction above."""
    text = settings.log_format != "json"
    formatters: dict[str, Any] = {
        "main": ({"format": f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s"} if text
                 else {"()": "app.logs.JsonFormatter", "component": component}),
        "access": ({"format": f"%(asctime)s {component} access %(message)s"} if text
                   else {"()": "app.logs.AccessJsonFormatter", "component": component}),
    }
    handlers = {
        "main": {"class": "logging.StreamHandler", "formatter": "main", "filters": ["redact"],
                 "stream": "ext://sys.stdout"},
        # The redaction filter would flatten gunicorn's atoms; the access
        # formatter redacts what it writes itself.
        "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout",
                   **({"filters": ["redact"]} if text else {})},
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "app.logs.RedactFilter"}},
        "formatters": formatters,
        "handlers": handlers,
        "root": {"level": settings.log_level, "handlers": ["main"]},
        "loggers": {
            "gunicorn.error": {"level": settings.log_level, "handlers": ["main"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
            "apscheduler": {"level": "WARNING"},
        },
    }
