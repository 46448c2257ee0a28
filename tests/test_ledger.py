"""The ledger on a local sink: commit point, roll forward, recovery."""

from pathlib import Path

from celeray import storage
from celeray.ledger import Ledger


def _stage(ledger: Ledger, batch_id: str, rel: str, data: bytes = b"x") -> None:
    path = Path(storage.open_fs(ledger.staging_url(batch_id))[1]) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _entry(batch_id: str, rel: str) -> dict:
    return {
        "batch_id": batch_id,
        "inputs": [{"url": f"file:///land/{batch_id}.csv", "size": 1}],
        "quarantined": [{"url": "file:///land/bad.csv", "kind": "parse", "error": "boom"}],
        "outputs": [{"path": rel, "rows": 1, "bytes": 1}],
    }


def test_commit_moves_staged_files_into_place(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path.as_uri())
    _stage(ledger, "b1", "year=2013/part-b1-0.parquet")
    assert not (tmp_path / "year=2013").exists()
    assert ledger.commit(_entry("b1", "year=2013/part-b1-0.parquet"))
    assert (tmp_path / "year=2013/part-b1-0.parquet").read_bytes() == b"x"
    assert not storage.exists(ledger.staging_url("b1"))
    done = ledger.done_inputs()
    assert set(done) == {"file:///land/b1.csv", "file:///land/bad.csv"}
    assert storage.read_json(ledger.quarantine_url("file:///land/bad.csv"))["error"] == "boom"
    assert not ledger.commit(_entry("b1", "year=2013/part-b1-0.parquet"))  # idempotent


def test_recover_rolls_forward_committed_and_drops_orphans(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path.as_uri())
    _stage(ledger, "b1", "part-b1-0.parquet")
    _stage(ledger, "orphan", "part-orphan-0.parquet")
    _stage(ledger, "inflight", "part-inflight-0.parquet")
    # A crash right after the entry was written: the entry exists, the move did not happen.
    storage.atomic_write_json(ledger.entry_url("b1"), {**_entry("b1", "part-b1-0.parquet")})
    assert ledger.recover(keep={"inflight"}) == {"rolled_forward": 1, "dropped": 1}
    assert (tmp_path / "part-b1-0.parquet").exists()
    assert not (tmp_path / "part-orphan-0.parquet").exists()
    assert storage.exists(ledger.staging_url("inflight"))


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    url = (tmp_path / "d" / "x.json").as_uri()
    storage.atomic_write_json(url, {"a": 1})
    storage.atomic_write_json(url, {"a": 2})
    assert storage.read_json(url) == {"a": 2}
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.json"]
