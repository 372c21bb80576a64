"""The public stop page and its appeal form (no sign-in).

People whose resolver blocked a name land here. The page says that the
address was blocked, why, by whom, under which law, how to appeal and where
to find help. It is plain HTML and CSS from this server: no script, no
cookie, nothing from elsewhere, nothing that tracks the visitor.

Which name was blocked: when ``BLOCKLIST_STOP_HOST`` is set, every request
whose Host is not the admin's own host (the host of ``BLOCKLIST_PUBLIC_URL``)
is about a name. The name is the Host itself, or, in the walled-garden
convention where the resolver answers ``name.<stop host>``, the part before
the stop host.

What must stay true:

* The page accuses a site only when an active entry covers the name (the
  name itself, or a parent listed with its subdomains), or, for a host with
  URL entries only, when the request's own path and query are an active URL
  entry (then it names that URL). Any other name (a Host anyone can send,
  a name delisted since the ISP last pulled) gets a neutral page, status 404,
  that does not repeat the name and says nothing about any list.
* The stop host itself (no name) shows the programme's general page.
* Naming listed sites makes the page an oracle for the confidential list,
  so one client address gets at most ``BLOCKLIST_STOP_NAMES_PER_HOUR``
  different names checked an hour; beyond that it gets the neutral page
  (429) without any check.

The appeal form resists abuse without a CAPTCHA: a signed, time-stamped
form token that must be at least :data:`MIN_FORM_SECONDS` old and at most a
day (robots post at once), a field hidden from people that robots fill in,
size limits, and the duplicate suppression of :class:`app.appeals.Appeals`.
Rate limits: every attempt counts against its address first; only a valid,
new appeal counts against the limit for everyone, so nobody can shut the
form for others by sending junk or replaying a form. The answer to an
appeal is the same whether or not the name is listed.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Blueprint, Flask, Response, current_app, render_template, request
from flask.globals import request_ctx
from itsdangerous import BadSignature, Signer

from app.core import Core
from app.domain import EntryType, Status, display_domain, normalize_domain, normalize_url, parents
from app.errors import BlocklistError
from app.web import core_of
from app.web.auth import address_key, client_address
from app.web.forms import AppealForm

log = logging.getLogger("blocklist.web.public")

bp = Blueprint("public", __name__)

#: A form sent sooner than this after it was shown was not filled in by a person.
MIN_FORM_SECONDS = 3
#: A form older than this must be reloaded.
MAX_FORM_SECONDS = 86400
#: Appeals per client address per hour, and from everyone per hour.
RATE_PER_ADDRESS = (10, 3600)
RATE_OVERALL = (500, 3600)
#: Largest appeal request body.
MAX_BODY = 32 * 1024
#: Endpoints served on any host when the stop host is set.
_ANY_HOST = frozenset({"static", "public.stop", "public.appeal", "health.livez", "health.readyz",
                       "metrics.metrics_view"})


class FormTokenError(BlocklistError):
    """The appeal form's token is missing, forged or too old: a new form is needed."""

    status = 400


class TooFastError(FormTokenError):
    """A genuine token, sent too soon: the same form may be sent again in a moment."""


def _core() -> Core:
    return core_of(current_app)


def _host() -> str:
    host = request.host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def _admin_host() -> str:
    from urllib.parse import urlsplit

    return (urlsplit(_core().settings.public_url).hostname or "").lower()


def stop_mode() -> bool:
    """True when this request came for a blocked name rather than for the admin."""
    stop_host = _core().settings.stop_host
    return bool(stop_host) and _host() != _admin_host()


def requested_name() -> str | None:
    """The name this request is about (not yet checked against the list), or None
    for the stop host itself and the admin's host."""
    stop_host = (_core().settings.stop_host or "").lower().rstrip(".")
    if not stop_host or not stop_mode():
        return None
    host = _host().rstrip(".")
    if host == stop_host:
        return None
    if host.endswith("." + stop_host):
        host = host[: -len(stop_host) - 1]
    return host


def _active(etype: str, value: str) -> bool:
    e = _core().curation.find(etype, value)
    return e is not None and e.status is Status.ACTIVE


def listed_as(host: str) -> str | None:
    """What to name for ``host``: the domain, when an active domain entry covers
    it; the URL asked for, when it is an active URL entry; otherwise None."""
    try:
        name = normalize_domain(host)
    except BlocklistError:
        return None
    if _active(EntryType.DOMAIN, name):
        return display_domain(name)
    for parent in parents(name):
        e = _core().curation.find(EntryType.DOMAIN, parent)
        if e is not None and e.subdomains and e.status is Status.ACTIVE:
            return display_domain(name)
    if request.endpoint in ("public.stop", "public.appeal"):
        return None  # our own paths, not the one the visitor asked for
    path = request.full_path.rstrip("?") if request.query_string else request.path
    for scheme in ("http", "https"):
        try:
            url = normalize_url(f"{scheme}://{name}{path}")
        except BlocklistError:
            return None
        if _active(EntryType.URL, url.url):
            return url.url
    return None


def blocked_name() -> str | None:
    """The listed name (or URL) this request is about, for display, or None."""
    host = requested_name()
    return listed_as(host) if host else None


# --------------------------------------------------------------------------- form token


def _signer() -> Signer:
    return Signer(current_app.config["SECRET_KEY"], salt="blocklist.appeal-form")


