"""``blocklist web``: gunicorn serving ``create_app()`` with settings from the environment.

Production may equally run ``gunicorn -c deploy/gunicorn.conf.py
'app.web:create_app()'``; this runner applies the same defaults so that
``blocklist serve`` and a systemd unit behave alike.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from app.config import Settings
from app.logs import gunicorn_logconfig


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from app.web import create_app

        return create_app(Settings.from_env())


def run(settings: Settings) -> None:
    host, port = settings.web_listen
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
    _Gunicorn({
        "bind": bind,
        "workers": workers,
        "threads": 4,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 20,
        "accesslog": "-",
        "errorlog": "-",
        # JSON lines with request ids, and no token from a feed path (app.logs).
        "logconfig_dict": gunicorn_logconfig(settings, "web"),
        "proc_name": "blocklist-web",
        "forwarded_allow_ips": os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    }).run()
