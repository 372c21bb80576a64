"""gunicorn settings for the web tier (``gunicorn -c deploy/gunicorn.conf.py``).

The application is ``app.web:create_app()``, configured from the same
``BLOCKLIST_*`` variables as every other process (``/etc/blocklist/env``).
Anything here can be overridden without editing the file, with gunicorn's
own ``GUNICORN_CMD_ARGS`` (for example ``--workers 8``).

* Listens on ``BLOCKLIST_WEB_LISTEN`` (127.0.0.1:8000): nginx in front
  terminates TLS (deploy/nginx/blocklist.conf).
* ``WEB_CONCURRENCY`` worker processes (default: 2 per core, at least 2) of
  4 threads each: requests wait on Redis and the disk, not on the CPU.
* The app is loaded once in the master (``preload_app``) so a broken
  configuration stops the start with one clear message instead of a
  crash loop of workers, and workers share its memory.
* Logs: JSON lines on stdout for the app, gunicorn and the access log
  (``app.logs.gunicorn_logconfig``), with request ids and without secrets.
* Metrics: each worker writes its samples under ``PROMETHEUS_MULTIPROC_DIR``
  (the systemd unit points it at a private runtime directory; without it a
  temporary directory is made) and any worker answers ``/metrics`` with the
  sum of all of them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# The repository root, so that `gunicorn -c deploy/gunicorn.conf.py` works
# from a checkout as well as from an installed package.
_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "app" / "__init__.py").exists() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from app.config import Settings  # noqa: E402
from app.logs import gunicorn_logconfig  # noqa: E402

_settings = Settings.from_env()
_host, _port = _settings.web_listen

wsgi_app = "app.web:create_app()"
bind = [f"[{_host}]:{_port}" if ":" in _host else f"{_host}:{_port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", str(max(2, 2 * (os.cpu_count() or 1)))))
worker_class = "gthread"
threads = 4
# A request that takes longer than this is stuck: the worker is replaced.
# Large feed files are sent by nginx (X-Accel-Redirect), not by a worker.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then, so a slow leak never becomes an outage.
max_requests = 10_000
max_requests_jitter = 1_000
preload_app = True
proc_name = "blocklist-web"
# X-Forwarded-Proto and friends are believed only from the local proxy.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Request line and header limits: the API takes JSON bodies, not huge headers.
limit_request_line = 8190
limit_request_fields = 100

accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = gunicorn_logconfig(_settings, "web")
capture_output = False
# systemd supervises the master; gunicorn's control socket (gunicorn 24+)
# would only be one more way in.
control_socket_disable = True

# Prometheus multiprocess mode: set before the app (and prometheus_client) loads.
_own_metrics_dir: str | None = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="blocklist-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


def on_starting(server: Any) -> None:
    """Samples of a previous run would be added to this one's: start empty."""
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for db in metrics_dir.glob("*.db"):
        db.unlink()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
