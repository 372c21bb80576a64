"""What every part of the store shares: the Redis client and the scripts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.errors import StoreError

# Entry records of one bucket whose value contains ARGV[1] (plain substring).
SEARCH_LUA = r"""
local out = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local value = string.match(v, '"v":"([^"]*)"')
  if value and string.find(value, ARGV[1], 1, true) then out[#out + 1] = v end
end
return out
"""

# Raise a number, never lower it.
RAISE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) return tonumber(ARGV[1]) end
return cur
"""

# Delete a key only if it still holds ARGV[1] (a lock we hold, a claim we made).
UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extend a lock only if we still hold it.
EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Scripts:
    """The Lua scripts of the store, registered once per client, and how a
    committed write is confirmed."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.search = client.register_script(SEARCH_LUA)
        self.raise_ = client.register_script(RAISE_LUA)
        self.unlock = client.register_script(UNLOCK_LUA)
        self.extend = client.register_script(EXTEND_LUA)
        #: Replicas that must confirm a committed step (WAIT) before it counts
        #: as done, and how long to wait (seconds); Core sets them from Settings.
        self.wait_replicas = 0
        self.wait_timeout = 1.0

    def confirmed(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script``; with ``wait_replicas``, WAIT for that many replicas on
        the same connection, else raise: with asynchronous replication a write
        no replica has is lost if the primary is replaced now."""
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        pipe = self.client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.wait_replicas, max(1, int(self.wait_timeout * 1000)))
        result, confirmed = pipe.execute(raise_on_error=False)
        for reply in (result, confirmed):
            if isinstance(reply, Exception):
                raise reply
        if int(confirmed) < self.wait_replicas:
            raise StoreError(f"Redis took the write but {confirmed} of {self.wait_replicas} replicas confirmed it "
                             f"within {self.wait_timeout:g} s (BLOCKLIST_REDIS_WAIT_REPLICAS): it may be lost in a "
                             "failover; check and try again")
        return result


def text(value: object) -> str | None:
    """A string reply, or None for a missing key or field."""
    return None if value is None else str(value)


class Part:
    """One kind of data: typed methods over the shared client.

    redis-py annotates every command for its sync and async clients at once,
    so results are unions no caller can use; the parts are the typed
    boundary instead: each method states what it returns.
    """

    def __init__(self, r: Any, scripts: Scripts) -> None:
        self.r: Any = r
        self.scripts = scripts
