"""Records in the web admin: publications, the audit log and appeals.

"Publish now" asks the worker (the only process with the signing key) to
publish and shows the outcome when the worker reports it; the page reloads
itself with a plain ``<meta http-equiv="refresh">``, so it needs no script.
The preview of the next publication reads the last snapshot, so it has a
page of its own rather than slowing down the list of versions.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from app import audit
from app.appeals import APPEAL_STEPS, Appeals, AppealStatus
from app.errors import BlocklistError, NotFoundError, ValidationError
from app.web.auth import actor, page
from app.web.common import core, form_errors
from app.web.common import int_arg as _int_arg
from app.web.forms import AuditFilterForm, EmptyForm, ReasonForm, RequiredReasonForm

bp = Blueprint("records", __name__)

#: Entries of a diff shown on a page; the signed delta file has them all.
DIFF_SHOWN = 500
#: Up to this many audit records, the chain is verified whenever the page is shown.
VERIFY_ON_VIEW = 50_000
#: Audit records on one page, and at most in one export.
AUDIT_PER_PAGE = 50
EXPORT_LIMIT = 100_000
_REQUEST_ID = re.compile(r"[0-9a-f]{16}")


def appeals() -> Appeals:
    return core().appeals


# --------------------------------------------------------------------------- publications


@bp.get("/publications")
@page("publish.read")
def publications() -> Any:
    pub = core().publisher
    before = _int_arg("before", 0)
    versions = pub.versions(limit=50, before=before or None)
    older = versions[-1]["version"] if len(versions) == 50 else None
    return render_template("publications.html", versions=versions, latest=pub.latest(), held=pub.held(),
                           older=older, form=ReasonForm(), decide=RequiredReasonForm())


@bp.get("/publications/<int:version>")
@page("publish.read")
def publication(version: int) -> Any:
    c = core()
    pub = c.publisher.record(version)
    if pub is None:
        raise NotFoundError(f"there is no version {version}")
    meta = pub.to_dict()
    added: list[dict[str, Any]] | None = None
    removed: list[dict[str, Any]] | None = None
    missing = None
    if pub.delta is not None:
        try:
            data = json.loads(c.artifacts.read(pub.delta.path))
            added, removed = data["added"], data["removed"]
        except (OSError, ValueError, KeyError, BlocklistError):
            missing = "the delta file of this version is no longer kept (older than the retention)"
    return render_template("publication.html", meta=meta, added=added, removed=removed, missing=missing,
                           shown=DIFF_SHOWN)


@bp.get("/publications/preview")
@page("publish.read")
def preview() -> Any:
    started = time.perf_counter()
    diff = core().publisher.preview()
    return render_template("preview.html", summary=diff.summary(), sample=diff.sample(100), empty=diff.empty,
                           latest=core().publisher.latest(), held=core().publisher.held(),
                           seconds=time.perf_counter() - started)


@bp.post("/publications/publish")
@page("publish.now")
def publish_now() -> Any:
    form = ReasonForm()
    if not form.validate():
        flash("; ".join(m for ms in form.errors.values() for m in ms), "error")
        return redirect(url_for("records.publications"), 303)
    request_id = core().publisher.request(actor(), form.reason.data or "")
    return redirect(url_for("records.publish_request", request_id=request_id), 303)


@bp.get("/publications/requests/<request_id>")
@page("publish.read")
def publish_request(request_id: str) -> Any:
    if not _REQUEST_ID.fullmatch(request_id):
        raise NotFoundError("there is no such publication request")
    result = core().publisher.answer(request_id)
    if result is None:
        raise NotFoundError("there is no such publication request (answers are kept for an hour)")
    return render_template("publish_request.html", request_id=request_id, result=result,
                           waiting=result["status"] in ("requested", "working"))


def held_fingerprint(held: dict[str, Any]) -> str:
    """What identifies the held publication an admin looked at: if another
    hold replaces it meanwhile, a confirmation given for the old one is void."""
    return ":".join(str(held.get(k, "")) for k in ("base_version", "held_at", "added", "removed", "changed"))


@bp.post("/publications/held/<decision>")
@page("publish.release")
def held_decision(decision: str) -> Any:
    """Release or discard the held publication. The first post shows what the
    decision does and asks; only the confirmed post (carrying the fingerprint
    of the publication that was shown) acts."""
    if decision not in ("release", "discard"):
        raise ValidationError("decide release or discard")
    form = RequiredReasonForm()
    if not form.validate():
        flash("Give a reason for the decision.", "error")
        return redirect(url_for("records.publications"), 303)
    pub = core().publisher
    held = pub.held()
    if held is None:
        flash("Not done: no publication is held.", "error")
        return redirect(url_for("records.publications"), 303)
    if request.form.get("confirmed") != "yes":
        return render_template("held_confirm.html", decision=decision, held=held, reason=form.reason.data,
                               fingerprint=held_fingerprint(held), confirm=EmptyForm())
    if request.form.get("expect") != held_fingerprint(held):
        flash("Not done: the held publication changed since you confirmed; look at it again.", "error")
        return redirect(url_for("records.publications"), 303)
    try:
        if decision == "release":
            pub.release(actor(), form.reason.data)
            flash("Released: the publisher publishes the held changes next; this page refreshes until it has.",
                  "ok")
        else:
            pub.discard(actor(), form.reason.data)
            flash("Discarded: the held publication is dropped. Entries that caused it stay as they are "
                  "until someone changes them.", "ok")
    except BlocklistError as e:
        flash(f"Not done: {e.message}", "error")
    return redirect(url_for("records.publications"), 303)


# --------------------------------------------------------------------------- audit


def _audit_filters() -> tuple[AuditFilterForm, dict[str, Any]]:
    form = AuditFilterForm(request.args)
    if not form.validate():
        raise ValidationError(form_errors(form).replace("Not a valid date value.", "a date is YYYY-MM-DD"))
    since, until = form.since.data, form.until.data
    if since and until and since > until:
        raise ValidationError("the first day comes after the last day")
    filters = {
        "actor": (form.actor.data or "").strip() or None,
        "action": (form.action.data or "").strip() or None,
        "target": (form.target.data or "").strip() or None,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
    }
    return form, filters


@bp.get("/audit", endpoint="audit")
@page("audit.read")
def audit_log() -> Any:
    store = core().store
    form, filters = _audit_filters()
    before = _int_arg("before", 0)
    records, next_before = audit.search(store, **filters, before_seq=before or None, limit=AUDIT_PER_PAGE)
    length = store.audit.length()
    verification = None
    seconds = 0.0
    if length <= VERIFY_ON_VIEW or request.args.get("verify"):
        started = time.perf_counter()
        verification = audit.verify(store)
        seconds = time.perf_counter() - started
    args = {k: v for k, v in filters.items() if v}
    return render_template("audit.html", form=form, records=records, next_before=next_before, args=args,
                           verification=verification, seconds=seconds, length=length, before=before,
                           per_page=AUDIT_PER_PAGE)


_CSV_COLUMNS = ("seq", "ts", "actor", "role", "agency", "action", "target", "before", "after", "reason", "prev",
                "hash")


@bp.get("/audit/export.csv")
@page("audit.read")
def audit_export_csv() -> Any:
    return _export("csv")


@bp.get("/audit/export.json")
@page("audit.read")
def audit_export_json() -> Any:
    return _export("json")


def _export(fmt: str) -> Any:
    """The filtered records as CSV or JSON, oldest first, hashes included so
    the range can be checked against the chain. The export is itself recorded."""
    store = core().store
    _, filters = _audit_filters()
    records, more = audit.search(store, **filters, limit=EXPORT_LIMIT, scan_limit=10 * EXPORT_LIMIT)
    records.reverse()
    wanted = {k: v for k, v in filters.items() if v}
    audit.append(store, actor=actor(), action="audit.export", target="audit",
                 after={"format": fmt, "filters": wanted, "records": len(records),
                        "first": records[0].seq if records else None, "last": records[-1].seq if records else None},
                 ts=core().clock())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(core().clock()))
    name = f"audit-{stamp}.{fmt}"
    if fmt == "json":
        body = json.dumps({"filters": wanted, "complete": more is None, "records": [r.to_dict() for r in records]},
                          ensure_ascii=False, indent=1)
        mimetype = "application/json"
    else:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(_CSV_COLUMNS)
        for r in records:
            d = r.to_dict()
            w.writerow([_csv_cell(d[c]) for c in _CSV_COLUMNS])
        body = out.getvalue()
        mimetype = "text/csv"
    return Response(body, mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _csv_cell(value: Any) -> str:
    """A cell as text; JSON for structures; a leading = + - @ is quoted so a
    spreadsheet never runs a cell as a formula."""
    text = "" if value is None else (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    return text


# --------------------------------------------------------------------------- appeals


@bp.get("/appeals", endpoint="appeals")
@page("appeal.read")
def appeals_list() -> Any:
    status = request.args.get("status", AppealStatus.OPEN.value)
    if status == "all":
        status_filter = None
    elif status in {s.value for s in AppealStatus}:
        status_filter = status
    else:
        raise ValidationError(f"unknown appeal state {status!r}")
    offset = _int_arg("offset", 0)
    items, total = appeals().list(status_filter, offset=offset, limit=50)
    return render_template("appeals.html", items=items, total=total, status=status, offset=offset,
                           counts=appeals().counts(), statuses=[s.value for s in AppealStatus])


@bp.get("/appeals/<int:appeal_id>")
@page("appeal.read")
def appeal(appeal_id: int) -> Any:
    a = appeals().get(appeal_id)
    entry = appeals().entry_of(a)
    history = audit.records(core().store, list(reversed(a.history)))
    steps = [d for d, (starts, _) in APPEAL_STEPS.items() if a.status in starts] if actor().may("appeal.decide") else []
    return render_template("appeal.html", appeal=a, entry=entry, history=history, steps=steps,
                           form=RequiredReasonForm())


@bp.post("/appeals/<int:appeal_id>/<decision>")
@page("appeal.decide")
def appeal_decide(appeal_id: int, decision: str) -> Any:
    if decision not in APPEAL_STEPS:
        raise ValidationError(f"unknown decision {decision!r}")
    form = RequiredReasonForm()
    if not form.validate():
        flash("Give a reason: it is recorded in the audit log.", "error")
        return redirect(url_for("records.appeal", appeal_id=appeal_id), 303)
    try:
        a = appeals().decide(actor(), appeal_id, decision, form.reason.data)
    except BlocklistError as e:
        flash(f"Not done: {e.message}", "error")
    else:
        words = {"review": "under review: the entry is suspended (out of the list) until you decide",
                 "uphold": "upheld: the block stands and the entry is active",
                 "grant": "granted: the entry is delisted", "dismiss": "dismissed"}
        flash(f"Appeal {a.reference} {words[decision]}.", "ok")
    return redirect(url_for("records.appeal", appeal_id=appeal_id), 303)
