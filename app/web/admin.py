"""The curators' web admin: app wiring, shared helpers and the dashboard.

The pages live in four blueprints: ``admin`` (this module: the dashboard),
``entries`` (admin_entries: entries, submission, vetting, re-verification),
``manage`` (admin_manage: allowlist, users, ISPs, own account) and
``records`` (admin_records: publications, audit log, appeals).

What must stay true:

* Every view declares its permission (:func:`app.web.auth.page`) and the
  check runs on the server; a view that declares nothing stops the app from
  starting.
* Views never re-implement a rule: they call ``Curation``, ``Users``,
  ``Isps``, ``Publisher`` and ``Appeals``, and show the sentence of any
  refusal as it is.
* Every form that changes something carries a CSRF token (Flask-WTF);
  the bearer-token API and the ISP feed are exempt, since browsers never
  send those tokens by themselves.
* Pages of signed-in people are never cached (``Cache-Control: no-store``).
* No asset comes from elsewhere: CSS and the little JavaScript there is are
  files under ``static/``, which the Content-Security-Policy requires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, g, render_template, request
from flask_wtf.csrf import CSRFProtect

from app.appeals import Appeals, AppealStatus
from app.core import Core
from app.domain import Status, check_four_eyes, display_domain, iso
from app.errors import PermissionDeniedError
from app.web import core_of
from app.web.auth import actor, current_user, page

bp = Blueprint("admin", __name__)


def core() -> Core:
    return core_of(current_app)


def appeals() -> Appeals:
    found: Appeals | None = current_app.extensions.get("blocklist.appeals")
    if found is None:
        c = core()
        found = current_app.extensions["blocklist.appeals"] = Appeals(c.store, c.curation, c.clock)
    return found


# --------------------------------------------------------------------------- template helpers


def when(value: Any) -> str:
    """Epoch seconds or ISO text as ``2027-01-15 08:00 UTC``."""
    if value in (None, "", 0):
        return "—"
    text = (iso(value) or "") if isinstance(value, int | float) else str(value)
    if len(text) >= 16 and text[10] == "T":
        return f"{text[:10]} {text[11:16]} UTC"
    return text


def size(n: Any) -> str:
    try:
        v = float(n)
    except (TypeError, ValueError):
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1024 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GB"


def number(n: Any) -> str:
    return "—" if n is None else f"{int(n):,}"


def compact_json(value: Any, limit: int = 400) -> str:
    """An audit record's before/after on one line; bulk records (imports of
    thousands of entries) are cut, the full record stays in the log."""
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def four_eyes_problem(entry: Any) -> str | None:
    """Why the signed-in vetter may not approve ``entry``, in the rule's own words."""
    try:
        check_four_eyes(entry, actor(), core().curation.policy().require_other_agency)
    except PermissionDeniedError as e:
        return e.message
    return None


def _nav() -> list[tuple[str, str, str]]:
    """(endpoint, label, permission) of the menu, in order."""
    return [
        ("admin.dashboard", "Dashboard", "entry.read"),
        ("entries.list_entries", "Entries", "entry.read"),
        ("entries.submit", "Submit", "entry.submit"),
        ("entries.vetting", "Vetting", "entry.approve"),
        ("entries.reverify", "Re-verify", "entry.reverify"),
        ("records.appeals", "Appeals", "appeal.read"),
        ("records.publications", "Publications", "publish.read"),
        ("manage.allowlist", "Allowlist", "allowlist.read"),
        ("manage.users", "Users", "user.manage"),
        ("manage.isps", "ISPs", "isp.read"),
        ("records.audit", "Audit log", "audit.read"),
    ]


def _context() -> dict[str, Any]:
    user = current_user()
    a = g.get("actor")
    return {
        "me": user,
        "may": (lambda permission: a is not None and a.may(permission)),
        "nav": [(e, label) for e, label, p in _nav() if a is not None and a.may(p)] if user else [],
        "programme": current_app.extensions["blocklist"].settings,
    }


# --------------------------------------------------------------------------- dashboard chart


@dataclass
class Bar:
    version: int
    x: float
    count: int
    count_y: float
    added: int
    removed: int
    added_h: float
    removed_h: float
    label: str


@dataclass
class Chart:
    width: int
    height: int
    top: float
    base: float
    change_mid: float
    bars: list[Bar]
    line: str
    max_count: int
    min_count: int
    max_change: int
    bar_width: float


