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
from typing import Any

from app.config import Settings

_TOKEN = re.compile(r"\b(bl[uf]_)[A-Za-z0-9_-]{8,}")


def redact(text: str) -> str:
    return _TOKEN.sub(r"\1[REDACTED]", text)


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
        for key in ("peer", "isp", "reason", "version", "qtype", "zone"):
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
