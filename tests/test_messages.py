"""The message contract: a message names a batch; the worker derives and checks the rest.

Pure tests over a pipeline file and settings in a temporary folder: no Redis, no Ray.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from celeray.batch import in_source, resolve
from celeray.errors import MessageRefusedError
from celeray.ledger import batch_id_for
from celeray.messages import parse_batch, parse_start
from celeray.settings import Settings


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "secret").mkdir()
    for name in ("a.csv", "b.csv"):
        (tmp_path / "in" / name).write_text("x\n1\n")
    (tmp_path / "secret" / "s.csv").write_text("token\nhunter2\n")
    (tmp_path / "pipelines.toml").write_text(
        f'[pipelines.p]\nsource = "{tmp_path}/in/*.csv"\nsink = "{tmp_path}/lake"\n'
        'sql = "SELECT * FROM input"\n'
    )
    return tmp_path


@pytest.fixture
def settings(tree: Path) -> Settings:
    return Settings(home=tree / "home", pipelines=tree / "pipelines.toml",
                    local_roots=[str(tree / "in"), str(tree / "lake")])  # fmt: skip


def _file(path: Path) -> dict[str, Any]:
    return {"url": f"file://{path}", "size": path.stat().st_size,
            "mtime": path.stat().st_mtime, "etag": None}  # fmt: skip


def _message(files: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    return {"pipeline": "p", "run_id": str(uuid.uuid4()),
            "batch_id": batch_id_for("p", files), "files": files, **over}  # fmt: skip


def test_a_batch_message_resolves_to_what_the_pipeline_file_says(
    tree: Path, settings: Settings
) -> None:
    files = [_file(tree / "in" / "a.csv"), _file(tree / "in" / "b.csv")]
    batch = resolve(_message(files), settings)
    assert batch.sink == f"file://{tree}/lake"
    assert batch.plan["sql"] == "SELECT * FROM input"
    # A new sink is a Delta table: its Ray tasks write into the table itself.
    assert batch.table_format == batch.plan["table_format"] == "delta"
    assert batch.out_url == f"file://{tree}/lake"
    assert [f["read_url"] for f in batch.files] == [f["url"] for f in files]
    assert batch.prequarantined == {} and not batch.needs_staging


def test_a_parquet_sink_stages_its_output(tree: Path, settings: Settings) -> None:
    text = (tree / "pipelines.toml").read_text()
    (tree / "pipelines.toml").write_text(text + 'table_format = "parquet"\n')
    files = [_file(tree / "in" / "a.csv")]
    batch = resolve(_message(files), settings)
    assert batch.table_format == "parquet" and not batch.is_delta
    assert batch.out_url == f"file://{tree}/lake/_celeray/staging/{batch.batch_id}"


@pytest.mark.parametrize("key, value", [
    ("plan", {"sql": "COPY (SELECT 1) TO '/tmp/x'"}),
    ("sink", "file:///tmp/attacker"),
    ("staging_url", "file:///etc"),
    ("local_roots", ["/"]),
    ("prequarantined", {}),
    ("commit_here", True),
    ("result", {"files": []}),
])
def test_a_message_that_tries_to_decide_anything_is_refused(
    tree: Path, settings: Settings, key: str, value: Any
) -> None:
    """Every field of the old plan-carrying message: refused by name, never ignored."""
    with pytest.raises(MessageRefusedError, match=f"unknown key.*'{key}'"):
        resolve(_message([_file(tree / "in" / "a.csv")], **{key: value}), settings)


@pytest.mark.parametrize("url", [
    "file:///etc/shadow",
    "file://{tree}/secret/s.csv",
    "file://{tree}/in/../secret/s.csv",
    "simplecache::file://{tree}/in/a.csv",
    "http://127.0.0.1:1/metrics",
    "file://{tree}/in/a.csv.gz",
    "file://{tree}/in/_hidden.csv",
    "file://{tree}/in/sub/a.csv",
    "{tree}/in/a.csv",
])
def test_inputs_the_source_does_not_name_are_refused(
    tree: Path, settings: Settings, url: str
) -> None:
    f = {"url": url.format(tree=tree), "size": 5, "mtime": 1.0, "etag": None}
    with pytest.raises(MessageRefusedError, match=r"files\[0\]\.url: .* is not named by"):
        resolve(_message([f]), settings)


def test_a_batch_id_its_inputs_do_not_give_is_refused(tree: Path, settings: Settings) -> None:
    files = [_file(tree / "in" / "a.csv")]
    for batch_id in ("0" * 24, "../../../../x"):
        with pytest.raises(MessageRefusedError, match="batch_id"):
            resolve(_message(files, batch_id=batch_id), settings)


def test_an_unknown_pipeline_is_refused_naming_the_file(tree: Path, settings: Settings) -> None:
    files = [_file(tree / "in" / "a.csv")]
    msg = {**_message(files), "pipeline": "other"}
    with pytest.raises(MessageRefusedError, match=r"unknown pipeline 'other'.*pipelines\.toml"):
        resolve(msg, settings)


@pytest.mark.parametrize("run_id", ["../../x", "r1", "", 3, str(uuid.uuid4()).upper()])
def test_run_ids_are_uuids_only(tree: Path, settings: Settings, run_id: Any) -> None:
    with pytest.raises(MessageRefusedError, match="run_id"):
        resolve(_message([_file(tree / "in" / "a.csv")], run_id=run_id), settings)


@pytest.mark.parametrize("bad, field", [
    ({"size": -1}, r"files\[0\]\.size"),
    ({"size": "5"}, r"files\[0\]\.size"),
    ({"mtime": float("nan")}, r"files\[0\]\.mtime"),
    ({"read_url": "file:///etc/shadow"}, r"files\[0\]: unknown key"),
    ({"url": "file:///a\0b"}, r"files\[0\]\.url"),
])
def test_malformed_inputs_are_refused_by_field(
    tree: Path, settings: Settings, bad: dict[str, Any], field: str
) -> None:
    f = {**_file(tree / "in" / "a.csv"), **bad}
    with pytest.raises(MessageRefusedError, match=field):
        parse_batch({"pipeline": "p", "run_id": str(uuid.uuid4()), "batch_id": "0" * 24,
                     "files": [f]})  # fmt: skip


def test_a_symlink_out_of_the_roots_is_quarantined_not_refused(
    tree: Path, settings: Settings
) -> None:
    """A landing symlink to a secret is a listed input: its batch goes on, the file is
    quarantined by the worker's own roots check (what the message says plays no part)."""
    link = tree / "in" / "evil.csv"
    link.symlink_to(tree / "secret" / "s.csv")
    files = [_file(tree / "in" / "a.csv"), _file(link)]
    batch = resolve(_message(files), settings)
    assert list(batch.prequarantined) == [f"file://{link}"]
    assert batch.prequarantined[f"file://{link}"]["kind"] == "outside_roots"
    assert [f["url"] for f in batch.readable] == [f"file://{tree}/in/a.csv"]


