"""Run locks, run records and progress, kept in Redis.

Redis holds only what a run needs while it goes: the lock, its batches, its counters. The
truth about committed data lives in the ledger, so losing Redis loses no truth.

The lock is ``SET NX PX`` with the run id as its value, and the run id is the fencing token:
a task may commit only while :meth:`RunStore.hold` says the lock is (still, or again) its
run's. A run whose lock expired and was taken by a newer run can no longer commit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from celeray import _runstate_lua as _lua

if TYPE_CHECKING:
    from celeray.settings import Settings

__all__ = ["COUNTERS", "RunStore"]

_PREFIX = "celeray"
COUNTERS = (  # the summed fields of a run record
    "files_total",
    "files_done",
    "files_committed",
    "files_quarantined",
    "rows_in",
    "rows_out",
    "bytes_in",
    "bytes_out",
    "batches_total",
    "batches_done",
    "batches_failed",
    "rows_rescued",  # rows with a value kept in _rescued_data
    "rows_skipped",  # rows dropped into the rejects (on_bad_rows = "skip")
    "values_rescued",
)

class RunStore:
    """Locks and records of runs in one Redis database."""

    def __init__(self, client: redis.Redis, *, lock_ttl: int, record_ttl: int) -> None:
        self.r = client
        self.lock_ttl_ms = lock_ttl * 1000
        self.record_ttl = record_ttl
        self._hold = client.register_script(_lua.HOLD)
        self._begin_attempt = client.register_script(_lua.BEGIN_ATTEMPT)
        self._acquire = client.register_script(_lua.ACQUIRE)
        self._release = client.register_script(_lua.RELEASE)
        self._finish = client.register_script(_lua.FINISH)
        self._end = client.register_script(_lua.END)

    @classmethod
    def from_url(cls, url: str, *, lock_ttl: int, record_ttl: int, **options: Any) -> RunStore:
        """A store on the Redis at ``url``; ``options`` go to ``redis.Redis.from_url`` (TLS
        files, timeouts). A password is part of the URL: ``redis://:password@host:port/db``."""
        options = {"decode_responses": True, "health_check_interval": 30, **options}
        return cls(redis.Redis.from_url(url, **options), lock_ttl=lock_ttl, record_ttl=record_ttl)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> RunStore:
        """The store of ``settings``: its state URL, TLS files, lock and record lifetimes."""
        from celeray.redis_tls import redis_ssl

        url = settings.effective_state_url
        return cls.from_url(url, lock_ttl=settings.run_lock_ttl,
                            record_ttl=settings.result_expires,
                            **redis_ssl(settings, url), **options)  # fmt: skip

    # -- the run lock -----------------------------------------------------------------

    def _lock_key(self, pipeline: str) -> str:
        return f"{_PREFIX}:lock:{pipeline}"

    def _latest_key(self, pipeline: str) -> str:
        return f"{_PREFIX}:latest:{pipeline}"

    def _lock_args(self, pipeline: str, run_id: str) -> dict[str, Any]:
        return {"keys": [self._lock_key(pipeline), self._latest_key(pipeline)],
                "args": [run_id, self.lock_ttl_ms, self.record_ttl]}

    def acquire(self, pipeline: str, run_id: str) -> str:
        """Take the lock for a new run ``run_id``; return the run id that holds it now.

        The new run becomes the pipeline's latest: older runs are fenced off for good.
        """
        if self._acquire(**self._lock_args(pipeline, run_id)):
            return run_id
        return self.holder(pipeline) or run_id

    def hold(self, pipeline: str, run_id: str) -> bool:
        """Renew the lock if ``run_id`` holds it, or take it back if it is free and no newer
        run took it since; False otherwise (the fencing check before every commit)."""
        return bool(self._hold(**self._lock_args(pipeline, run_id)))

    def superseded(self, pipeline: str, run_id: str) -> str | None:
        """The newer run that took the pipeline's lock after ``run_id``, if any."""
        latest = self.r.get(self._latest_key(pipeline))
        return str(latest) if latest and latest != run_id else None

    def release(self, pipeline: str, run_id: str) -> None:
        """Drop the lock if ``run_id`` holds it."""
        self._release(keys=[self._lock_key(pipeline)], args=[run_id])

    def holder(self, pipeline: str) -> str | None:
        """The run id holding the pipeline's lock, if any."""
        value = self.r.get(self._lock_key(pipeline))
        return str(value) if value else None

    def claim_slot(self, pipeline: str, slot: int, run_id: str, ttl: int) -> bool:
        """Whether ``run_id`` is the run of the schedule ``slot`` (the first to claim it).

        A redelivered start of the same run claims its slot again and is told yes.
        """
        key = f"{_PREFIX}:slot:{pipeline}:{slot}"
        if self.r.set(key, run_id, nx=True, ex=ttl):
            return True
        return self.r.get(key) == run_id

    # -- run records ------------------------------------------------------------------

    def _run_key(self, run_id: str) -> str:
        return f"{_PREFIX}:run:{run_id}"

    def _record_keys(self, run_id: str) -> list[str]:
        return [self._run_key(run_id) + suffix for suffix in
                ("", ":pending", ":progress", ":quarantined", ":errors", ":jobs")]

    def _touch(self, pipe: Any, run_id: str) -> None:
        for key in self._record_keys(run_id):
            pipe.expire(key, self.record_ttl)

    def create(self, run_id: str, pipeline: str, **fields: Any) -> None:
        """Record a triggered run (state QUEUED) and list it under its pipeline."""
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hsetnx(self._run_key(run_id), "created_at", now)
        pipe.hset(self._run_key(run_id), "run_id", _enc(run_id))
        pipe.hset(self._run_key(run_id), "pipeline", _enc(pipeline))
        pipe.hsetnx(self._run_key(run_id), "state", _enc("QUEUED"))
        if fields:
            pipe.hset(self._run_key(run_id), mapping={k: _enc(v) for k, v in fields.items()})
        runs = f"{_PREFIX}:runs:{pipeline}"
        pipe.zadd(runs, {run_id: now}, nx=True)
        pipe.zremrangebyscore(runs, 0, now - self.record_ttl)
        pipe.expire(runs, self.record_ttl)
        self._touch(pipe, run_id)
        pipe.execute()

    def plan(self, run_id: str, batch_ids: list[str], **fields: Any) -> None:
        """Record the batches a run will commit and its totals; the run is RUNNING."""
        pipe = self.r.pipeline()
        pipe.hset(
            self._run_key(run_id),
            mapping={
                "state": _enc("RUNNING"),
                "started_at": time.time(),
                "progress_at": time.time(),
                "batches_total": len(batch_ids),
                **{k: _enc(v) for k, v in fields.items()},
            },
        )
        pipe.delete(self._run_key(run_id) + ":pending")
        if batch_ids:
            pipe.sadd(self._run_key(run_id) + ":pending", *batch_ids)
        self._touch(pipe, run_id)
        pipe.execute()

    def pending(self, run_id: str) -> set[str]:
        """Batch ids of the run not yet finished."""
        return {str(b) for b in self.r.smembers(self._run_key(run_id) + ":pending")}

    def set_fields(self, run_id: str, **fields: Any) -> None:
        """Set plain fields of the run record."""
        self.r.hset(self._run_key(run_id), mapping={k: _enc(v) for k, v in fields.items()})

    def claim_field(self, run_id: str, name: str, value: Any) -> bool:
        """Set field ``name`` of the run record unless it is set; whether this call set it."""
        return bool(self.r.hsetnx(self._run_key(run_id), name, _enc(value)))

    def end(self, run_id: str, pipeline: str | None, **fields: Any) -> None:
        """Set plain fields of the run record (its final state) and drop the pipeline's
        lock if ``run_id`` holds it (no lock when ``pipeline`` is None): one round trip."""
        pairs = [x for k, v in fields.items() for x in (k, _enc(v))]
        keys = [self._run_key(run_id)] + ([self._lock_key(pipeline)] if pipeline else [])
        self._end(keys=keys, args=[run_id, *pairs])

    def touch_progress(self, run_id: str) -> None:
        """Record that the run made progress now (the watchdog measures silence from it)."""
        self.r.hset(self._run_key(run_id), "progress_at", time.time())

    def set_batch_progress(self, run_id: str, batch_id: str, progress: dict[str, int]) -> None:
        """Replace the live progress of one batch still being transformed."""
        pipe = self.r.pipeline()
        pipe.hset(self._run_key(run_id) + ":progress", batch_id, json.dumps(progress))
        pipe.hset(self._run_key(run_id), "progress_at", time.time())
        self._touch(pipe, run_id)
        pipe.execute()

    def finish_batch(
        self,
        run_id: str,
        batch_id: str,
        counters: dict[str, int],
        quarantined: list[dict[str, Any]] = (),  # type: ignore[assignment]
        error: str | None = None,
    ) -> int | None:
        """Count a batch as finished once, atomically; return the batches still pending.

        Returns None when this batch was finished before, in which case nothing is counted.
        One round trip: the counts, the run's progress time and its keys' lifetime.
        """
        key = self._run_key(run_id)
        counts = [(name, int(value)) for name, value in counters.items() if value]
        remaining = int(
            self._finish(
                keys=[key + ":pending", key, key + ":progress", key + ":quarantined",
                      key + ":errors", *self._record_keys(run_id)],
                args=[
                    batch_id,
                    "batches_failed" if error else "batches_done",
                    json.dumps({"batch_id": batch_id, "error": error}) if error else "",
                    time.time(),
                    self.record_ttl,
                    len(counts),
                    *[x for pair in counts for x in pair],
                    *[json.dumps(record) for record in quarantined],
                ],
            )
        )
        return None if remaining < 0 else remaining

    def state(self, run_id: str) -> str | None:
        """The run's state alone (QUEUED, RUNNING, SUCCESS, FAILURE), None for no record."""
        raw = self.r.hget(self._run_key(run_id), "state")
        return None if raw is None else str(_dec(str(raw)))

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run's record with counters as ints and live progress folded in."""
        key = self._run_key(run_id)
        pipe = self.r.pipeline()
        pipe.hgetall(key)
        pipe.hvals(key + ":progress")
        pipe.lrange(key + ":quarantined", 0, -1)
        pipe.lrange(key + ":errors", 0, -1)
        raw, live, quarantined, errors = pipe.execute()
        if not raw:
            return None
        rec: dict[str, Any] = {k: _dec(v) for k, v in raw.items()}
        for name in COUNTERS:
            rec[name] = int(rec.get(name) or 0)
        for item in live:
            for name, value in json.loads(item).items():
                if name in COUNTERS:
                    rec[name] += int(value)
        rec["quarantined"] = [json.loads(q) for q in quarantined]
        rec["errors"] = [json.loads(e) for e in errors]
        return rec

    def recent(self, pipeline: str, limit: int = 20) -> list[str]:
        """Run ids of the pipeline, newest first."""
        return [str(r) for r in self.r.zrevrange(f"{_PREFIX}:runs:{pipeline}", 0, limit - 1)]

    def _attempts_key(self, pipeline: str) -> str:
        return f"{_PREFIX}:attempts:{pipeline}"

    def begin_attempt(
        self, pipeline: str, batch_id: str, *, run_id: str | None = None,
        mark: str | None = None,
    ) -> int | None:
        """Count one more start of the batch's transform; return how many earlier starts
        died (never reached :meth:`end_attempt`): Redis itself keeps no delivery count.

        Counting per batch (its id derives from its inputs), not per message or per run,
        also counts the watchdog's resends, Celery's retries and the same batch planned
        again by a later run (a dead run's lock frees before Redis gives its message back,
        and the reconciliation pass starts a new run meanwhile).

        With ``run_id``, in the same round trip: the fencing check of :meth:`hold` (None,
        and nothing counted, when ``run_id`` may not hold the lock) and ``mark``, a field
        of the run record set to the time unless set before (the first time it happened).
        """
        lock = self._lock_args(pipeline, run_id or "")
        died = int(self._begin_attempt(
            keys=[*lock["keys"], self._run_key(run_id or ""), self._attempts_key(pipeline)],
            args=[*lock["args"], mark or "", time.time(), batch_id, self.record_ttl],
        ))
        return None if died < 0 else died

    def claim_batch(self, pipeline: str, batch_id: str, token: str, ttl: int) -> str | None:
        """Take the batch's transform lease for ``ttl`` seconds; the holder's token if taken.

        ``ttl`` is the task time limit: a start that dies keeps the lease no longer than a
        live one could run, and Redis gives its message back only after the visibility
        timeout, which is longer.
        """
        key = f"{_PREFIX}:busy:{pipeline}:{batch_id}"
        if self.r.set(key, token, nx=True, ex=max(1, int(ttl))):
            return None
        return str(self.r.get(key) or "an expired start")

    def release_batch(self, pipeline: str, batch_id: str, token: str) -> None:
        """Give the lease back, if ``token`` still holds it."""
        self._release(keys=[f"{_PREFIX}:busy:{pipeline}:{batch_id}"], args=[token])

    def end_attempt(self, pipeline: str, batch_id: str) -> None:
        """Record that a start of the batch's transform ended (well or with an error)."""
        self.r.hincrby(self._attempts_key(pipeline), f"{batch_id}:ended", 1)

    def save_jobs(self, run_id: str, jobs: Sequence[Mapping[str, Any]]) -> None:
        """Keep the run's batch messages so a redelivered start can resend the unfinished
        ones. What comes back is checked again by the worker that acts on it."""
        key = self._run_key(run_id) + ":jobs"
        pipe = self.r.pipeline()
        pipe.delete(key)
        if jobs:
            pipe.hset(key, mapping={j["batch_id"]: json.dumps(j) for j in jobs})
        pipe.expire(key, self.record_ttl)
        pipe.execute()

    def load_jobs(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's batch messages by batch id; empty when the run was never planned."""
        raw = self.r.hgetall(self._run_key(run_id) + ":jobs")
        return {str(k): json.loads(v) for k, v in raw.items()}

    def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(self.r.ping())


def _enc(value: Any) -> str:
    return json.dumps(value)


def _dec(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value

