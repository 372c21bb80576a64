"""Every Redis key name of the service, and the functions that fill them in.

No other module spells or formats a key: the data classes of
:mod:`app.store` take their keys from here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from app.errors import ValidationError

PREFIX = "bl:"
BUCKET_SIZE = 1024
#: Fixed forever: changing it would orphan the index.
INDEX_BUCKETS = 8192


class K:
    """Key templates. Keep every key name here.

    A template filled with a name that people choose (a user, an ISP) has a
    family prefix that no other key shares, and the name itself is checked by
    :func:`key_part` (no ``:``), so no chosen name can ever spell a key of
    another kind (``user:{name}`` once met ``user:sessions:{name}``, and
    ``isp:{name}`` met ``isp:tokens``).
    """

    entry_seq = PREFIX + "seq:entry"
    entries = PREFIX + "entries:{bucket}"
    value_index = PREFIX + "ix:value:{bucket}"
    status_index = PREFIX + "ix:status:{status}"
    # URL entries by host (a set of ids per host), so a search for a host
    # finds the URLs on it without reading every record; "ready" once the
    # entries made before this index existed were added to it.
    url_host = PREFIX + "ix:urlhost:{host}"
    url_host_ready = PREFIX + "ix:urlhost-ready"
    # The published form of every active entry, kept in the list's order as
    # entries are written (app.listbuild.feed_members): its feed line, and for
    # a domain its zone lines, in the list digest's chunks, so that a full
    # publication reads the sorted list and its digest instead of decoding,
    # formatting, sorting and hashing every record (app.store.published).
    # "ready" once it covers every entry: a store made before it existed is
    # filled once, by the publisher.
    feed_index = PREFIX + "ix:feed:index"
    feed_chunks = PREFIX + "ix:feed:chunks"
    feed_zchunks = PREFIX + "ix:feed:zchunks"
    feed_count = PREFIX + "ix:feed:count"
    feed_ready = PREFIX + "ix:feed:ready"
    #: The published form as an older release kept it (a sorted set of lines
    #: and one of zone lines): dropped when a process opens the store.
    legacy_feed = (PREFIX + "ix:feed:lines", PREFIX + "ix:feed:zone", PREFIX + "ix:feed-ready")
    dirty = PREFIX + "dirty"
    allowlist = PREFIX + "allowlist"
    users = PREFIX + "users"
    user = PREFIX + "user:{name}"
    tokens = PREFIX + "tokens"
    audit = PREFIX + "audit"
    audit_head = PREFIX + "audit:head"
    settings = PREFIX + "settings"
    once = PREFIX + "once"
    isps = PREFIX + "isps"
    isp = PREFIX + "isp:{name}"
    isp_tokens = PREFIX + "isp-tokens"
    #: Where the ISP token index lived before it had its own family.
    legacy_isp_tokens = PREFIX + "isp:tokens"
    pulls = PREFIX + "pulls"
    xot_cert = PREFIX + "xot:cert"
    pub_latest = PREFIX + "pub:latest"
    pub_versions = PREFIX + "pub:versions"
    pub_version = PREFIX + "pub:v:{version}"
    # ZONEMD digest of a served zone version (a cache: any transfer server
    # can recompute it, so the first to compute it shares it with the rest).
    zone_digest = PREFIX + "zone:zonemd:{zone}:{serial}"
    pub_manifest = PREFIX + "pub:manifest"
    pub_held = PREFIX + "pub:held"
    pub_lock = PREFIX + "pub:lock"
    # "Publish now" requests: a queue of request ids, each request's payload,
    # and its answer (pending, taken, then the outcome).
    pub_queue = PREFIX + "pub:queue"
    pub_request = PREFIX + "pub:request:{id}"
    pub_result = PREFIX + "pub:result:{id}"
    # The programme's signing keys (current, announced next, retired): JSON.
    programme_keys = PREFIX + "keys"
    signer = PREFIX + "health:signer"
    pub_channel = PREFIX + "pub:events"
    pub_highwater = PREFIX + "pub:highwater"
    # Versions that have a full snapshot and zone file (compacted).
    pub_full = PREFIX + "pub:full"
    # Artifacts: path -> ArtifactRef JSON; blobs are lists of compressed chunks.
    art_index = PREFIX + "art:index"
    art_blob = PREFIX + "art:blob:{sha256}"
    art_upload = PREFIX + "art:upload:{sha256}:{token}"
    # Change signal: curation publishes here when the change feed grows.
    dirty_channel = PREFIX + "dirty:events"
    # Workers report here (host, key held or not) for /readyz.
    workers = PREFIX + "health:workers"
    appeal_seq = PREFIX + "seq:appeal"
    appeals = PREFIX + "appeals"
    appeal = PREFIX + "appeal:{id}"
    appeal_status = PREFIX + "ix:appeal:{status}"
    # Appeals: idempotency claims (same content, same form) -> appeal id.
    appeal_claim = PREFIX + "appeal-claim:{digest}"
    rate = PREFIX + "rate:{scope}:{who}"
    rate_set = PREFIX + "rate-set:{scope}:{who}"
    login_failures = PREFIX + "login:failures:{name}"
    session = PREFIX + "session:{sid}"
    user_sessions = PREFIX + "sessions-of:{name}"
    agencies = PREFIX + "agencies"


_KEY_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Sessions are stored under the SHA-256 (hex) of the id the browser holds.
_SESSION_ID = re.compile(r"[0-9a-f]{64}")


def key_part(value: object, what: str) -> str:
    """``value`` as the variable part of a key, or a :class:`ValidationError`.

    The last line of defence: callers validate names with their own rules
    first; this makes sure nothing else (a ``:``, upper case, a space) ever
    reaches a key name.
    """
    if not isinstance(value, str) or not _KEY_PART.fullmatch(value):
        raise ValidationError(f"{what} {str(value)[:80]!r} is not a valid name")
    return value


def is_session_id(sid: str | None) -> bool:
    """Whether ``sid`` has the form sessions are stored under (a SHA-256 digest)."""
    return bool(_SESSION_ID.fullmatch(sid or ""))


# ---------------------------------------------------------------------- entries


def entry_key(entry_id: int) -> str:
    return K.entries.format(bucket=entry_id // BUCKET_SIZE)


def bucket_key(bucket: int) -> str:
    return K.entries.format(bucket=bucket)


def _digest(index_key: str) -> bytes:
    return hashlib.blake2b(index_key.encode(), digest_size=9).digest()


def value_key(index_key: str) -> str:
    return K.value_index.format(bucket=int.from_bytes(_digest(index_key)[:4], "big") % INDEX_BUCKETS)


def value_field(index_key: str) -> str:
    return base64.urlsafe_b64encode(_digest(index_key)).decode()


def url_host_of(index_key: str) -> str | None:
    """The host of a URL entry's index key (``u:scheme://host[:port]/...``)."""
    if not index_key.startswith("u:"):
        return None
    rest = index_key[2:].partition("://")[2]
    return rest.partition("/")[0].partition(":")[0] or None


