"""celeray.durable, the writer and the ledger: what reaches the disk before a commit."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

import celeray.durable as durable
from ray_jobs.writer import write_parquet


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsync was called on, in order (the real fsync still runs)."""
    seen: list[str] = []
    real = durable.fsync_path

    def spy(path: str) -> None:
        seen.append(os.path.abspath(path))
        real(path)

    monkeypatch.setattr(durable, "fsync_path", spy)
    return seen


def test_new_folders_are_recorded_in_their_parents(tmp_path: Path, synced: list[str]) -> None:
    durable.make_dirs(str(tmp_path / "a" / "b" / "c"))
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    synced.clear()
    durable.make_dirs(str(tmp_path / "a" / "b" / "c"))  # there already: nothing to sync
    assert synced == []


def test_every_written_file_and_its_folders_up_to_the_output_are_synced(
    tmp_path: Path, synced: list[str]
) -> None:
    out = tmp_path / "staging" / "b1"
    batch = pa.record_batch({"year": [2013, 2014, 2014], "v": [1, 2, 3]})
    outputs = write_parquet(iter([batch]), out_url=out.as_uri(), basename="part-b1",
                            partition_by=["year"])
    files = {str(out / o["path"]) for o in outputs}
    assert len(files) == 2 and files <= set(synced)
    assert {str(out / "year=2013"), str(out / "year=2014"), str(out)} <= set(synced)
    assert str(tmp_path) in synced  # "staging" was made: its entry in tmp_path


def test_the_one_file_path_syncs_too(tmp_path: Path, synced: list[str]) -> None:
    out = tmp_path / "b2"
    outputs = write_parquet(iter([pa.record_batch({"v": [1]})]), out_url=out.as_uri(),
                            basename="part-b2", partition_by=[])
    assert synced == [str(tmp_path), str(out / outputs[0]["path"]), str(out)]


def test_a_ledger_entry_and_its_new_folders_are_synced(tmp_path: Path, synced: list[str]) -> None:
    from celeray.storage import atomic_write_json

    entry = tmp_path / "lake" / "_celeray" / "ledger" / "b1.json"
    atomic_write_json(entry.as_uri(), {"batch_id": "b1"})
    assert str(tmp_path) in synced and str(tmp_path / "lake" / "_celeray") in synced
    assert str(entry.parent) == synced[-1]  # the entry's folder, after the rename
