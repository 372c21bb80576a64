"""Error pages for browsers (the API and the feed answer JSON instead).

Every refusal a person meets in a browser is a page in the admin's own
layout with one sentence saying what happened and what to do, and the
fitting HTTP status; nothing from the stack or the request is echoed.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

_TITLES = {400: "That did not work", 401: "Please sign in", 403: "Not allowed", 404: "Not found",
           405: "Not allowed here", 409: "That does not fit the current state", 413: "Too large",
           422: "Refused", 429: "Too many requests", 451: "Blocked", 500: "Something went wrong",
           503: "Temporarily unavailable"}

_MESSAGES = {
    400: "The request could not be understood.",
    401: "Sign in to see this page.",
    403: "Your role does not allow this.",
    404: "There is nothing at this address.",
    405: "This address does not accept that kind of request.",
    413: "What you sent is too large.",
    429: "Too many requests; wait a little and try again.",
    500: "Something went wrong on our side; it has been logged.",
}


def error_page(message: str, status: int) -> Any:
    title = _TITLES.get(status, "Something went wrong")
    return render_template("error.html", status=status, title=title, message=message), status


def _json_wanted() -> bool:
    from app.web import _wants_json

    return _wants_json()


def _http_error(e: HTTPException) -> Any:
    code = e.code or 500
    if _json_wanted():
        from app.web import _http_message

        return jsonify(error=_http_message(e)), code
    return error_page(_MESSAGES.get(code, "The request failed."), code)


def _csrf_error(e: CSRFError) -> Any:
    if _json_wanted():
        return jsonify(error="the form's security token is missing or invalid; reload the page"), 400
    return error_page(
        "The form's security token is missing, expired or from another page. "
        "Go back, reload the page and send the form again.", 400)


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, _csrf_error)
    for code in (400, 401, 403, 404, 405, 413, 429):
        app.register_error_handler(code, _http_error)
