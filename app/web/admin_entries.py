"""Entries in the web admin: the list, one entry, submission, vetting and
re-verification.

The entries list stays fast at a million entries: a page is one range read
of a status index (or of the id sequence) and one pipelined read of the
records, and totals come from the index sizes. The exact search is an index
lookup of the name, of each parent that could cover it and of the URL
entries on that host (an index by host); the "contains" search
reads every record and says so. Names typed in Unicode and their A-label
forms find the same entries.

The vetting queue shows, by default, only the entries the signed-in vetter
may approve, oldest first; with "all" it shows the others too, each with the
four-eyes reason why its Approve button is disabled.
"""

from __future__ import annotations

import io
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from app import audit
from app.curation import parse_import
from app.domain import (
    ENTRY_ACTIONS,
    REASON_REQUIRED,
    TRANSITIONS,
    Entry,
    EntryType,
    Status,
    normalize_domain,
    normalize_url,
    parents,
)
from app.errors import BlocklistError, ValidationError
from app.web.auth import actor, page, safe_next
from app.web.common import core, form_errors, four_eyes_problem, int_arg, plural
from app.web.forms import EntryFilterForm, EntryForm, ImportForm, ReasonForm, choices

bp = Blueprint("entries", __name__)

PER_PAGE = 50
VETTING_PER_PAGE = 100
_DONE = {"approve": "approved", "reject": "rejected", "reverify": "re-verified", "suspend": "suspended",
         "reinstate": "reinstated", "delist": "delisted", "withdraw": "withdrawn"}


def _categories() -> list[tuple[str, str]]:
    return [(c, c) for c in core().settings.categories]


# --------------------------------------------------------------------------- list


def exact_matches(text: str) -> list[tuple[Entry, str]]:
    """Entries for exactly this name or URL, then the entries that cover it:
    a URL's host, and parents listed with their subdomains."""
    c = core().curation
    found: list[tuple[Entry, str]] = []
    seen: set[int] = set()

    def add(e: Entry | None, why: str) -> None:
        if e is not None and e.id not in seen:
            found.append((e, why))
            seen.add(e.id)

    add(c.find(EntryType.DOMAIN, text), "exact match")
    add(c.find(EntryType.URL, text), "exact match")
    try:
        host = normalize_url(text).host if "://" in text else normalize_domain(text)
    except BlocklistError:
        return found
    if "://" in text:
        add(c.find(EntryType.DOMAIN, host), f"covers the URL's host {host}")
    else:
        add(c.find(EntryType.DOMAIN, host), "exact match")
    for p in parents(host):
        e = c.find(EntryType.DOMAIN, p)
        if e is not None and e.subdomains:
            add(e, f"covers it: {p} and its subdomains")
    if "://" not in text:
        for e in c.urls_on_host(host):
            add(e, f"a URL on {host}")
    return found


