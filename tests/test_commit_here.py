"""BatchFlow.commit_here: a transform commits its local batch, or hands the commit over."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from celeray.batch import ResolvedBatch
from celeray.batch_flow import BatchFlow
from celeray.errors import LockLostError
from celeray.ledger import Ledger
from celeray.pipelines import Pipeline

RESULT = {"rows_out": 3, "files": [], "quarantined": [], "outputs": []}


@pytest.fixture
def batch(tmp_path: Path) -> ResolvedBatch:
    pipeline = Pipeline.model_validate(
        {"name": "p", "source": f"{tmp_path}/in/*.csv", "sink": f"{tmp_path}/lake"}
    )
    message = {"pipeline": "p", "run_id": str(uuid.uuid4()), "batch_id": "0" * 24,
               "files": [{"url": f"file://{tmp_path}/in/a.csv", "size": 1, "mtime": 1.0,
                          "etag": None}]}  # fmt: skip
    return ResolvedBatch(message=message, pipeline=pipeline, files=message["files"],  # type: ignore[arg-type]
                         staging_url="", out_url="", plan={})  # fmt: skip


def _commit_raising(exc: BaseException | None) -> Any:
    def commit(flow: BatchFlow, batch: ResolvedBatch, result: dict[str, Any]):
        if exc is not None:
            raise exc
        return {"batch_id": batch.batch_id, "committed": True, "by": flow.hostname}

    return commit


def _flow() -> BatchFlow:
    """A flow whose commit is replaced by each test: no store or backend is reached."""
    return BatchFlow(store=None, settings=None, backend=None, hostname="ray@h")  # type: ignore[arg-type]


def test_a_commit_that_works_is_done_here(
    monkeypatch: pytest.MonkeyPatch, batch: ResolvedBatch
) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(BatchFlow, "_commit", _commit_raising(None))
    out = _flow().commit_here(batch, RESULT, defer=sent.append)
    assert out == {"batch_id": "0" * 24, "committed": True, "by": "ray@h"} and sent == []


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"),
                                 ConnectionError("Redis went away")])
def test_a_failed_commit_goes_to_commit_batch_with_its_result_in_the_sink(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, batch: ResolvedBatch
) -> None:
    """The Ray work is done: the batch goes to commit_batch (io, retried), which finds the
    result where the transform saved it, beside the staged Parquet, not in the message."""
    sent: list[Any] = []
    monkeypatch.setattr(BatchFlow, "_commit", _commit_raising(exc))
    out = _flow().commit_here(batch, RESULT, defer=sent.append)
    assert sent == [(batch.message,)]
    assert out == {"batch_id": "0" * 24, "committed": None, "deferred": True}
    assert Ledger(batch.sink).load_result(batch.batch_id) == RESULT


def test_a_superseded_run_fails_the_batch_as_commit_batch_would(
    monkeypatch: pytest.MonkeyPatch, batch: ResolvedBatch
) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(BatchFlow, "_commit", _commit_raising(LockLostError("superseded")))
    with pytest.raises(LockLostError):
        _flow().commit_here(batch, RESULT, defer=sent.append)
    assert sent == []
