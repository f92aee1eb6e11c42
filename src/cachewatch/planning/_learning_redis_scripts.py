"""The Lua behind :class:`~cachewatch.planning._learning_redis.RedisLearner`: one script, many ops.

Place in the flow: ``RedisLearner`` -> **SCRIPT** (one ``EVALSHA``) -> Redis.

:data:`SCRIPT` runs a *batch*: a sequence of ops, each the Lua port of one
:class:`~cachewatch.planning._learning.MemoryLearner` method, executed in order and
atomically, with one reply per op. ``ARGV`` is the key prefix, the ops as one JSON array
of ``[name, args...]`` and the binary arguments (digests), which the JSON names by place
(:func:`encode`); the reply is the ops' replies as one JSON array, then the binary values
it names (:func:`decode`): two bulk strings to parse, not one element per value (redis-py
parses replies in Python unless hiredis is installed). So a planning decision (the sightings,
the static region's stability, the conversation and the learned minimum) is one round
trip, and so is anything else the learner has to say at once.

Ops and their arguments (``''`` for "none"; floats as ``repr`` strings, exact):

* ``sight``: family, now, ticket, forget, max_age, max_families, family_ttl, prefix_ttl,
  then per sighting (key, kind, shared, prior_a, prior_b). Returns reliability, the
  minimums' version, the family's volatile positions, then per sighting (run, cached,
  writing, late, p, p_late, known, cached at 1h, held by the implicit cache). Remembers, for a ``conversation`` later
  in the batch, the static key and whether every previous turn was known;
* ``stability``: family, forget, max_families, family_ttl, n, n digests, m, m x (index,
  head, rest), then k and the k positions whose lines were sent (``asked``; k = -1: no
  check). With ``asked``, when the family's volatile positions (below n) are not those, nothing is
  recorded and the reply says so (``stale``): the caller sends the lines of the current
  positions in a second call. Returns (first volatile or -1, rest stable, volatile
  positions, stale, reordered);
* ``conversation``: key, static (``=``: this batch's sighting), has_reply, reply,
  history_known (``=``: this batch's sighting), now, max_age, ttl, model, tail, family,
  forget, family_ttl, max_families, tail class (``''``: none). Returns the earlier tail (after a switch of lane, model and static
  prefix, where the last request to this model ended, or -1), then, when the previous
  request was in the same lane or changed its static prefix to a new one, (static, the reply's place among the binary values or 0, time, steady,
  unsettled, goes on);
* ``minimum``: model key, tier (``''`` to read, ``-`` to forget). Returns (value, version
  before, version after, the key's implicit hit counts or ``''``);
* ``implicit_read``: model key, served, forget. Returns the key's new implicit hit counts
  (``'expected served'``);
* ``void``: ticket, family_ttl, keys...; ``release``: ticket, keys...; ``started``: ticket,
  now, (key, ttl)... (ttl 0: a sighting ends, nothing was written); ``implicit``: now,
  keys... (sent unmarked: the implicit cache holds them from now); ``not_cached``: keys...; ``feedback``: family, expected, confirmed,
  forget, max_families, family_ttl; ``peek``: family, kind, run, prior_a, prior_b.

Numbers are Lua doubles: the arithmetic is MemoryLearner's, operation for operation, so
both give the same floats. Floats cross into Redis and back as ``%.17g`` strings (exact),
inside the JSON too; its numbers are small integers.
64-bit keys, families and tickets stay strings (a double cannot hold them). Family
hashes and the pool are loaded once per batch and written back after each op.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from . import _learning

__all__ = ["SCRIPT", "decode", "encode", "op"]


def op(name: str, *args: object) -> list[list[object]]:
    """A batch of one op (batches concatenate: ``op(...) + op(...)``)."""
    return [[name, *args]]


def encode(ops: list[list[object]]) -> list[object]:
    """``ARGV`` after the key prefix: the ops as one JSON array, then the binary arguments.

    A ``bytes`` argument goes as its own ``ARGV`` entry and is named in the JSON by its
    place (``[i]``: the i-th after the JSON).
    """
    blobs: list[bytes] = []
    plain: list[list[object]] = []
    for one in ops:
        args: list[object] = []
        for value in one:
            if isinstance(value, bytes):
                blobs.append(value)
                value = [len(blobs)]
            args.append(value)
        plain.append(args)
    return [orjson.dumps(plain), *blobs]


def decode(reply: list[Any]) -> tuple[list[Any], list[bytes]]:
    """(each op's reply, the binary values they name by place: ``blobs[i - 1]``)."""
    return orjson.loads(reply[0]), reply[1:]


_COMMON: Final = r"""
local P = ARGV[1]
local TTL_1H = @TTL_1H@
local UNSETTLED_PRIOR = @UNSETTLED_PRIOR@
local GOES_ON_PRIOR = @GOES_ON_PRIOR@
local STATIC = @STATIC@
local HISTORY = @HISTORY@
local TTL_5M = @TTL_5M@
local CLAIM_TIMEOUT = @CLAIM_TIMEOUT@
local PRIOR_WEIGHT = @PRIOR_WEIGHT@
local LATE_PRIOR_WEIGHT = @LATE_PRIOR_WEIGHT@
local LATE_Z = @LATE_Z@
local OPEN_MAX = @OPEN_MAX@
local SETTLE_BATCH = @SETTLE_BATCH@
local SETTLED_Z = @SETTLED_Z@
local ANCHOR_WEIGHT = @ANCHOR_WEIGHT@
local CONVERSATION_MODELS = @CONVERSATION_MODELS@
local function fmt(x) return string.format('%.17g', x) end
local function bucket_of(run) if run >= 3 then return 3 end return run end
local function load(name)
  local raw = redis.call('HGETALL', name)
  if #raw == 0 then return nil end
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  return h
end
-- Family hashes and the pool, loaded once per batch and written back by flush().
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
    t.dirty = {}
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
    a = PRIOR_WEIGHT * mean
    bb = PRIOR_WEIGHT * (1.0 - mean)
  else
    a, bb = pa, pb
    local pr, ps = stat_get(pool(), kind .. ':' .. b)
    local sr, ss = nil, nil
    if b == 1 and stat_get(fam(fid), kind .. ':1') == nil then sr, ss = stat_get(pool(), 'settled:' .. kind) end
    if sr ~= nil then
      local prior_mean = a / (a + bb)
      local n = ss + a + bb
      local mean = (sr + a) / n
      mean = mean + SETTLED_Z * math.sqrt(mean * (1.0 - mean) / (n + 1.0))
      if mean > prior_mean then mean = prior_mean end
      if pr ~= nil and pr > 0.0 then
        local pooled = (pr + a) / (ps + a + bb)
        if pooled > mean then mean = pooled end
      end
      a = PRIOR_WEIGHT * mean
      bb = PRIOR_WEIGHT * (1.0 - mean)
    elseif pr ~= nil and pr > 0.0 then
      local mean = math.max(a / (a + bb), (pr + a) / (ps + a + bb))
      a = PRIOR_WEIGHT * mean
      bb = PRIOR_WEIGHT * (1.0 - mean)
    end
  end
  local r, s = stat_get(fam(fid), kind .. ':' .. b)
  if r == nil then return a / (a + bb) end
  return math.min(1.0, (r + a) / (s + a + bb))
end
local function prob_late(fid, kind, previous_run, pa, pb)
  local mean = pa / (pa + pb)
  local before = prob(fid, kind, bucket_of(previous_run + 1), pa, pb)
  if before < mean then mean = before end
  local a, bb = LATE_PRIOR_WEIGHT * mean, LATE_PRIOR_WEIGHT * (1.0 - mean)
  local r, s = stat_get(fam(fid), kind .. ':0')
  if r ~= nil then
    a = a + r
    bb = bb + (s - r)
  end
  local n = a + bb
  local low = a / n - LATE_Z * math.sqrt(a * bb / (n * n * (n + 1.0)))
  if low < 0.0 then low = 0.0 end
  return math.min(1.0, low)
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
-- Binary values of the reply, named in its JSON by place (blob(v) returns the place).
local blobs = {}
local function blob(v)
  blobs[#blobs + 1] = v
  return #blobs
end
-- What the last sight of this batch saw, for a conversation after it.
local seen = {static = '-1', history = true}
local OPS = {}
"""

_SIGHT: Final = r"""
OPS.sight = function(a)
  local family, now, ticket = a[1], tonumber(a[2]), a[3]
  local f, max_age = tonumber(a[4]), tonumber(a[5])
  local max_families, family_ttl, prefix_ttl = tonumber(a[6]), tonumber(a[7]), tonumber(a[8])
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
  -- The settled pool (MemoryLearner._settle): a first-run opportunity settles when its
  -- prefix comes back, or as not reused when it matures first.
  local function settle(kind, recurred)
    local pl = pool()
    local field = 'settled:' .. kind
    local r, s = stat_get(pl, field)
    if r == nil then r, s = 0.0, 0.0 end
    local x = 0.0
    if recurred then x = 1.0 end
    put(pl, field, fmt(r * f + x) .. ' ' .. fmt(s * f + 1.0))
  end
  local function open_at(key, kind, matures)
    if redis.call('HEXISTS', P .. 'open', key) == 0 and redis.call('HLEN', P .. 'open') >= OPEN_MAX then
      return
    end
    redis.call('HSET', P .. 'open', key, kind)
    redis.call('ZADD', P .. 'opens', fmt(matures), key)
  end
  local function close(key)
    local kind = redis.call('HGET', P .. 'open', key)
    if kind then
      redis.call('HDEL', P .. 'open', key)
      redis.call('ZREM', P .. 'opens', key)
    end
    return kind
  end
  local due = redis.call('ZRANGEBYSCORE', P .. 'opens', '-inf', '(' .. fmt(now), 'LIMIT', 0, SETTLE_BATCH)
  for _, k in ipairs(due) do
    local kind = close(k)
    if kind then settle(kind, false) end
  end
  -- Tails whose TTL ran out count for the static prefix they were first sighted under
  -- (MemoryLearner._settle_anchored): its field 'a:<kind>'; the tail's 'an' (that prefix),
  -- 'ak' (its kind then), 'ad' (its TTL's end), 'ah' (it came back before).
  local ended = redis.call('ZRANGEBYSCORE', P .. 'anchored', '-inf', '(' .. fmt(now), 'WITHSCORES', 'LIMIT', 0, SETTLE_BATCH)
  for i = 1, #ended, 2 do
    local k, at = ended[i], ended[i + 1]
    redis.call('ZREM', P .. 'anchored', k)
    local name = P .. 'p:' .. k
    local t = redis.call('HMGET', name, 'an', 'ak', 'ad', 'ah')
    if t[1] and t[1] ~= '0' and t[3] and tonumber(t[3]) == tonumber(at) then
      redis.call('HSET', name, 'an', '0')
      local under = P .. 'p:' .. t[1]
      if redis.call('EXISTS', under) == 1 then
        local field = 'a:' .. t[2]
        local r, s = 0.0, 0.0
        local v = redis.call('HGET', under, field)
        if v then
          local x, y = string.match(v, '^(%S+) (%S+)$')
          r, s = tonumber(x), tonumber(y)
        end
        local x = 0.0
        if t[4] == '1' then x = 1.0 end
        redis.call('HSET', under, field, fmt(r * f + x) .. ' ' .. fmt(s * f + 1.0))
      end
    end
  end
  local rel = reliability(family)
  local out = {fmt(rel), redis.call('GET', P .. 'minv') or '0', candidates(family)}
  seen = {static = '-1', history = true}
  -- The static prefix the request's tails are sighted under: its 'stable' part when it
  -- has one, else the whole static region's (MemoryLearner.sight).
  local anchor = nil
  for base = 9, #a, 5 do
    local key, kind, shared = a[base], a[base + 1], a[base + 2] == '1'
    local pa, pb = tonumber(a[base + 3]), tonumber(a[base + 4])
    local name = P .. 'p:' .. key
    local h = load(name)
    if h and max_age and now - tonumber(h['l']) > max_age then h = nil end
    if kind == 'static' then
      seen.static = key  -- the whole static region's prefix (not the 'stable' part's)
    elseif kind == 'previous_turn' and not h then
      seen.history = false
    end
    local run = 1
    local cached, writing, concurrent, late = false, false, false, false
    local late_count, previous_run, ttl, cu = 0, 0, TTL_5M, 0.0
    local pending = false
    local live = {}
    local sighters = ''
    if h then
      local last, prun = tonumber(h['l']), tonumber(h['r'])
      ttl, cu = tonumber(h['t']), tonumber(h['cu'])
      late_count, previous_run = tonumber(h['la']), tonumber(h['pr'])
      local void = h['v'] == '1'
      local gap = now - last
      pending = h['lp'] == '1'
      cached = cu > now
      for t, at in string.gmatch(h['w'] or '', '([^=;]+)=([^;]+)') do
        if now - tonumber(at) < CLAIM_TIMEOUT and t ~= ticket then live[#live + 1] = t .. '=' .. at end
      end
      writing = #live > 0 and not cached
      sighters = h['s'] or ''
      if sighters ~= '' and not cached then
        local others = {}
        for t, at in string.gmatch(sighters, '([^=;]+)=([^;]+)') do
          if now - tonumber(at) < CLAIM_TIMEOUT and t ~= ticket then others[#others + 1] = t .. '=' .. at end
        end
        sighters = table.concat(others, ';')
        concurrent = #others > 0
      end
      if void or writing or concurrent then
        run = prun
      else
        if pending and gap > TTL_5M then
          if gap <= TTL_1H then credit(h['f'], h['k'], 0) end
          pending = false
        end
        local opened = close(key)
        if opened then settle(opened, gap <= ttl) end
        if gap <= ttl then
          if h['an'] and h['an'] ~= '0' and now <= tonumber(h['ad']) then
            redis.call('HSET', name, 'ah', '1')
          end
          run = prun + 1
          credit(h['f'], h['k'], bucket_of(prun))
        elseif gap <= TTL_1H then
          late_count = late_count + 1
          previous_run = prun
        end
      end
      late = late_count > 0
    end
    local p = prob(family, kind, bucket_of(run), pa, pb)
    if anchor and bucket_of(run) == 1 then
      local v = redis.call('HGET', P .. 'p:' .. anchor, 'a:' .. kind)
      if v then
        local x, y = string.match(v, '^(%S+) (%S+)$')
        p = (ANCHOR_WEIGHT * p + tonumber(x)) / (ANCHOR_WEIGHT + tonumber(y))
      end
    end
    p = p * rel
    local p_late = 0.0
    if late and h then p_late = prob_late(family, kind, previous_run, pa, pb) * rel end
    local implicit = h and h['ia'] and tonumber(h['ia']) > now - TTL_5M
    out[#out + 1] = {
      run, cached and 1 or 0, writing and 1 or 0, late and 1 or 0, fmt(p), fmt(p_late), h and 1 or 0,
      (cached and ttl >= TTL_1H) and 1 or 0, implicit and 1 or 0
    }
    if h and not anchor and (kind == 'stable' or kind == 'static') then anchor = key end
    -- Nobody claims a tail, but it is sighted until this response begins (MemoryLearner.sight).
    local mine = ticket .. '=' .. fmt(now)
    if writing or concurrent then
      -- Another request's response has not begun: not counted (MemoryLearner.sight).
      if shared and not writing then
        live[#live + 1] = mine
      elseif not writing then
        sighters = sighters == '' and mine or sighters .. ';' .. mine
      end
      redis.call('HSET', name, 'w', table.concat(live, ';'), 's', sighters)
    else
      opportunity(family, kind, bucket_of(run))
      if bucket_of(run) == 1 then
        open_at(key, kind, now + ttl)
      else
        close(key)
      end
      if late and not pending then
        opportunity(family, kind, 0)
        pending = true
      end
      if shared and not cached then
        live[#live + 1] = mine
      elseif not cached then
        sighters = sighters == '' and mine or sighters .. ';' .. mine
      end
      -- A prefix seen again after max_age is a new one: what the old one held (tails
      -- settled under it, the static prefix it was sighted under) goes with it.
      if not h then redis.call('DEL', name) end
      redis.call('HSET', name, 'l', fmt(now), 'r', run, 'f', family, 'k', kind, 't', fmt(ttl),
        'cu', fmt(cu), 'la', late_count, 'w', table.concat(live, ';'), 's', sighters, 'tk', ticket,
        'v', '0', 'lp', pending and '1' or '0', 'pr', previous_run)
      if not h and not anchor and (kind == 'stable' or kind == 'static') then
        anchor = key  -- a static prefix sighted for the first time
      elseif not h and anchor and string.sub(kind, 1, 10) == 'tail_first'
          and redis.call('ZCARD', P .. 'anchored') < OPEN_MAX then
        local ad = now + ttl
        redis.call('HSET', name, 'an', anchor, 'ak', kind, 'ad', fmt(ad), 'ah', '0')
        redis.call('ZADD', P .. 'anchored', fmt(ad), key)
      end
    end
    redis.call('EXPIRE', name, prefix_ttl)
  end
  touch(family, max_families)
  flush(family_ttl)
  return out
end
"""

_STABILITY: Final = r"""
OPS.stability = function(a)
  local family, f = a[1], tonumber(a[2])
  local n = tonumber(a[5])
  local m = tonumber(a[6 + n])
  local k = tonumber(a[7 + n + 3 * m])
  if k >= 0 then
    -- The lines were sent for the positions the caller believed volatile: still so?
    local now_volatile = {}
    for _, i in ipairs(candidates(family)) do
      if i < n then now_volatile[#now_volatile + 1] = i end
    end
    local same = #now_volatile == k
    if same then
      for j, i in ipairs(now_volatile) do
        if tonumber(a[7 + n + 3 * m + j]) ~= i then same = false end
      end
    end
    if not same then return {-1, 0, candidates(family), 1, 0} end
  end
  local t = fam(family)
  local old, oldlines, reordered = {}, {}, 0
  if t.h['st'] then
    local st = cmsgpack.unpack(t.h['st'])
    old, oldlines, reordered = st[1], st[2], st[3] or 0
  end
  local new = {}
  local first = -1
  -- The blocks at the positions that changed, counted in (before) and out (now): all
  -- zero when they are the ones that were there, in another order.
  local moved, changes_seen = {}, false
  for i = 0, n - 1 do
    local digest = a[6 + i]
    local changes, seen_ = 0.0, 0.0
    if i < #old then
      local o = old[i + 1]
      local changed = 0.0
      if digest ~= o[1] then
        changed = 1.0
        changes_seen = true
        moved[o[1]] = (moved[o[1]] or 0) + 1
        moved[digest] = (moved[digest] or 0) - 1
      end
      changes = o[2] * f + changed
      seen_ = o[3] * f + 1.0
    end
    new[i + 1] = {digest, changes, seen_}
    if first < 0 and seen_ >= 2.0 and changes >= 0.8 * seen_ then first = i end
  end
  if n ~= #old then
    reordered = 0
  elseif changes_seen then
    reordered = 1
    for _, c in pairs(moved) do
      if c ~= 0 then reordered = 0 end
    end
  end
  local lines, order = {}, {}
  for _, e in ipairs(oldlines) do
    lines[e[1]] = e
    order[#order + 1] = e[1]
  end
  local rest_stable = 0
  for j = 0, m - 1 do
    local base = 7 + n + 3 * j
    local i, head, rest = tonumber(a[base]), a[base + 1], a[base + 2]
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
  put(t, 'st', cmsgpack.pack({new, kept, reordered}))
  touch(family, tonumber(a[3]))
  flush(tonumber(a[4]))
  return {first, rest_stable, candidates(family), 0, reordered}
end
"""

_CONVERSATION: Final = r"""
OPS.conversation = function(a)
  local name = P .. 'c:' .. a[1]
  local static, has_reply, reply, known = a[2], a[3] == '1', a[4], a[5] == '1'
  if static == '=' then static = seen.static end
  if a[5] == '=' then known = seen.history end
  local now, max_age = tonumber(a[6]), tonumber(a[7])
  local model, tail = a[9], a[10]
  local h = load(name)
  if h and max_age and now - tonumber(h['t']) > max_age then h = nil end
  -- 'o': the tail of the last request in each other lane (model and static prefix),
  -- "model,static,tail,time,pending;...". Back to a model, or to a static prefix this model
  -- had within the hour, is a switch of lane; a static prefix not seen before changes the
  -- lane's. 'pending': what an unsettled request changed, left for another known lane; its
  -- judgement waits for its lane's next request (held if within 5 minutes), '-' for none.
  local others, earlier, held, last = '', -1, nil, h
  if h and h['m'] == model and h['s'] == static then
    others = h['o'] or ''
  elseif h then
    local pattern = '([^,;]+),([^,;]+),([^,;]+),([^,;]+),([^,;]+)'
    local back = h['m'] ~= model
    if not back then
      for m, s, _, at in string.gmatch(h['o'] or '', pattern) do
        if m == model and s == static and now - tonumber(at) <= TTL_1H then back = true end
      end
    end
    local pending = '-'
    if back and h['y'] ~= '1' and h['z'] ~= '1' then pending = h['w'] or STATIC end
    local kept = {h['m'] .. ',' .. h['s'] .. ',' .. (h['x'] or '-1') .. ',' .. h['t'] .. ',' .. pending}
    for m, s, x, at, w in string.gmatch(h['o'] or '', pattern) do
      if back and m == model then
        if now - tonumber(at) <= TTL_1H and (earlier < 0 or s == static) then
          earlier = tonumber(x)
          held = nil
          if s == static and now - tonumber(at) <= TTL_5M and w ~= '-' then held = w end
        end
      elseif #kept < CONVERSATION_MODELS - 1 then
        kept[#kept + 1] = m .. ',' .. s .. ',' .. x .. ',' .. at .. ',' .. w
      end
    end
    others = table.concat(kept, ';')
    if back then h = nil end
  end
  local steady = h ~= nil and h['s'] == static and known
  -- 'z': whether the request before this one was steady ('-': there was none).
  local z = '-'
  if h ~= nil then z = h['y'] end
  -- 'w': what this request changed (a first request: its static prefix), 'k': continued.
  local change = ''
  -- A history change apart for the size class of this request's tail (history_change).
  local history = HISTORY
  if a[15] ~= '' then history = HISTORY .. '|' .. a[15] end
  if h == nil or h['s'] ~= static then change = STATIC elseif not known then change = history end
  -- Whether the conversation goes on is the conversation's, whatever lane its requests are in.
  local continued = last ~= nil and now - tonumber(last['t']) <= TTL_1H
  local fid, f = a[11], tonumber(a[12])
  -- 'g' (family and pool): continued requests followed by the next within 5 minutes.
  local t, pl = fam(fid), pool()
  -- A family written here (the scope's, which no sight touches) counts against max_families.
  local function save()
    if next(t.dirty) ~= nil then touch(fid, tonumber(a[14])) end
    flush(tonumber(a[13]))
  end
  if held then
    -- 'u' .. what changed: the unsettled request of the lane this one is back to held.
    for _, s in ipairs({t, pl}) do
      local r, n = stat_get(s, 'u' .. held)
      if r == nil then r, n = 0.0, 0.0 end
      put(s, 'u' .. held, fmt(r * f) .. ' ' .. fmt(n * f + 1.0))
    end
  end
  if continued and last['k'] == '1' and now - tonumber(last['t']) <= TTL_5M then
    for _, s in ipairs({t, pl}) do
      local r, n = stat_get(s, 'g')
      if r ~= nil and n > 0.0 then
        local x = r + 1.0
        if not (x < n) then x = n end
        put(s, 'g', fmt(x) .. ' ' .. fmt(n))
      end
    end
  end
  local r, n = stat_get(pl, 'g')
  if r == nil then r, n = 0.0, 0.0 end
  local mean = (r + PRIOR_WEIGHT * GOES_ON_PRIOR) / (n + PRIOR_WEIGHT)
  r, n = stat_get(t, 'g')
  if r == nil then r, n = 0.0, 0.0 end
  local goes_on = (r + PRIOR_WEIGHT * mean) / (n + PRIOR_WEIGHT)
  if continued then
    for _, s in ipairs({t, pl}) do
      r, n = stat_get(s, 'g')
      if r == nil then r, n = 0.0, 0.0 end
      put(s, 'g', fmt(r * f) .. ' ' .. fmt(n * f + 1.0))
    end
  end
  redis.call('HSET', name, 's', static, 't', fmt(now), 'y', steady and '1' or '0', 'm', model,
    'x', tail, 'o', others, 'z', z, 'w', change, 'k', continued and '1' or '0')
  if has_reply then redis.call('HSET', name, 'r', reply) else redis.call('HDEL', name, 'r') end
  redis.call('EXPIRE', name, tonumber(a[8]))
  save()
  if h == nil then return {earlier} end
  if now - tonumber(h['t']) > TTL_1H then return {earlier, h['s'], 0, h['t'], h['y'], '0', '0'} end
  -- 'u' .. what changed (family and pool): unsettled conversations whose next request
  -- changed again, judged, counted for what the previous request changed.
  if h['y'] ~= '1' and h['z'] ~= '1' then
    local x = 0.0
    if not steady then x = 1.0 end
    local field = 'u' .. (h['w'] or STATIC)
    for _, s in ipairs({t, pl}) do
      r, n = stat_get(s, field)
      if r == nil then r, n = 0.0, 0.0 end
      put(s, field, fmt(r * f + x) .. ' ' .. fmt(n * f + 1.0))
    end
    save()
  end
  local field = 'u' .. STATIC
  if h['s'] == static and not known then field = 'u' .. history end
  r, n = stat_get(pl, field)
  if r == nil then r, n = 0.0, 0.0 end
  mean = (r + PRIOR_WEIGHT * UNSETTLED_PRIOR) / (n + PRIOR_WEIGHT)
  r, n = stat_get(t, field)
  if r == nil then r, n = 0.0, 0.0 end
  return {earlier, h['s'], h['r'] and blob(h['r']) or 0, h['t'], h['y'],
    fmt((r + PRIOR_WEIGHT * mean) / (n + PRIOR_WEIGHT)), fmt(goes_on)}
end
"""

_MINIMUM: Final = r"""
OPS.minimum = function(a)
  local before = redis.call('GET', P .. 'minv') or '0'
  local key, tier = a[1], a[2]
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
  return {redis.call('HGET', P .. 'min', key) or '0', before, redis.call('GET', P .. 'minv') or '0',
    redis.call('HGET', P .. 'ih', key) or ''}
end
-- The implicit cache's hit counts per (profile, model) key: 'expected served', forgotten
-- (MemoryLearner.implicit_read). Returns the new counts.
OPS.implicit_read = function(a)
  local key, served, f = a[1], a[2] == '1', tonumber(a[3])
  local e, c = 0.0, 0.0
  local v = redis.call('HGET', P .. 'ih', key)
  if v then
    local x, y = string.match(v, '^(%S+) (%S+)$')
    e, c = tonumber(x), tonumber(y)
  elseif redis.call('HLEN', P .. 'ih') >= 4096 then
    redis.call('DEL', P .. 'ih')
  end
  local x = 0.0
  if served then x = 1.0 end
  local counts = fmt(e * f + 1.0) .. ' ' .. fmt(c * f + x)
  redis.call('HSET', P .. 'ih', key, counts)
  return counts
end
"""

_WRITES: Final = r"""
OPS.void = function(a)
  local ticket, family_ttl = a[1], tonumber(a[2])
  for i = 3, #a do
    local name = P .. 'p:' .. a[i]
    local h = load(name)
    if h and h['tk'] == ticket and h['v'] ~= '1' then
      -- Taken back from the family's counts and from their pool (MemoryLearner.void).
      local field = h['k'] .. ':' .. bucket_of(tonumber(h['r']))
      for _, t in ipairs({fam(h['f']), pool()}) do
        local r, s = stat_get(t, field)
        if r ~= nil then
          s = math.max(0.0, s - 1.0)
          put(t, field, fmt(math.min(r, s)) .. ' ' .. fmt(s))
        end
      end
      -- Nor does it count for the static prefix it was sighted under (a retry is the same
      -- request again, and a failure says nothing of whether the conversation goes on).
      redis.call('HSET', name, 'v', '1', 'an', '0')
    end
    -- Its claims and sightings end with it, whoever sighted the prefix last.
    if h and (h['w'] or '') ~= '' then redis.call('HSET', name, 'w', drop_writer(h['w'], ticket)) end
    if h and (h['s'] or '') ~= '' then redis.call('HSET', name, 's', drop_writer(h['s'], ticket)) end
  end
  flush(family_ttl)
  return 1
end
OPS.release = function(a)
  local ticket = a[1]
  for i = 2, #a do
    local name = P .. 'p:' .. a[i]
    local w = redis.call('HGET', name, 'w')
    if w and w ~= '' then
      -- Its claims become sightings until its response begins (MemoryLearner.release).
      local kept, moved = {}, {}
      for t, at in string.gmatch(w, '([^=;]+)=([^;]+)') do
        if t == ticket then moved[#moved + 1] = t .. '=' .. at else kept[#kept + 1] = t .. '=' .. at end
      end
      if #moved > 0 then
        local sg = redis.call('HGET', name, 's') or ''
        if sg ~= '' then moved[#moved + 1] = sg end
        redis.call('HSET', name, 'w', table.concat(kept, ';'), 's', table.concat(moved, ';'))
      end
    end
  end
  return 1
end
OPS.started = function(a)
  local ticket, now = a[1], tonumber(a[2])
  for i = 3, #a, 2 do
    local name = P .. 'p:' .. a[i]
    local ttl = tonumber(a[i + 1])
    local h = load(name)
    if h then
      local w, sg = drop_writer(h['w'] or '', ticket), drop_writer(h['s'] or '', ticket)
      if ttl > 0 then
        local cu = tonumber(h['cu'])
        local t = ttl
        if cu > now then t = math.max(tonumber(h['t']), ttl) end
        redis.call('HSET', name, 'cu', fmt(math.max(cu, now + ttl)), 't', fmt(t), 'w', w, 's', sg)
      else
        redis.call('HSET', name, 'w', w, 's', sg)
      end
    end
  end
  return 1
end
OPS.implicit = function(a)
  local now = a[1]
  for i = 2, #a do
    local name = P .. 'p:' .. a[i]
    if redis.call('EXISTS', name) == 1 then redis.call('HSET', name, 'ia', now) end
  end
  return 1
end
OPS.not_cached = function(a)
  for i = 1, #a do
    local name = P .. 'p:' .. a[i]
    if redis.call('EXISTS', name) == 1 then redis.call('HSET', name, 'cu', '0') end
  end
  return 1
end
OPS.feedback = function(a)
  local family, expected, confirmed = a[1], tonumber(a[2]), tonumber(a[3])
  local f = tonumber(a[4])
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
  touch(family, tonumber(a[5]))
  flush(tonumber(a[6]))
  return 1
end
OPS.peek = function(a)
  local b = tonumber(a[3])
  if b >= 3 then b = 3 end
  return {fmt(prob(a[1], a[2], b, tonumber(a[4]), tonumber(a[5]))), fmt(reliability(a[1]))}
end
"""

_BATCH: Final = r"""
local out = {}
for _, o in ipairs(cjson.decode(ARGV[2])) do
  local a = {}
  for j = 2, #o do
    local v = o[j]
    if type(v) == 'table' then v = ARGV[2 + v[1]] end
    a[j - 1] = v
  end
  out[#out + 1] = OPS[o[1]](a)
end
local reply = {cjson.encode(out)}
for _, b in ipairs(blobs) do reply[#reply + 1] = b end
return reply
"""

#: The constants the Lua shares with ``_learning`` (``@NAME@`` in its text).
_CONSTANTS: Final = (
    "TTL_1H",
    "TTL_5M",
    "CLAIM_TIMEOUT",
    "PRIOR_WEIGHT",
    "LATE_PRIOR_WEIGHT",
    "LATE_Z",
    "OPEN_MAX",
    "SETTLE_BATCH",
    "SETTLED_Z",
    "ANCHOR_WEIGHT",
    "CONVERSATION_MODELS",
    "UNSETTLED_PRIOR",
    "GOES_ON_PRIOR",
    "STATIC",
    "HISTORY",
)


def _script() -> str:
    text = _COMMON + _SIGHT + _STABILITY + _CONVERSATION + _MINIMUM + _WRITES + _BATCH
    for name in _CONSTANTS:
        text = text.replace(f"@{name}@", repr(getattr(_learning, name)))
    return text


#: The whole script: helpers, every op, the batch loop.
SCRIPT: Final = _script()