def test_an_input_over_the_cap_is_quarantined_by_the_worker(
    tree: Path, settings: Settings
) -> None:
    files = [_file(tree / "in" / "a.csv")]
    small = settings.model_copy(update={"max_file_bytes": 2})
    batch = resolve(_message(files), small)
    assert batch.prequarantined[files[0]["url"]]["kind"] == "too_large"


@pytest.mark.parametrize("source, url, named", [
    ("file:///srv/in/*.csv", "file:///srv/in/a.csv", True),
    ("file:///srv/in/*.csv", "file:///srv/in/x/a.csv", False),
    ("file:///srv/in/**/*.csv", "file:///srv/in/x/a.csv", True),
    ("file:///srv/in", "file:///srv/in/a.csv", True),
    ("file:///srv/in", "file:///srv/in2/a.csv", False),
    ("file:///srv/in/one.csv", "file:///srv/in/one.csv", True),
    ("s3://bucket/in/*.csv", "s3://bucket/in/a.csv", True),
    ("s3://bucket/in/*.csv", "s3://other/in/a.csv", False),
    ("s3://bucket/in/*.csv", "file:///bucket/in/a.csv", False),
])
def test_in_source(source: str, url: str, named: bool) -> None:
    assert in_source(source, url) is named


@pytest.mark.parametrize("args, field", [
    (("p", "beat", None, 0), "slot_ttl"),
    (("p", "beat", -1, 60), "slot"),
    (("p", "x" * 40, None, 60), "trigger"),
    (("../p", "beat", None, 60), "pipeline"),
])
def test_start_arguments_are_checked(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(MessageRefusedError, match=field):
        parse_start(*args)