def build_chart(versions: list[dict[str, Any]], width: int = 720, height: int = 240) -> Chart | None:
    """Geometry of the dashboard chart: list size as a line over the last
    versions, additions and removals as bars up and down beneath it."""
    points = sorted(versions, key=lambda m: int(m["version"]))
    if not points:
        return None
    left, right, top = 56.0, 12.0, 14.0
    size_bottom = height * 0.58
    change_mid = height * 0.80
    change_half = height * 0.16
    counts = [int(m.get("count", 0)) for m in points]
    hi, lo = max(counts), min(counts)
    span = max(1, hi - lo)
    changes = [m.get("changes") or {} for m in points]
    max_change = max([1, *(int(c.get("added", 0)) for c in changes), *(int(c.get("removed", 0)) for c in changes)])
    step = (width - left - right) / max(1, len(points))
    bars = []
    coords = []
    for i, (m, count, ch) in enumerate(zip(points, counts, changes, strict=True)):
        x = left + step * i + step / 2
        y = size_bottom - (count - lo) / span * (size_bottom - top) if hi != lo else (size_bottom + top) / 2
        added, removed = int(ch.get("added", 0)), int(ch.get("removed", 0))
        coords.append(f"{x:.1f},{y:.1f}")
        bars.append(Bar(
            version=int(m["version"]), x=x, count=count, count_y=y, added=added, removed=removed,
            added_h=added / max_change * change_half, removed_h=removed / max_change * change_half,
            label=f"version {m['version']} ({when(m.get('published_at'))}): {count:,} entries, "
                  f"{added:,} added, {removed:,} removed",
        ))
    return Chart(width=width, height=height, top=top, base=size_bottom, change_mid=change_mid, bars=bars,
                 line=" ".join(coords), max_count=hi, min_count=lo, max_change=max_change,
                 bar_width=max(2.0, min(24.0, step * 0.5)))


# --------------------------------------------------------------------------- dashboard


@bp.get("/")
@page("entry.read")
def dashboard() -> Any:
    c = core()
    a = actor()
    counts = c.curation.counts()
    work: dict[str, Any] = {}
    if a.may("entry.approve"):
        pending = c.curation.list(status=Status.PENDING.value, limit=50)
        mine_to_vet = [e for e in pending.entries if four_eyes_problem(e) is None]
        work["to_vet"] = mine_to_vet[:8]
        work["to_vet_more"] = len(mine_to_vet) > 8
    if a.may("entry.submit"):
        own = c.curation.list(status=Status.PENDING.value, submitted_by=a.name, limit=8)
        work["own_pending"] = own.entries
    if a.may("entry.reverify"):
        work["expiring"] = c.curation.expiring(14, limit=8)
        work["expiring_count"] = c.curation.count_expiring(14)
    if a.may("appeal.read"):
        work["appeals_open"] = appeals().counts()[AppealStatus.OPEN.value]
    latest = c.publisher.latest()
    held = c.publisher.held()
    versions = c.publisher.versions(limit=30)
    behind = []
    if a.may("isp.read"):
        from app.isp_lag import lags

        behind = [lag.public() for lag in lags(c).values() if lag.behind]
    reverify_days = c.curation.policy().reverify_days
    return render_template(
        "dashboard.html", counts=counts, total=sum(counts.values()), work=work, latest=latest, held=held,
        chart=build_chart(versions), behind=behind, reverify_days=reverify_days, statuses=[s.value for s in Status],
    )


# --------------------------------------------------------------------------- wiring


def _no_store(resp: Any) -> Any:
    """Signed-in pages hold police data: never cached; the referrer stays on
    this site (Flask-WTF compares it with the host on HTTPS form posts)."""
    if request.blueprint == "public":
        return resp
    if current_user() is not None or request.blueprint in ("auth", *_BLUEPRINTS):
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Referrer-Policy"] = "same-origin"
    return resp


_BLUEPRINTS = ("admin", "entries", "manage", "records")


def init_app(app: Flask) -> None:
    from app.web import admin_entries, admin_manage, admin_records, api, auth, feed, pages, sessions

    c = core_of(app)
    sessions.init_app(app, c)
    csrf = CSRFProtect(app)
    csrf.exempt(api.bp)
    csrf.exempt(feed.bp)
    auth.init_app(app)
    pages.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(admin_entries.bp)
    app.register_blueprint(admin_manage.bp)
    app.register_blueprint(admin_records.bp)
    app.context_processor(_context)
    app.after_request(_no_store)
    app.add_template_filter(when)
    app.add_template_filter(size)
    app.add_template_filter(number)
    app.add_template_filter(compact_json, "json_compact")
    app.add_template_filter(display_domain, "display")
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    auth.check_declared(app)
