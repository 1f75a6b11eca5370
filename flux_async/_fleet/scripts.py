"""The fleet's server-side scripts: every change to shared state is one atomic Lua call.

All keys share the prefix ``flux_async:{<fleet id>}:`` (the braces keep them in one
Redis Cluster slot), passed as ``ARGV[1]``; ``ARGV[2]`` is the caller's wall clock in
milliseconds (the client's one clock: expiries compare clocks of different machines, so
their skew must stay well below the heartbeat ``ttl``, as NTP keeps it). The keys:

- ``owners``   ZSET owner -> heartbeat expiry (ms). An owner past its expiry is dead.
- ``beats``    HASH owner -> its last heartbeat (ms). An owner silent for longer than
  the pump's ``stale_ms`` is *suspect*: not yet dead, but granted nothing.
- ``leases``   HASH lease id -> ``owner \\t model``: the fleet's slots in use (its HLEN).
- ``held:<owner>`` SET of that owner's lease ids; ``models`` HASH model -> leases.
- ``queue``    ZSET ticket -> order (INCR ``seq``; refused submits get ``-seq``: the head);
  ``tickets`` HASH ticket -> ``owner \\t model \\t model cap \\t blocked-until epoch``.
- ``granted:<owner>`` LIST of tickets granted to that owner and not yet collected.
- ``window``   HASH: ``value`` (slots the fleet may use now), ``gen``, ``cut_gen``,
  ``cut_in``, ``quiet`` (ms of the last 429 or raise), ``epoch`` (tasks ended + raises),
  ``refused``, ``raises``: the shared form of :class:`~flux_async._polling._window.AdaptiveWindow`.
- ``task:<id>`` HASH: a submitted task's record (see ``registry``); ``owned:<owner>`` SET.

A ticket is granted in queue order while ``HLEN leases < window``, skipping (without
reordering) tickets whose model is at its cap, whose owner is suspect, or that wait for
a task to end (a refused submit: ``blocked-until epoch``); a dead owner's tickets are
dropped. Skipping a suspect's tickets keeps a killed process from taking the slots freed
until its heartbeat expires (``ttl``); a live one that was only slow keeps its place.
Any process's pump grants for every process; each collects its own grants from
``granted:<owner>``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACCEPTED",
    "ADOPT",
    "BEAT",
    "CANCEL",
    "ENQUEUE",
    "LEAVE",
    "OCCUPY",
    "PUMP",
    "REFUSED",
    "RELEASE",
]

_PRELUDE: Final = r"""
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
-- ARG: the script's own arguments, ARG[1] the prefix (ARGV[2] is the caller's clock).
local ARG = {P}
for i = 3, #ARGV do ARG[i - 1] = ARGV[i] end
local function now_ms() return NOW end
local function split(s)
  local out = {}
  for part in string.gmatch(s, '([^\t]+)') do table.insert(out, part) end
  return out
end
local function alive(owner, now)
  local exp = redis.call('ZSCORE', P .. 'owners', owner)
  return exp and tonumber(exp) >= now
end
local function window_init(configured)
  local w = P .. 'window'
  if redis.call('HSETNX', w, 'value', configured) == 1 then
    redis.call('HSET', w, 'gen', 0, 'cut_gen', -1, 'cut_in', -1, 'epoch', 0,
               'refused', 0, 'raises', 0)
  end
  local value = tonumber(redis.call('HGET', w, 'value'))
  if value > configured then
    value = configured
    redis.call('HSET', w, 'value', value)
  end
  return value
end
-- A submit accepted or a task ended: one generation; raise the window after quiet_ms.
local function new_generation(configured, quiet_ms, now)
  local w = P .. 'window'
  local value = window_init(configured)
  redis.call('HINCRBY', w, 'gen', 1)
  local quiet = redis.call('HGET', w, 'quiet')
  if quiet and value < configured and now - tonumber(quiet) >= quiet_ms then
    redis.call('HSET', w, 'value', value + 1, 'quiet', now)
    redis.call('HINCRBY', w, 'raises', 1)
    redis.call('HINCRBY', w, 'epoch', 1)
  end
end
local function drop_lease(lease)
  local v = redis.call('HGET', P .. 'leases', lease)
  if not v then return false end
  local f = split(v)
  redis.call('HDEL', P .. 'leases', lease)
  redis.call('SREM', P .. 'held:' .. f[1], lease)
  if redis.call('HINCRBY', P .. 'models', f[2], -1) <= 0 then
    redis.call('HDEL', P .. 'models', f[2])
  end
  return true
end
local function add_lease(lease, owner, model)
  redis.call('HSET', P .. 'leases', lease, owner .. '\t' .. model)
  redis.call('SADD', P .. 'held:' .. owner, lease)
  redis.call('HINCRBY', P .. 'models', model, 1)
