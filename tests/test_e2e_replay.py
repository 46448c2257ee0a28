"""On the real stack: a quarantined file, fixed and replayed, is committed by the next run
exactly once, and ``celeray files`` and ``celeray runs NAME`` say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celeray import reading
from tests._stack import Stack

pytestmark = pytest.mark.stack


def _run(stack: Stack, name: str) -> dict:
    out = stack.celeray("run", name, "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    result = stack.client.AsyncResult(run_id)
    assert result.state == "SUCCESS", (result.state, result.result)
    return {"run_id": run_id, **dict(result.result)}


def _json(stack: Stack, *args: str) -> list[dict]:
    out = stack.celeray(*args, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_a_fixed_file_replayed_is_committed_once_by_the_next_run(
    stack: Stack, tmp_path: Path
) -> None:
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    (landing / "good.csv").write_text("id,x\n1,a\n2,b\n")
    (landing / "bad.csv").write_text("id,x\nnot-a-number,c\n")
    stack.add_pipeline("replay", "\n".join([
        f'source = "{landing.as_uri()}/*.csv"', f'sink = "{sink.as_uri()}"',
        "[pipelines.replay.schema]", 'id = "int64"',
    ]))  # fmt: skip
    first = _run(stack, "replay")
    assert (first["files_committed"], first["files_quarantined"]) == (1, 1)
    [item] = _json(stack, "quarantine", "list", "replay")
    assert item["url"].endswith("/bad.csv") and item["status"] == "quarantined"
    assert item["reason"] and item["run_id"] == first["run_id"]

    (landing / "bad.csv").write_text("id,x\n3,c\n")  # fixed in place
    held = _run(stack, "replay")
    assert held["files_committed"] == 0  # still held back: nobody replayed it
    replay = stack.celeray("quarantine", "replay", "replay", item["url"])
    assert replay.returncode == 0, replay.stdout + replay.stderr
    [pending] = _json(stack, "quarantine", "list", "replay")
    assert pending["status"] == "replay_pending"
    assert pending["decision"]["by"].startswith("cli:")

    third = _run(stack, "replay")
    assert (third["files_committed"], third["files_quarantined"]) == (1, 0)
    assert sorted(reading.dataset(sink.as_uri()).to_table().column("id").to_pylist()) == [1, 2, 3]
    assert _json(stack, "quarantine", "list", "replay") == []
    [done] = _json(stack, "quarantine", "list", "replay", "--all")
    assert done["status"] == "committed" and done["committed_by"]["run_id"] == third["run_id"]
    [history] = _json(stack, "files", "replay", "bad.*")
    assert (history["state"], history["run_id"], history["rows_in"]) == (
        "committed", third["run_id"], 1)  # fmt: skip
    assert history["delta_version"] is not None  # Delta by default: the version holding it

    again = _run(stack, "replay")
    assert again["files_committed"] == 0  # exactly once
    runs = stack.celeray("runs", "replay")
    assert runs.returncode == 0 and third["run_id"] in runs.stdout


def test_an_unchanged_file_replayed_after_the_pipeline_changed_is_committed(
    stack: Stack, tmp_path: Path
) -> None:
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    (landing / "only.csv").write_text("id,x\nnot-a-number,c\n")  # alone in its batch

    def pipeline(id_type: str) -> None:
        stack.add_pipeline("changed", "\n".join([
            f'source = "{landing.as_uri()}/*.csv"', f'sink = "{sink.as_uri()}"',
            'table_format = "parquet"', "[pipelines.changed.schema]", f'id = "{id_type}"',
        ]))  # fmt: skip

    pipeline("int64")
    first = _run(stack, "changed")
    assert (first["files_committed"], first["files_quarantined"]) == (0, 1)
    pipeline("string")  # the pipeline changes; the file does not
    [item] = _json(stack, "quarantine", "list", "changed")
    assert stack.celeray("quarantine", "replay", "changed", item["url"]).returncode == 0
    second = _run(stack, "changed")
    assert (second["files_committed"], second["files_quarantined"]) == (1, 0)
    assert reading.dataset(sink.as_uri()).to_table().column("id").to_pylist() == ["not-a-number"]
    [history] = _json(stack, "files", "changed")
    assert history["state"] == "committed" and history["outputs"]
    assert _run(stack, "changed")["files_committed"] == 0