def make_form_token() -> str:
    stamp = int(_core().clock())
    return _signer().sign(f"{stamp}.{secrets.token_urlsafe(12)}").decode()


def check_form_token(token: str) -> str:
    """The token's nonce, if the token is genuine and of a fitting age."""
    try:
        value = _signer().unsign(token or "").decode()
        stamp_text, nonce = value.split(".", 1)
        stamp = int(stamp_text)
    except (BadSignature, ValueError, UnicodeDecodeError):
        raise FormTokenError("the form is incomplete or was altered; reload the page and fill it in again") from None
    age = _core().clock() - stamp
    if age < MIN_FORM_SECONDS:
        raise TooFastError("that was very fast: take a moment to check what you wrote, then send it again")
    if age > MAX_FORM_SECONDS:
        raise FormTokenError("the form is more than a day old; reload the page and send it again")
    return nonce


# --------------------------------------------------------------------------- views


def _too_many_names(host: str) -> bool:
    """This address has had more different names checked this hour than anyone
    sent by a resolver would: it is testing the list name by name."""
    c = _core()
    seen = c.store.rates.distinct_hit("stop-names", address_key(client_address()), host, 3600)
    return seen > c.settings.stop_names_per_hour


def _page(form: AppealForm, status: int, error: str | None = None, token: str | None = None) -> Any:
    host = requested_name()
    if host and _too_many_names(host):
        log.warning("stop page: too many different names from one address; not checking")
        return render_template("stop_neutral.html", s=_core().settings), 429
    name = listed_as(host) if host else None
    if host and name is None:
        # A name nobody listed (or no longer listed): say nothing about it.
        return render_template("stop_neutral.html", s=_core().settings), 404
    if not form.domain.data and name:
        form.domain.data = name
    form.form_token.data = token or make_form_token()
    form.website.data = ""
    return render_template("stop.html", form=form, blocked=name, error=error, s=_core().settings), status


@bp.get("/stop")
def stop() -> Any:
    return _page(AppealForm(formdata=None), 451 if stop_mode() else 200)


@bp.post("/stop/appeal")
def appeal() -> Any:
    form = AppealForm()
    if form.website.data:
        # Only robots see this field; tell them nothing useful.
        log.info("appeal form honeypot filled; nothing stored")
        return render_template("appeal_received.html", reference=None, repeat=False, s=_core().settings)
    try:
        nonce = check_form_token(form.form_token.data or "")
    except FormTokenError as e:
        keep = isinstance(e, TooFastError)
        return _page(form, e.status, e.message, token=form.form_token.data if keep else None)
    store = _core().store
    limit, window = RATE_PER_ADDRESS
    overall, overall_window = RATE_OVERALL
    if store.rates.hit("appeal", address_key(client_address()), window) > limit:
        return _page(form, 429, "Too many appeals were sent from here in the last hour; try again later.",
                     token=form.form_token.data)
    if not form.validate():
        message = "; ".join(m for ms in form.errors.values() for m in ms)
        return _page(form, 400, message, token=form.form_token.data)
    # Only valid, new appeals count for everyone: checked before filing,
    # counted after, so junk and replayed forms never use up the limit.
    if store.rates.peek("appeal-all", "everyone", overall_window) >= overall:
        log.warning("appeal refused: the limit for everyone (%d an hour) is reached", overall)
        return _page(form, 429, "Too many appeals reached us in the last hour; please try again later.",
                     token=form.form_token.data)
    try:
        filed, new = _core().appeals.file(form.domain.data, form.contact.data, form.statement.data, once=nonce)
    except BlocklistError as e:
        return _page(form, e.status, e.message, token=form.form_token.data)
    if new:
        store.rates.hit("appeal-all", "everyone", overall_window)
        log.info("appeal %s filed", filed.reference)
    return render_template("appeal_received.html", reference=filed.reference, repeat=not new, s=_core().settings)


# --------------------------------------------------------------------------- wiring


def _limit_body() -> None:
    if request.endpoint == "public.appeal":
        request.max_content_length = MAX_BODY
        request.max_form_memory_size = MAX_BODY


def _walled_garden() -> Any:
    """Requests for blocked names get the stop page, whatever their path."""
    if request_ctx.url_adapter is None:
        # Werkzeug could not route a Host it finds malformed ("a..b"): no page
        # (not even an error page) can be built for it, so answer in plain text.
        return Response("The Host header is not a valid host name.\n", 400, mimetype="text/plain",
                        headers={"Cache-Control": "no-store"})
    if not stop_mode() or request.endpoint in _ANY_HOST:
        return None
    return _page(AppealForm(formdata=None), 451)


def _public_headers(resp: Any) -> Any:
    if request.blueprint == "public" or stop_mode():
        # The page depends on the Host and must never be cached, shared or
        # followed by a referrer; it sets no cookie.
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    csrf = app.extensions.get("csrf")
    if csrf is not None:
        # The appeal form has no session; its own signed token replaces the CSRF token.
        csrf.exempt(bp)
    funcs = app.before_request_funcs.setdefault(None, [])
    # Before anything else (sign-in, CSRF): a blocked name never reaches the admin.
    funcs.insert(0, _walled_garden)
    funcs.insert(0, _limit_body)
    app.after_request(_public_headers)
