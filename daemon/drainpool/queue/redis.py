"""The shared queue: Redis Streams with one consumer group, for several daemons.

Why this shape (the issue's design, and where it was bent, with reasons):

- One stream per task (`{prefix}:stream:{task}`), so a pool reads only the
  streams of the tasks it serves. A stream entry only points at a job hash
  (`{prefix}:job:{id}`, id from INCR) that holds the body, the attempt count
  and the current lease token; the id survives retries and releases.
- A lease is the pending entry's idle time, with one twist: every lease is
  written into the entry's delivery time (XCLAIM ... TIME deadline - HORIZON),
  so the idle time passes HORIZON exactly when *that* lease expires. One
  threshold then finds expired leases whatever lease each daemon asked for,
  which keeps SQLite's per-job deadlines (a reclaimer with a shorter lease
  would otherwise steal running jobs). `XPENDING ... IDLE HORIZON` shows the
  expired entries; XAUTOCLAIM would claim them before we know which fit in
  the n free slots across several task streams, so fetch peeks, picks the n
  oldest across streams and XCLAIMs exactly those.
- A released job stays pending, handed to the pseudo-consumer `~released`
  with an idle time past HORIZON: it is fetched again first, at its old
  place, like SQLite's release. Stats count that consumer's entries as ready.
- The lease token is random per fetch and checked inside the scripts against
  the job hash, so a stale holder's ack, release, fail or renew is a no-op.
- Delayed jobs and retry backoff live in a sorted set per task, moved into
  the stream by the fetch script when due. Dead letters: a sorted set by
  failure time, error and traceback in the job hash. Idempotency keys: one
  hash, cleared when the job is acked or purged.
- Every change of a job's state is one Lua script, so it is atomic: no
  crash can leave a job in two places or none. Times come from Redis (TIME),
  one clock for all daemons.
- Records (drainpool.queue.records): the job hash is the record. An ack with
  retention turns it into a completed record with the result and a key
  expiry (PEXPIRE) in the same script; retention 0 deletes it as before. A
  sorted set `{prefix}:jobs` (score: id) lists the records for `jobs()`, and
  `{prefix}:expiry` (score: expiry time) lets each settle drop a few expired
  ids from it, so the index stays as long as the records without a sweeper.
  A waiter marks `{prefix}:waiter:{id}`; the settle that ends a marked job
  pushes to `{prefix}:done:{id}`, which the waiter reads with BLPOP.
- New work (issue 21): an enqueue leases a ready job to an idle pool at once
  and publishes it on the pool's push channel (drainpool.queue.redis_push;
  the fetch registers the pool, `lease_row` and `claim` in the prelude are
  the one leasing both use); when no pool can take it, it publishes a
  wake-up, and woken pools fetch (drainpool.queue.redis_wakeups).

Standalone Redis 7 only: the scripts build key names from the prefix.

Longer than a module should be: each Lua script sits beside the method that
calls it, since one cannot be read without the other. Reading records is in
daemon/drainpool/queue/redis_records.py, cancelling in redis_cancel.py, the
push's Lua and registration in redis_push.py.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from drainpool.queue.base import (
    CancelEffect,
    CancelResult,
    DeadJob,
    Done,
    Failure,
    Job,
    JobInfo,
    JobNotFound,
    JobState,
    QueueError,
    QueueStats,
    QueueUnavailable,
    RetryPolicy,
    WorkerIdentity,
    check_timeout,
    encode_meta,
    encode_payload,
    loads_or_raw,
    log_dead,
    log_dead_job,
    redact_url,
    refuse_connection,
)
from drainpool.queue.outcome_minutes import (
    KEEP_SECONDS,
    MINUTE,
    as_minutes,
    check_outcomes,
    first_minute,
)
from drainpool.queue.records import (
    RESULT_MAX_BYTES,
    RETENTION_SECONDS,
    as_done,
    check_limit,
    check_retention,
    parse_state,
    result_of,
)
from drainpool.queue.redis_cancel import CANCEL, cancel_requests
from drainpool.queue.redis_push import FORGET_IDLE, PUSH_LUA, IdleAsk, job_from_row
from drainpool.queue.redis_records import NOTIFY_TTL_MS, list_jobs, read_job, wait_job
from drainpool.queue.redis_wakeups import NEXT_DUE, PubSubWaiter

PASSWORD_ENV = "DRAINPOOL_REDIS_PASSWORD"
HORIZON_MS = 100_000_000_000  # ~3 years: longer than any lease, shorter than the epoch
RELEASED = "~released"  # pseudo-consumer holding released jobs (ready again)
BATCH = 500  # jobs per script call where a call may touch many jobs
KEYS_VERSION = "2"  # 2: the records index ({prefix}:jobs); today's keys otherwise
DUE_SEEN_SECONDS = 0.5  # how long a fetch's due time stands in for the due-time script

# Replies that mean "Redis cannot serve us right now", not "the request is wrong".
# Every other failure that is not an error reply (connection, timeout, a server
# that does not speak RESP) is unavailability too.
_TRANSIENT_REPLIES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.NoPermissionError,  # ACLs can be fixed without restarting us
)
_TRANSIENT_PREFIXES = ("MISCONF", "BUSY", "NOREPLICAS")

_PRELUDE = r"""
local P, G = ARGV[1], ARGV[2]
local HORIZON = @HORIZON@
local RELEASED = '@RELEASED@'
local now_cached
-- Redis's clock, read once per script and only when needed: an idle fetch reads none.
local function now_ms()
  if not now_cached then
    local t = redis.call('TIME')
    now_cached = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  end
  return now_cached
end
local function secs(ms) return string.format('%.6f', ms / 1000) end
local function stream_key(task) return P .. ':stream:' .. task end
local function delayed_key(task) return P .. ':delayed:' .. task end
local function job_key(id) return P .. ':job:' .. id end
local function ensure_group(s) redis.pcall('XGROUP', 'CREATE', s, G, '0', 'MKSTREAM') end
local woken = {}
-- Wakes the pools idle on this task (drainpool.queue.redis_wakeups): once per script for
-- ready jobs ('0'); a delayed job's message is its due time, in seconds since the epoch.
local function wake(task, due)
  if due then
    redis.call('PUBLISH', P .. ':wake:' .. task, secs(due))
  elseif not woken[task] then
    woken[task] = true
    redis.call('PUBLISH', P .. ':wake:' .. task, '0')
  end
