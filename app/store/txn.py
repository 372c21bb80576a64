"""One atomic step: checks and writes collected in a :class:`Txn`, run by a
single Lua script that verifies every check (compare and set) before it
writes anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.store.keys import K

# The compare-and-set script behind Txn. Checks: [kind, key#, (field,) expected]
# where expected null means "must not exist". Ops: [command, key#, args...];

TXN_LUA = r"""
local spec = cjson.decode(ARGV[1])
for i, c in ipairs(spec[1]) do
  local kind = c[1]
  local key = KEYS[c[2]]
  local actual, expected
  if kind == 'hget' then
    actual = redis.call('HGET', key, c[3]); expected = c[4]
  elseif kind == 'get' then
    actual = redis.call('GET', key); expected = c[3]
  elseif kind == 'hsha' then
    actual = redis.call('HGET', key, c[3]); expected = c[4]
    if actual then actual = redis.sha1hex(actual) end
  else
    return redis.error_reply('BADCHECK ' .. tostring(kind))
  end
  if expected == cjson.null then
    if actual then return redis.error_reply('CONFLICT ' .. i) end
  elseif actual ~= expected then
    return redis.error_reply('CONFLICT ' .. i)
  end
end
for _, o in ipairs(spec[2]) do
  local args = {}
  for j = 3, #o do args[#args + 1] = o[j] end
  redis.call(o[1], KEYS[o[2]], unpack(args))
end
return 'OK'
"""

# Variadic commands that may be split into several calls, and their argument group size.
_SPLITTABLE = {"HSET": 2, "ZADD": 2, "SADD": 1, "RPUSH": 1, "ZREM": 1, "HDEL": 1, "SREM": 1}
_MAX_ARGS = 4000


@dataclass
class Txn:
    """Checks and writes to apply as one atomic step."""

    keys: list[str] = field(default_factory=list)
    checks: list[list[Any]] = field(default_factory=list)
    ops: list[list[Any]] = field(default_factory=list)
    dirty: bool = False
    #: Lines of the published form this step changes (sort key -> (feed line,
    #: zone lines), None to remove): turned into chunk writes when it commits
    #: (:meth:`app.store.published.PublishedForm.stage`).
    feed: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict)

    def k(self, key: str) -> int:
        i = self._index.get(key)
        if i is None:
            self.keys.append(key)
            i = self._index[key] = len(self.keys)
        return i

    def expect_hget(self, key: str, fld: str, value: str | None) -> None:
        self.checks.append(["hget", self.k(key), fld, value])

    def expect_hsha(self, key: str, fld: str, sha1: str | None) -> None:
        """The field's value has this SHA-1 (hex), or (None) the field does not exist."""
        self.checks.append(["hsha", self.k(key), fld, sha1])

    def expect_get(self, key: str, value: str | None) -> None:
        self.checks.append(["get", self.k(key), value])

    def op(self, command: str, key: str, *args: object) -> None:
        values = [str(a) for a in args]
        step = _SPLITTABLE.get(command.upper())
        if step and len(values) > _MAX_ARGS:
            # Lua's unpack() takes at most ~8000 values: split variadic writes.
            size = _MAX_ARGS - _MAX_ARGS % step
            for i in range(0, len(values), size):
                self.ops.append([command, self.k(key), *values[i : i + size]])
            return
        self.ops.append([command, self.k(key), *values])

    def op_first(self, command: str, key: str, *args: object) -> None:
        """An op that must run before the others (one that can fail, such as XADD)."""
        self.ops.insert(0, [command, self.k(key), *(str(a) for a in args)])

    def mark_dirty(self, entry_id: int) -> None:
        if not self.dirty:
            # One signal per step, however many entries it changes: the
            # worker wakes on it and publishes after a quiet period.
            self.dirty = True
            self.ops.append(["PUBLISH", self.k(K.dirty_channel), "1"])
        self.op("RPUSH", K.dirty, entry_id)
