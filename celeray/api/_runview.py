"""One run as the API shows it: its record in the state store and its Celery result, merged.

The state is one of ``QUEUED`` (sent, no worker has taken it yet), ``STARTED`` (a worker is
planning it), ``PROGRESS`` (batches are being transformed), ``SUCCESS``, ``FAILURE``, or
another Celery state passed through (``REVOKED``). A final Celery result wins over the
record; a final record wins over a result that has not arrived or has expired.
"""

from __future__ import annotations

from typing import Any

from celeray.celeryconfig import TASK_NAMES
from celeray.run_record import FINAL_STATES, progress_of, summary_of
from celeray.runstate import RunStore

__all__ = ["PROGRESS_KEYS", "load_run", "record_state", "view_of"]

PROGRESS_KEYS = ("files_total", "files_done", "rows_in", "rows_out", "bytes_in", "bytes_out")
_WAITING = frozenset({"PENDING", "RECEIVED"})
_WORKING = frozenset({"STARTED", "RETRY"})


def record_state(record: dict[str, Any]) -> str:
    """The API state of a run from its record alone (RUNNING is shown as PROGRESS)."""
    state = str(record.get("state") or "QUEUED")
    return "PROGRESS" if state == "RUNNING" else state


def _is_run(run_id: str, meta: dict[str, Any]) -> bool:
    """Whether a result without a run record belongs to a run (not to a batch task)."""
    name = meta.get("name")
    if name not in (None, TASK_NAMES["start_run"]):
        return False
    result = meta.get("result")
    if meta.get("status") == "FAILURE":
        return name is not None
    return isinstance(result, dict) and (
        result.get("run_id") == run_id or result.get("status") == "skipped"
    )


def _error_text(result: Any) -> str:
    if isinstance(result, BaseException):
        return str(result) or type(result).__name__
    if isinstance(result, dict) and "exc_message" in result:
        message = result["exc_message"]
        return " ".join(map(str, message)) if isinstance(message, list | tuple) else str(message)
    return str(result)


def view_of(
    run_id: str, record: dict[str, Any] | None, meta: dict[str, Any]
) -> dict[str, Any] | None:
    """The API's view of a run, or None when neither source knows ``run_id`` as a run."""
    status = str(meta.get("status") or "PENDING")
    result = meta.get("result")
    if record is None and (status in _WAITING or not _is_run(run_id, meta)):
        return None
    rec = record or {}
    if status in FINAL_STATES:
        state = status
    elif rec and record_state(rec) in FINAL_STATES:
        state = record_state(rec)
    elif status == "PROGRESS" or rec.get("state") == "RUNNING":
        state = "PROGRESS"
    elif status in _WORKING:
        state = "STARTED"
    elif status in _WAITING:
        state = "QUEUED"
    else:
        state = status  # REVOKED, REJECTED: what Celery says, unchanged
    numbers = progress_of(rec) if rec else (result if isinstance(result, dict) else {})
    summary: dict[str, Any] | None = None
    if state == "SUCCESS":
        summary = result if status == "SUCCESS" and isinstance(result, dict) else summary_of(rec)
    error: str | None = None
    if state == "FAILURE":
        if status == "FAILURE":
            error = _error_text(result)
        else:
            error = rec.get("error") or "; ".join(e.get("error", "") for e in rec.get("errors", []))
    pipeline = rec.get("pipeline") or (result.get("pipeline") if isinstance(result, dict) else None)
    return {
        "run_id": run_id,
        "pipeline": pipeline,
        "state": state,
        "progress": {k: int(numbers.get(k) or 0) for k in PROGRESS_KEYS},
        "result": summary,
        "error": error or None,
        "errors": rec.get("errors", []),
        "trigger": rec.get("trigger"),
        "created_at": rec.get("created_at"),
        "started_at": rec.get("started_at"),
        "first_unit_at": rec.get("first_unit_at"),
        "finished_at": rec.get("finished_at"),
    }


def load_run(run_id: str, store: RunStore, client: Any) -> dict[str, Any] | None:
    """Read the run's record and Celery result and merge them; None for an unknown run."""
    record = store.get(run_id)
    meta = client.backend.get_task_meta(run_id, cache=False)
    return view_of(run_id, record, meta)
