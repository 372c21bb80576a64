"""The curators' web admin: app wiring and the dashboard.

Helpers shared by the page modules live in :mod:`app.web.common`; this
module imports the page modules only to register them, and none of them
imports this one. The pages live in four blueprints: ``admin`` (this module: the dashboard),
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

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, g, render_template, request
from flask_wtf.csrf import CSRFProtect

from app.appeals import AppealStatus
from app.domain import Status, display_domain, display_url
from app.web import common, core_of
from app.web.auth import actor, current_user, page
from app.web.common import core, when

bp = Blueprint("admin", __name__)


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
    ticks: list[tuple[int, float]]


def nice_ticks(hi: int, count: int = 4) -> list[int]:
    """Round values from 0 to at least ``hi`` for an axis: 0, 250, 500, 750..."""
    if hi <= 0:
        return [0, 1]
    raw = hi / count
    magnitude = 10 ** (len(str(int(raw))) - 1) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    step = max(1, int(step))
    top = -(-hi // step) * step
    return list(range(0, top + 1, step))


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
    # The size axis starts at zero, so the line's height is the list's size.
    axis = nice_ticks(hi)
    span = axis[-1]
    changes = [m.get("changes") or {} for m in points]
    max_change = max([1, *(int(c.get("added", 0)) for c in changes), *(int(c.get("removed", 0)) for c in changes)])
    step = (width - left - right) / max(1, len(points))
    bars = []
    coords = []
    for i, (m, count, ch) in enumerate(zip(points, counts, changes, strict=True)):
        x = left + step * i + step / 2
        y = size_bottom - count / span * (size_bottom - top)
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
                 bar_width=max(2.0, min(24.0, step * 0.5)),
                 ticks=[(t, size_bottom - t / span * (size_bottom - top)) for t in axis])


# --------------------------------------------------------------------------- dashboard


@bp.get("/")
@page("entry.read")
def dashboard() -> Any:
    c = core()
    a = actor()
    counts = c.curation.counts()
    work: dict[str, Any] = {}
    if a.may("entry.approve"):
        mine_to_vet = c.curation.list(status=Status.PENDING.value, approvable_by=a, oldest_first=True, limit=8)
        work["to_vet"] = mine_to_vet.entries
        work["to_vet_more"] = mine_to_vet.next_offset is not None
    if a.may("entry.submit"):
        own = c.curation.list(status=Status.PENDING.value, submitted_by=a.name, limit=8)
        work["own_pending"] = own.entries
    if a.may("entry.reverify"):
        work["expiring"] = c.curation.expiring(14, limit=8)
        work["expiring_count"] = c.curation.count_expiring(14)
    if a.may("appeal.read"):
        work["appeals_open"] = c.appeals.counts()[AppealStatus.OPEN.value]
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
    app.add_template_filter(common.size)
    app.add_template_filter(common.number)
    app.add_template_filter(common.plural)
    app.add_template_filter(common.link_entries)
    app.add_template_filter(common.compact_json, "json_compact")
    app.add_template_filter(common.pretty_json, "json_pretty")
    app.add_template_filter(display_domain, "display")
    app.add_template_filter(display_url, "display_url")
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    auth.check_declared(app)
