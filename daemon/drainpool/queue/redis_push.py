"""The Redis queue's push: an enqueue leases its job to an idle pool at once (issue 21).

Why: a wake-up message makes the woken pool fetch, and that fetch's round trip
(0.6 ms here) was most of the pickup latency on Redis. So a fetch that finds
fewer jobs than it asked for registers its pool as idle, and the enqueue
script leases a ready job to such a pool itself and publishes the job's row
on the pool's push channel; the pool's waiter (drainpool.queue.redis_wakeups)
hands it to the workers without a fetch.

Only a fetch that found nothing registers (the design asked for any fetch that
found fewer than it asked for; bent): a fetch that found some means jobs are
streaming in, and the pool's fetches in gaps then take many jobs per script.
Registered after each partial fetch, a burst of 1,000 single enqueues went
one push (and one ack script) per job, and took twice as long (1.0 s, not
0.5 s here). So a burst into an idle pool pushes at most its free slots and
then streams as before; one that found some sets `free` to 0.

- The registration, written by the fetch script (no round trip of its own):
  a hash `{prefix}:idle:{push id}` with what a lease needs (the consumer,
  the token of the fetch that made it, lease ms, max attempts, host, pid,
  pool), its tasks, and `free`, the slots the fetch left empty. A set
  `{prefix}:idlers:{task}` per task names the registered push ids.
- Liveness is the subscription's, not a key expiry: the push id is new at each
  subscription of the waiter, so a push channel has at most one listener, and
  a registration left by a broken connection or a dead daemon has none. The
  enqueue pushes only where `PUBSUB NUMSUB` finds the listener, to the
  registered pool with the most free slots, and lowers its `free`; a
  registration with free slots and no listener can never be pushed to again,
  and the enqueue that finds it deletes it with its names in every idlers set.
  (Before, the key expired after twice the safety-net interval and every idle
  round renewed it: two commands a round, 12 a minute at the default 10 s,
  which broke issue 21's one command a second per pool.)
- An idle round that changed nothing sends nothing: the pool remembers what it
  last registered (IdleMemory: push id, n, heard) and each fetch tells its
  script whether that may have changed; when not, the registration in Redis is
  exactly what the script would write again (below). When it may have (n or
  heard moved, a new subscription, the last fetch found jobs, or the pool's
  FULL_ROUND_EVERY-th round, 5 minutes at the default 10 s), the script reads
  it (HMGET), writes what differs, writes it again if it is gone, and says so
  in the fetch's last row. A registration lost while the pool thinks it there
  (deleted by hand, FLUSHALL) costs pushes only: the first enqueue after
  it is announced instead, its fetch finds the job, and the pool's next idle
  fetch registers again; with no enqueue, the full round does within 30
  safety-net rounds. (A Redis restart or a killed connection is a new
  subscription: registered again at the next fetch.)
- A backstop expiry of an hour (BACKSTOP_SECONDS, or twice the longest gap
  between full rounds if longer), moved on by each round that asks Redis and
  leaves a slot free: against garbage only. A full registration (free 0) is not asked about by the
  enqueue (no NUMSUB per enqueue under load), so a daemon that died full
  would leave its registration, and the idlers names of tasks never enqueued
  again would stay. It is moved on rather than set once so that a live pool's
  registration never expires with a push on the wire: one written again
  counts `sent` from `heard`, and that push would be one too many.
- Over-delivery is bounded by the registered free count, and in fact exact:
  every push lowers `free`; the registration counts the pushes it sent, the
  waiter those it handed over, and a fetch of n that found nothing registers
  `n - (sent - heard)` free slots, the pushes still on the wire being taken
  already (heard counts a push once the pool holds it, so a fetch that
  races a hand-over registers a slot fewer, never one more). A push lowers
  `free` and raises `sent` together, so while n and heard stay, a push not
  yet heard leaves the registration as a full round would write it.
- A pushed job is an ordinary leased job: if its pool no longer listens (the
  connection died after the push), it comes back when its lease runs out.
  A pool that drains refuses pushes: its waiter releases them and removes the
  registration; at close the waiter removes it too (after a crash, the next
  enqueue of its tasks finds no listener and deletes it).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from drainpool.queue.base import Failure, Job, decode_meta, decode_payload, fetched_job

# Lua for the scripts' prelude (drainpool.queue.redis), after lease_row and claim.
PUSH_LUA = r"""
local function idle_key(push_id) return P .. ':idle:' .. push_id end
local function idlers_key(task) return P .. ':idlers:' .. task end
-- A registration goes, with its names in the idlers sets: no push reaches it any more.
local function drop_idle(push_id, tasks)
  redis.call('DEL', idle_key(push_id))
  for _, task in ipairs(tasks) do redis.call('SREM', idlers_key(task), push_id) end
