"""Administration in the web admin: the never-block allowlist, user accounts,
ISP subscribers, and each person's own account (password, second factor,
API token).

Secrets (an ISP's feed token and TSIG secret, a generated password, an API
token) are shown once, in the answer to the request that made them, with
``Cache-Control: no-store``; they are never put in the session, a message
or a redirect.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import segno
from flask import Blueprint, flash, make_response, redirect, render_template, request, session, url_for
from markupsafe import Markup

from app import onboarding
from app.domain import display_domain
from app.errors import (
    AuthenticationError,
    BlocklistError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from app.isp_lag import lags
from app.isps import _check_address_only as check_address_only
from app.isps import parse_cidrs, parse_notify, validate_name
from app.onboarding import Onboarding
from app.users import SecondFactorError, totp_uri
from app.web.auth import (
    SIGNED_IN,
    actor,
    complete_login,
    current_user,
    page,
    record_failure,
    second_factor_fresh,
)
from app.web.common import core
from app.web.forms import (
    AgencyForm,
    AgencyRenameForm,
    AllowForm,
    CodeForm,
    EmptyForm,
    IspAddForm,
    IspEditForm,
    IspRotateForm,
    PasswordForm,
    ReasonForm,
    RecoveryCodesForm,
    RequiredReasonForm,
    UserAddForm,
    UserEditForm,
    choices,
)
from app.web.pages import error_page

bp = Blueprint("manage", __name__)


def _errors(form: Any) -> str:
    return "; ".join(m for ms in form.errors.values() for m in ms)


def _lines(text: str | None) -> list[str]:
    return [t for t in (text or "").replace(",", " ").split() if t]


# --------------------------------------------------------------------------- allowlist


@bp.get("/allowlist")
@page("allowlist.read")
def allowlist() -> Any:
    return render_template("allowlist.html", items=core().curation.allowlist(), form=AllowForm(),
                           remove=ReasonForm())


@bp.post("/allowlist")
@page("allowlist.write")
def allowlist_add() -> Any:
    """Add a never-block name. When active entries conflict with it, the first
    post shows which ones it would suspend and asks; the confirmed post
    carries that set, and the server refuses it if the set changed since."""
    form = AllowForm()
    if not form.validate():
        flash(_errors(form), "error")
        return redirect(url_for("manage.allowlist"), 303)
    c = core()
    try:
        name, sub, conflicting = c.curation.allowlist_effect(form.domain.data, bool(form.subdomains.data))
        if form.confirmed.data != "yes" and conflicting:
            return render_template("allowlist_confirm.html", form=form, name=name, subdomains=sub,
                                   conflicting=conflicting, expect=",".join(str(e.id) for e in conflicting))
        expect = [int(i) for i in (form.expect.data or "").split(",") if i.strip().isdigit()]
        suspended: list[int] = c.curation.allowlist_add(
            actor(), form.domain.data, sub, form.reason.data or "",
            expect_suspended=expect if form.confirmed.data == "yes" else [])
    except BlocklistError as e:
        flash(f"Not added: {e.message}", "error")
        return redirect(url_for("manage.allowlist"), 303)
    text = f"{display_domain(name)} is on the never-block allowlist."
    if suspended:
        text += " Suspended because they conflict with it: " + ", ".join(f"entry {i}" for i in suspended) + "."
    flash(text, "ok")
    return redirect(url_for("manage.allowlist"), 303)


@bp.post("/allowlist/remove")
@page("allowlist.write")
def allowlist_remove() -> Any:
    form = ReasonForm()
    domain = request.form.get("domain", "")
    if not form.validate():
        flash(_errors(form), "error")
        return redirect(url_for("manage.allowlist"), 303)
    try:
        core().curation.allowlist_remove(actor(), domain, form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not removed: {e.message}", "error")
    else:
        flash(f"{domain} is no longer on the allowlist.", "ok")
    return redirect(url_for("manage.allowlist"), 303)


# --------------------------------------------------------------------------- users and agencies


def _agency_choices(form: Any, current: str | None = None) -> None:
    """Fill an agency select with the active agencies (and the account's own, even if retired)."""
    options = [(a.id, a.name) for a in core().users.agencies() if not a.retired or a.id == current]
    form.agency.choices = choices([("", "pick an agency"), *options])


def _users_page(form: UserAddForm | None = None, error: str | None = None, status: int = 200,
                agency_form: AgencyForm | None = None, agency_error: str | None = None) -> Any:
    form = form or UserAddForm()
    _agency_choices(form)
    return render_template("users.html", users=core().users.list(), form=form, error=error,
                           agencies=core().users.agencies(), agency_names=core().users.agency_names(),
                           agency_form=agency_form or AgencyForm(prefix="agency"), agency_error=agency_error,
                           rename=AgencyRenameForm(), retire=ReasonForm()), status


@bp.get("/users")
@page("user.manage")
def users() -> Any:
    return _users_page()


@bp.post("/users")
@page("user.manage")
def users_add() -> Any:
    form = UserAddForm()
    if not form.validate():
        return _users_page(form, _errors(form), 400)
    password = form.password.data or secrets.token_urlsafe(12)
    try:
        user = core().users.add(actor(), form.name.data.strip(), form.role.data, form.agency.data, password)
    except BlocklistError as e:
        return _users_page(form, e.message, e.status)
    agency = core().users.agency_names().get(user.agency, user.agency)
    return render_template("secret.html", title=f"Account {user.name} made",
                           intro=f"{user.name} ({user.role}, {agency}) can now sign in.",
                           secrets=[("Temporary password", password)] if not form.password.data else [],
                           note="Give the password to the person over a separate channel. It is temporary: "
                                "at the first sign-in they must choose their own.",
                           back=url_for("manage.user", name=user.name))


@bp.post("/agencies")
@page("user.manage")
def agencies_add() -> Any:
    form = AgencyForm(prefix="agency")
    if not form.validate():
        return _users_page(agency_form=form, agency_error=_errors(form), status=400)
    try:
        agency = core().users.add_agency(actor(), form.name.data, form.reason.data or "")
    except BlocklistError as e:
        return _users_page(agency_form=form, agency_error=e.message, status=e.status)
    flash(f"{agency.name} is on the list of agencies.", "ok")
    return redirect(url_for("manage.users", _anchor="agencies"), 303)


@bp.post("/agencies/rename")
@page("user.manage")
def agencies_rename() -> Any:
    form = AgencyRenameForm()
    agency_id = request.form.get("agency", "")
    if not form.validate():
        flash(f"Not renamed: {_errors(form)}", "error")
        return redirect(url_for("manage.users", _anchor="agencies"), 303)
    try:
        agency = core().users.rename_agency(actor(), agency_id, form.name.data, form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not renamed: {e.message}", "error")
    else:
        flash(f"The agency is now called {agency.name}; its people keep it.", "ok")
    return redirect(url_for("manage.users", _anchor="agencies"), 303)


@bp.post("/agencies/retire")
@page("user.manage")
def agencies_retire() -> Any:
    form = ReasonForm()
    agency_id = request.form.get("agency", "")
    if not form.validate():
        flash(f"Not retired: {_errors(form)}", "error")
        return redirect(url_for("manage.users", _anchor="agencies"), 303)
    try:
        agency = core().users.retire_agency(actor(), agency_id, form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not retired: {e.message}", "error")
    else:
        flash(f"{agency.name} is retired: nobody new can be given it; its people keep it.", "ok")
    return redirect(url_for("manage.users", _anchor="agencies"), 303)


@bp.get("/users/<name>")
@page("user.manage")
def user(name: str) -> Any:
    u = core().users.get(name)
    edit = UserEditForm(data={"role": u.role.value, "agency": u.agency})
    _agency_choices(edit, u.agency)
    return render_template("user.html", user=u, edit=edit, form=ReasonForm(),
                           agency_names=core().users.agency_names(),
                           failures=core().store.users.login_failures(u.name),
                           max_failures=core().settings.login_max_failures)


@bp.post("/users/<name>/edit")
@page("user.manage")
def user_edit(name: str) -> Any:
    form = UserEditForm()
    if not form.validate():
        flash(_errors(form), "error")
        return redirect(url_for("manage.user", name=name), 303)
    try:
        u = core().users.update(actor(), name, role=form.role.data, agency=form.agency.data,
                                reason=form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not changed: {e.message}", "error")
    else:
        flash(f"{u.name} is now {u.role} at {core().users.agency_names().get(u.agency, u.agency)}.", "ok")
    return redirect(url_for("manage.user", name=name), 303)


_USER_ACTIONS = {"disable", "enable", "unlock", "password"}


@bp.post("/users/<name>/<action>")
@page("user.manage")
def user_action(name: str, action: str) -> Any:
    if action not in _USER_ACTIONS:
        raise ValidationError(f"there is no account action {action!r}")
    form = ReasonForm()
    if not form.validate():
        flash(_errors(form), "error")
        return redirect(url_for("manage.user", name=name), 303)
    users_ = core().users
    reason = form.reason.data or ""
    try:
        if action == "password":
            password = users_.reset_password(actor(), name, reason)
            locked = users_.get(name).locked
            return render_template("secret.html", title=f"New password for {name}",
                                   intro=f"The password of {name} was reset; their sessions ended."
                                         + (" The account is still locked: unlock it when you are sure."
                                            if locked else ""),
                                   secrets=[("Temporary password", password)],
                                   note="Give it to the person over a separate channel. It is temporary: "
                                        "at the next sign-in they must choose their own.",
                                   back=url_for("manage.user", name=name))
        if action in ("disable", "enable"):
            u = users_.set_disabled(actor(), name, action == "disable", reason)
            flash(f"{u.name} is {'disabled: signed out everywhere' if u.disabled else 'enabled again'}.", "ok")
        else:
            users_.unlock(actor(), name, reason)
            flash(f"{name} is unlocked and may sign in again.", "ok")
    except BlocklistError as e:
        flash(f"Not done: {e.message}", "error")
    return redirect(url_for("manage.user", name=name), 303)


# --------------------------------------------------------------------------- ISPs


def _isp_rows() -> tuple[list[dict[str, Any]], int | None]:
    c = core()
    latest = c.latest_version()
    isps = c.isps.list()
    behind = lags(c, [i for i in isps if i.active])
    return [dict(i.public(latest), lag=behind[i.name].public() if i.name in behind else None) for i in isps], latest


def _check_isp_form(form: Any) -> bool:
    """Every problem of an ISP form, each under its field, at once.

    The form checks shape; the core's rules (the name, each NOTIFY target,
    each address prefix) are checked here too, item by item, so a person
    fixes everything in one go. The core checks them again when it saves.
    """
    ok = bool(form.validate())

    def check(fld: Any, items: list[str], rule: Callable[[str], object]) -> None:
        nonlocal ok
        if fld.errors:
            return
        fld.errors = []
        for item in items:
            try:
                rule(item)
            except BlocklistError as e:
                fld.errors.append(e.message)
                ok = False

    name = getattr(form, "name", None)
    if name is not None:
        check(name, [(name.data or "").strip()], _new_isp_name)
    check(form.notify, _lines(form.notify.data), lambda t: parse_notify([t]))
    check(form.allow_from, _lines(form.allow_from.data), lambda c: parse_cidrs([c]))
    only = getattr(form, "address_only", None)
    if only is not None and only.data and not form.allow_from.errors:
        check(form.allow_from, [form.allow_from.data or ""], lambda text: check_address_only(parse_cidrs(text)))
    form._errors = None  # WTForms caches form.errors: recompute it from the fields
    return ok


def _new_isp_name(text: str) -> None:
    name = validate_name(text)
    try:
        core().isps.get(name)
    except NotFoundError:
        return
    raise ConflictError(f"an ISP named {name!r} already exists")


@bp.get("/isps")
@page("isp.read")
def isps() -> Any:
    rows, latest = _isp_rows()
    return render_template("isps.html", isps=rows, latest=latest, form=IspAddForm())


@bp.post("/isps")
@page("isp.manage")
def isps_add() -> Any:
    form = IspAddForm()
    if not _check_isp_form(form):
        rows, latest = _isp_rows()
        return render_template("isps.html", isps=rows, latest=latest, form=form, error=_errors(form)), 400
    try:
        created = core().isps.add(actor(), form.name.data.strip(), _lines(form.notify.data),
                                  _lines(form.allow_from.data), form.reason.data or "",
                                  address_only=bool(form.address_only.data))
    except BlocklistError as e:
        rows, latest = _isp_rows()
        return render_template("isps.html", isps=rows, latest=latest, form=form, error=e.message), e.status
    return _isp_secrets(f"ISP {created['name']} added", created)


def _onboarding(name: str, *, feed_token: str | None = None, tsig_secret: str | None = None) -> Onboarding:
    isp = core().isps.get(name)
    if not isp.active:
        raise ConflictError(f"{name} is revoked: it has no subscription to configure")
    return onboarding.gather(core(), name, feed_token=feed_token, tsig_secret=tsig_secret)


def _isp_secrets(title: str, created: dict[str, Any]) -> Any:
    shown = []
    if created.get("feed_token"):
        shown.append(("Feed token (Authorization: Bearer …)", created["feed_token"]))
    if created.get("tsig_secret"):
        shown.append(("TSIG key name", created["tsig_key_name"]))
        shown.append(("TSIG algorithm", created["tsig_algorithm"]))
        shown.append(("TSIG secret (base64)", created["tsig_secret"]))
        shown.append(("BIND key clause",
                      f'key "{created["tsig_key_name"]}" {{ algorithm {created["tsig_algorithm"]}; '
                      f'secret "{created["tsig_secret"]}"; }};'))
    ob = _onboarding(created["name"], feed_token=created.get("feed_token"), tsig_secret=created.get("tsig_secret"))
    return render_template("secret.html", title=title,
                           intro="Send these to the ISP's technical contact over a protected channel.",
                           secrets=shown,
                           note="This is the only time they are shown: the feed token is kept only as a "
                                "hash. Lost ones can be replaced with a rotation.",
                           back=url_for("manage.isp", name=created["name"]),
                           onboarding=ob, bundle=EmptyForm())


@bp.get("/isps/<name>/onboarding")
@page("isp.read")
def isp_onboarding(name: str) -> Any:
    return render_template("onboarding.html", ob=_onboarding(name))


def _bundle_response(ob: Onboarding) -> Any:
    resp = make_response(ob.bundle())
    resp.headers["Content-Type"] = "application/zip"
    suffix = "-with-secrets" if ob.has_secrets else ""
    resp.headers["Content-Disposition"] = f'attachment; filename="{ob.folder}{suffix}.zip"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/isps/<name>/bundle.zip")
@page("isp.read")
def isp_bundle(name: str) -> Any:
    """The onboarding bundle without secrets (placeholders where they go)."""
    ob = _onboarding(name)
    core().isps.record_bundle_download(actor(), name, with_secrets=False)
    return _bundle_response(ob)


@bp.post("/isps/<name>/bundle.zip")
@page("isp.manage")
def isp_bundle_with_secrets(name: str) -> Any:
    """The bundle with the secrets just shown: the page that showed them sends them back.

    Nothing keeps them on the server; they are checked against the ISP's
    current credentials (the token by its hash), so this door cannot make a
    bundle with anything but what was issued.
    """
    form = EmptyForm()
    if not form.validate():
        raise ValidationError(_errors(form))
    token = (request.form.get("feed_token") or "").strip() or None
    tsig = (request.form.get("tsig_secret") or "").strip() or None
    core().isps.check_secrets(name, feed_token=token, tsig_secret=tsig)
    ob = _onboarding(name, feed_token=token, tsig_secret=tsig)
    core().isps.record_bundle_download(actor(), name, with_secrets=True)
    return _bundle_response(ob)


@bp.get("/isps/<name>")
@page("isp.read")
def isp(name: str) -> Any:
    c = core()
    i = c.isps.get(name)
    latest = c.latest_version()
    edit = IspEditForm(data={"notify": "\n".join(i.notify), "allow_from": "\n".join(i.allow_from)})
    lag = lags(c, [i])[i.name].public() if i.active else None
    return render_template("isp.html", isp=i.public(latest), latest=latest, lag=lag, edit=edit, rotate=IspRotateForm(),
                           revoke=ReasonForm(), xot=_xot())


def _xot() -> dict[str, Any] | None:
    """The XoT certificate's pin, name and address, once a transfer server has served it."""
    from app.xot import details

    c = core()
    return details(c.store.isps.xot_cert(), c.settings)


@bp.get("/isps/xot-certificate.pem")
@page("isp.read")
def xot_certificate() -> Any:
    pem = core().store.isps.xot_cert()
    if pem is None:
        return error_page("No transfer server has served zone transfers over TLS yet.", 404)
    return pem, 200, {"Content-Type": "application/x-pem-file",
                      "Content-Disposition": 'attachment; filename="blocklist-xot.pem"'}


@bp.post("/isps/<name>/edit")
@page("isp.manage")
def isp_edit(name: str) -> Any:
    form = IspEditForm()
    if not _check_isp_form(form):
        flash("Not changed: " + _errors(form), "error")
        return redirect(url_for("manage.isp", name=name), 303)
    try:
        core().isps.update(actor(), name, notify=_lines(form.notify.data), allow_from=_lines(form.allow_from.data),
                           reason=form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not changed: {e.message}", "error")
    else:
        flash(f"{name}: notify targets and allowed addresses saved.", "ok")
    return redirect(url_for("manage.isp", name=name), 303)


@bp.post("/isps/<name>/rotate")
@page("isp.manage")
def isp_rotate(name: str) -> Any:
    form = IspRotateForm()
    if not form.validate():
        flash(_errors(form), "error")
        return redirect(url_for("manage.isp", name=name), 303)
    try:
        out = core().isps.rotate(actor(), name, token=bool(form.token.data), tsig=bool(form.tsig.data),
                                 reason=form.reason.data or "")
    except BlocklistError as e:
        flash(f"Not rotated: {e.message}", "error")
        return redirect(url_for("manage.isp", name=name), 303)
    return _isp_secrets(f"New credentials for {name}", out)


@bp.post("/isps/<name>/revoke")
@page("isp.manage")
def isp_revoke(name: str) -> Any:
    form = RequiredReasonForm()
    if not form.validate():
        flash("Give a reason for revoking access.", "error")
        return redirect(url_for("manage.isp", name=name), 303)
    try:
        core().isps.revoke(actor(), name, form.reason.data)
    except BlocklistError as e:
        flash(f"Not revoked: {e.message}", "error")
    else:
        flash(f"{name} is revoked: its feed token and TSIG key are refused from now on.", "ok")
    return redirect(url_for("manage.isp", name=name), 303)


# --------------------------------------------------------------------------- own account


def _qr_svg(uri: str) -> Markup:
    """The provisioning link as an inline SVG QR code, drawn here: no script,
    no inline style, nothing fetched from elsewhere (the CSP allows none)."""
    qr = segno.make(uri, error="m")
    svg = qr.svg_inline(scale=4, border=2, dark="#000", light="#fff", omitsize=False,
                        title="QR code of the authenticator set-up link")
    return Markup(svg)  # noqa: S704 (segno's own markup of a URI we made)


def _account(**extra: Any) -> Any:
    u = current_user()
    assert u is not None
    uri = extra.pop("pending_uri", None)
    secret = parse_qs(urlsplit(uri).query).get("secret", [""])[0] if uri else None
    user = core().users.get(u.name)
    return render_template("account.html", user=user, password=extra.pop("password", None)
                           or PasswordForm(), code=extra.pop("code", None) or CodeForm(), button=EmptyForm(),
                           recovery=extra.pop("recovery", None) or RecoveryCodesForm(prefix="recovery"),
                           agency_name=core().users.agency_names().get(user.agency, user.agency),
                           ask_code=user.totp_enabled and not second_factor_fresh(),
                           pending_uri=uri, pending_secret=secret, qr=_qr_svg(uri) if uri else None, **extra)


@bp.get("/account")
@page(SIGNED_IN)
def account() -> Any:
    return _account()


@bp.post("/account/password")
@page(SIGNED_IN)
def account_password() -> Any:
    form = PasswordForm()
    if not form.validate():
        return _account(password=form, change_error=_errors(form)), 400
    users_ = core().users
    name = actor().name
    user = users_.get(name)
    code = form.code.data or ""
    if user.totp_enabled and not code and not second_factor_fresh():
        return _account(password=form, change_error="enter a code from your authenticator app "
                                                    "(or a recovery code) as well"), 400
    try:
        users_.change_own_password(actor(), form.current.data, form.new.data,
                                   code if code or not user.totp_enabled else None,
                                   second_factor_checked=not code and second_factor_fresh())
    except AuthenticationError as e:
        record_failure(name)
        message = (e.message if isinstance(e, SecondFactorError) else "the current password is not right")
        return _account(password=form, change_error=message), 400
    except BlocklistError as e:
        return _account(password=form, change_error=e.message), e.status
    # Every session of the account ended; this browser starts a fresh one.
    fresh = second_factor_fresh()
    complete_login(users_.get(name), second_factor=fresh, record=False)
    flash("Password changed. Every other session of your account has ended.", "ok")
    return redirect(url_for("manage.account"), 303)


@bp.post("/account/mfa")
@page(SIGNED_IN)
def account_mfa_start() -> Any:
    form = EmptyForm()
    if not form.validate():
        raise ValidationError(_errors(form))
    uri = core().users.start_totp(actor(), actor().name)
    return _account(pending_uri=uri)


def _show_recovery(codes: list[str], intro: str) -> Any:
    return render_template("secret.html", title="Your recovery codes", intro=intro,
                           secrets=[("Recovery codes", " ".join(codes))], codes=codes,
                           note="This is the only time they are shown. Keep them somewhere safe and apart from "
                                "your phone: each one signs you in once if you lose your authenticator.",
                           back=url_for("manage.account"))


@bp.post("/account/mfa/confirm")
@page(SIGNED_IN)
def account_mfa_confirm() -> Any:
    form = CodeForm()
    users_ = core().users
    name = actor().name
    pending = users_.pending_totp_secret(name)
    if not pending:
        flash("Start the set-up first.", "error")
        return redirect(url_for("manage.account"), 303)
    uri = totp_uri(name, pending)
    if not form.validate():
        return _account(code=form, pending_uri=uri, code_error=_errors(form)), 400
    codes = users_.confirm_totp(actor(), name, form.code.data)
    if codes is None:
        return _account(code=form, pending_uri=uri, code_error=(
            "that code does not match; check the clock of your device and try the next code")), 400
    session["mfa_ok_at"] = int(core().clock())
    return _show_recovery(codes, "Second factor on: from now on, signing in asks for a code from your app. "
                                 "If you lose the device, one of these codes stands in for it, once.")


@bp.post("/account/recovery-codes")
@page(SIGNED_IN)
def account_recovery_codes() -> Any:
    form = RecoveryCodesForm(prefix="recovery")
    if not form.validate():
        return _account(recovery=form, recovery_error=_errors(form)), 400
    try:
        codes = core().users.regenerate_recovery_codes(actor(), form.current.data)
    except AuthenticationError:
        record_failure(actor().name)
        return _account(recovery=form, recovery_error="the current password is not right"), 400
    except BlocklistError as e:
        return _account(recovery=form, recovery_error=e.message), e.status
    return _show_recovery(codes, "New recovery codes: the earlier ones no longer work.")


@bp.post("/account/token")
@page(SIGNED_IN)
def account_token() -> Any:
    form = EmptyForm()
    if not form.validate():
        raise ValidationError(_errors(form))
    token = core().users.issue_token(actor(), actor().name)
    return render_template("secret.html", title="Your new API token",
                           intro="Use it as Authorization: Bearer … with the JSON API. "
                                 "Your previous token no longer works.",
                           secrets=[("API token", token)], note="This is the only time it is shown.",
                           back=url_for("manage.account"))
