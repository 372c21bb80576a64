"""The publication guard: what holds a version for an admin. No I/O.

What must stay true:

* A publication that removes or adds more than the policy allows is held
  until an admin releases it (``guard_reasons``).
* No entry that the rules refuse is ever published, whatever path it took
  into the active set (``safety_problems``): changed entries are checked
  again in full, and the whole list against the allowlist and its parents.
"""

from __future__ import annotations

from app.curation import Policy
from app.domain import EntryType, SafetyRules, parents
from app.errors import BlocklistError
from app.listbuild import Diff, ListState, line_key


def guard_reasons(diff: Diff, previous_count: int, policy: Policy) -> list[str]:
    reasons: list[str] = []
    if previous_count == 0:
        if diff.added > policy.guard_add_max:
            reasons.append(f"adds {diff.added} entries, more than {policy.guard_add_max}")
        return reasons
    significant = diff.added + diff.removed >= policy.guard_min_changes
    removed_pct = 100.0 * diff.removed / previous_count
    added_pct = 100.0 * diff.added / previous_count
    if significant and removed_pct > policy.guard_remove_pct:
        reasons.append(
            f"removes {diff.removed} of {previous_count} entries ({removed_pct:.1f} %, "
            f"more than {policy.guard_remove_pct:g} %)"
        )
    if significant and added_pct > policy.guard_add_pct:
        reasons.append(
            f"adds {diff.added} entries to {previous_count} ({added_pct:.1f} %, more than {policy.guard_add_pct:g} %)"
        )
    if diff.added > policy.guard_add_max:
        reasons.append(f"adds {diff.added} entries, more than {policy.guard_add_max}")
    return reasons


def safety_problems(diff: Diff, lines: list[bytes], rules: SafetyRules) -> list[str]:
    """Defence in depth: no entry that the rules refuse may be published,
    whatever path it took into the active set."""
    problems: list[str] = []
    # Every entry was checked when it was submitted and approved; here the
    # changed ones are checked again in full (cheap: few), and the whole
    # list against the allowlist below (cheap: the allowlist is small).
    for c in diff.changes:
        if c.new is None:
            continue
        kind, value = c.key[0], c.key[2:]
        try:
            rules.check(EntryType.DOMAIN if kind == "d" else EntryType.URL, value)
        except BlocklistError as e:
            problems.append(e.message)
    # Parents of allowlisted names and the names themselves, against the whole list.
    keyed = ListState(0, lines, [], None)
    for item in rules.allow.values():
        for name in [item.domain, *parents(item.domain)]:
            pos = keyed.find("d:" + name)
            if pos < len(lines) and line_key(lines[pos]) == "d:" + name:
                problems.append(f"{name} is listed but conflicts with allowlisted {item.domain}")
    return problems[:20]