end
local idle_seen = {}  -- per push id: one script's view of a registration ({} when unusable)
local idle_by_task = {}
-- The registered pools of `task` that listen and have a free slot (read once per script).
-- A registration with a free slot and no listener is dead (its push id was its connection's
-- subscription): dropped here, for all its tasks. A full one is not asked (no NUMSUB per
-- enqueue under load); its backstop expiry ends it if its pool died.
local function idle_pools(task)
  local pools = idle_by_task[task]
  if pools then return pools end
  pools = {}
  for _, push_id in ipairs(redis.call('SMEMBERS', idlers_key(task))) do
    local pool = idle_seen[push_id]
    if pool == nil then
      pool = {}
      local f = redis.call('HMGET', idle_key(push_id), 'free', 'me', 'token', 'lease',
        'max_attempts', 'host', 'pid', 'pool', 'tasks')
      if not f[1] then
        redis.call('SREM', idlers_key(task), push_id)  -- gone: dropped, or its backstop
      elseif tonumber(f[1]) > 0 then
        if redis.call('PUBSUB', 'NUMSUB', P .. ':push:' .. push_id)[2] == 0 then
          drop_idle(push_id, f[9] and cjson.decode(f[9]) or {task})
        else
          pool = {id = push_id, free = tonumber(f[1]), me = f[2], token = f[3],
            lease = tonumber(f[4]), max_attempts = tonumber(f[5]), host = f[6], pid = f[7],
            pool = f[8]}
        end
      end
      idle_seen[push_id] = pool
    end
    if pool.id then pools[#pools + 1] = pool end
  end
  idle_by_task[task] = pools
  return pools
end
-- Leases the oldest ready entry of `task` to an idle pool and publishes its row there.
-- False when no pool can take it (or the entry turned out gone): then the caller wakes.
local function push_to_idle(task)
  local best
  for _, pool in ipairs(idle_pools(task)) do
    if pool.free > 0 and (best == nil or pool.free > best.free) then best = pool end
  end
  if best == nil then return false end
  local s = stream_key(task)
  local r = redis.pcall('XREADGROUP', 'GROUP', G, best.me, 'COUNT', 1, 'STREAMS', s, '>')
  if type(r) ~= 'table' or r.err or #r == 0 then return false end  -- NOGROUP: fetch mends
  local entry, id = r[1][2][1][1], r[1][2][1][2][2]
  redis.call('SET', delivered_key(task), entry)
  local now = now_ms()
  claim(s, best, {entry}, now)
  local row = lease_row(id, task, entry, best, now)
  if row == nil or #row ~= 7 then return false end
  best.free = best.free - 1
  redis.call('HINCRBY', idle_key(best.id), 'free', -1)
  redis.call('HINCRBY', idle_key(best.id), 'sent', 1)
  row[8] = best.token
  redis.call('PUBLISH', P .. ':push:' .. best.id, cjson.encode(row))
  return true
end
-- The fetch's part: `free` slots it registers (0: it found jobs); `heard`: pushes its pool
-- holds; `changed`: the pool's view may differ from what it last registered (IdleMemory).
-- A fetch that found nothing and changed nothing sends no command at all. Returns what the
-- pool remembers: '' (nothing sent), 'busy' (found jobs: free 0, or no registration),
-- 'kept' (registered, it was there) or 'written' (registered anew: it was gone).
-- A registration keeps the token it was made with (its pushes' lease token).
local function register_idle(push_id, backstop, heard, changed, free, L, tasks)
  if push_id == '' or (free > 0 and not changed) then return '' end
  local busy = free == 0
  local h = idle_key(push_id)
  local f = redis.call('HMGET', h, 'sent', 'free')
  local sent = math.max(tonumber(f[1] or '0') or 0, heard)
  free = math.max(free - (sent - heard), 0)  -- pushes on the wire are taken already
  local outcome = 'kept'
  if not f[1] then
    if free == 0 then return 'busy' end
    redis.call('HSET', h, 'free', free, 'sent', sent, 'me', L.me, 'token', L.token,
      'lease', L.lease, 'max_attempts', L.max_attempts, 'host', L.host, 'pid', L.pid,
      'pool', L.pool, 'tasks', cjson.encode(tasks))
    for _, task in ipairs(tasks) do redis.call('SADD', idlers_key(task), push_id) end
    outcome = 'written'
  elseif tonumber(f[2]) ~= free or tonumber(f[1]) ~= sent then
    redis.call('HSET', h, 'free', free, 'sent', sent)
  end
  if free > 0 then redis.call('PEXPIRE', h, backstop) end  -- the backstop, moved on
  return busy and 'busy' or outcome
end
"""

# ARGV[3]: push id; ARGV[4..]: its tasks. The registration goes: no more pushes to it.
FORGET_IDLE = r"""
drop_idle(ARGV[3], {unpack(ARGV, 4)})
return 0
"""

FULL_ROUND_EVERY = 30  # idle rounds: the 30th asks Redis whatever the pool remembers
BACKSTOP_SECONDS = 3600.0  # a registration no full round moved on for this long is garbage


@dataclass(frozen=True)
class IdleAsk:
    """What a fetch tells its script about its pool's registration (`register_idle`)."""

    push_id: str = ""  # "" when no push can reach the pool: nothing registered
    n: int = 0  # the slots the fetch asks for: what it registers if it finds nothing
    heard: int = 0  # pushes the pool holds
    changed: bool = True  # False: what the pool last registered stands; nothing is sent
    backstop_ms: int = 0

    def args(self) -> tuple[str, int, int, int]:
        return self.push_id, self.backstop_ms, self.heard, int(self.changed)


class IdleMemory:
    """What a pool last registered, so that an idle round that changes nothing sends
    nothing (issue 21); what it cannot see, Redis is asked at every FULL_ROUND_EVERY-th
    round (see the module docstring). Used by the fetching thread only."""

    def __init__(self) -> None:
        self._registered: tuple[str, int, int] | None = None  # (push id, n, heard)
        self._quiet_rounds = 0  # fetches that sent nothing since Redis was last asked

    def ask(self, push_id: str, n: int, heard: int, backstop_ms: int) -> IdleAsk:
        stale = self._quiet_rounds + 1 >= FULL_ROUND_EVERY
        changed = stale or self._registered != (push_id, n, heard)
        return IdleAsk(push_id, n, heard, changed, backstop_ms)

    def answer(self, ask: IdleAsk, outcome: str) -> None:
        """The script's outcome: '' (nothing sent), 'busy', 'kept' or 'written'."""
        if not outcome:
            self._quiet_rounds += 1
            return
        self._quiet_rounds = 0
        registered = outcome in ("kept", "written")
        self._registered = (ask.push_id, ask.n, ask.heard) if registered else None


def push_channel(prefix: str, push_id: str) -> str:
    return f"{prefix}:push:{push_id}"


def job_from_row(row: Sequence[Any], token: str) -> tuple[Job, str]:
    """A leased job's row (the fetch script's, or a push's) as a Job, and why its payload
    cannot be decoded ("" when it can: the caller dead-letters the job otherwise)."""
    job_id, task, body, attempts, enqueued_at, timeout, meta = row
    payload, error = decode_payload(body)
    job = fetched_job(
        str(job_id),
        task,
        payload,
        int(attempts),
        token,
        float(enqueued_at),
        float(timeout) if timeout else None,
        decode_meta(meta),
    )
    return job, error


class PushOwner(Protocol):
    """What a waiter needs of its queue for the pushes it cannot hand over."""

    def settle(
        self,
        acks: Sequence[Any] = (),
        releases: Sequence[Job] = (),
        failures: Sequence[Failure] = (),
    ) -> None: ...

    def forget_idle(self, push_id: str, tasks: Collection[str]) -> None: ...