def url_host_key(host: str) -> str:
    return K.url_host.format(host=host)


def record_key(raw: str) -> str:
    """The index key of a stored entry record, without parsing all of it."""
    d = json.loads(raw)
    return ("d:" if d["t"] == "d" else "u:") + str(d["v"])


def status_key(status: str) -> str:
    return K.status_index.format(status=status)


# ---------------------------------------------------------------------- people and sessions


def user_key(name: str) -> str:
    return K.user.format(name=key_part(name, "user name"))


def login_failures_key(name: str) -> str:
    return K.login_failures.format(name=key_part(name, "user name"))


def user_sessions_key(name: str) -> str:
    return K.user_sessions.format(name=key_part(name, "user name"))


def session_key(sid: str) -> str:
    """The key of a session stored under ``sid`` (see :func:`is_session_id`)."""
    return K.session.format(sid=sid)


def rate_key(scope: str, who: str, slot: int) -> str:
    return K.rate.format(scope=key_part(scope, "rate scope"), who=f"{key_part(who, 'rate subject')}:{slot}")


def rate_set_key(scope: str, who: str, slot: int) -> str:
    return K.rate_set.format(scope=key_part(scope, "rate scope"), who=f"{key_part(who, 'rate subject')}:{slot}")


# ---------------------------------------------------------------------- ISPs and publications


def isp_key(name: str) -> str:
    return K.isp.format(name=key_part(name, "ISP name"))


def pub_version_key(version: int) -> str:
    return K.pub_version.format(version=version)


def pub_request_key(request_id: str) -> str:
    return K.pub_request.format(id=request_id)


def pub_result_key(request_id: str) -> str:
    return K.pub_result.format(id=request_id)


def zone_digest_key(zone: str, serial: int) -> str:
    return K.zone_digest.format(zone=zone, serial=serial)


def art_blob_key(sha256: str) -> str:
    return K.art_blob.format(sha256=sha256)


def art_upload_key(sha256: str, token: str) -> str:
    return K.art_upload.format(sha256=sha256, token=token)


# ---------------------------------------------------------------------- appeals


def appeal_key(appeal_id: int) -> str:
    return K.appeal.format(id=int(appeal_id))


def appeal_status_key(status: str) -> str:
    return K.appeal_status.format(status=status)


def appeal_claim_key(digest: str) -> str:
    return K.appeal_claim.format(digest=digest)
