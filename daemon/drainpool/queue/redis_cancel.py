"""Cancelling one job on the Redis queue (issue 19): the script, and the cheap check for it.

A module of its own: redis.py is at its length, and a cancel is one concern.
The job hash records the cancel (`cancel_at`, `cancel_reason`, `cancel_by`);
a ready or delayed job is cancelled at once (its stream entry or delayed
member removed), a leased one is flagged and its id added to the set
`{prefix}:cancelling`, which every daemon holding jobs reads with one
SMISMEMBER, and is told at once by a `cancel ID` message on the task's
wake-up channel (drainpool.queue.redis_wakeups). The settle that follows
(a release or a failure) ends such a job cancelled (`finish_cancelled` in
redis.py's prelude), and leaves the set.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from drainpool.queue.base import Job

# ARGV[3..]: id, reason, by, retention_ms. Returns {effect, state}; effect '' = no such job.
CANCEL = r"""
local id, reason, by = ARGV[3], ARGV[4], ARGV[5]
local retention = tonumber(ARGV[6])
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'task', 'state', 'entry', 'cancel_at')
if not f[1] then return {'', ''} end
local task, state, entry = f[1], f[2], f[3]
local now = now_ms()
if state == 'ready' or state == 'delayed' then
  redis.call('HSET', jk, 'cancel_at', secs(now), 'cancel_reason', reason, 'cancel_by', by,
    'cancel_retention', retention)
  redis.call('ZREM', delayed_key(task), id)
  drop_entry(task, entry)
  finish_cancelled(id, now)
  return {'cancelled', state}
end
if state ~= 'leased' then return {'ended', state} end
if f[4] and f[4] ~= '' then return {'already_requested', state} end
redis.call('HSET', jk, 'cancel_at', secs(now), 'cancel_reason', reason, 'cancel_by', by,
  'cancel_retention', retention)
redis.call('SADD', P .. ':cancelling', id)
-- The daemons serving the task hear it at once (drainpool.queue.redis_wakeups); the one
-- holding the job sets its stop event. The SMISMEMBER check is the safety net.
redis.call('PUBLISH', P .. ':wake:' .. task, 'cancel ' .. id)
return {'requested', state}
"""


def cancel_requests(client: redis.Redis, prefix: str, jobs: Sequence[Job]) -> set[str]:
    """One SMISMEMBER over the held ids."""
    if not jobs:
        return set()
    ids = [job.id for job in jobs]
    flags = client.smismember(f"{prefix}:cancelling", ids)
    return {job_id for job_id, flagged in zip(ids, flags, strict=True) if flagged}
