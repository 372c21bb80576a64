"""The curator JSON API, ``/api/v1``: the same rules as the web UI.

Authentication is ``Authorization: Bearer <user token>`` on every request;
the account is re-read each time, so a disabled user is out at once. Every
refusal is ``{"error": "<sentence>"}`` with a fitting 4xx status and changes
nothing. The contract is described in ``app/openapi.json``.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from app import audit
from app.curation import parse_import
from app.domain import ENTRY_ACTIONS, Actor, Entry, iso
from app.errors import AuthenticationError, NotFoundError, PermissionDeniedError, ValidationError
from app.users import SecondFactorError, User
from app.web import core_of
from app.web.common import bearer_token, yes_no

bp = Blueprint("api", __name__, url_prefix="/api/v1")



def core() -> Any:
    return core_of(current_app)


@bp.before_request
def _authenticate() -> None:
    if request.endpoint == "api.openapi":
        return
    user: User = core().users.authenticate_token(bearer_token("API token", "blu_..."))
    g.user = user
    g.actor = user.actor


def actor() -> Actor:
    a: Actor = g.actor
    return a


def body() -> dict[str, Any]:
    if not request.data:
        return {}
    if not request.is_json:
        raise ValidationError("the request body must be JSON (Content-Type: application/json)")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object")
    return data


def entry_json(e: Entry) -> dict[str, Any]:
    return e.public(core().curation.policy().reverify_days)


def int_arg(name: str, default: int, lo: int = 0, hi: int = 10**9) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number") from None
    if not lo <= n <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}")
    return n


# --------------------------------------------------------------------------- spec


@bp.get("/openapi.json")
def openapi() -> Any:
    from importlib.resources import files

    return current_app.response_class(
        files("app").joinpath("openapi.json").read_bytes(), mimetype="application/json"
    )


@bp.get("/me")
def me() -> Any:
    user: User = g.user
    return jsonify(user.public())


# --------------------------------------------------------------------------- entries


@bp.post("/entries")
def submit() -> Any:
    d = body()
    entry = core().curation.submit(
        actor(), d.get("value"), d.get("type"), d.get("subdomains"), d.get("category"),
        d.get("reason", ""), d.get("evidence_ref", ""),
    )
    return jsonify(entry_json(entry)), 201


@bp.post("/entries/check")
def check() -> Any:
    d = body()
    return jsonify(core().curation.check_value(d.get("value"), d.get("type")))


@bp.get("/entries")
def list_entries() -> Any:
    page_size = int_arg("per_page", 50, 1, 500)
    page_no = int_arg("page", 1, 1, 10**7)
    offset = int_arg("offset", (page_no - 1) * page_size)
    page = core().curation.list(
        status=request.args.get("status") or None,
        q=request.args.get("q") or None,
        category=request.args.get("category") or None,
        agency=request.args.get("agency") or None,
        submitted_by=request.args.get("submitted_by") or None,
        offset=offset,
        limit=page_size,
    )
    return jsonify(
        entries=[entry_json(e) for e in page.entries],
        total=page.total,
        next_offset=page.next_offset,
        partial=page.partial,
    )


@bp.get("/entries/<int:entry_id>")
def get_entry(entry_id: int) -> Any:
    return jsonify(entry_json(core().curation.get(entry_id)))


@bp.get("/entries/<int:entry_id>/history")
def entry_history(entry_id: int) -> Any:
    c = core()
    actor().require("entry.read")
    entry = c.curation.get(entry_id)
    return jsonify(history=[r.to_dict() for r in c.curation.history(entry)])


@bp.post("/entries/<int:entry_id>/<action>")
def entry_action(entry_id: int, action: str) -> Any:
    if action not in ENTRY_ACTIONS:
        raise ValidationError(f"unknown action {action!r}; use one of {', '.join(ENTRY_ACTIONS)}")
    d = body()
    entry = core().curation.act(actor(), entry_id, action, d.get("reason", ""))
    return jsonify(entry_json(entry))


@bp.post("/entries/approve")
def approve_many() -> Any:
    d = body()
    entries = core().curation.approve_many(actor(), d.get("ids"), d.get("reason", ""))
    return jsonify(approved=[e.id for e in entries])


@bp.post("/import")
def import_file() -> Any:
    """CSV or one value a line, as the request body or a multipart ``file``."""
    upload = request.files.get("file")
    if upload is not None:
        raw = upload.read()
        source = upload.filename or "upload"
    else:
        raw = request.get_data()
        source = request.args.get("source", "api")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError("the file must be UTF-8 text") from None
    dry_run = bool(yes_no(request.args.get("dry_run"), "dry_run", default=False))
    report = core().curation.import_rows(
        actor(), parse_import(io.StringIO(text)), source=source[:100],
        default_subdomains=yes_no(request.args.get("subdomains"), "subdomains"),
        default_category=request.args.get("category") or None,
        default_reason=request.args.get("reason", ""),
        dry_run=dry_run,
    )
    return jsonify(report.to_dict()), 200 if dry_run else 201


# --------------------------------------------------------------------------- allowlist


@bp.get("/allowlist")
def allowlist() -> Any:
    actor().require("allowlist.read")
    return jsonify(allowlist=[
        {"domain": a.domain, "subdomains": a.subdomains, "reason": a.reason,
         "added_by": a.added_by, "added_at": iso(a.added_at) if a.added_at else None}
        for a in core().curation.allowlist()
    ])


@bp.post("/allowlist")
def allowlist_add() -> Any:
    d = body()
    suspended = core().curation.allowlist_add(actor(), d.get("domain"), d.get("subdomains", False),
                                              d.get("reason", ""))
    return jsonify(domain=d.get("domain"), suspended=suspended), 201


@bp.delete("/allowlist")
@bp.delete("/allowlist/<domain>")
def allowlist_remove(domain: str | None = None) -> Any:
    d = body() if domain is None else {}
    name = domain or d.get("domain") or request.args.get("domain")
    core().curation.allowlist_remove(actor(), name, d.get("reason", request.args.get("reason", "")))
    return jsonify(removed=name)


# --------------------------------------------------------------------------- audit


@bp.get("/audit")
def audit_log() -> Any:
    actor().require("audit.read")
    before = int_arg("before", 0)
    records, nxt = audit.search(
        core().store,
        actor=request.args.get("actor") or None,
        action=request.args.get("action") or None,
        target=request.args.get("target") or None,
        before_seq=before or None,
        limit=int_arg("limit", 50, 1, 500),
    )
    return jsonify(records=[r.to_dict() for r in records], next_before=nxt)


@bp.get("/audit/verify")
def audit_verify() -> Any:
    actor().require("audit.read")
    result = audit.verify(core().store)
    return jsonify(ok=result.ok, checked=result.checked, head=result.head_seq, problems=result.problems)


# --------------------------------------------------------------------------- settings


@bp.get("/settings")
def get_settings() -> Any:
    return jsonify(core().curation.policy().to_dict())


@bp.put("/settings")
@bp.patch("/settings")
def put_settings() -> Any:
    d = body()
    reason = d.pop("reason", "")
    return jsonify(core().curation.set_policy(actor(), d, reason).to_dict())


# --------------------------------------------------------------------------- users


@bp.get("/users")
def users() -> Any:
    actor().require("user.manage")
    return jsonify(users=[u.public() for u in core().users.list()])


@bp.post("/users")
def add_user() -> Any:
    d = body()
    user = core().users.add(actor(), d.get("name"), d.get("role"), d.get("agency"), d.get("password"))
    return jsonify(user.public()), 201


@bp.patch("/users/<name>")
def update_user(name: str) -> Any:
    d = body()
    user = core().users.update(actor(), name, role=d.get("role"), agency=d.get("agency"),
                               reason=d.get("reason", ""))
    return jsonify(user.public())


@bp.post("/users/<name>/token")
def user_token(name: str) -> Any:
    token = core().users.issue_token(actor(), name)
    return jsonify(name=name, token=token), 201


@bp.post("/users/<name>/<action>")
def user_action(name: str, action: str) -> Any:
    d = body()
    users_ = core().users
    reason = d.get("reason", "")
    if action == "disable":
        user = users_.set_disabled(actor(), name, True, reason)
    elif action == "enable":
        user = users_.set_disabled(actor(), name, False, reason)
    elif action == "unlock":
        user = users_.unlock(actor(), name, reason)
    elif action == "password":
        return _password(name, d, reason)
    else:
        raise ValidationError(f"unknown action {action!r}; use disable, enable, unlock, password or token")
    return jsonify(user.public())


def _password(name: str, d: dict[str, Any], reason: str) -> Any:
    """Own password: needs ``current`` (and ``code`` with a second factor), never
    the token alone. Someone else's (admins): a temporary ``password``, or a
    generated one returned once; it must be changed at the next sign-in."""
    users_ = core().users
    if name == actor().name:
        for key in ("current", "new"):
            if not isinstance(d.get(key), str) or not d.get(key):
                raise ValidationError(
                    f"give {key!r}: changing your own password needs the current one and the new one"
                )
        try:
            users_.change_own_password(actor(), d["current"], d["new"],
                                       d.get("code") if isinstance(d.get("code"), str) else None)
        except AuthenticationError as e:
            from app.web.auth import record_failure

            record_failure(name)
            raise PermissionDeniedError(
                e.message if isinstance(e, SecondFactorError) else "the current password is not right"
            ) from None
        return jsonify(users_.get(name).public())
    given = d.get("password")
    if given is None:
        password = users_.reset_password(actor(), name, reason)
        resp = jsonify(dict(users_.get(name).public(), temporary_password=password))
        resp.headers["Cache-Control"] = "no-store"
        return resp
    users_.set_password(actor(), name, given, reason)
    return jsonify(users_.get(name).public())


# --------------------------------------------------------------------------- agencies


@bp.get("/agencies")
def agencies() -> Any:
    return jsonify(agencies=[a.public() for a in core().users.agencies()])


@bp.post("/agencies")
def add_agency() -> Any:
    d = body()
    return jsonify(core().users.add_agency(actor(), d.get("name"), d.get("reason", "")).public()), 201


@bp.post("/agencies/<decision>")
def change_agency(decision: str) -> Any:
    d = body()
    users_ = core().users
    if not isinstance(d.get("agency"), str):
        raise ValidationError("give 'agency': the id of the agency to change")
    if decision == "rename":
        agency = users_.rename_agency(actor(), d["agency"], d.get("name"), d.get("reason", ""))
    elif decision == "retire":
        agency = users_.retire_agency(actor(), d["agency"], d.get("reason", ""))
    else:
        raise ValidationError(f"unknown change {decision!r}; use rename or retire")
    return jsonify(agency.public())


# --------------------------------------------------------------------------- publications


def _publisher() -> Any:
    return core().publisher


@bp.post("/publish")
def publish() -> Any:
    """Ask the publisher to publish now. ``?wait=N`` waits up to N seconds for the outcome."""
    d = body()
    pub = _publisher()
    request_id = pub.request(actor(), d.get("reason", ""))
    wait = int_arg("wait", 0, 0, 300)
    deadline = time.monotonic() + wait
    while True:
        result = pub.answer(request_id) or {"status": "requested"}
        if result["status"] not in ("requested", "working") or time.monotonic() >= deadline:
            return _answer(request_id, result)
        time.sleep(0.1)


@bp.get("/publish/<request_id>")
def publish_result(request_id: str) -> Any:
    actor().require("publish.read")
    result = _publisher().answer(request_id)
    if result is None:
        raise NotFoundError("there is no such publication request (answers are kept for an hour)")
    return _answer(request_id, result)


def _answer(request_id: str, result: dict[str, Any]) -> Any:
    """202 while the request waits or runs, 503 when no publisher took it, else 200 with the outcome."""
    if result["status"] in ("requested", "working"):
        return jsonify(request=request_id, status=result["status"]), 202
    if result["status"] == "unanswered":
        return jsonify(request=request_id, status="unanswered", error=result["message"]), 503
    return jsonify(request=request_id, **result), 200


@bp.get("/publications")
def publications() -> Any:
    actor().require("publish.read")
    before = int_arg("before", 0)
    pub = _publisher()
    return jsonify(publications=pub.versions(limit=int_arg("limit", 50, 1, 500), before=before or None),
                   latest=pub.latest(), held=pub.held())


@bp.get("/publications/<int:version>")
def publication(version: int) -> Any:
    actor().require("publish.read")
    meta = _publisher().version_meta(version)
    if meta is None:
        raise NotFoundError(f"there is no version {version}")
    return jsonify(meta)


@bp.get("/publications/<int:version>/diff")
def publication_diff(version: int) -> Any:
    """The delta that produced ``version`` (what it added and removed)."""
    actor().require("publish.read")
    pub = _publisher().record(version)
    if pub is None:
        raise NotFoundError(f"there is no version {version}")
    if pub.delta is None:
        return jsonify(version=version, previous_version=pub.previous_version, added=None,
                       removed=None, note="first version, or no previous version to compare with")
    data = json.loads(core().artifacts.read(pub.delta.path))
    return jsonify(version=version, previous_version=data["from"], added=data["added"], removed=data["removed"])


@bp.get("/publications/preview")
def publication_preview() -> Any:
    actor().require("publish.read")
    diff = _publisher().preview()
    return jsonify(**diff.summary(), sample=diff.sample(20))


@bp.get("/publications/held")
def publication_held() -> Any:
    actor().require("publish.read")
    return jsonify(held=_publisher().held())


@bp.post("/publications/held/<decision>")
def publication_decide(decision: str) -> Any:
    d = body()
    pub = _publisher()
    if decision == "release":
        held = pub.release(actor(), d.get("reason", ""))
    elif decision == "discard":
        held = pub.discard(actor(), d.get("reason", ""))
    else:
        raise ValidationError("decide 'release' or 'discard'")
    return jsonify(decision=decision, held=held)


# --------------------------------------------------------------------------- ISPs


@bp.get("/isps")
def isps() -> Any:
    actor().require("isp.read")
    latest = core().latest_version()
    return jsonify(isps=[i.public(latest) for i in core().isps.list()], latest_version=latest)


@bp.post("/isps")
def add_isp() -> Any:
    d = body()
    created = core().isps.add(actor(), d.get("name"), d.get("notify"), d.get("allow_from"), d.get("reason", ""),
                              address_only=d.get("address_only", False))
    return jsonify({**created, "xot": _xot()}), 201


def _xot() -> dict[str, Any] | None:
    from app.xot import details

    return details(core().store.isps.xot_cert(), core().settings)


@bp.get("/isps/<name>")
def get_isp(name: str) -> Any:
    actor().require("isp.read")
    return jsonify({**core().isps.get(name).public(core().latest_version()), "xot": _xot()})


@bp.patch("/isps/<name>")
def update_isp(name: str) -> Any:
    d = body()
    isp = core().isps.update(actor(), name, notify=d.get("notify"), allow_from=d.get("allow_from"),
                             reason=d.get("reason", ""))
    return jsonify(isp.public(core().latest_version()))


@bp.post("/isps/<name>/revoke")
def revoke_isp(name: str) -> Any:
    d = body()
    return jsonify(core().isps.revoke(actor(), name, d.get("reason", "")).public())


@bp.post("/isps/<name>/rotate")
def rotate_isp(name: str) -> Any:
    d = body()
    token = bool(yes_no(d.get("token"), "token", default=True))
    tsig = bool(yes_no(d.get("tsig"), "tsig", default=False))
    return jsonify(core().isps.rotate(actor(), name, token=token, tsig=tsig, reason=d.get("reason", ""))), 201
