"""Published artifacts (see :mod:`app.artifacts`): path -> ref JSON in one
index, blobs as lists of compressed chunks under their content address."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from redis.client import NEVER_DECODE

from app.store.base import Part, text
from app.store.keys import K, art_blob_key, art_upload_key
from app.store.txn import Txn


class ArtifactData(Part):
    """``store.artifacts``"""

    def blob_put(self, sha256: str, chunks: Sequence[bytes], ttl: int) -> None:
        """Upload a blob under its content address, expiring unless a commit keeps it.

        Chunks go to a private upload key first and are renamed in place, so
        a writer killed half-way never leaves a partial blob under the address."""
        key = art_blob_key(sha256)
        if self.r.exists(key):
            # Same bytes already stored (an earlier, unfinished attempt): reuse.
            if self.r.ttl(key) >= 0:
                self.r.expire(key, ttl)
            return
        upload = art_upload_key(sha256, secrets.token_hex(8))
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(upload)
        for chunk in chunks:
            pipe.rpush(upload, chunk)
        pipe.expire(upload, ttl)
        pipe.execute()
        pipe = self.r.pipeline(transaction=True)
        pipe.rename(upload, key)
        pipe.expire(key, ttl)
        pipe.execute()

    def blob_get(self, sha256: str) -> list[bytes]:
        return [bytes(c) for c in self.r.execute_command("LRANGE", art_blob_key(sha256), 0, -1,
                                                         **{NEVER_DECODE: True})]

    def index_put(self, txn: Txn, items: Sequence[tuple[str, str, str]]) -> None:
        """Make artifacts visible in a publication's atomic step: (path, sha256, ref JSON)."""
        if not items:
            return
        args: list[str] = []
        for path, sha, ref in items:
            args += [path, ref]
            txn.op("PERSIST", art_blob_key(sha))
        txn.op("HSET", K.art_index, *args)

    def index_get(self, path: str) -> str | None:
        return text(self.r.hget(K.art_index, path))

    def index_many(self, paths: Sequence[str]) -> list[str | None]:
        if not paths:
            return []
        return [text(v) for v in self.r.hmget(K.art_index, list(paths))]

    def remove(self, paths: Sequence[str], shas: Sequence[str]) -> None:
        pipe = self.r.pipeline(transaction=True)
        if paths:
            pipe.hdel(K.art_index, *paths)
        for sha in shas:
            pipe.delete(art_blob_key(sha))
        pipe.execute()

    def stats(self) -> dict[str, Any]:
        refs = [json.loads(v) for v in self.r.hvals(K.art_index)]
        stored = 0
        pipe = self.r.pipeline(transaction=False)
        for ref in refs:
            pipe.memory_usage(art_blob_key(ref["sha256"]))
        for n in pipe.execute():
            stored += int(n or 0)
        return {"artifacts": len(refs), "bytes": sum(int(r["size"]) for r in refs), "stored_bytes": stored}