end
"""

# ARGV: prefix, owner, ttl_ms, then ``lease \t model`` for every slot the owner holds.
# Renew the heartbeat and drop the leases Redis holds for the owner but the owner does not
# (a release that never reached Redis), except grants not yet collected. (Leases Redis
# lost in a restart are added back by OCCUPY when the owner rejoins.) Returns
# {1 if the owner was known else 0, live owners, tickets queued, dead owner ids...}.
BEAT: Final = (
    _PRELUDE
    + r"""
local owner, ttl = ARG[2], tonumber(ARG[3])
local now = now_ms()
local known = redis.call('ZSCORE', P .. 'owners', owner) and 1 or 0
redis.call('ZADD', P .. 'owners', now + ttl, owner)
redis.call('HSET', P .. 'beats', owner, now)
local mine = {}
for i = 4, #ARG do mine[split(ARG[i])[1]] = true end
local pending = {}
for _, t in ipairs(redis.call('LRANGE', P .. 'granted:' .. owner, 0, -1)) do pending[t] = true end
for _, lease in ipairs(redis.call('SMEMBERS', P .. 'held:' .. owner)) do
  if not mine[lease] and not pending[lease] then drop_lease(lease) end
end
local dead = redis.call('ZRANGEBYSCORE', P .. 'owners', '-inf', '(' .. now, 'LIMIT', 0, 16)
local live = redis.call('ZCOUNT', P .. 'owners', now, '+inf')
local out = {known, live, redis.call('ZCARD', P .. 'queue')}
for _, d in ipairs(dead) do table.insert(out, d) end
return out
"""
)

# ARGV: prefix, owner, then ``lease \t model`` for slots taken outside the queue (a
# resumed task, a slot taken while Redis was away): add each lease Redis lacks.
OCCUPY: Final = (
    _PRELUDE
    + r"""
local owner = ARG[2]
for i = 3, #ARG do
  local f = split(ARG[i])
  if redis.call('HEXISTS', P .. 'leases', f[1]) == 0 then add_lease(f[1], owner, f[2]) end
end
return 1
"""
)

# ARGV: prefix, owner. A graceful leave: mark the owner dead now, so the fleet adopts
# whatever it leaves unfinished at once rather than after its heartbeat expires.
LEAVE: Final = (
    _PRELUDE
    + r"""
redis.call('ZADD', P .. 'owners', 0, ARG[2])
redis.call('HDEL', P .. 'beats', ARG[2])
return 1
"""
)

# ARGV: prefix, owner, ticket, model, model cap, head (1: a refused submit).
ENQUEUE: Final = (
    _PRELUDE
    + r"""
local owner, ticket, model, cap, head = ARG[2], ARG[3], ARG[4], ARG[5], ARG[6]
local seq = redis.call('INCR', P .. 'seq')
local blocked = -1
local score = seq
if head == '1' then
  blocked = tonumber(redis.call('HGET', P .. 'window', 'epoch') or '0')
  score = -seq
end
redis.call('HSET', P .. 'tickets', ticket, owner .. '\t' .. model .. '\t' .. cap .. '\t' .. blocked)
redis.call('ZADD', P .. 'queue', score, ticket)
return seq
"""
)

# ARGV: prefix, owner, configured cap, stale_ms. Grant tickets in order; return
# {known owner (0/1), leases in use, window, tickets still queued (every owner's),
#  tickets granted to this owner...}.
PUMP: Final = (
    _PRELUDE
    + r"""
local owner, configured, stale = ARG[2], tonumber(ARG[3]), tonumber(ARG[4])
local now = now_ms()
local value = window_init(configured)
local function suspect(o)
  local beat = redis.call('HGET', P .. 'beats', o)
  return beat and tonumber(beat) < now - stale
end
local epoch = tonumber(redis.call('HGET', P .. 'window', 'epoch'))
local used = redis.call('HLEN', P .. 'leases')
local tickets = redis.call('ZRANGE', P .. 'queue', 0, -1)
for _, t in ipairs(tickets) do
  if used >= value then break end
  local meta = redis.call('HGET', P .. 'tickets', t)
  if not meta then
    redis.call('ZREM', P .. 'queue', t)
  else
    local f = split(meta)
    if not alive(f[1], now) then
      redis.call('ZREM', P .. 'queue', t)
      redis.call('HDEL', P .. 'tickets', t)
    elseif (tonumber(f[4]) < 0 or tonumber(f[4]) < epoch) and not suspect(f[1]) then
      local n = tonumber(redis.call('HGET', P .. 'models', f[2]) or '0')
      if n < tonumber(f[3]) then
        redis.call('ZREM', P .. 'queue', t)
        redis.call('HDEL', P .. 'tickets', t)
        add_lease(t, f[1], f[2])
        redis.call('RPUSH', P .. 'granted:' .. f[1], t)
        used = used + 1
      end
    end
  end
