"""Plain HTML error pages for browsers (the API answers JSON instead)."""

from __future__ import annotations

from typing import Any

from flask import render_template_string

_ERROR = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ status }} · Blocklist</title>
<link rel="stylesheet" href="{{ url_for('static', filename='app.css') }}"></head>
<body><main class="narrow"><h1>{{ title }}</h1><p>{{ message }}</p>
<p><a href="/">Back to the start page</a></p></main></body></html>"""

_TITLES = {400: "That did not work", 401: "Please sign in", 403: "Not allowed", 404: "Not found",
           409: "That does not fit the current state", 422: "Refused", 429: "Too many requests",
           503: "Temporarily unavailable"}


def error_page(message: str, status: int) -> Any:
    title = _TITLES.get(status, "Something went wrong")
    return render_template_string(_ERROR, status=status, title=title, message=message), status
