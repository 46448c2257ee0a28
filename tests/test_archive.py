"""after_commit: parsing, the pipeline file's checks, where a file goes, and the moves
themselves on a local disk (a kill between them finished by the next run's start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeray import archive
from celeray.archive_spec import AfterCommit, archived_inputs, parse_after_commit, target_of
from celeray.errors import PipelineFileError
from celeray.file_history import file_history
from celeray.ledger import Ledger
from celeray.pipelines import Pipeline, load_pipelines
from celeray.storage import list_source


@pytest.mark.parametrize(("value", "spec"), [
    ("keep", AfterCommit()), ("KEEP", AfterCommit()), (" delete ", AfterCommit("delete")),
    ("move:s3://b/archive/", AfterCommit("move", "s3://b/archive/")),
    ("move:/srv/archive", AfterCommit("move", "/srv/archive")),
])  # fmt: skip
def test_parse(value: str, spec: AfterCommit) -> None:
    assert parse_after_commit(value) == spec


@pytest.mark.parametrize(("value", "error"), [
    ("archive", "unknown after_commit"), ("move:", "needs a folder URL"),
    ("move", "unknown after_commit"), (True, "must be a string"), ("copy:/x", "unknown"),
])  # fmt: skip
def test_parse_refuses(value: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_after_commit(value)


def test_target_keeps_the_path_below_the_source_root() -> None:
    assert target_of("file:///land/in/2026/a.csv", "file:///land/in", "file:///arch") == (
        "file:///arch/2026/a.csv")  # fmt: skip
    assert target_of("s3://b/in/a.csv", "s3://b/in/", "s3://b/arch/") == "s3://b/arch/a.csv"
    assert target_of("file:///elsewhere/a.csv", "file:///land/in", "file:///arch") == (
        "file:///arch/a.csv")  # fmt: skip


def test_archived_inputs_quarantined_only_when_asked() -> None:
    entry = {"inputs": [{"url": "u1"}], "quarantined": [{"url": "q1"}],
             "after_commit": {"action": "delete", "to": None}}  # fmt: skip
    assert archived_inputs(entry) == ["u1"]
    entry["after_commit"]["quarantined"] = True
    assert archived_inputs(entry) == ["q1", "u1"]
    assert archived_inputs({"inputs": [{"url": "u1"}]}) == []  # an entry that keeps


def _pipeline_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipelines.toml"
    path.write_text(f'[pipelines.p]\nsource = "in/*.csv"\nsink = "lake"\n{body}\n')
    return path


@pytest.mark.parametrize(("body", "message"), [
    ('after_commit = "move:in/old"', "inside the source folder"),
    ('after_commit = "move:lake/arch"', "inside the sink"),
    ('after_commit = "move:s3://b/arch"', "on the source's file system"),
    ('after_commit = "move:/outside/arch"', "outside the allowed local roots"),
    ('after_commit = "move:arch/*"', "plain folder URL"),
    ("after_commit_quarantined = true", "the files are kept"),
    ("max_files_per_run = 0", "greater than or equal to 1"),
    ('max_files_per_run = "10"', "expected an integer"),
    ('max_bytes_per_run = "lots"', "not a size"),
])  # fmt: skip
def test_pipeline_file_refuses_with_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = _pipeline_file(tmp_path, body)
    with pytest.raises(PipelineFileError) as err:
        load_pipelines(path, local_roots=(str(tmp_path),))
    assert message in str(err.value), str(err.value)
    assert body.split(" =")[0] in str(err.value)


def test_pipeline_file_takes_the_keys(tmp_path: Path) -> None:
    path = _pipeline_file(tmp_path, 'after_commit = "move:arch/"\nafter_commit_quarantined '
                          '= true\nmax_files_per_run = 500\nmax_bytes_per_run = "1GiB"')
    p = load_pipelines(path, local_roots=(str(tmp_path),))["p"]
    assert p.after_commit == f"move:{(tmp_path / 'arch').as_uri()}"
    assert p.archive == AfterCommit("move", (tmp_path / "arch").as_uri())
    assert (p.max_files_per_run, p.max_bytes_per_run) == (500, 1024**3)
    defaults = Pipeline.model_validate({"name": "d", "source": "/a/", "sink": "/b"})
    assert (defaults.after_commit, defaults.after_commit_quarantined) == ("keep", False)
    assert (defaults.max_files_per_run, defaults.max_bytes_per_run) == (None, None)


def test_delete_needs_a_writable_source() -> None:
    with pytest.raises(ValueError, match="read-only to celeray"):
        Pipeline.model_validate({"name": "h", "source": "https://x.org/a.csv", "sink": "/b",
                                 "after_commit": "delete"})  # fmt: skip


def _entry(landing: Path, archive_dir: Path, names: list[str], batch: str) -> dict:
    spec = {"action": "move", "to": archive_dir.as_uri(), "source_root": landing.as_uri(),
            "quarantined": False}  # fmt: skip
    return {"batch_id": batch, "run_id": "r", "after_commit": spec,
            "inputs": [{"url": (landing / n).as_uri(), "size": 2} for n in names[:-1]],
            "quarantined": [{"url": (landing / names[-1]).as_uri(), "error": "bad"}]}


def test_moves_are_recorded_and_finished_after_a_kill(tmp_path: Path) -> None:
    landing, arch, sink = tmp_path / "in", tmp_path / "arch", tmp_path / "lake"
    (landing / "sub").mkdir(parents=True)
    names = ["a.csv", "sub/b.csv", "c.csv", "q.csv"]
    for n in names:
        (landing / n).write_text(n)
    ledger = Ledger(sink.as_uri())
    entry = _entry(landing, arch, names, "b1")
    # A kill after the first move: a.csv moved, the rest not, no record yet.
    archive._move((landing / "a.csv").as_uri(), (arch / "a.csv").as_uri())
    assert archive.archive_records(ledger) == {}
    listed = list_source(landing.as_uri() + "/**/*.csv")
    finish = archive.finish_archives
    assert finish(ledger, listed, ledger.entries()) == {"archived": 0}  # no entry yet
    ledger.commit_entry(entry)
    [a] = [f for f in file_history(sink.as_uri(), "*/a.csv") if f["state"] == "committed"]
    assert a["archived"] == {"action": "move", "to": (arch / "a.csv").as_uri(),
                             "archived_at": None, "pending": True}  # fmt: skip
    assert finish(ledger, listed, ledger.entries()) == {"archived": 2}  # the two in place
    assert sorted(p.relative_to(arch).as_posix() for p in arch.rglob("*.csv")) == [
        "a.csv", "c.csv", "sub/b.csv"]  # fmt: skip
    assert sorted(p.name for p in landing.rglob("*.csv")) == ["q.csv"]  # quarantined: kept
    assert (arch / "sub" / "b.csv").read_text() == "sub/b.csv"
    records = archive.archive_records(ledger)
    assert records[(landing / "c.csv").as_uri()]["to"] == (arch / "c.csv").as_uri()
    assert (landing / "q.csv").as_uri() not in records
    history = {f["url"].rsplit("/", 1)[1]: f for f in file_history(sink.as_uri())}
    assert history["b.csv"]["archived"]["to"] == (arch / "sub" / "b.csv").as_uri()
    assert "pending" not in history["a.csv"]["archived"] and "archived" not in history["q.csv"]
    again = list_source(landing.as_uri() + "/**/*.csv")
    assert finish(ledger, again, ledger.entries()) == {"archived": 0}
    # Done again (a redelivered commit): nothing moves, nothing is lost.
    archive.archive_batch(ledger, entry)
    assert len(list(arch.rglob("*.csv"))) == 3


def test_delete(tmp_path: Path) -> None:
    landing, sink = tmp_path / "in", tmp_path / "lake"
    landing.mkdir()
    (landing / "a.csv").write_text("x")
    entry = {"batch_id": "b2", "after_commit": {"action": "delete", "to": None,
             "source_root": landing.as_uri()}, "inputs": [{"url": (landing / "a.csv").as_uri()}]}
    assert archive.archive_batch(Ledger(sink.as_uri()), entry) == {
        (landing / "a.csv").as_uri(): None}  # fmt: skip
    assert not (landing / "a.csv").exists()
    archive.archive_batch(Ledger(sink.as_uri()), entry)  # again: a no-op


def test_a_target_it_may_not_write_is_reported_not_raised(tmp_path: Path) -> None:
    landing, sink, arch = tmp_path / "in", tmp_path / "lake", tmp_path / "arch"
    landing.mkdir()
    arch.write_text("a file where the target folder should be")  # the move fails
    (landing / "a.csv").write_text("x")
    (landing / "b.csv").write_text("x")
    ledger = Ledger(sink.as_uri())
    ledger.commit_entry(_entry(landing, arch / "sub", ["a.csv", "b.csv"], "b3"))
    out = archive.finish_archives(ledger, list_source(landing.as_uri() + "/*"), ledger.entries())
    assert out["archived"] == 0 and "Error" in out["archive_error"], out
    assert (landing / "a.csv").exists()  # nothing lost
