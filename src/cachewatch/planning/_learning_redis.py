"""The planner's learned state in Redis, shared by a fleet of processes.

Place in the flow: planner -> **RedisLearner** (one Lua script per call, one round
trip, atomic across processes) -> Redis; on any fault -> a local :class:`MemoryLearner`.

:class:`RedisLearner` implements :class:`~cachewatch.planning._learning.LearningState`
with the semantics of :class:`MemoryLearner` (``tests/test_learning_state.py`` runs the
same cases against both, and replays random call sequences through both): the same
ledger of prefix sightings, recurrence counts per (family, kind, run) with forgetting,
the pool across families, reliability, learned minimums, static-region stability,
conversation records and in-flight write claims. Every call runs one Lua script
(``EVALSHA``), so :meth:`~RedisLearner.sight` checks and claims a shared prefix
atomically: of several processes planning the same cold prefix at once, one writes it
and the others see it in flight. A claim carries the time it was made and is ignored
after ``CLAIM_TIMEOUT`` (120 s), so a process that dies mid-request blocks nobody.
Tickets are made unique across processes (pid and a random instance tag).

Layout (every key under ``key_prefix``; keys are 64-bit digests in decimal, values
are counts, times and digests, never content):

* ``p:<prefix key>``: a hash per sighted prefix (last sighting, run, family, kind, TTL,
  believed-cached-until, late count, claims, ...), expiring ``max_age`` (1h 5min) after
  its last sighting: the ledger is bounded by the traffic of the last hour.
* ``f:<family>``: a hash per family: recurrence counts ``<kind>:<run bucket>``,
  reliability and the stability state (msgpack). ``fams`` (a sorted set by last use) caps
  the families at ``max_families``, the least recently used dropped first; each family
  also expires ``family_ttl`` (7 days) after its last use.
* ``pool``: the counts pooled over every family (at most 5 kinds x 4 buckets).
* ``c:<conversation key>``: a conversation's last request, expiring with ``max_age``.
* ``min`` / ``minv``: learned minimums per (profile, model) and a version that changes with
  them; the version rides on every :meth:`~RedisLearner.sight`, so
  :meth:`~RedisLearner.learned_minimum` is read from a local copy and costs no round trip.

Prefix and conversation ages are judged on the planner's clock (``now``), like
:class:`MemoryLearner` with ``max_age``; Redis expiry only collects what that already
forgets. Every process sharing the state must use the same wall clock. The scripts build
their key names from ``key_prefix``: use a single Redis (or a key prefix with a hash
tag, ``{cw}:learn:``, on a cluster).

Failing open: every call has a socket timeout (``timeout``, 50 ms). A fault (Redis down,
slow, a script error) is reported to ``on_fault("learner", exc)`` (the engine's
``cachewatch_internal_errors_total{stage="learner"}``), and that call, and every call
for ``retry_after`` seconds after it (doubling while faults go on, up to 30 s), is
answered by a local :class:`MemoryLearner`: the planner keeps planning, learning from
this process's traffic alone, and never sees an exception.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from ._learning import CLAIM_TIMEOUT, TTL_1H, TTL_5M, Sight, Sighting, min_tier_above
from ._learning_memory import MemoryLearner

__all__ = ["RedisLearner"]

_log = logging.getLogger("cachewatch")
_T = TypeVar("_T")

#: How long a family's statistics are kept after its last use (seconds).
FAMILY_TTL: Final = 7 * 86_400
#: A prefix or conversation not seen for this long is forgotten (the 1h TTL plus a margin).
MAX_AGE: Final = TTL_1H + 300.0
_MAX_BACKOFF: Final = 30.0

# -- Lua ------------------------------------------------------------------------------------
# Numbers are Lua doubles: the arithmetic below is MemoryLearner's, operation for operation,
# so both give the same floats. Floats cross into Redis and back as '%.17g' strings (exact).
# 64-bit keys, families and tickets stay strings (a double cannot hold them).

_COMMON: Final = (
    r"""
