"""Helpers shared by the web blueprints: the admin pages, the JSON API, the
ISP feed and the public stop page.

Page modules import from here and never from each other, so no blueprint
imports another in a circle.

What must stay true:

* There is one parser for each kind of input read in several places: a
  bearer token (:func:`bearer_token`), a yes/no (:func:`app.domain.parse_bool`,
  re-exported here as :func:`yes_no`) and a whole number from a query string
  (:func:`int_arg`). Each refuses what it cannot read with one sentence
  rather than guessing; the text "false" is false everywhere.
* Template filters show values the way people read them: times in UTC,
  counts with thousands separators, names in Unicode.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import current_app, request, url_for
from markupsafe import Markup, escape

from app.core import Core
from app.domain import Entry, iso, parse_bool
from app.errors import AuthenticationError, ValidationError
from app.web import core_of
from app.web.auth import actor


def core() -> Core:
    return core_of(current_app)


# --------------------------------------------------------------------------- input


def bearer_token(what: str, example: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or a 401
    that says which token is wanted (``what``, e.g. "API token")."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(f"a valid {what} is required (Authorization: Bearer {example})")
    return token.strip()


def yes_no(value: Any, what: str, default: bool | None = None) -> bool | None:
    """A yes/no from a form, query string or JSON body; ``default`` when it is
    absent or empty. "false", "no", "0" and "off" are false."""
    if value is None or value == "":
        return default
    return parse_bool(value, what)


def int_arg(name: str, default: int, hi: int = 10**9) -> int:
    """A whole number from the query string, between 0 and ``hi``."""
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise ValidationError(f"{name} must be a whole number")
    n = int(raw)
    if n > hi:
        raise ValidationError(f"{name} must be between 0 and {hi}")
    return n


def form_errors(form: Any) -> str:
    """A form's field errors as one line."""
    return "; ".join(m for ms in form.errors.values() for m in ms)


# --------------------------------------------------------------------------- template filters


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


def plural(n: Any, one: str, many: str | None = None) -> str:
    """``3 entries``, ``1 entry``: a count as a person says it."""
    count = int(n or 0)
    word = one if count == 1 else (many or one + "s")
    return f"{count:,} {word}"


def compact_json(value: Any, limit: int = 400) -> str:
    """An audit record's before/after on one line; bulk records (imports of
    thousands of entries) are cut, the full record stays in the log."""
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty_json(value: Any, limit: int = 20_000) -> str:
    """An audit record's before/after, indented, for its unfolded view."""
    if value is None:
        return "—"
    text = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def entry_label(entry: Entry) -> str:
    """An entry's value for messages: Unicode, with the A-label form beside it."""
    return entry.label()


_ENTRY_NUMBER = re.compile(r"\b([Ee]ntry|entries) (\d{1,12})\b")


def link_entries(message: str) -> Markup:
    """A message with every "entry 12" made a link to that entry's page; the
    rest of the text is escaped as usual."""
    out = []
    pos = 0
    text = str(message)
    for m in _ENTRY_NUMBER.finditer(text):
        out.append(escape(text[pos:m.start(2)]))
        href = url_for("entries.show", entry_id=int(m.group(2)))
        out.append(Markup('<a href="{}">{}</a>').format(href, m.group(2)))
        pos = m.end(2)
    out.append(escape(text[pos:]))
    return Markup("").join(out)


# --------------------------------------------------------------------------- rules shown on pages


def four_eyes_problem(entry: Entry) -> str | None:
    """Why the signed-in vetter may not approve ``entry``, in the rule's own words."""
    c = core()
    return c.curation.four_eyes_problem(entry, actor(), c.curation.policy().require_other_agency)
