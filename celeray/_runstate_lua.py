"""The Lua scripts of :class:`celeray.runstate.RunStore`: each one atomic step on Redis.

Each script says its KEYS and ARGV; ``RunStore`` registers them once per client.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "BEGIN_ATTEMPT", "END", "FINISH", "HOLD", "RELEASE"]

# Keep the lock if it is ours; take it if it is free and no newer run ever took it (the
# pipeline's "latest" key names the last run that acquired it); refuse otherwise. A run
# superseded by a newer one can never take the lock back, while the current run (whose
# lock merely expired, or whose Redis restarted empty) can.
# KEYS: lock, latest. ARGV: run id, lock ttl ms, latest ttl s.
_HOLDS = """
local function holds()
  local v = redis.call('GET', KEYS[1])
  if v == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
  elseif not v then
    local latest = redis.call('GET', KEYS[2])
    if (not latest) or latest == ARGV[1] then
      redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
      redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
      return 1
    end
  end
  return 0
end
"""
HOLD = _HOLDS + "return holds()\n"
# Count one more start of a batch's transform; return the earlier starts that died. With
# a run id, only when that run holds the lock (renewed, as _HOLD; else -1 and nothing is
# counted), and a field of the run record is set unless set before: the fencing check, the
# attempt and the run's first-unit time in one round trip.
# KEYS: lock, latest, run, attempts. ARGV: run id or "", lock ttl ms, latest ttl s,
# field or "", time, batch id, attempts ttl s.
BEGIN_ATTEMPT = _HOLDS + """
if ARGV[1] ~= '' then
  if holds() == 0 then
    return -1
  end
  if ARGV[4] ~= '' then
    redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[5])
  end
end
local started = redis.call('HINCRBY', KEYS[4], ARGV[6] .. ':started', 1)
local ended = tonumber(redis.call('HGET', KEYS[4], ARGV[6] .. ':ended') or '0')
redis.call('EXPIRE', KEYS[4], ARGV[7])
return started - 1 - ended
"""
# A new run: take the lock if it is free (or already ours) and become the latest run.
ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"""
# Delete a lock only while it holds this owner's value (RunStore's and maintenance's).
# KEYS: lock. ARGV: owner.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# End a run in one step: set fields of its record, drop the lock if the run holds it.
# KEYS: run, lock (absent: no lock to drop). ARGV: run id, then field/value pairs.
END = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"""
# Finish a batch exactly once, in one step: take it off the pending set and add its counts,
# so a worker killed in between can neither lose the counts nor add them twice; then mark
# the run's progress time and renew its keys' lifetime. Returns the batches still pending,
# or -1 when the batch was finished before (a redelivered task: nothing is changed).
# KEYS: pending, run, progress, quarantined, errors, then every key of the run record (to
# renew). ARGV: batch id, "done" field, error record or "", progress time, record ttl s,
# number of counters n, n name/value pairs, then quarantine records.
FINISH = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then
  return -1
end
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  redis.call('HINCRBY', KEYS[2], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[5], ARGV[3])
end
for i = 7 + 2 * n, #ARGV do
  redis.call('RPUSH', KEYS[4], ARGV[i])
end
redis.call('HSET', KEYS[2], 'progress_at', ARGV[4])
for i = 6, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
return redis.call('SCARD', KEYS[1])
"""