@bp.get("/entries")
@page("entry.read")
def list_entries() -> Any:
    c = core()
    form = EntryFilterForm(request.args)
    form.category.choices = choices([("", "any"), *_categories()])
    if not form.validate():
        raise ValidationError("; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()))
    q = (form.q.data or "").strip()
    status = form.status.data or None
    category = form.category.data or None
    agency = (form.agency.data or "").strip() or None
    mode = form.mode.data or "exact"
    offset = int_arg("offset", -1)
    if offset < 0:
        offset = (max(1, int_arg("page", 1)) - 1) * PER_PAGE
    filtered = category is not None or agency is not None
    rows: list[tuple[Entry, str]]
    if q and mode == "exact":
        matches = exact_matches(q)
        rows = [(e, why) for e, why in matches
                if (status is None or e.status == status) and (category is None or e.category == category)
                and (agency is None or e.agency.casefold() == agency.casefold())]
        result = {"total": len(rows), "next_offset": None, "partial": False}
    else:
        p = c.curation.list(status=status, q=q or None, category=category, agency=agency, offset=offset,
                            limit=PER_PAGE)
        rows = [(e, "") for e in p.entries]
        result = {"total": p.total, "next_offset": p.next_offset, "partial": p.partial}
    args = {k: v for k, v in {"q": q, "mode": mode if q else "", "status": status or "", "category": category or "",
                              "agency": agency or ""}.items() if v}
    total = result["total"]
    pages = None if total is None else max(1, -(-int(total) // PER_PAGE))
    return render_template(
        "entries.html", form=form, rows=rows, offset=offset, per_page=PER_PAGE, args=args,
        total=total, pages=pages, page_no=offset // PER_PAGE + 1, next_offset=result["next_offset"],
        partial=result["partial"], filtered=filtered or bool(q and mode == "contains"),
        exact=bool(q and mode == "exact"),
    )


# --------------------------------------------------------------------------- one entry


def available_actions(entry: Entry) -> list[dict[str, Any]]:
    """The actions the signed-in person may take on ``entry`` in its state,
    straight from the lifecycle's transitions; "withdraw" only for the
    submitter, "approve" with the four-eyes reason when the rule forbids it."""
    a = actor()
    out = []
    for action in ENTRY_ACTIONS:
        if entry.status not in TRANSITIONS[action][0] or not a.may(f"entry.{action}"):
            continue
        if action == "withdraw" and a.name != entry.submitted_by:
            continue
        out.append({"name": action, "reason_required": action in REASON_REQUIRED,
                    "problem": four_eyes_problem(entry) if action == "approve" else None,
                    "confirm": _confirmation(entry, action)})
    return out


def _confirmation(entry: Entry, action: str) -> str | None:
    """The question asked before an action that takes an entry out of use."""
    published = entry.status is Status.ACTIVE
    if action == "delist":
        return (f"Delist entry {entry.id}? It leaves the published list with the next publication."
                if published else f"Delist entry {entry.id}? It cannot be published again unless resubmitted.")
    if action == "suspend":
        return f"Suspend entry {entry.id}? It leaves the published list until it is reinstated."
    if action == "withdraw":
        return f"Withdraw entry {entry.id}? It will not be vetted; you can submit it again later."
    if action == "reject":
        return f"Reject entry {entry.id}? It will not be published."
    return None


@bp.get("/entries/<int:entry_id>")
@page("entry.read")
def show(entry_id: int) -> Any:
    c = core()
    entry = c.curation.get(entry_id)
    history: list[audit.Record] = list(reversed(c.curation.history(entry)))
    safety = None
    if entry.status in (Status.PENDING, Status.ACTIVE, Status.SUSPENDED):
        try:
            c.curation.rules().check(entry.type, entry.value)
        except BlocklistError as e:
            safety = e.message
    policy = c.curation.policy()
    return render_template(
        "entry.html", entry=entry, history=history, actions=available_actions(entry), form=ReasonForm(),
        safety=safety, expires_at=entry.expires_at(policy.reverify_days), policy=policy,
        may_resubmit=entry.status in TRANSITIONS["resubmit"][0] and actor().may("entry.resubmit"),
    )


@bp.post("/entries/<int:entry_id>/<action>")
@page("entry.{action}")
def act(entry_id: int, action: str) -> Any:
    back = safe_next(request.form.get("next") or url_for("entries.show", entry_id=entry_id))
    if action not in ENTRY_ACTIONS:
        raise ValidationError(f"unknown action {action!r}")
    form = ReasonForm()
    if not form.validate():
        flash(form_errors(form), "error")
        return redirect(back, 303)
    try:
        entry = core().curation.act(actor(), entry_id, action, form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not {_DONE[action]}: {e.message}", "error")
    else:
        flash(f"Entry {entry.id} ({entry.label()}) {_DONE[action]}; it is now {entry.status}.", "ok")
    return redirect(back, 303)


# --------------------------------------------------------------------------- submit and import


def _entry_form(read: bool = True) -> EntryForm:
    form = EntryForm() if read else EntryForm(formdata=None)
    form.category.choices = choices(_categories())
    if request.method == "GET":
        if request.args.get("value"):
            form.value.data = request.args["value"][:2048]
        if request.args.get("type") in ("domain", "url"):
            form.type.data = request.args["type"]
    return form


def _import_form(read: bool = True) -> ImportForm:
    # Each form reads only its own post: the single-entry form's reason is
    # never copied into the upload form, and the other way round.
    form = ImportForm() if read else ImportForm(formdata=None)
    form.category.choices = choices(_categories())
    return form


def _subdomains(form: EntryForm) -> bool | None:
    """The subdomains choice of the form; None for URLs (they have none)."""
    kind = form.type.data or None
    if kind == "url" or (kind is None and "://" in (form.value.data or "")):
        return None
    return bool(form.subdomains.data)


@bp.get("/submit")
@page("entry.submit")
def submit() -> Any:
    return render_template("submit.html", form=_entry_form(), upload=_import_form())


@bp.post("/submit")
@page("entry.submit")
def submit_post() -> Any:
    c = core()
    form = _entry_form()
    upload = _import_form(read=False)
    if not form.validate():
        return render_template("submit.html", form=form, upload=upload), 400
    kind = form.type.data or None
    if form.check.data and not form.submit.data:
        preview = c.curation.check_value(form.value.data, kind, _subdomains(form))
        return render_template("submit.html", form=form, upload=upload, preview=preview)
    try:
        entry = c.curation.submit(actor(), form.value.data, kind, _subdomains(form),
                                  form.category.data, form.reason.data or "", form.evidence_ref.data or "")
    except BlocklistError as e:
        return render_template("submit.html", form=form, upload=upload, error=e.message), e.status
    rule = " from another agency" if c.curation.policy().require_other_agency else ""
    flash(f"Entry {entry.id} ({entry.label()}) submitted. It waits for a vetter{rule} to approve it.", "ok")
    return redirect(url_for("entries.show", entry_id=entry.id), 303)


@bp.post("/submit/file")
@page("entry.import")
def import_file() -> Any:
    form = _entry_form(read=False)
    upload = _import_form()
    if not upload.validate():
        return render_template("submit.html", form=form, upload=upload), 400
    f = upload.file.data
    try:
        text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        return render_template("submit.html", form=form, upload=upload,
                               upload_error="the file must be UTF-8 text"), 400
    sub = upload.subdomains.data
    try:
        report = core().curation.import_rows(
            actor(), parse_import(io.StringIO(text)), source=(f.filename or "upload")[:100],
            default_subdomains=None if not sub else sub == "true", default_category=upload.category.data,
            default_reason=upload.reason.data or "", dry_run=bool(upload.dry_run.data),
        )
    except BlocklistError as e:
        return render_template("submit.html", form=form, upload=upload, upload_error=e.message), e.status
    accepted = core().curation.get_many(report.ids[:200]) if report.ids else []
    return render_template("import_result.html", report=report, accepted=accepted,
                           refused=sorted(report.refused))


# --------------------------------------------------------------------------- vetting


def _batch_of(entry: Entry) -> int | None:
    """The audit record that created ``entry`` (an import batch shares one)."""
    return entry.history[0] if entry.history else None


@bp.get("/vetting")
@page("entry.approve")
def vetting() -> Any:
    c = core()
    a = actor()
    show_all = request.args.get("show") == "all"
    if request.args.get("show", "mine") not in ("mine", "all"):
        raise ValidationError("show must be mine or all")
    offset = int_arg("offset", 0)
    p = c.curation.list(status=Status.PENDING.value, approvable_by=None if show_all else a, oldest_first=True,
                        offset=offset, limit=VETTING_PER_PAGE)
    rows = [(e, four_eyes_problem(e)) for e in p.entries]
    why_not = {e.id: ("you submitted it" if e.submitted_by == a.name else "submitted from your agency")
               for e, problem in rows if problem}
    # Import batches among the rows the vetter may approve: several entries
    # created by one audit record.
    batches: dict[int, list[Entry]] = {}
    for e, problem in rows:
        b = _batch_of(e)
        if problem is None and b is not None:
            batches.setdefault(b, []).append(e)
    batch_info = []
    for seq, members in batches.items():
        if len(members) < 2:
            continue
        rec = audit.get(c.store, seq)
        source = rec.target.removeprefix("import:") if rec is not None and rec.action == "entry.import" else "?"
        batch_info.append({"seq": seq, "source": source, "count": len(members)})
    waiting = c.curation.counts()[Status.PENDING.value]
    return render_template("vetting.html", rows=rows, waiting=waiting, offset=offset, next_offset=p.next_offset,
                           per_page=VETTING_PER_PAGE, policy=c.curation.policy(), form=ReasonForm(),
                           show_all=show_all, batches=batch_info, batch_of=_batch_of, why_not=why_not,
                           approvable=[e.id for e, problem in rows if problem is None])


def _batch_ids(seq_text: str) -> list[int]:
    """The pending entries of import batch ``seq`` that the vetter may approve."""
    c = core()
    if not seq_text.isdigit():
        raise ValidationError("the batch must be a number")
    rec = audit.get(c.store, int(seq_text))
    if rec is None or rec.action != "entry.import" or not isinstance(rec.after, dict):
        raise ValidationError(f"audit record {seq_text} is not an import batch")
    ids = [int(i) for i, _ in rec.after.get("entries", [])]
    return [e.id for e in c.curation.get_many(ids)
            if e.status is Status.PENDING and four_eyes_problem(e) is None]


@bp.post("/vetting")
@page("entry.approve")
def vetting_approve() -> Any:
    back = safe_next(request.form.get("next") or url_for("entries.vetting"))
    form = ReasonForm()
    if not form.validate():
        flash(form_errors(form), "error")
        return redirect(back, 303)
    c = core()
    only = request.form.get("only")
    batch = request.form.get("batch")
    if only:
        ids = [only]
    elif batch:
        ids = [str(i) for i in _batch_ids(batch)]
        if not ids:
            flash("Nothing in that batch is waiting for you to approve.", "error")
            return redirect(back, 303)
    elif request.form.get("scope") == "page":
        ids = request.form.getlist("page_ids")
    else:
        ids = request.form.getlist("ids")
    if not ids:
        flash("Tick the entries to approve first.", "error")
        return redirect(back, 303)
    try:
        if only:
            entry = c.curation.act(actor(), only, "approve", form.reason.data or "")
            flash(f"Entry {entry.id} ({entry.label()}) approved; it is in the next publication.", "ok")
        else:
            done = c.curation.approve_many(actor(), ids, form.reason.data or "")
            flash(f"{plural(len(done), 'entry', 'entries')} approved; "
                  f"{'it is' if len(done) == 1 else 'they are'} in the next publication.", "ok")
    except BlocklistError as e:
        flash(f"Not approved: {e.message}", "error")
    return redirect(back, 303)


# --------------------------------------------------------------------------- re-verification


REVERIFY_WITHIN = 14


@bp.get("/reverify")
@page("entry.reverify")
def reverify() -> Any:
    c = core()
    entries: list[Entry] = c.curation.expiring(REVERIFY_WITHIN, limit=200)
    days = c.curation.policy().reverify_days
    now = c.clock()
    rows = [(e, e.expires_at(days), max(0, int(((e.expires_at(days) or now) - now) // 86400))) for e in entries]
    return render_template("reverify.html", rows=rows, count=c.curation.count_expiring(REVERIFY_WITHIN),
                           within=REVERIFY_WITHIN, days=days, form=ReasonForm())


@bp.post("/reverify")
@page("entry.reverify")
def reverify_post() -> Any:
    form = ReasonForm()
    entry_id = request.form.get("id", "")
    if not form.validate() or not entry_id:
        flash("Choose an entry to re-verify.", "error")
        return redirect(url_for("entries.reverify"), 303)
    try:
        entry = core().curation.act(actor(), entry_id, "reverify", form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not re-verified: {e.message}", "error")
    else:
        flash(f"Entry {entry.id} ({entry.label()}) re-verified: it stays listed.", "ok")
    return redirect(url_for("entries.reverify"), 303)
