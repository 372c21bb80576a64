"""Records in the web admin: publications, the audit log and appeals.

"Publish now" asks the worker (the only process with the signing key) to
publish and shows the outcome when the worker reports it; the page reloads
itself with a plain ``<meta http-equiv="refresh">``, so it needs no script.
The preview of the next publication reads the last snapshot, so it has a
page of its own rather than slowing down the list of versions.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from app import audit
from app.appeals import APPEAL_STEPS, AppealStatus
from app.errors import BlocklistError, NotFoundError, ValidationError
from app.web.admin import appeals, core
from app.web.auth import actor, page
from app.web.forms import AuditFilterForm, ReasonForm, RequiredReasonForm

bp = Blueprint("records", __name__)

#: Entries of a diff shown on a page; the signed delta file has them all.
DIFF_SHOWN = 500
#: Up to this many audit records, the chain is verified whenever the page is shown.
VERIFY_ON_VIEW = 50_000
_REQUEST_ID = re.compile(r"[0-9a-f]{16}")


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise ValidationError(f"{name} must be a whole number")
    return int(raw)


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
    meta = c.publisher.version_meta(version)
    if meta is None:
        raise NotFoundError(f"there is no version {version}")
    added: list[dict[str, Any]] | None = None
    removed: list[dict[str, Any]] | None = None
    missing = None
    if meta.get("delta"):
        try:
            data = json.loads(c.artifacts.read(meta["delta"]["path"]))
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


@bp.post("/publications/held/<decision>")
@page("publish.release")
def held_decision(decision: str) -> Any:
    if decision not in ("release", "discard"):
        raise ValidationError("decide release or discard")
    form = RequiredReasonForm()
    if not form.validate():
        flash("Give a reason for the decision.", "error")
        return redirect(url_for("records.publications"), 303)
    pub = core().publisher
    try:
        if decision == "release":
            pub.release(actor(), form.reason.data)
            flash("Released: the publisher publishes the held changes next.", "ok")
        else:
            pub.discard(actor(), form.reason.data)
            flash("Discarded: the held publication is dropped. Entries that caused it stay as they are "
                  "until someone changes them.", "ok")
    except BlocklistError as e:
        flash(f"Not done: {e.message}", "error")
    return redirect(url_for("records.publications"), 303)


# --------------------------------------------------------------------------- audit


@bp.get("/audit", endpoint="audit")
@page("audit.read")
def audit_log() -> Any:
    store = core().store
    form = AuditFilterForm(request.args)
    if not form.validate():
        raise ValidationError("; ".join(m for ms in form.errors.values() for m in ms))
    before = _int_arg("before", 0)
    records, next_before = audit.search(
        store, actor=(form.actor.data or "").strip() or None, action=(form.action.data or "").strip() or None,
        target=(form.target.data or "").strip() or None, before_seq=before or None, limit=100,
    )
    length = store.audit_length()
    verification = None
    seconds = 0.0
    if length <= VERIFY_ON_VIEW or request.args.get("verify"):
        started = time.perf_counter()
        verification = audit.verify(store)
        seconds = time.perf_counter() - started
    args = {k: v for k, v in {"actor": form.actor.data, "action": form.action.data,
                              "target": form.target.data}.items() if v}
    return render_template("audit.html", form=form, records=records, next_before=next_before, args=args,
                           verification=verification, seconds=seconds, length=length)


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