local P = ARGV[1]
local TTL_1H = @TTL_1H@
local TTL_5M = @TTL_5M@
local CLAIM_TIMEOUT = @CLAIM_TIMEOUT@
local function fmt(x) return string.format('%.17g', x) end
local function bucket_of(run) if run >= 3 then return 3 end return run end
local function load(name)
  local raw = redis.call('HGETALL', name)
  if #raw == 0 then return nil end
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  return h
end
-- Family hashes and the pool, loaded once per script and written back by flush().
local tables = {}
local function tbl(name)
  local t = tables[name]
  if t == nil then
    t = {h = load(name) or {}, dirty = {}}
    tables[name] = t
  end
  return t
end
local function fam(id) return tbl(P .. 'f:' .. id) end
local function pool() return tbl(P .. 'pool') end
local function stat_get(t, field)
  local v = t.h[field]
  if v == nil then return nil, nil end
  local r, s = string.match(v, '^(%S+) (%S+)$')
  return tonumber(r), tonumber(s)
end
local function put(t, field, value)
  t.h[field] = value
  t.dirty[field] = true
end
local function flush(family_ttl)
  for name, t in pairs(tables) do
    local args = {}
    for field, _ in pairs(t.dirty) do
      args[#args + 1] = field
      args[#args + 1] = t.h[field]
    end
    if #args > 0 then
      redis.call('HSET', name, unpack(args))
      if name ~= P .. 'pool' then redis.call('EXPIRE', name, family_ttl) end
    end
  end
end
-- Least recently used families beyond max_families are dropped.
local function touch(id, max_families)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('ZADD', P .. 'fams', seq, id)
  local extra = redis.call('ZCARD', P .. 'fams') - max_families
  if extra > 0 then
    local old = redis.call('ZPOPMIN', P .. 'fams', extra)
    for i = 1, #old, 2 do
      redis.call('DEL', P .. 'f:' .. old[i])
      tables[P .. 'f:' .. old[i]] = nil
    end
  end
end
local function prob(fid, kind, b, pa, pb)
  local a, bb
  if b > 1 then
    local mean = prob(fid, kind, b - 1, pa, pb)
    a = 3.0 * mean
    bb = 3.0 * (1.0 - mean)
  else
    a, bb = pa, pb
    local pr, ps = stat_get(pool(), kind .. ':' .. b)
    if pr ~= nil and pr > 0.0 then
      local mean = math.max(a / (a + bb), (pr + a) / (ps + a + bb))
      a = 3.0 * mean
      bb = 3.0 * (1.0 - mean)
    end
  end
  local r, s = stat_get(fam(fid), kind .. ':' .. b)
  if r == nil then return a / (a + bb) end
  return math.min(1.0, (r + a) / (s + a + bb))
end
local function prob_late(fid, kind, previous_run, pa, pb)
  local mean = prob(fid, kind, bucket_of(previous_run + 1), pa, pb)
  local a, bb = 3.0 * mean, 3.0 * (1.0 - mean)
  local r, s = stat_get(fam(fid), kind .. ':0')
  if r == nil then return a / (a + bb) end
  return math.min(1.0, (r + a) / (s + a + bb))
end
local function reliability(fid)
  local t = fam(fid)
  if t.h['e'] == nil then return 1.0 end
  local e, c = tonumber(t.h['e']), tonumber(t.h['c'])
  return math.min(1.0, (c + 1.0) / (e + 1.0))
end
local function candidates(fid)
  local out = {}
  local blob = fam(fid).h['st']
  if blob then
    local blocks = cmsgpack.unpack(blob)[1]
    for i, b in ipairs(blocks) do
      if b[3] >= 1.0 and b[2] > 0.5 then out[#out + 1] = i - 1 end
    end
  end
  return out
end
local function drop_writer(w, ticket)
  local live = {}
  for t, at in string.gmatch(w, '([^=;]+)=([^;]+)') do
    if t ~= ticket then live[#live + 1] = t .. '=' .. at end
  end
  return table.concat(live, ';')
end
""".replace("@TTL_1H@", repr(TTL_1H))
    .replace("@TTL_5M@", repr(TTL_5M))
    .replace("@CLAIM_TIMEOUT@", repr(CLAIM_TIMEOUT))
)

# ARGV: P, family, now, ticket, forget, max_age ('' for none), max_families, family_ttl,
# prefix_ttl, n, then n x (key, kind, shared, prior_a, prior_b).
_SIGHT: Final = r"""
local family, now, ticket = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local f, max_age = tonumber(ARGV[5]), tonumber(ARGV[6])
local max_families, family_ttl, prefix_ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local function credit(fid, kind, b)
  local field = kind .. ':' .. b
  local t = fam(fid)
  local r, s = stat_get(t, field)
  if r ~= nil then put(t, field, fmt(math.min(s, r + 1.0)) .. ' ' .. fmt(s)) end
  local pl = pool()
  r, s = stat_get(pl, field)
  if r ~= nil then put(pl, field, fmt(math.min(s, r + 1.0)) .. ' ' .. fmt(s)) end
end
local function opportunity(fid, kind, b)
  local field = kind .. ':' .. b
  local t = fam(fid)
  local r, s = stat_get(t, field)
  if r == nil then r, s = 0.0, 0.0 end
  put(t, field, fmt(r * f) .. ' ' .. fmt(s * f + 1.0))
  local pl = pool()
  r, s = stat_get(pl, field)
  if r == nil then r, s = 0.0, 0.0 end
  put(pl, field, fmt(r * f) .. ' ' .. fmt(s * f + 1.0))
end
local rel = reliability(family)
local out = {fmt(rel), redis.call('GET', P .. 'minv') or '0', candidates(family)}
local n = tonumber(ARGV[10])
for j = 0, n - 1 do
  local base = 11 + 5 * j
  local key, kind, shared = ARGV[base], ARGV[base + 1], ARGV[base + 2] == '1'
  local pa, pb = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local name = P .. 'p:' .. key
  local h = load(name)
  if h and max_age and now - tonumber(h['l']) > max_age then h = nil end
  local run = 1
  local cached, writing, late = false, false, false
  local late_count, previous_run, ttl, cu = 0, 0, TTL_5M, 0.0
  local live = {}
  if h then
    local last, prun = tonumber(h['l']), tonumber(h['r'])
    ttl, cu = tonumber(h['t']), tonumber(h['cu'])
    late_count, previous_run = tonumber(h['la']), tonumber(h['pr'])
    local void = h['v'] == '1'
    local gap = now - last
    if h['lp'] == '1' and not void and gap <= TTL_1H then credit(h['f'], h['k'], 0) end
    if void then
      run = prun
    elseif gap <= ttl then
      run = prun + 1
      credit(h['f'], h['k'], bucket_of(prun))
    elseif gap <= TTL_1H then
      late_count = late_count + 1
      previous_run = prun
    end
    late = late_count > 0
    cached = cu > now
    for t, at in string.gmatch(h['w'] or '', '([^=;]+)=([^;]+)') do
      if now - tonumber(at) < CLAIM_TIMEOUT and t ~= ticket then live[#live + 1] = t .. '=' .. at end
    end
    writing = #live > 0 and not cached
  end
  local p = prob(family, kind, bucket_of(run), pa, pb) * rel
  local p_late = 0.0
  if late and h then p_late = prob_late(family, kind, previous_run, pa, pb) * rel end
  out[#out + 1] = {
    run, cached and 1 or 0, writing and 1 or 0, late and 1 or 0, fmt(p), fmt(p_late), h and 1 or 0
  }
  opportunity(family, kind, bucket_of(run))
  if late then opportunity(family, kind, 0) end
  if shared and not cached and not writing then live[#live + 1] = ticket .. '=' .. fmt(now) end
  redis.call('HSET', name, 'l', fmt(now), 'r', run, 'f', family, 'k', kind, 't', fmt(ttl),
    'cu', fmt(cu), 'la', late_count, 'w', table.concat(live, ';'), 'tk', ticket, 'v', '0',
    'lp', late and '1' or '0', 'pr', previous_run)
  redis.call('EXPIRE', name, prefix_ttl)
end
touch(family, max_families)
flush(family_ttl)
return out
"""

# ARGV: P, ticket, family_ttl, keys...
_VOID: Final = r"""
local ticket, family_ttl = ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  local name = P .. 'p:' .. ARGV[i]
  local h = load(name)
  if h and h['tk'] == ticket and h['v'] ~= '1' then
    local t = fam(h['f'])
    local field = h['k'] .. ':' .. bucket_of(tonumber(h['r']))
    local r, s = stat_get(t, field)
    if r ~= nil then
      s = math.max(0.0, s - 1.0)
      put(t, field, fmt(math.min(r, s)) .. ' ' .. fmt(s))
    end
    redis.call('HSET', name, 'v', '1', 'w', drop_writer(h['w'] or '', ticket))
  end
end
flush(family_ttl)
return 1
"""

# ARGV: P, ticket, keys...
_RELEASE: Final = r"""
local ticket = ARGV[2]
for i = 3, #ARGV do
  local name = P .. 'p:' .. ARGV[i]
  local w = redis.call('HGET', name, 'w')
  if w and w ~= '' then redis.call('HSET', name, 'w', drop_writer(w, ticket)) end
end
return 1
"""

# ARGV: P, ticket, now, then (key, ttl) pairs.
_STARTED: Final = r"""
local ticket, now = ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  local name = P .. 'p:' .. ARGV[i]
  local ttl = tonumber(ARGV[i + 1])
  local h = load(name)
  if h then
    redis.call('HSET', name, 'cu', fmt(math.max(tonumber(h['cu']), now + ttl)),
      't', fmt(math.max(tonumber(h['t']), ttl)), 'w', drop_writer(h['w'] or '', ticket))
  end
end
return 1
"""

# ARGV: P, keys...
_NOT_CACHED: Final = r"""
for i = 2, #ARGV do
  local name = P .. 'p:' .. ARGV[i]
  if redis.call('EXISTS', name) == 1 then redis.call('HSET', name, 'cu', '0') end
end
return 1
"""

# ARGV: P, family, expected, confirmed, forget, max_families, family_ttl
_FEEDBACK: Final = r"""
local family, expected, confirmed = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local f = tonumber(ARGV[5])
local t = fam(family)
local e, c = 0.0, 0.0
if t.h['e'] ~= nil then e, c = tonumber(t.h['e']), tonumber(t.h['c']) end
for _ = 1, expected do
  e = e * f + 1.0
  c = c * f
end
c = c + math.min(confirmed, expected)
put(t, 'e', fmt(e))
put(t, 'c', fmt(c))
touch(family, tonumber(ARGV[6]))
flush(tonumber(ARGV[7]))
return 1
"""

# ARGV: P, family, forget, max_families, family_ttl, n, n digests, m, m x (index, head, rest)
_STABILITY: Final = r"""
local family, f = ARGV[2], tonumber(ARGV[3])
local t = fam(family)
local old, oldlines = {}, {}
if t.h['st'] then
  local st = cmsgpack.unpack(t.h['st'])
  old, oldlines = st[1], st[2]
end
local n = tonumber(ARGV[6])
local new = {}
local first = -1
for i = 0, n - 1 do
  local digest = ARGV[7 + i]
  local changes, seen = 0.0, 0.0
  if i < #old then
    local o = old[i + 1]
    local changed = 0.0
    if digest ~= o[1] then changed = 1.0 end
    changes = o[2] * f + changed
    seen = o[3] * f + 1.0
  end
  new[i + 1] = {digest, changes, seen}
  if first < 0 and seen >= 2.0 and changes >= 0.8 * seen then first = i end
end
local lines, order = {}, {}
for _, e in ipairs(oldlines) do
  lines[e[1]] = e
  order[#order + 1] = e[1]
end
local rest_stable = 0
local m = tonumber(ARGV[7 + n])
for j = 0, m - 1 do
  local base = 8 + n + 3 * j
  local i, head, rest = tonumber(ARGV[base]), ARGV[base + 1], ARGV[base + 2]
  local found = lines[i]
  local rc = 0.0
  if found then
    local changed = 0.0
    if rest ~= found[3] then changed = 1.0 end
    rc = found[4] * f + changed
  else
    order[#order + 1] = i
  end
  lines[i] = {i, head, rest, rc}
  if i == first and found and rc < 0.5 then rest_stable = 1 end
end
local kept = {}
if #order <= 64 then
  for _, i in ipairs(order) do kept[#kept + 1] = lines[i] end
end
put(t, 'st', cmsgpack.pack({new, kept}))
touch(family, tonumber(ARGV[4]))
flush(tonumber(ARGV[5]))
return {first, rest_stable, candidates(family)}
"""

# ARGV: P, key, static, has_reply, reply, history_known, now, max_age ('' for none), ttl
_CONVERSATION: Final = r"""
local name = P .. 'c:' .. ARGV[2]
local static, has_reply, reply, known = ARGV[3], ARGV[4] == '1', ARGV[5], ARGV[6] == '1'
local now, max_age = tonumber(ARGV[7]), tonumber(ARGV[8])
local h = load(name)
if h and max_age and now - tonumber(h['t']) > max_age then h = nil end
local steady = h ~= nil and (h['y'] == '1' or (h['s'] == static and known))
redis.call('HSET', name, 's', static, 't', fmt(now), 'y', steady and '1' or '0')
if has_reply then redis.call('HSET', name, 'r', reply) else redis.call('HDEL', name, 'r') end
redis.call('EXPIRE', name, tonumber(ARGV[9]))
if h == nil then return {} end
return {h['s'], h['r'] and 1 or 0, h['r'] or '', h['t'], h['y']}
"""

# ARGV: P, model key, tier ('' to read, '-' to forget)
_MINIMUM: Final = r"""
local before = redis.call('GET', P .. 'minv') or '0'
local key, tier = ARGV[2], ARGV[3]
if tier == '-' then
  if redis.call('HDEL', P .. 'min', key) == 1 then redis.call('INCR', P .. 'minv') end
elseif tier ~= '' then
  local now = tonumber(redis.call('HGET', P .. 'min', key) or '0')
  if tonumber(tier) > now then
    if redis.call('HEXISTS', P .. 'min', key) == 0 and redis.call('HLEN', P .. 'min') >= 4096 then
      redis.call('DEL', P .. 'min')
    end
    redis.call('HSET', P .. 'min', key, tier)
    redis.call('INCR', P .. 'minv')
  end
end
return {redis.call('HGET', P .. 'min', key) or '0', before, redis.call('GET', P .. 'minv') or '0'}
"""

# ARGV: P, family, kind, run, prior_a, prior_b (read only: the estimate of a bucket).
_PEEK: Final = r"""
local b = tonumber(ARGV[4])
if b >= 3 then b = 3 end
return {fmt(prob(ARGV[2], ARGV[3], b, tonumber(ARGV[5]), tonumber(ARGV[6]))), fmt(reliability(ARGV[2]))}
"""


def _f(value: float) -> str:
    return repr(float(value))


class RedisLearner:
    """The learned state of :class:`MemoryLearner`, in Redis, for a fleet of processes.

    Args:
        client: a ``redis.Redis`` client (sync), whose server and credentials are used
            through a pool of the learner's own; or None with ``url``.
        url: a Redis URL, used when ``client`` is None.
        key_prefix: namespace of every key.
        timeout: socket (and connect) timeout in seconds, without retries: every call is
            on a request's path.
        on_fault: called as ``on_fault("learner", exc)`` for each fault survived.
        retry_after: after a fault, Redis is left alone this long (doubling while faults
            go on, at most 30 s); the local fallback answers meanwhile.
        forget / prior / max_families: as :class:`MemoryLearner`.
        max_age: a prefix or conversation not seen for this long is forgotten (and expires).
        family_ttl: a family's statistics expire this long after their last use.

    Example::

        learner = RedisLearner(url="redis://127.0.0.1:6379/0")
        client = cachewatch.wrap(anthropic.Anthropic(), learner=learner)

    (``cachewatch.wrap(client, store=RedisStore(url=...))`` does this for you, and counts
    its faults.)
    """

    def __init__(
        self,
        client: Any | None = None,
        *,
        url: str | None = None,
        key_prefix: str = "cachewatch:learn:",
        timeout: float = 0.05,
        on_fault: Callable[[str, BaseException], object] | None = None,
        retry_after: float = 1.0,
        forget: float = 0.85,
        prior: tuple[float, float] = (1.0, 2.0),
        max_families: int = 4_096,
        max_age: float = MAX_AGE,
        family_ttl: float = FAMILY_TTL,
    ) -> None:
        if client is None:
            client = _client_from_url(url or "redis://127.0.0.1:6379/0", timeout)
        else:
            client = client_with_timeout(client, timeout)
        self.client = client
        self.prefix = key_prefix
        self.on_fault = on_fault
        self.retry_after = retry_after
        self.forget = forget
        self.prior = prior
        #: Per-kind priors of run 1 (as :class:`MemoryLearner`).
        self.priors: dict[str, tuple[float, float]] = {"tail": (2.0, 1.0)}
        self.max_families = max_families
        self.max_age = max_age
        self.family_ttl = family_ttl
        #: Faults survived (also reported to ``on_fault``).
        self.faults = 0
        #: Answers while Redis is unreachable.
        self.fallback = MemoryLearner(forget=forget, prior=prior, max_families=max_families, max_age=max_age)
        self.fallback.priors = self.priors
        self._tag = os.urandom(4).hex()
        self._down_until = 0.0
        self._backoff = retry_after
        self._logged = False
        self._lock = threading.Lock()
        #: Learned minimums read from Redis, valid while the version is ``_min_version``.
        self._minimums: dict[str, int] = {}
        self._min_version = b""
        #: family -> static positions that changed last time (from the last sight/stability).
        self._volatile: dict[int, set[int]] = {}
        register = client.register_script
        self._sight = register(_COMMON + _SIGHT)
        self._void = register(_COMMON + _VOID)
        self._release = register(_COMMON + _RELEASE)
        self._started = register(_COMMON + _STARTED)
        self._not_cached = register(_COMMON + _NOT_CACHED)
        self._feedback = register(_COMMON + _FEEDBACK)
        self._stability = register(_COMMON + _STABILITY)
        self._conversation = register(_COMMON + _CONVERSATION)
        self._minimum = register(_COMMON + _MINIMUM)
        self._peek = register(_COMMON + _PEEK)

    # -- failing open -----------------------------------------------------------------

    def _run(self, call: Callable[[], _T], local: Callable[[], _T]) -> _T:
        """``call`` against Redis; on a fault (or while Redis is left alone) ``local``."""
        if self._down_until and time.monotonic() < self._down_until:
            return local()
        try:
            result = call()
        except Exception as exc:
            self._fault(exc)
            return local()
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
                self._backoff = self.retry_after
        return result

    def _fault(self, exc: BaseException) -> None:
        with self._lock:
            self.faults += 1
            self._down_until = time.monotonic() + self._backoff
            self._backoff = min(_MAX_BACKOFF, self._backoff * 2.0)
            first = not self._logged
            self._logged = True
        try:
            if self.on_fault is not None:
                self.on_fault("learner", exc)
            elif first:
                _log.warning(
                    "cachewatch: the shared learned state is unreachable (%s); planning on local state.",
                    type(exc).__name__,
                )
        except Exception:  # pragma: no cover - a fault callback must not break planning
            pass

    def _ticket(self, ticket: int) -> str:
        # Unique across the fleet: planners number their requests from 1 in every process.
        return f"{os.getpid()}.{self._tag}.{ticket}"

    # -- LearningState ----------------------------------------------------------------

    def sight(self, family: int, sightings: Sequence[Sighting], now: float, ticket: int) -> list[Sight]:
        """As :meth:`MemoryLearner.sight`: one round trip, atomic across the fleet."""

        def call() -> list[Sight]:
            args: list[object] = [
                self.prefix,
                str(family),
                _f(now),
                self._ticket(ticket),
                _f(self.forget),
                _f(self.max_age),
                self.max_families,
                max(1, int(self.family_ttl)),
                max(1, int(self.max_age) + 60),
                len(sightings),
            ]
            for s in sightings:
                a, b = self.priors.get(s.kind, self.prior)
                args += [str(s.key), s.kind, "1" if s.shared else "0", _f(a), _f(b)]
            raw = self._sight(args=args, client=self.client)
            reliability = float(raw[0])
            self._seen_version(raw[1])
            self._remember_volatile(family, raw[2])
            out: list[Sight] = []
            for s, r in zip(sightings, raw[3:], strict=True):
                out.append(
                    Sight(
                        s.key,
                        s.kind,
                        int(r[0]),
                        r[1] == 1,
                        r[2] == 1,
                        r[3] == 1,
                        float(r[4]),
                        float(r[5]),
                        r[6] == 1,
                        reliability,
                    )
                )
            return out

        return self._run(call, lambda: self.fallback.sight(family, sightings, now, ticket))

    def release(self, keys: Iterable[int], ticket: int) -> None:
        keys = list(keys)
        if not keys:
            return
        self._run(
            lambda: self._release(
                args=[self.prefix, self._ticket(ticket), *map(str, keys)], client=self.client
            ),
            lambda: self.fallback.release(keys, ticket),
        )

    def void(self, keys: Iterable[int], ticket: int) -> None:
        keys = list(keys)
        if not keys:
            return
        self._run(
            lambda: self._void(
                args=[self.prefix, self._ticket(ticket), max(1, int(self.family_ttl)), *map(str, keys)],
                client=self.client,
            ),
            lambda: self.fallback.void(keys, ticket),
        )

    def started(self, keys: Iterable[tuple[int, float]], ticket: int, now: float) -> None:
        pairs = list(keys)
        if not pairs:
            return
        args: list[object] = [self.prefix, self._ticket(ticket), _f(now)]
        for key, ttl in pairs:
            args += [str(key), _f(ttl)]
        self._run(
            lambda: self._started(args=args, client=self.client),
            lambda: self.fallback.started(pairs, ticket, now),
        )

    def not_cached(self, keys: Iterable[int]) -> None:
        keys = list(keys)
        if not keys:
            return
        self._run(
            lambda: self._not_cached(args=[self.prefix, *map(str, keys)], client=self.client),
            lambda: self.fallback.not_cached(keys),
        )

    def feedback(self, family: int, expected: int, confirmed: int) -> None:
        if expected <= 0:
            return
        self._run(
            lambda: self._feedback(
                args=[
                    self.prefix,
                    str(family),
                    expected,
                    confirmed,
                    _f(self.forget),
                    self.max_families,
                    max(1, int(self.family_ttl)),
                ],
                client=self.client,
            ),
            lambda: self.fallback.feedback(family, expected, confirmed),
        )

    def conversation(
        self, key: int, static: int | None, reply: bytes | None, history_known: bool, now: float
    ) -> tuple[int, bytes | None, bool] | None:
        def call() -> tuple[int, bytes | None, bool] | None:
            raw = self._conversation(
                args=[
                    self.prefix,
                    str(key),
                    str(static if static is not None else -1),
                    "0" if reply is None else "1",
                    reply or b"",
                    "1" if history_known else "0",
                    _f(now),
                    _f(self.max_age),
                    max(1, int(self.max_age) + 60),
                ],
                client=self.client,
            )
            if not raw or now - float(raw[3]) > TTL_1H:
                return None
            return int(raw[0]), (bytes(raw[2]) if raw[1] == 1 else None), raw[4] == b"1"

        return self._run(call, lambda: self.fallback.conversation(key, static, reply, history_known, now))

    # -- learned minimums: a local copy, checked against the version each sight brings --

    def _seen_version(self, version: bytes) -> None:
        if version != self._min_version:
            with self._lock:
                self._minimums = {}
                self._min_version = version

    def _minimum_call(self, model_key: str, tier: str) -> int:
        value, before, after = self._minimum(args=[self.prefix, model_key, tier], client=self.client)
        with self._lock:
            if before != self._min_version:
                self._minimums = {}
            if len(self._minimums) >= 4_096:
                self._minimums.clear()
            self._minimums[model_key] = int(value)
            self._min_version = after
        return int(value)

    def learned_minimum(self, model_key: str) -> int:
        found = self._minimums.get(model_key)
        if found is not None:
            return found
        return self._run(
            lambda: self._minimum_call(model_key, ""), lambda: self.fallback.learned_minimum(model_key)
        )

    def raise_minimum(self, model_key: str, tokens: float) -> None:
        tier = str(min_tier_above(tokens))
        self._run(
            lambda: self._minimum_call(model_key, tier),
            lambda: self.fallback.raise_minimum(model_key, tokens),
        )

    def lower_minimum(self, model_key: str) -> None:
        self._run(lambda: self._minimum_call(model_key, "-"), lambda: self.fallback.lower_minimum(model_key))

    # -- stability --------------------------------------------------------------------

    def _remember_volatile(self, family: int, positions: Sequence[int]) -> None:
        with self._lock:
            if len(self._volatile) >= self.max_families:
                self._volatile.clear()
            self._volatile[family] = {int(i) for i in positions}

    def stability(
        self, family: int, blocks: Sequence[bytes], lines: dict[int, tuple[bytes, bytes]]
    ) -> tuple[int | None, bool]:
        def call() -> tuple[int | None, bool]:
            args: list[object] = [
                self.prefix,
                str(family),
                _f(self.forget),
                self.max_families,
                max(1, int(self.family_ttl)),
                len(blocks),
                *blocks,
                len(lines),
            ]
            for i, (head, rest) in lines.items():
                args += [i, head, rest]
            first, rest_stable, volatile = self._stability(args=args, client=self.client)
            self._remember_volatile(family, volatile)
            return (None if first < 0 else int(first)), rest_stable == 1

        return self._run(call, lambda: self.fallback.stability(family, blocks, lines))

    def volatile_candidates(self, family: int) -> set[int]:
        """Static positions that changed on their last observation (as of this process's last call)."""
        found = self._volatile.get(family)
        if found is not None:
            return set(found)
        if self._down_until and time.monotonic() < self._down_until:
            return self.fallback.volatile_candidates(family)
        return set()

    # -- introspection (tests, maintenance) ---------------------------------------------

    def recurrence(self, family: int, kind: str, run: int, now: float) -> float:
        """The current estimate of P(recurs within TTL) for a bucket (reliability excluded)."""
        a, b = self.priors.get(kind, self.prior)
        raw = self._peek(args=[self.prefix, str(family), kind, run, _f(a), _f(b)], client=self.client)
        return float(raw[0])

    def reliability(self, family: int) -> float:
        a, b = self.prior
        raw = self._peek(args=[self.prefix, str(family), "static", 1, _f(a), _f(b)], client=self.client)
        return float(raw[1])

    def claims(self) -> int:
        """How many in-flight write claims are held (live or not yet collected)."""
        total = 0
        for name in self.client.scan_iter(match=self.prefix + "p:*", count=1_000):
            w = self.client.hget(name, "w")
            if w:
                total += w.count(b"=")
        return total

    def clear(self) -> None:
        """Delete every key under the prefix, and the local copies (tests, maintenance)."""
        names = list(self.client.scan_iter(match=self.prefix + "*", count=1_000))
        if names:
            self.client.delete(*names)
        with self._lock:
            self._minimums = {}
            self._min_version = b""
            self._volatile = {}


def _client_from_url(url: str, timeout: float) -> Any:
    from .._extras import require

    require("RedisLearner", "redis", "redis")
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def client_with_timeout(client: Any, timeout: float) -> Any:
    """A client to the same server as ``client``, with ``timeout`` and no retries (own pool)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "connection_kwargs"):
        return client  # not a plain redis.Redis: used as it is
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout, retry=Retry(NoBackoff(), 0), decode_responses=False)
    if "path" not in kwargs:  # TCP (a unix socket connects at once)
        kwargs["socket_connect_timeout"] = timeout
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
