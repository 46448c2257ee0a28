"""One celeray run, measured from the HTTP trigger to SUCCESS, with what it is made of.

The clock starts just before ``POST /api/v1/pipelines/<name>/runs`` and stops at the run's
``finished_at``, the moment ``finalize_run`` marks it SUCCESS after the last batch's ledger
entry is written (same machine, same clock); the suite learns of it from the result
backend's channel of the run, without polling (see :func:`_follow`).
Memory: every process under the stack's supervisord is sampled (largest single process).

The breakdown comes from Flower, which receives every task's events (sent, received,
started, succeeded): where the run waited in queues, planned, staged, drove Ray and
committed. The unit (Ray task) seconds are not recorded anywhere a run leaves them (the
ledger holds rows and outputs only), so ``transform`` is the ``transform_batch`` task's
runtime: Ray's work plus its dispatch.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.celeray_stack import BenchStack
from bench.isolated import folder_bytes
from bench.memory import TreeSampler
from bench.out_types import kinds_of

__all__ = ["RunFailedError", "run_pipeline"]

RECHECK = 1.0  # s: the API is asked at least this often while a run goes on
FINAL = ("SUCCESS", "FAILURE")
TIMEOUT = 3600.0
FLOWER_WAIT = 5.0  # Flower's events may trail the run's end a little


class RunFailedError(RuntimeError):
    """The run did not end in SUCCESS."""


def _trigger(stack: BenchStack, name: str) -> str:
    code, body = stack.http("POST", f"/api/v1/pipelines/{name}/runs")
    if code != 202:
        raise RunFailedError(f"trigger of {name} answered {code}: {body}")
    return str(body["run_id"])


def _follow(stack: BenchStack, run_id: str) -> dict[str, Any]:
    """Wait for the run's end, asking the API only once the backend says it ended.

    Polling the API every few ms would burn the stack's CPU (gunicorn, the rate limit's
    Redis step) while the run it measures shares the same cores; the backend publishes
    every state it stores (PROGRESS, then SUCCESS or FAILURE) on the result key's channel,
    so the suite sleeps on that channel, and asks the API when a final state is published
    or every ``RECHECK`` seconds (which also catches one published before it subscribed).
    """
    import redis

    deadline = time.monotonic() + TIMEOUT
    backend = redis.Redis.from_url(stack.env["CELERAY_RESULT_BACKEND"])
    channel = backend.pubsub(ignore_subscribe_messages=True)
    channel.subscribe(f"celery-task-meta-{run_id}")
    try:
        while time.monotonic() < deadline:
            message = channel.get_message(timeout=RECHECK)
            if message is not None and _published_state(message) not in FINAL:
                continue  # PROGRESS: nothing to ask the API yet
            code, doc = stack.http("GET", f"/api/v1/runs/{run_id}")
            if code == 200 and doc.get("state") in FINAL:
                return dict(doc)
    finally:
        channel.close()
        backend.close()
    raise RunFailedError(f"run {run_id} did not end within {TIMEOUT:.0f}s")


def _published_state(message: dict[str, Any]) -> str | None:
    try:
        return str(json.loads(message["data"]).get("status"))
    except (TypeError, ValueError, AttributeError):
        return None


def run_pipeline(stack: BenchStack, name: str, sink: Path, keep_sink: bool = False
                 ) -> dict[str, Any]:
    """Trigger ``name``, wait for SUCCESS; return seconds, rows, bytes, peak and breakdown.

    The sink is measured (its bytes; the ledger entries this run wrote) and then removed,
    unless ``keep_sink`` (a pipeline's later runs add to it).
    """
    before = _entry_files(sink)
    with TreeSampler(stack.supervisord_pid, include_root=False) as sampler:
        t0 = time.time()
        run_id = _trigger(stack, name)
        doc = _follow(stack, run_id)
        polled = time.time() - t0
    if doc["state"] != "SUCCESS" or (doc.get("result") or {}).get("status") != "committed":
        raise RunFailedError(f"run {run_id} of {name}: {doc['state']} {doc.get('error')} "
                             f"{json.dumps(doc.get('result'))[:1000]}")
    finished = doc.get("finished_at")
    seconds = float(finished) - t0 if finished else polled
    result = doc["result"]
    try:
        ledger = _ledger(sink, before)
        out = {
            "run_id": run_id,
            "seconds": seconds,
            "polled_seconds": round(polled, 3),
            "server_seconds": result.get("seconds"),
            "rows_in": result.get("rows_in"),
            "rows_out": result.get("rows_out"),
            "bytes_out": folder_bytes(sink),
            "kinds": kinds_of(sink),
            "files": result.get("files_committed"),
            "batches": result.get("batches_total"),
            "ledger": ledger,
            "peak": sampler.peak(),
            "peak_by_process": sampler.by_name(),
            "breakdown": breakdown(stack, run_id, t0, int(ledger["entries"])),
        }
    finally:
        if not keep_sink:
            shutil.rmtree(sink, ignore_errors=True)
    return out


def _entry_files(sink: Path) -> set[Path]:
    return set((sink / "_celeray" / "ledger").glob("*.json"))


def _ledger(sink: Path, before: set[Path]) -> dict[str, Any]:
    """The ledger entries written since ``before`` (the files there when the run began)."""
    entries = [json.loads(p.read_text()) for p in sorted(_entry_files(sink) - before)]
    return {
        "entries": len(entries),
        "outputs": sum(len(e.get("outputs", [])) for e in entries),
        "rows_out": sum(int(e.get("rows_out") or 0) for e in entries),
        "inputs": sum(len(e.get("inputs", [])) for e in entries),
        # the Ray tasks' own seconds (process_unit: read, transform, write), no dispatch
        "units_s": sum(float((e.get("timings") or {}).get("units_s") or 0) for e in entries),
    }


def _tasks_of(stack: BenchStack, run_id: str, batches: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + FLOWER_WAIT
    while True:
        tasks = [t for t in stack.flower_tasks().values()
                 if run_id in (t.get("root_id"), t.get("uuid"))]
        if len(_chains(tasks, _by_name(tasks))) >= batches or time.monotonic() > deadline:
            return tasks
        time.sleep(0.2)


def _by_name(tasks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The tasks grouped by their name without the ``tasks.`` prefix."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        by_name.setdefault(str(t.get("name")).removeprefix("tasks."), []).append(t)
    return by_name


def breakdown(stack: BenchStack, run_id: str, t0: float, batches: int) -> dict[str, Any]:
    """Where the run's time went, from Flower's task events (seconds; None if unknown).

    ``to_first_ray``: trigger -> the first ``transform_batch`` started (it submits the Ray
    tasks at once): the per-run overhead before any Ray work. ``plan``: ``start_run``'s
    runtime. ``stage``/``transform``/``commit``: summed task runtimes over the batches.
    ``queued``: summed waits between a task being sent and a worker starting it.
    ``batch_chain``: per batch, its first task sent -> its commit done, the median.
    """
    tasks = _tasks_of(stack, run_id, batches)
    by_name = _by_name(tasks)

    def runtime(kind: str) -> float | None:
        found = [t.get("runtime") for t in by_name.get(kind, []) if t.get("runtime")]
        return round(sum(found), 4) if found else None

    start = (by_name.get("start_run") or [{}])[0]
    transforms = by_name.get("transform_batch", [])
    first_ray = min((t["started"] for t in transforms if t.get("started")), default=None)
    queued = [t["started"] - (t.get("sent") or t.get("received"))
              for t in tasks if t.get("started") and (t.get("sent") or t.get("received"))]
    return {
        "tasks_seen": len(tasks),
        "to_start": _delta(t0, start.get("started")),
        "to_first_ray": _delta(t0, first_ray),
        "plan": runtime("start_run"),
        "stage": runtime("stage_batch"),
        "transform": runtime("transform_batch"),
        "commit": runtime("commit_batch"),
        "queued": round(sum(queued), 4) if queued else None,
        "batch_chain": _median(_chains(tasks, by_name)),
    }


def _chains(tasks: list[dict[str, Any]], by_name: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Per batch: its first task sent (or received) -> its commit done.

    The first task is stage_batch where the batch had files to copy, else transform_batch
    (whose parent is then start_run, which is not part of the batch). The commit is done
    when the transform's commit_batch succeeded, or, for a batch its transform committed
    itself (a local sink), when the transform succeeded.
    """
    by_id = {t.get("uuid"): t for t in tasks}
    commits = {c.get("parent_id"): c for c in by_name.get("commit_batch", [])}
    out = []
    for transform in by_name.get("transform_batch", []):
        if not transform.get("succeeded"):
            continue
        commit = commits.get(transform.get("uuid"))
        end = commit.get("succeeded") if commit else transform["succeeded"]
        parent = by_id.get(transform.get("parent_id")) or {}
        first = parent if str(parent.get("name", "")).endswith("stage_batch") else transform
        begin = first.get("sent") or first.get("received")
        if begin and end:
            out.append(end - begin)
    return out


def _delta(a: float | None, b: float | None) -> float | None:
    return round(float(b) - float(a), 4) if a and b else None


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    return round(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2, 4)
