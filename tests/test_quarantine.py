"""Quarantine triage, file history and run history on a real ledger in a temporary folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celeray.errors import QuarantineError
from celeray.file_history import file_history, run_history
from celeray.ledger import Ledger, batch_id_for
from celeray.planner import plan_batches
from celeray.quarantine import Triage
from celeray.storage import FileInfo


def _file(url: str, size: int = 10, rows: int | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"url": url, "size": size, "mtime": 1.0, "etag": None}
    if rows is not None:
        f["rows_in"] = rows
    return f


def _bad(url: str, kind: str = "parse", line: int | None = 3) -> dict[str, Any]:
    return {"url": url, "kind": kind, "error": f"bad {kind}", "line": line, "row": None}


def commit(ledger: Ledger, run_id: str, good: list[str], bad: list[dict[str, Any]],
           **extra: Any) -> str:  # fmt: skip
    files = [_file(u, rows=5) for u in good] + [_file(b["url"]) for b in bad]
    batch_id = batch_id_for("p", files)
    ledger.commit({
        "batch_id": batch_id, "pipeline": "p", "run_id": run_id,
        "inputs": [_file(u, rows=5) for u in good], "quarantined": bad,
        "outputs": [{"path": f"part-{batch_id}-0.parquet", "rows": 5 * len(good)}],
        "rows_in": 5 * len(good), "rows_out": 5 * len(good), "bytes_in": 10, "bytes_out": 20,
        **extra,
    })  # fmt: skip
    return batch_id


@pytest.fixture
def sink(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


def _plan(ledger: Ledger, urls: list[str]) -> list[str]:
    listed = [FileInfo(url=u, size=10, mtime=1.0, etag=None) for u in urls]
    plan = plan_batches("p", listed, ledger.done_inputs(), 1 << 30)
    return [f["url"] for b in plan.batches for f in b.files]


def test_list_show_filters_and_reasons(sink: str) -> None:
    ledger = Ledger(sink)
    b1 = commit(ledger, "r1", ["file:///l/a.csv"], [_bad("file:///l/b.csv"),
                                                    _bad("file:///l/c.jsonl", "schema", None)])
    t = Triage(sink)
    assert [i["url"] for i in t.items()] == ["file:///l/b.csv", "file:///l/c.jsonl"]
    assert [i["url"] for i in t.items(kind="schema")] == ["file:///l/c.jsonl"]
    assert [i["url"] for i in t.items(glob="*.csv")] == ["file:///l/b.csv"]
    assert [i["url"] for i in t.items(glob="file:///l/c*")] == ["file:///l/c.jsonl"]
    item = t.show("file:///l/b.csv")
    assert (item["kind"], item["reason"], item["line"]) == ("parse", "bad parse", 3)
    assert (item["batch_id"], item["run_id"], item["status"]) == (b1, "r1", "quarantined")
    assert item["quarantined_at"] is not None and item["decision"] is None
    with pytest.raises(QuarantineError) as exc:
        t.show("file:///l/a.csv")
    assert exc.value.missing


def test_replay_lets_the_next_plan_take_the_file_once(sink: str) -> None:
    ledger = Ledger(sink)
    commit(ledger, "r1", ["file:///l/a.csv"], [_bad("file:///l/b.csv")])
    urls = ["file:///l/a.csv", "file:///l/b.csv"]
    assert _plan(ledger, urls) == []  # quarantined: kept out
    planned_before = _plan(ledger, urls)
    item = Triage(sink).replay("file:///l/b.csv", "cli:alice")
    assert item["status"] == "replay_pending"
    assert (item["decision"]["action"], item["decision"]["by"]) == ("replay", "cli:alice")
    assert planned_before == []  # a run that planned before is unaffected
    assert _plan(ledger, urls) == ["file:///l/b.csv"]  # the next one takes it
    assert Triage(sink).replay("file:///l/b.csv", "api")["decision"]["by"] == "cli:alice"
    b2 = commit(ledger, "r2", ["file:///l/b.csv"], [])
    assert _plan(ledger, urls) == []  # committed: never again
    t = Triage(sink)
    assert t.items() == []  # resolved: off the default list
    [item] = t.items(include_all=True)
    assert item["status"] == "committed" and item["committed_by"]["batch_id"] == b2
    with pytest.raises(QuarantineError) as exc:
        t.replay("file:///l/b.csv", "api")
    assert not exc.value.missing


def test_a_replayed_file_quarantined_again_needs_attention_again(sink: str) -> None:
    ledger = Ledger(sink)
    commit(ledger, "r1", [], [_bad("file:///l/b.csv")])
    Triage(sink).replay("file:///l/b.csv", "api")
    b2 = commit(ledger, "r2", ["file:///l/x.csv"], [_bad("file:///l/b.csv", "schema")])
    assert _plan(ledger, ["file:///l/b.csv"]) == []
    [item] = Triage(sink).items()
    assert (item["status"], item["kind"], item["batch_id"]) == ("quarantined", "schema", b2)
    assert item["decision"]["action"] == "replay"  # the earlier decision, kept for audit
    again = Triage(sink).replay("file:///l/b.csv", "api")
    assert again["status"] == "replay_pending" and len(again["decision"]["history"]) == 1
    assert _plan(ledger, ["file:///l/b.csv"]) == ["file:///l/b.csv"]


def test_dismiss_keeps_out_hides_and_withdraws_a_replay(sink: str) -> None:
    ledger = Ledger(sink)
    commit(ledger, "r1", [], [_bad("file:///l/b.csv"), _bad("file:///l/c.csv")])
    t = Triage(sink)
    t.replay("file:///l/b.csv", "api")
    item = t.dismiss("file:///l/b.csv", "cli:bob")
    assert item["status"] == "dismissed" and item["decision"]["by"] == "cli:bob"
    assert item["decision"]["history"][0]["action"] == "replay"
    assert _plan(ledger, ["file:///l/b.csv", "file:///l/c.csv"]) == []
    assert [i["url"] for i in t.items()] == ["file:///l/c.csv"]
    assert {i["url"]: i["status"] for i in t.items(include_all=True)} == {
        "file:///l/b.csv": "dismissed", "file:///l/c.csv": "quarantined"}
    assert t.dismiss("file:///l/b.csv", "api")["decision"]["by"] == "cli:bob"  # no change
    assert t.replay("file:///l/b.csv", "api")["status"] == "replay_pending"  # mind changed


def test_file_history_names_run_batch_rows_and_outputs(sink: str) -> None:
    ledger = Ledger(sink)
    b1 = commit(ledger, "r1", ["file:///l/a.csv", "file:///l/b.csv"], [_bad("file:///l/c.csv")])
    found = {f["url"]: f for f in file_history(sink)}
    a = found["file:///l/a.csv"]
    assert (a["state"], a["run_id"], a["batch_id"], a["rows_in"]) == ("committed", "r1", b1, 5)
    assert a["outputs"] == [f"part-{b1}-0.parquet"] and a["batch_rows_out"] == 10
    assert "delta_version" not in a and a["committed_at"] is not None
    c = found["file:///l/c.csv"]
    assert (c["state"], c["status"], c["kind"]) == ("quarantined", "quarantined", "parse")
    assert [f["url"] for f in file_history(sink, "b.*")] == ["file:///l/b.csv"]


def test_file_history_of_a_delta_sink_names_the_version(sink: str) -> None:
    ledger = Ledger(sink)
    b1 = commit(ledger, "r1", ["file:///l/a.csv"], [], table_format="delta")
    [f] = file_history(sink)
    assert f["delta_version"] is None  # not published yet
    ledger.record_delta(b1, 4)
    [f] = file_history(sink)
    assert f["delta_version"] == 4


def test_run_history_groups_entries_by_run_newest_first(sink: str) -> None:
    ledger = Ledger(sink)
    commit(ledger, "r1", ["file:///l/a.csv"], [_bad("file:///l/q.csv")])
    commit(ledger, "r1", ["file:///l/b.csv", "file:///l/c.csv"], [])
    commit(ledger, "r2", ["file:///l/d.csv"], [])
    runs = run_history(sink)
    assert [r["run_id"] for r in runs] == ["r2", "r1"]
    r1 = runs[1]
    assert (r1["batches"], r1["files_committed"], r1["files_quarantined"]) == (2, 3, 1)
    assert (r1["rows_in"], r1["rows_out"]) == (15, 15)
    assert r1["started_at"] <= r1["ended_at"]
    assert [r["run_id"] for r in run_history(sink, 1)] == ["r2"]
    assert run_history(str(Path(sink).parent / "empty")) == []


def test_an_unchanged_file_alone_in_its_batch_replays_as_a_new_batch(sink: str) -> None:
    ledger = Ledger(sink)
    first = commit(ledger, "r1", [], [_bad("file:///l/b.csv")])
    Triage(sink).replay("file:///l/b.csv", "api")
    listed = [FileInfo(url="file:///l/b.csv", size=10, mtime=1.0, etag=None)]
    plan = plan_batches("p", listed, ledger.done_inputs(), 1 << 30, ledger.replays())
    [batch] = plan.batches
    assert batch.files[0]["replay"] == first
    assert batch.batch_id != first  # not the committed batch: the replay is processed
    again = plan_batches("p", listed, ledger.done_inputs(), 1 << 30, ledger.replays())
    assert again.batches[0].batch_id == batch.batch_id  # deterministic: a retry overwrites


def test_a_batch_message_carries_the_replay_and_its_id_checks_out() -> None:
    from celeray.errors import MessageRefusedError
    from celeray.messages import input_file, parse_batch

    f = {**_file("file:///l/b.csv"), "replay": "a" * 24}
    msg = {"pipeline": "p", "run_id": "0b7f5a9e-3c1d-4e2f-9a8b-7c6d5e4f3a21",
           "batch_id": batch_id_for("p", [f]), "files": [input_file(f)]}  # fmt: skip
    parsed = parse_batch(msg)
    assert parsed["files"][0]["replay"] == "a" * 24
    assert batch_id_for("p", [dict(x) for x in parsed["files"]]) == msg["batch_id"]
    for bad in ("../x", 3, "A" * 24):
        with pytest.raises(MessageRefusedError, match="replay"):
            parse_batch({**msg, "files": [{**f, "replay": bad}]})