end
local mine = redis.call('LRANGE', P .. 'granted:' .. owner, 0, -1)
redis.call('DEL', P .. 'granted:' .. owner)
local out = {alive(owner, now) and 1 or 0, used, value, redis.call('ZCARD', P .. 'queue')}
for _, t in ipairs(mine) do table.insert(out, t) end
return out
"""
)

# ARGV: prefix, ticket, unblock (1: drop the wait for a task to end, keep the place).
# A ticket not yet granted leaves the queue (or is unblocked); returns 1 when it was
# still queued, 0 when it was already granted (the caller then releases the lease).
CANCEL: Final = (
    _PRELUDE
    + r"""
local ticket, unblock = ARG[2], ARG[3]
local meta = redis.call('HGET', P .. 'tickets', ticket)
if not meta then return 0 end
if unblock == '1' then
  local f = split(meta)
  redis.call('HSET', P .. 'tickets', ticket, f[1] .. '\t' .. f[2] .. '\t' .. f[3] .. '\t-1')
  return 1
end
redis.call('HDEL', P .. 'tickets', ticket)
redis.call('ZREM', P .. 'queue', ticket)
return 1
"""
)

# ARGV: prefix, lease, ended (1: the task ended: evidence for the window), configured,
# quiet_ms. Give a lease back; returns {1 if it was held else 0, tickets queued}.
RELEASE: Final = (
    _PRELUDE
    + r"""
local lease, ended = ARG[2], ARG[3]
local held = drop_lease(lease)
if held and ended == '1' then
  redis.call('HINCRBY', P .. 'window', 'epoch', 1)
  new_generation(tonumber(ARG[4]), tonumber(ARG[5]), now_ms())
end
return {held and 1 or 0, redis.call('ZCARD', P .. 'queue')}
"""
)

# ARGV: prefix, lease, configured, quiet_ms. The submit held by ``lease`` was accepted.
ACCEPTED: Final = (
    _PRELUDE
    + r"""
new_generation(tonumber(ARG[3]), tonumber(ARG[4]), now_ms())
return 1
"""
)

# ARGV: prefix, lease, configured. A 429 on the submit held by ``lease``: cut the window
# to the leases the server accepted (HLEN still counts this one), once per generation,
# then give the lease back. Returns the new window.
REFUSED: Final = (
    _PRELUDE
    + r"""
local lease, configured = ARG[2], tonumber(ARG[3])
local w = P .. 'window'
local value = window_init(configured)
local in_flight = redis.call('HLEN', P .. 'leases')
redis.call('HINCRBY', w, 'refused', 1)
redis.call('HSET', w, 'quiet', now_ms())
local gen = redis.call('HGET', w, 'gen')
if not (redis.call('HGET', w, 'cut_gen') == gen
        and tonumber(redis.call('HGET', w, 'cut_in')) == in_flight) then
  redis.call('HSET', w, 'cut_gen', gen, 'cut_in', in_flight)
  value = math.min(value, math.max(1, in_flight - 1))
  redis.call('HSET', w, 'value', value)
end
drop_lease(lease)
return value
"""
)

# ARGV: prefix, dead owner, adopter. If the owner is still past its expiry, hand its
# registered tasks and their leases to the adopter (atomically: one adopter wins), drop
# its other leases, and return the adopted tasks as flat HGETALL lists.
ADOPT: Final = (
    _PRELUDE
    + r"""
local dead, me = ARG[2], ARG[3]
local now = now_ms()
local exp = redis.call('ZSCORE', P .. 'owners', dead)
if (not exp) or tonumber(exp) >= now then return {} end
redis.call('ZREM', P .. 'owners', dead)
redis.call('HDEL', P .. 'beats', dead)
local bound = {}
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'owned:' .. dead)) do
  local key = P .. 'task:' .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'owner', me)
    redis.call('SADD', P .. 'owned:' .. me, id)
    local lease = redis.call('HGET', key, 'lease')
    if lease then bound[lease] = true end
    table.insert(out, redis.call('HGETALL', key))
  end
end
for _, lease in ipairs(redis.call('SMEMBERS', P .. 'held:' .. dead)) do
  local v = redis.call('HGET', P .. 'leases', lease)
  if v and bound[lease] then
    redis.call('HSET', P .. 'leases', lease, me .. '\t' .. split(v)[2])
    redis.call('SADD', P .. 'held:' .. me, lease)
  elseif v then
    drop_lease(lease)
  end
end
redis.call('DEL', P .. 'owned:' .. dead, P .. 'held:' .. dead, P .. 'granted:' .. dead)
return out
"""
)