end
local function drop_entry(task, entry)
  if entry and entry ~= '' then
    redis.call('XACK', stream_key(task), G, entry)
    redis.call('XDEL', stream_key(task), entry)
  end
end
local function notify(id)
  if redis.call('EXISTS', P .. ':waiter:' .. id) == 1 then
    redis.call('RPUSH', P .. ':done:' .. id, '1')
    redis.call('PEXPIRE', P .. ':done:' .. id, @NOTIFY_TTL_MS@)
  end
end
local function bury(id, task, entry, err, tb, now)
  drop_entry(task, entry)
  redis.call('ZREM', delayed_key(task), id)
  redis.call('HSET', job_key(id), 'state', 'dead', 'token', '', 'entry', '',
    'error', err, 'traceback', tb, 'failed_at', secs(now))
  redis.call('ZADD', P .. ':dead', now, id)
  notify(id)
end
-- A job whose cancel was asked ends here: a cancelled record, kept as long as completed ones.
local function finish_cancelled(id, now)
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'key', 'cancel_retention')
  if f[1] and f[1] ~= '' and redis.call('HGET', P .. ':keys', f[1]) == id then
    redis.call('HDEL', P .. ':keys', f[1])
  end
  redis.call('HSET', jk, 'state', 'cancelled', 'token', '', 'entry', '', 'finished_at', secs(now))
  redis.call('SREM', P .. ':cancelling', id)
  local retention = tonumber(f[2] or '0') or 0
  if retention > 0 then
    redis.call('PEXPIRE', jk, retention)
    redis.call('ZADD', P .. ':expiry', now + retention, id)
  else
    -- Kept a minute even with retention 0, so the cancel command can say how it ended.
    redis.call('PEXPIRE', jk, @NOTIFY_TTL_MS@)
    redis.call('ZADD', P .. ':expiry', now + @NOTIFY_TTL_MS@, id)
  end
  notify(id)
end
local function forget_key(id, key)
  if key and key ~= '' and redis.call('HGET', P .. ':keys', key) == id then
    redis.call('HDEL', P .. ':keys', key)
  end
end
local function entry_ms(entry) return tonumber(string.match(entry, '^(%d+)')) end
local function last_delivered(s)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', s)) do
    local name, last
    for k = 1, #g, 2 do
      if g[k] == 'name' then name = g[k + 1] end
      if g[k] == 'last-delivered-id' then last = g[k + 1] end
    end
    if name == G then return last end
  end
  return '0-0'
end
local function delivered_key(task) return P .. ':delivered:' .. task end
-- Who takes a lease (L): {me (the stream consumer), token, lease (ms), max_attempts, host,
-- pid, pool}: the fetch's own arguments, or an idle pool's registration (a push).
-- The entries, delivered to L.me already, are its until the lease runs out: the deadline
-- goes into the delivery time (see the module docstring).
local function claim(s, L, entries, now)
  local c = {'XCLAIM', s, G, L.me, 0}
  for _, entry in ipairs(entries) do c[#c + 1] = entry end
  for _, opt in ipairs({'TIME', math.floor(now + L.lease - HORIZON), 'JUSTID'}) do
    c[#c + 1] = opt
  end
  redis.call(unpack(c))
end
-- One claimed job's bookkeeping. Returns its row {id, task, payload, attempts, enqueued_at,
-- timeout, meta}, a buried job's {id, task, why, attempts}, or nil (gone, or cancelled).
local function lease_row(id, task, entry, L, now)
  local jk = job_key(id)
  if redis.call('EXISTS', jk) == 0 then
    drop_entry(task, entry)
  elseif (redis.call('HGET', jk, 'cancel_at') or '') ~= '' then
    -- Cancelled while leased, and its daemon died before it stopped the job.
    drop_entry(task, entry)
    finish_cancelled(id, now)
  else
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    if attempts > L.max_attempts then
      local why = 'lease expired ' .. (attempts - 1) .. ' times: its worker died each time'
      bury(id, task, entry, why, '', now)
      return {id, task, why, attempts - 1}  -- dead here: logged by the caller
    end
    redis.call('HSET', jk, 'state', 'leased', 'token', L.token, 'entry', entry,
      'host', L.host, 'pid', L.pid, 'pool', L.pool)
    redis.call('HSETNX', jk, 'started_at', secs(now))
    local f = redis.call('HMGET', jk, 'payload', 'enqueued_at', 'timeout', 'meta')
    return {id, task, f[1], attempts, f[2], f[3] or '', f[4] or ''}
  end
end
@PUSH@
-- offer: a ready job of an enqueue, which an idle pool may take at once (its push).
local function push_ready(id, task, offer)
  local s = stream_key(task)
  -- The group is made with a new stream, not tried on every enqueue (issue 21); a group
  -- that went missing later is made again by the fetch, when Redis says NOGROUP.
  local new_stream = redis.call('EXISTS', s) == 0
  local entry = redis.call('XADD', s, '*', 'job', id)
  if new_stream then ensure_group(s) end
  redis.call('HSET', job_key(id), 'state', 'ready', 'entry', entry, 'token', '')
  redis.call('SADD', P .. ':tasks', task)
  -- A pushed job is not announced: no other daemon need look for it.
  if not (offer and push_to_idle(task)) then wake(task) end
end
local function schedule(id, task, due)
  redis.call('ZADD', delayed_key(task), due, id)
  redis.call('HSET', job_key(id), 'state', 'delayed', 'entry', '', 'token', '')
  redis.call('SADD', P .. ':tasks', task)
  wake(task, due)
end
"""

_ENQUEUE = r"""
-- ARGV[3..]: delay_ms, key, timeout ('' = none), meta (the job's metadata as JSON; '' for
-- none), then (task, payload) pairs; one pair when a key, a delay, a timeout or meta is given
local delay, key, timeout, meta = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
if key ~= '' then
  local old = redis.call('HGET', P .. ':keys', key)
  if old and redis.call('EXISTS', job_key(old)) == 1 then return old end
end
local now = now_ms()
local id
for i = 7, #ARGV, 2 do
  local task = ARGV[i]
  id = tostring(redis.call('INCR', P .. ':seq'))
  redis.call('HSET', job_key(id), 'task', task, 'payload', ARGV[i + 1],
    'enqueued_at', secs(now), 'attempts', 0, 'key', key)
  if timeout ~= '' then redis.call('HSET', job_key(id), 'timeout', timeout) end
  if meta ~= '' then redis.call('HSET', job_key(id), 'meta', meta) end
  redis.call('ZADD', P .. ':jobs', id, id)
  if delay > 0 then schedule(id, task, now + delay) else push_ready(id, task, true) end
end
if key ~= '' then redis.call('HSET', P .. ':keys', key, id) end
return id
"""

_ENQUEUE_TICK = r"""
-- ARGV[3..]: schedule, tick ('' for a manual run), expected tick ('' for none), task, payload
-- The schedule's last tick (hash {prefix}:schedules) moves by compare-and-set, and the
-- job is added in the same script: one enqueue per tick, however many daemons ask.
local name, tick, expected, task = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if tick ~= '' then
  if (redis.call('HGET', P .. ':schedules', name) or '') ~= expected then return false end
  redis.call('HSET', P .. ':schedules', name, tick)
end
local id = tostring(redis.call('INCR', P .. ':seq'))
redis.call('HSET', job_key(id), 'task', task, 'payload', ARGV[7],
  'enqueued_at', secs(now_ms()), 'attempts', 0, 'key', '', 'schedule', name, 'tick', tick)
redis.call('ZADD', P .. ':jobs', id, id)
push_ready(id, task, true)
return id
"""

_FETCH = r"""
-- Issue 21: an idle fetch neither creates the group nor reads XINFO. The group is made
-- when Redis says it is missing (NOGROUP), and the last delivered entry of each stream
-- is kept in a key that only this script's XREADGROUP (and a push's) moves (XINFO once,
-- for a queue written before the key existed).
local function delivered(s, task)
  local last = redis.call('GET', delivered_key(task))
  if not last then
    last = last_delivered(s)
    redis.call('SET', delivered_key(task), last)
  end
  return last
