#!/usr/bin/env python3
"""The curation rules, shown through the HTTP API only, against a running service.

    TOKEN=$(.venv/bin/blocklist user token admin)
    python3 scripts/api_walkthrough.py --url http://127.0.0.1:8000 --admin-token "$TOKEN"

It puts agencies A and B on the list, adds three accounts (a curator and a vetter of agency A, a vetter of
agency B), then: the curator submits ``Example.TEST.`` (stored as
``example.test``, pending); the curator's own approval is refused; the vetter
of the same agency is refused; the vetter of the other agency approves
(active). ``com``, ``co.uk``, ``192.0.2.1``, ``http://[2001:db8::1]/`` and an
allowlisted name are refused with reasons. Finally the audit chain is
verified. Each step prints PASS or FAIL; the exit status is the number of
failures. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import urllib.error
import urllib.request
from typing import Any


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/") + "/api/v1"
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 (--url is the operator's own service)
            self.base + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (the operator's own service)
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--admin-token", required=True, help="an admin's API token (blocklist user token admin)")
    args = ap.parse_args()
    admin = Api(args.url, args.admin_token)
    failures = 0

    def check(ok: bool, what: str, detail: Any = "") -> None:
        nonlocal failures
        print(f"{'PASS' if ok else 'FAIL'}  {what}" + (f"  ({detail})" if detail else ""))
        failures += 0 if ok else 1

    suffix = secrets.token_hex(3)
    for agency in ("Agency A", "Agency B"):
        status, body = admin.call("POST", "/agencies", {"name": agency})
        check(status in (201, 409), f"{agency} is on the list of agencies", body if status not in (201, 409) else "")
    people = {}
    for role, agency in (("curator", "Agency A"), ("vetter", "Agency A"), ("vetter", "Agency B")):
        name = f"{role[:3]}-{agency[-1].lower()}-{suffix}"
        status, body = admin.call("POST", "/users", {"name": name, "role": role, "agency": agency})
        check(status == 201, f"admin adds {name} ({role}, {agency})", body if status != 201 else "")
        status, body = admin.call("POST", f"/users/{name}/token")
        people[(role, agency)] = Api(args.url, body["token"])
    curator_a = people[("curator", "Agency A")]
    vetter_a = people[("vetter", "Agency A")]
    vetter_b = people[("vetter", "Agency B")]

    value = f"Example-{suffix}.TEST."
    status, entry = curator_a.call("POST", "/entries", {"value": value, "type": "domain", "subdomains": True,
                                                         "reason": "walkthrough", "evidence_ref": "demo-1"})
    check(status == 201 and entry["value"] == value.lower().rstrip(".") and entry["status"] == "pending",
          f"curator A submits {value!r}: stored as {entry.get('value')!r}, {entry.get('status')}")
    eid = entry["id"]
    status, body = curator_a.call("POST", f"/entries/{eid}/approve", {})
    check(status == 403, "the submitter's own approval is refused", f"{status}: {body.get('error')}")
    status, body = vetter_a.call("POST", f"/entries/{eid}/approve", {})
    check(status == 403, "a vetter of the same agency is refused", f"{status}: {body.get('error')}")
    status, body = vetter_b.call("POST", f"/entries/{eid}/approve", {})
    check(status == 200 and body["status"] == "active", "a vetter of agency B approves: active",
          f"{status}: {body.get('status') or body.get('error')}")

    allow = f"safe-{suffix}.example.org"
    status, _ = admin.call("POST", "/allowlist", {"domain": allow, "reason": "walkthrough"})
    check(status == 201, f"admin allowlists {allow}")
    for refused, etype in (("com", "domain"), ("co.uk", "domain"), ("192.0.2.1", "domain"),
                           ("http://[2001:db8::1]/", "url"), (allow, "domain")):
        status, body = curator_a.call("POST", "/entries", {"value": refused, "type": etype})
        check(400 <= status < 500, f"{refused} is refused", f"{status}: {body.get('error')}")

    status, body = admin.call("GET", "/audit/verify")
    check(status == 200 and body["ok"], "the audit chain verifies", f"{body.get('checked')} records")
    admin.call("DELETE", f"/allowlist/{allow}?reason=walkthrough+done")
    print(f"{failures} failure(s)")
    return failures


if __name__ == "__main__":
    sys.exit(main())
