"""tasks.run.commit_here: a transform commits its local batch, or hands the commit over."""

from __future__ import annotations

from typing import Any

import pytest

import tasks.run as run
from celeray.errors import LockLostError

JOB = {"batch_id": "b1", "run_id": "r1", "pipeline": "p", "result": {"rows_out": 3}}


def _commit_raising(exc: BaseException | None) -> Any:
    def commit(job: dict[str, Any], hostname: str | None) -> dict[str, Any]:
        if exc is not None:
            raise exc
        return {"batch_id": job["batch_id"], "committed": True, "by": hostname}

    return commit


def test_a_commit_that_works_is_done_here(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(run, "_commit", _commit_raising(None))
    out = run.commit_here(JOB, "ray@h", defer=sent.append)
    assert out == {"batch_id": "b1", "committed": True, "by": "ray@h"} and sent == []


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"),
                                 ConnectionError("Redis went away")])
def test_a_failed_commit_goes_to_commit_batch_with_its_result(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    """The Ray work is done: the batch and its result go to commit_batch (io, retried)."""
    sent: list[Any] = []
    monkeypatch.setattr(run, "_commit", _commit_raising(exc))
    out = run.commit_here(JOB, "ray@h", defer=sent.append)
    assert sent == [(JOB,)]
    assert out == {"batch_id": "b1", "committed": None, "deferred": True}


def test_a_superseded_run_fails_the_batch_as_commit_batch_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(run, "_commit", _commit_raising(LockLostError("superseded")))
    with pytest.raises(LockLostError):
        run.commit_here(JOB, "ray@h", defer=sent.append)
    assert sent == []