end
local function pending_past_horizon(s, task, n)
  local found = redis.pcall('XPENDING', s, G, 'IDLE', HORIZON, '-', '+', n)
  if type(found) == 'table' and found.err then  -- NOGROUP: no stream, or its group went
    if redis.call('EXISTS', s) == 0 then return nil end
    ensure_group(s)
    redis.call('DEL', delivered_key(task))
    found = redis.call('XPENDING', s, G, 'IDLE', HORIZON, '-', '+', n)
  end
  return found
end
-- ARGV[3..]: consumer, token, n, lease_ms, max_attempts, batch, host, pid, pool,
-- push id ('' = none), registration backstop ms, pushes heard, changed (1/0), tasks...
local me, token, n = ARGV[3], ARGV[4], tonumber(ARGV[5])
local batch = tonumber(ARGV[8])
local L = {me = me, token = token, lease = tonumber(ARGV[6]), max_attempts = tonumber(ARGV[7]),
  host = ARGV[9], pid = ARGV[10], pool = ARGV[11]}
local push_id, backstop, heard = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local changed = ARGV[15] == '1'
local FIRST_TASK = 16
local streams = {}
local earliest  -- the earliest delayed job not yet due: returned, so no due-time script
local function delayed_head(d)
  local head = redis.call('ZRANGE', d, 0, 0, 'WITHSCORES')
  if #head > 0 then return tonumber(head[2]) end
end
for i = FIRST_TASK, #ARGV do
  local task = ARGV[i]
  local d = delayed_key(task)
  local head = delayed_head(d)  -- one read while nothing is delayed: the idle case
  if head and head <= now_ms() then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', d, '-inf', now_ms(), 'LIMIT', 0, batch)) do
      redis.call('ZREM', d, id)
      if redis.call('EXISTS', job_key(id)) == 1 then push_ready(id, task) end
    end
    head = delayed_head(d)
  end
  if head and (earliest == nil or head < earliest) then earliest = head end
  local s = stream_key(task)
  local pending = pending_past_horizon(s, task, n)
  if pending then
    local cands = {}
    -- Pending entries idle past the horizon: expired leases and released jobs.
    for _, p in ipairs(pending) do
      local e = redis.call('XRANGE', s, p[1], p[1])
      if #e == 0 then
        redis.call('XACK', s, G, p[1])
      else
        cands[#cands + 1] = {entry = p[1], id = e[1][2][2], pel = true}
      end
    end
    if #cands < n then
      local fresh = redis.call('XRANGE', s, '(' .. delivered(s, task), '+', 'COUNT', n - #cands)
      for _, e in ipairs(fresh) do cands[#cands + 1] = {entry = e[1], id = e[2][2], pel = false} end
    end
    streams[#streams + 1] = {task = task, s = s, cands = cands, pos = 1, pel = {}, fresh = 0}
  end
end
-- Merge the streams' heads oldest first (entry time, then job id), as SQLite orders by due time.
local chosen = {}
while #chosen < n do
  local best, bc
  for _, st in ipairs(streams) do
    local c = st.cands[st.pos]
    if c then
      local older = bc == nil or entry_ms(c.entry) < entry_ms(bc.entry)
        or (entry_ms(c.entry) == entry_ms(bc.entry) and tonumber(c.id) < tonumber(bc.id))
      if older then best, bc = st, c end
    end
  end
  if best == nil then break end
  best.pos = best.pos + 1
  if bc.pel then best.pel[#best.pel + 1] = bc.entry else best.fresh = best.fresh + 1 end
  chosen[#chosen + 1] = {st = best, c = bc}
end
local now = #chosen > 0 and now_ms() or 0
for _, st in ipairs(streams) do
  local taken = st.pel
  if st.fresh > 0 then
    -- Delivers exactly the entries peeked above: nothing ran in between.
    local r = redis.call('XREADGROUP', 'GROUP', G, me, 'COUNT', st.fresh, 'STREAMS', st.s, '>')
    for _, e in ipairs(r[1][2]) do taken[#taken + 1] = e[1] end
    redis.call('SET', delivered_key(st.task), taken[#taken])
  end
  if #taken > 0 then claim(st.s, L, taken, now) end
end
local out, found = {}, 0
for _, pick in ipairs(chosen) do
  local row = lease_row(pick.c.id, pick.st.task, pick.c.entry, L, now)
  if row then
    out[#out + 1] = row
    if #row == 7 then found = found + 1 end
  end
end
-- Only a fetch that found nothing registers: one that found some is streaming (a burst),
-- where fetches in gaps take many jobs per script, and a push per job would cost more.
local registered = register_idle(push_id, backstop, heard, changed, found == 0 and n or 0, L,
  {unpack(ARGV, FIRST_TASK)})
-- Last row: ms until the earliest delayed job of these tasks ('' when none), and what
-- became of the pool's registration (drainpool.queue.redis_push.IdleMemory).
out[#out + 1] = {earliest and tostring(math.max(earliest - now_ms(), 0)) or '', registered}
return out
"""

_RENEW = r"""
-- ARGV[3..]: consumer, lease_ms, then (id, token) pairs
local me, lease = ARGV[3], tonumber(ARGV[4])
local deliver = math.floor(now_ms() + lease - HORIZON)
for i = 5, #ARGV, 2 do
  local f = redis.call('HMGET', job_key(ARGV[i]), 'token', 'state', 'task', 'entry')
  if ARGV[i + 1] ~= '' and f[1] == ARGV[i + 1] and f[2] == 'leased' then
    redis.call('XCLAIM', stream_key(f[3]), G, me, 0, f[4], 'TIME', deliver, 'JUSTID')
  end
end
return 0
"""

_SETTLE = r"""
-- ARGV[3]: retention_ms; ARGV[4]: outcome counts 'name=n name=n' ('' = none);
-- ARGV[5..]: groups of (op, id, token, delay_ms, error, traceback),
-- op: A = ack, R = release, F = fail and retry, D = fail for good (dead).
-- An ack's error and traceback slots carry its result JSON ('' = none) and note.
local retention = tonumber(ARGV[3])
local now = now_ms()
local finished = secs(now)
local acked = 0
local dead = 0
-- (expiry, id) of each record kept: one ZADD for the batch, not one per job.
local expiring = {}
for i = 5, #ARGV, 6 do
  if ARGV[i] == 'D' then dead = dead + 1 end
  local op, id, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'token', 'state', 'task', 'entry', 'key', 'cancel_at')
  if token ~= '' and f[1] == token and f[2] == 'leased' then
    local task, entry = f[3], f[4]
    if op ~= 'A' and f[6] and f[6] ~= '' then
      -- Its cancel was asked: released or failed, it ends cancelled (an ack still wins).
      drop_entry(task, entry)
      finish_cancelled(id, now)
    elseif op == 'A' then
      drop_entry(task, entry)
      forget_key(id, f[5])
      acked = acked + 1
      if retention > 0 then
        redis.call('HSET', jk, 'state', 'completed', 'token', '', 'entry', '',
          'finished_at', finished, 'result', ARGV[i + 4], 'result_note', ARGV[i + 5])
        redis.call('PEXPIRE', jk, retention)
        expiring[#expiring + 1] = now + retention
        expiring[#expiring + 1] = id
      else
        redis.call('DEL', jk)
        redis.call('ZREM', P .. ':jobs', id)
      end
      redis.call('SREM', P .. ':cancelling', id)
      notify(id)
    elseif op == 'R' then
      redis.call('HINCRBY', jk, 'attempts', -1)
      -- Stays pending at its place, idle past the horizon: the next fetch takes it first.
      local kept = redis.call('XCLAIM', stream_key(task), G, RELEASED, 0, entry,
        'TIME', 0, 'JUSTID')
      if #kept == 0 then
        push_ready(id, task)
      else
        redis.call('HSET', jk, 'state', 'ready', 'token', '')
        wake(task)
      end
    elseif op == 'F' then
      drop_entry(task, entry)
      redis.call('HSET', jk, 'error', ARGV[i + 4], 'traceback', ARGV[i + 5])
      schedule(id, task, now + tonumber(ARGV[i + 3]))
    else
      bury(id, task, entry, ARGV[i + 4], ARGV[i + 5], now)
    end
  end
end
for first = 1, #expiring, 1000 do
  redis.call('ZADD', P .. ':expiry', unpack(expiring, first, math.min(first + 999, #expiring)))
end
-- A few expired ids out of the records index per ack: it never outgrows the records.
if acked > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':expiry', '-inf', now,
      'LIMIT', 0, 2 * acked)) do
    redis.call('ZREM', P .. ':expiry', id)
    redis.call('ZREM', P .. ':jobs', id)
  end
end
-- This minute's outcome counts: one HINCRBY per outcome kind (outcome_minutes.py).
local counts = ARGV[4]
if dead > 0 then counts = counts .. ' dead=' .. dead end
if counts ~= '' then
  local minute = math.floor(now / 1000 / @MINUTE@) * @MINUTE@
  local key = P .. ':outcomes:' .. minute
  for name, n in string.gmatch(counts, '([%a_]+)=(%d+)') do
    redis.call('HINCRBY', key, name, n)
  end
  redis.call('EXPIRE', key, @KEEP_SECONDS@)
end
return 0
"""

_PRUNE = r"""
-- ARGV[3]: limit. Drops expired records (their hashes expire by themselves) from the index.
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', P .. ':expiry', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. ':expiry', id)
  redis.call('ZREM', P .. ':jobs', id)
  redis.call('DEL', job_key(id))
end
return #ids
"""

_UPGRADE = r"""
-- ARGV[3..]: job hash keys found by SCAN: indexed as records. Marks the keys' version.
for i = 3, #ARGV do
  local id = string.match(ARGV[i], ':job:(%d+)$')
  if id then redis.call('ZADD', P .. ':jobs', id, id) end
end
return 0
"""


_STATS = r"""
local now = now_ms()
local ready, delayed, leased, oldest = 0, 0, 0, nil
local function seen(ms) if ms and (oldest == nil or ms < oldest) then oldest = ms end end
for _, task in ipairs(redis.call('SMEMBERS', P .. ':tasks')) do
  local s = stream_key(task)
  if redis.call('EXISTS', s) == 1 then
    local pending, released = 0, 0
    local ok, summary = pcall(redis.call, 'XPENDING', s, G)
    if ok then
      pending = tonumber(summary[1])
      for _, c in ipairs(summary[4] or {}) do
        if c[1] == RELEASED then released = tonumber(c[2]) end
      end
      if released > 0 then
        seen(entry_ms(redis.call('XPENDING', s, G, '-', '+', 1, RELEASED)[1][1]))
      end
      local head = redis.call('XRANGE', s, '(' .. last_delivered(s), '+', 'COUNT', 1)
      if #head > 0 then seen(entry_ms(head[1][1])) end
    end
    ready = ready + math.max(redis.call('XLEN', s) - pending, 0) + released
    leased = leased + pending - released
  end
  local d = delayed_key(task)
  local due = redis.call('ZCOUNT', d, '-inf', now)
  ready = ready + due
  delayed = delayed + redis.call('ZCARD', d) - due
  if due > 0 then seen(tonumber(redis.call('ZRANGE', d, 0, 0, 'WITHSCORES')[2])) end
end
local age = ''
if oldest then age = secs(math.max(now - oldest, 0)) end
return {ready, delayed, leased, redis.call('ZCARD', P .. ':dead'), age}
"""

_DEAD_LIST = r"""
-- ARGV[3]: limit. Returns the newest dead jobs plus any tied with the last failure time.
local limit, dead = tonumber(ARGV[3]), P .. ':dead'
local ids = redis.call('ZREVRANGE', dead, 0, limit - 1, 'WITHSCORES')
local out, seen = {}, {}
local function add(id)
  if not seen[id] then
    seen[id] = true
    local f = redis.call('HMGET', job_key(id), 'task', 'payload', 'attempts', 'error',
      'traceback', 'failed_at')
    if f[1] then out[#out + 1] = {id, f[1], f[2], f[3], f[4], f[5], f[6]} end
  end
end
for i = 1, #ids, 2 do add(ids[i]) end
if #ids == 2 * limit then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', dead, ids[#ids], ids[#ids])) do add(id) end
end
return out
"""

_DEAD_MOVE = r"""
-- ARGV[3]: 'retry' or 'purge'; ARGV[4..]: job ids, or none to take the next batch of all.
-- Returns {moved, looked at}.
local op, dead = ARGV[3], P .. ':dead'
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', dead, 0, @BATCH@ - 1) end
local moved = 0
for _, id in ipairs(ids) do
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'state', 'task', 'key')
  if f[1] == 'dead' then
    moved = moved + 1
    redis.call('ZREM', dead, id)
    if op == 'retry' then
      redis.call('HSET', jk, 'attempts', 0, 'failed_at', '')
      push_ready(id, f[2])
    else
      redis.call('DEL', jk)
      redis.call('ZREM', P .. ':jobs', id)
      forget_key(id, f[3])
    end
  else
    redis.call('ZREM', dead, id)  -- not dead (any more): it has no place in the set
  end
end
return {moved, #ids}
"""

_BURY = r"""
-- ARGV[3..]: task, error, cursor ('' = start with the delayed set), batch.
-- Returns {buried, next cursor or '' when done}.
local task, err, cursor, batch = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local now, buried = now_ms(), 0
local d, s = delayed_key(task), stream_key(task)
if cursor == '' then
  local ids = redis.call('ZRANGE', d, 0, batch - 1)
  for _, id in ipairs(ids) do
    redis.call('ZREM', d, id)
    if redis.call('EXISTS', job_key(id)) == 1 then
      bury(id, task, '', err, '', now)
      buried = buried + 1
    end
  end
  if #ids == batch then return {buried, ''} end
  cursor = '0-0'
end
if redis.call('EXISTS', s) == 0 then return {buried, 'done'} end
ensure_group(s)
local entries = redis.call('XRANGE', s, '(' .. cursor, '+', 'COUNT', batch)
for _, e in ipairs(entries) do
  local id = e[2][2]
  local p = redis.call('XPENDING', s, G, e[1], e[1], 1)
  -- A live lease belongs to a daemon that still serves the task (another config, mid-rollout).
  local live = #p > 0 and p[1][2] ~= RELEASED and tonumber(p[1][3]) < HORIZON
  if not live then
    if redis.call('EXISTS', job_key(id)) == 1 then
      bury(id, task, e[1], err, '', now)
      buried = buried + 1
    else
      drop_entry(task, e[1])
    end
  end
end
if #entries < batch then return {buried, 'done'} end
return {buried, entries[#entries][1]}
"""

_FORGET_CONSUMER = r"""
-- ARGV[3]: consumer. Drop it from every group where it holds nothing.
for _, task in ipairs(redis.call('SMEMBERS', P .. ':tasks')) do
  local s = stream_key(task)
  if redis.call('EXISTS', s) == 1 then
    local ok, p = pcall(redis.call, 'XPENDING', s, G, '-', '+', 1, ARGV[3])
    if ok and #p == 0 then redis.call('XGROUP', 'DELCONSUMER', s, G, ARGV[3]) end
  end
end
return 0
"""


def default_consumer() -> str:
    """This daemon's consumer name: host and pid, unique among live daemons."""
    return f"{socket.gethostname()}:{os.getpid()}"


class RedisQueue:
    """The `Queue` protocol on Redis Streams (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        retry: RetryPolicy | None = None,
        prefix: str = "drainpool",
        consumer: str | None = None,
        where: str = "redis",
        retention_seconds: float = RETENTION_SECONDS,
        result_max_bytes: int = RESULT_MAX_BYTES,
    ) -> None:
        check_retention(retention_seconds, result_max_bytes)
        self.retry = retry or RetryPolicy()
        self.retention_seconds = retention_seconds
        self.result_max_bytes = result_max_bytes  # for the pool's encode_result
        self.worker = WorkerIdentity.here()  # recorded at a claim that names no other
        self._upgraded = False
        self.prefix = prefix
        self.group = prefix
        self.consumer = consumer or default_consumer()
        self.where = where  # redacted URL: the only form that reaches messages and logs
        self._client = client
        self._closed = threading.Event()
        # Per task set: (monotonic time of the last fetch, seconds to its earliest delayed job).
        self._due_seen: dict[tuple[str, ...], tuple[float, float | None]] = {}
        self._waiters: dict[tuple[str, ...], PubSubWaiter] = {}  # per task set: push ids
        self._scripts = {
            name: client.register_script(_lua(body))
            for name, body in {
                "enqueue": _ENQUEUE,
                "enqueue_tick": _ENQUEUE_TICK,
                "fetch": _FETCH,
                "renew": _RENEW,
                "settle": _SETTLE,
                "dead_list": _DEAD_LIST,
                "dead_move": _DEAD_MOVE,
                "bury": _BURY,
                "forget": _FORGET_CONSUMER,
                "prune": _PRUNE,
                "upgrade": _UPGRADE,
                "cancel": CANCEL,
                "next_due": NEXT_DUE,
                "forget_idle": FORGET_IDLE,
            }.items()
        }
        # Read-only: flagged so, which lets Redis run it even under memory pressure.
        self._scripts["stats"] = client.register_script("#!lua flags=no-writes\n" + _lua(_STATS))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        password: str | None = None,
        prefix: str | None = None,
        consumer: str | None = None,
        socket_timeout: float = 5.0,
        connect_timeout: float = 3.0,
        retention_seconds: float = RETENTION_SECONDS,
        result_max_bytes: int = RESULT_MAX_BYTES,
    ) -> RedisQueue:
        """Open `redis://`, `rediss://` (TLS) or `unix://` URLs; connects lazily.

        The password comes from the URL, else `password`, else $DRAINPOOL_REDIS_PASSWORD.
        A `prefix` query parameter (default "drainpool") names the keys and the group.
        """
        where = redact_url(url)
        base, _, query = url.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        url_prefix = next((v for k, v in reversed(pairs) if k == "prefix"), None)
        kept = [(k, v) for k, v in pairs if k != "prefix"]  # ours, not redis-py's
        clean = f"{base}?{urlencode(kept)}" if kept else base
        try:
            has_password = bool(urlsplit(url).password) or any(k == "password" for k, _ in kept)
        except ValueError as exc:
            raise QueueError(f"invalid redis URL {where}: {exc}") from None
        options: dict[str, Any] = {}
        if not url.startswith("unix:"):
            options["socket_keepalive"] = True  # a dead peer is noticed on idle TCP too
        secret = None if has_password else (password or os.environ.get(PASSWORD_ENV) or None)
        if secret:
            options["password"] = secret
        name = consumer or default_consumer()
        try:
            client = redis.Redis.from_url(
                clean,
                decode_responses=True,
                protocol=2,  # RESP2 replies: the shapes the scripts and parsers expect
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                # PING a connection idle this long before reusing it: longer than the idle
                # pool's safety-net fetch (10 s), else every such fetch costs a PING too
                # (issue 21); a stale connection is retried once anyway (below).
                health_check_interval=30,
                # One immediate retry on a broken connection (a Redis restart leaves stale
                # sockets in the pool); none on timeouts, where the command may have run.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
                client_name="drainpool-" + "".join(c if c.isalnum() else "-" for c in name),
                **options,
            )
            # Build (not connect) one connection now, so that an unknown URL option
            # is refused at start-up rather than at the first command.
            pool = client.connection_pool
            pool.connection_class(**pool.connection_kwargs)
        except (ValueError, TypeError) as exc:
            raise QueueError(f"invalid redis URL {where}: {exc}") from None
        return cls(
            client,
            retry=retry,
            prefix=prefix or url_prefix or "drainpool",
            consumer=name,
            where=where,
            retention_seconds=retention_seconds,
            result_max_bytes=result_max_bytes,
        )

    def __repr__(self) -> str:
        return f"RedisQueue({self.where!r}, prefix={self.prefix!r}, consumer={self.consumer!r})"

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn redis-py errors into one-line queue errors that never carry a secret."""
        try:
            yield
        except redis.exceptions.ResponseError as exc:
            message = _one_line(exc)
            if isinstance(exc, _TRANSIENT_REPLIES) or message.startswith(_TRANSIENT_PREFIXES):
                raise QueueUnavailable(f"{self.where}: cannot {what}: {message}") from None
            raise QueueError(f"{self.where}: cannot {what}: {message}") from None
        except redis.exceptions.RedisError as exc:
            raise QueueUnavailable(f"{self.where}: cannot {what}: {_one_line(exc)}") from None

    def _run(self, script: str, what: str, *args: Any) -> Any:
        if not self._upgraded:
            self._upgrade()
        with self._guard(what):
            return self._scripts[script](args=[self.prefix, self.group, *args])

    def _upgrade(self) -> None:
        """Index the job hashes of a queue written before records existed; every job kept.

        Once per process and queue; idempotent, so two daemons opening an old queue
        at once both finish it. SCAN in batches: Redis is never blocked for long.
        """
        version_key = f"{self.prefix}:version"
        with self._guard("upgrade the queue's keys"):
            if self._client.get(version_key) != KEYS_VERSION:
                batch: list[str] = []
                for key in self._client.scan_iter(f"{self.prefix}:job:*", count=BATCH):
                    batch.append(key)
                    if len(batch) == BATCH:
                        self._scripts["upgrade"](args=[self.prefix, self.group, *batch])
                        batch = []
                if batch:
                    self._scripts["upgrade"](args=[self.prefix, self.group, *batch])
                self._client.set(version_key, KEYS_VERSION)
        self._upgraded = True

    # -- producers --------------------------------------------------------

    def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        delay: float = 0.0,
        key: str | None = None,
        connection: Any = None,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        refuse_connection(connection, "Redis")
        body = encode_payload(payload)
        meta_json = encode_meta(meta)
        if not math.isfinite(delay):  # NaN or infinity would never come due, or poison the set
            raise QueueError(f"delay must be a finite number of seconds, not {delay!r}")
        limit = check_timeout(timeout)
        delay_ms = max(delay, 0.0) * 1000
        shown = "" if limit is None else repr(limit)
        return str(
            self._run("enqueue", "enqueue", repr(delay_ms), key or "", shown, meta_json, task, body)
        )

    def enqueue_many(self, jobs: Iterable[tuple[str, Any]]) -> int:
        rows = [(task, encode_payload(payload)) for task, payload in jobs]
        # One script per batch: each batch is atomic, and Redis is never blocked for long.
        for start in range(0, len(rows), BATCH):
            flat = [x for row in rows[start : start + BATCH] for x in row]
            self._run("enqueue", "enqueue", "0", "", "", "", *flat)
        return len(rows)

    def enqueue_tick(
        self,
        schedule: str,
        task: str,
        payload: Any = None,
        *,
        tick: float | None,
        expected: float | None,
    ) -> str | None:
        body = encode_payload(payload)
        # repr() round-trips a float exactly: the stored text is compared as text.
        args = ("" if tick is None else repr(tick), "" if expected is None else repr(expected))
        job_id = self._run("enqueue_tick", "enqueue a tick", schedule, *args, task, body)
        return None if job_id is None else str(job_id)

    def schedule_ticks(self) -> dict[str, float]:
        if not self._upgraded:
            self._upgrade()
        with self._guard("read schedule ticks"):
            stored = cast("dict[str, str]", self._client.hgetall(f"{self.prefix}:schedules"))
        return {name: float(tick) for name, tick in stored.items()}

    # -- consumers --------------------------------------------------------

    def fetch(
        self,
        n: int,
        tasks: Collection[str],
        lease_seconds: float,
        *,
        worker: WorkerIdentity | None = None,
    ) -> list[Job]:
        if n <= 0 or not tasks:
            return []
        who = worker or self.worker
        token = secrets.token_hex(8)
        waiter = self._waiters.get(_tasks_key(tasks))
        idle = waiter.idle_ask(n) if waiter else IdleAsk()
        rows = self._run(
            "fetch",
            "fetch jobs",
            self.consumer,
            token,
            n,
            _lease_ms(lease_seconds),
            self.retry.max_attempts,
            BATCH,
            who.host,
            who.pid,
            who.pool,
            *idle.args(),
            *dict.fromkeys(tasks),
        )
        due_ms, registered = rows.pop()
        if waiter:
            waiter.idle_answer(idle, registered)
        self._due_seen[_tasks_key(tasks)] = (
            time.monotonic(),
            None if due_ms in ("", None) else float(due_ms) / 1000,
        )
        jobs: list[Job] = []
        bad: list[Failure] = []
        for row in rows:
            if len(row) == 4:  # buried by the fetch: its leases ran out max_attempts times
                job_id, task, why, attempts = row
                log_dead_job(str(job_id), task, int(attempts), why)
                continue
            job, error = job_from_row(row, token)
            if error:
                bad.append(Failure(job, error, retry=False))
                continue
            jobs.append(job)
        if bad:
            self.settle(failures=bad)
        return jobs

    def renew(self, jobs: Sequence[Job], lease_seconds: float) -> None:
        if not jobs:
            return
        pairs = [x for j in jobs for x in (_job_id(j.id), j.token)]
        self._run("renew", "renew leases", self.consumer, _lease_ms(lease_seconds), *pairs)

    def waiter(self, tasks: Collection[str]) -> PubSubWaiter:
        """A pool's own subscribed connection (drainpool.queue.redis_wakeups).

        Also its push channel (drainpool.queue.redis_push): a fetch for the same tasks
        registers the pool as idle under the waiter's push id. Pools serve disjoint
        tasks, so the tasks name the pool; a later waiter for them replaces this one.
        """
        waiter = PubSubWaiter(self._client, self.prefix, tasks, self.where, owner=self)
        self._waiters[_tasks_key(tasks)] = waiter
        return waiter

    def forget_idle(self, push_id: str, tasks: Collection[str]) -> None:
        """Remove a pool's idle registration: no enqueue pushes to it any more."""
        self._run("forget_idle", "remove an idle registration", push_id, *tasks)

    def next_due(self, tasks: Collection[str]) -> float | None:
        """From the fetch just made for `tasks` (its last row), else one script.

        The pool asks right after a fetch that found nothing: an idle safety-net
        round is then one script, not two (issue 21, item 3).
        """
        seen = self._due_seen.get(_tasks_key(tasks))
        if seen is not None and time.monotonic() - seen[0] < DUE_SEEN_SECONDS:
            at, due_in = seen
            return None if due_in is None else max(due_in - (time.monotonic() - at), 0.0)
        due_ms = self._run("next_due", "read due times", *dict.fromkeys(tasks))
        return None if due_ms in ("", None) else float(due_ms) / 1000

    def settle_and_fetch(
        self,
        acks: Sequence[Job | Done],
        releases: Sequence[Job],
        failures: Sequence[Failure],
        n: int,
        tasks: Collection[str],
        lease_seconds: float,
        *,
        worker: WorkerIdentity | None = None,
        outcomes: Mapping[str, int] | None = None,
    ) -> list[Job]:
        """Two scripts: settling must not wait on, nor fail with, a fetch."""
        self.settle(acks, releases, failures, outcomes=outcomes)
        return self.fetch(n, tasks, lease_seconds, worker=worker)

    def settle(
        self,
        acks: Sequence[Job | Done] = (),
        releases: Sequence[Job] = (),
        failures: Sequence[Failure] = (),
        *,
        outcomes: Mapping[str, int] | None = None,
    ) -> None:
        counts = " ".join(f"{name}={n}" for name, n in check_outcomes(outcomes).items())
        ops: list[Any] = []
        for d in map(as_done, acks):
            ops += ["A", _job_id(d.job.id), d.job.token, 0, d.result_json or "", d.note]
        for j in releases:
            ops += ["R", _job_id(j.id), j.token, 0, "", ""]
        for f in failures:
            if f.retry and not self.retry.is_final(f.job.attempt):
                delay_ms = self.retry.delay_after(f.job.attempt) * 1000
                ops += ["F", _job_id(f.job.id), f.job.token, repr(delay_ms), f.error, f.traceback]
            else:
                ops += ["D", _job_id(f.job.id), f.job.token, 0, f.error, f.traceback]
        if ops or counts:
            retention_ms = int(self.retention_seconds * 1000)
            self._run("settle", "settle jobs", retention_ms, counts, *ops)
            log_dead(failures, self.retry)

    # -- stopping one job -------------------------------------------------

    def cancel(self, job_id: str, *, reason: str = "", by: str = "") -> CancelResult:
        numeric = _job_id(job_id)
        retention_ms = int(self.retention_seconds * 1000)
        effect, _ = self._run("cancel", "cancel a job", numeric, reason, by, retention_ms)
        info = self.job(numeric)
        if not effect or info is None:
            raise JobNotFound(job_id)
        return CancelResult(CancelEffect(effect), info)

    def cancel_requests(self, jobs: Sequence[Job]) -> set[str]:
        with self._guard("check for cancels"):
            return cancel_requests(self._client, self.prefix, jobs)

    # -- inspection and dead letters --------------------------------------

    def stats(self) -> QueueStats:
        ready, delayed, leased, dead, age = self._run("stats", "count jobs")
        return QueueStats(
            ready=int(ready),
            delayed=int(delayed),
            leased=int(leased),
            dead=int(dead),
            oldest_ready_age_seconds=float(age) if age else None,
        )

    def dead_list(self, limit: int = 100) -> list[DeadJob]:
        if limit <= 0:
            return []
        rows = self._run("dead_list", "list dead jobs", limit)
        dead = [
            DeadJob(
                id=str(r[0]),
                task=r[1],
                payload=loads_or_raw(r[2] or ""),
                attempts=int(r[3] or 0),
                error=r[4] or "",
                traceback=r[5] or "",
                failed_at=float(r[6] or 0),
            )
            for r in rows
        ]
        dead.sort(key=lambda d: (d.failed_at, int(d.id)), reverse=True)
        return dead[:limit]

    def dead_retry(self, ids: Sequence[str] | None = None) -> int:
        return self._dead_move("retry", ids)

    def dead_purge(self, ids: Sequence[str] | None = None) -> int:
        return self._dead_move("purge", ids)

    def _dead_move(self, op: str, ids: Sequence[str] | None) -> int:
        what = f"{op} dead jobs"
        total = 0
        if ids is None:
            while True:  # each call takes the next batch of what is dead now
                moved, looked_at = self._run("dead_move", what, op)
                total += int(moved)
                if int(looked_at) == 0:
                    return total
        numeric = [_job_id(i) for i in ids]
        for start in range(0, len(numeric), BATCH):
            moved, _ = self._run("dead_move", what, op, *numeric[start : start + BATCH])
            total += int(moved)
        return total

    def bury_unknown(self, known_tasks: Collection[str]) -> int:
        with self._guard("list tasks"):
            tasks = sorted(set(self._client.smembers(f"{self.prefix}:tasks")) - set(known_tasks))
        buried = 0
        for task in tasks:
            error = f"task {task!r} is not configured"
            cursor = ""
            while cursor != "done":
                count, cursor = self._run("bury", "bury jobs", task, error, cursor, BATCH)
                buried += int(count)
        return buried

    # -- job records ------------------------------------------------------

    def job(self, job_id: str) -> JobInfo | None:
        if not self._upgraded:
            self._upgrade()
        with self._guard("read a job"):
            return read_job(self._client, self.prefix, job_id)

    def jobs(
        self, state: JobState | str | None = None, task: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        wanted = parse_state(state)
        check_limit(limit)
        if not self._upgraded:
            self._upgrade()
        with self._guard("list jobs"):
            return list_jobs(self._client, self.prefix, wanted, task, limit, page=BATCH)

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        """Wakes on the settle's notification (BLPOP); reads again at least every second."""
        if not self._upgraded:
            self._upgrade()
        with self._guard("wait for a job"):
            return wait_job(self._client, self.prefix, job_id, timeout)

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        return result_of(self.wait(job_id, timeout))

    def prune(self, limit: int = 500) -> int:
        """Expired records leave by key expiry; this drops their ids from the index."""
        return int(self._run("prune", "prune records", limit))

    def outcome_minutes(self, since: float) -> list[dict[str, Any]]:
        """One HGETALL per minute bucket (at most 121), in one pipeline; Redis's clock."""
        with self._guard("read outcome counts"):
            seconds, micros = self._client.time()
            now = seconds + micros / 1e6
            first = first_minute(since, now)
            minutes = range(first, int(now // MINUTE) * MINUTE + 1, MINUTE)
            pipe = self._client.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(f"{self.prefix}:outcomes:{minute}")
            buckets = pipe.execute()
        found = [
            (minute, name, int(n))
            for minute, bucket in zip(minutes, buckets, strict=True)
            for name, n in bucket.items()
        ]
        return as_minutes(first, now, found)

    def ping(self) -> None:
        with self._guard("ping"):
            self._client.ping()

    def discard(self) -> None:
        """Drop the connections without a word to Redis (a queue opened only to check it)."""
        self._closed.set()
        self._client.close()

    def close(self) -> None:
        """Leave the groups where this consumer holds nothing, then drop the connections."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            with suppress(QueueError):  # best effort: a leftover consumer name is harmless
                self._run("forget", "leave the consumer group", self.consumer)
        finally:
            self._client.close()


def _lua(body: str) -> str:
    """One script: the shared prelude, then `body`, with the Python constants filled in."""
    text = _PRELUDE + body
    constants = (
        ("PUSH", PUSH_LUA),  # first: it holds constants of its own
        ("HORIZON", HORIZON_MS),
        ("RELEASED", RELEASED),
        ("BATCH", BATCH),
        ("NOTIFY_TTL_MS", NOTIFY_TTL_MS),
        ("MINUTE", MINUTE),
        ("KEEP_SECONDS", KEEP_SECONDS),
    )
    for name, value in constants:
        text = text.replace(f"@{name}@", str(value))
    return text


def _tasks_key(tasks: Collection[str]) -> tuple[str, ...]:
    return tuple(sorted(set(tasks)))


def _lease_ms(lease_seconds: float) -> int:
    if not math.isfinite(lease_seconds) or lease_seconds * 1000 >= HORIZON_MS:
        raise QueueError(f"a lease of {lease_seconds} s does not fit the Redis queue")
    return max(int(lease_seconds * 1000), 0)


def _job_id(raw: str) -> str:
    if not (raw.isascii() and raw.isdigit()):
        raise QueueError(f"not a job id of this queue: {raw!r}")
    return str(int(raw))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
