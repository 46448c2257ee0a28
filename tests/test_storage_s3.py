"""Storage, ledger, staging and the Ray-side reader/writer on a real S3 server (moto, loopback).

No Celery and no Ray here: the same functions the workers call, run in this process against
moto's server over HTTP, with the endpoint and credentials from the environment only.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import botocore.exceptions
import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import zstandard
from s3fs.errors import translate_boto_error

from celeray import fsoptions, storage
from celeray.errors import StorageError, TransientIOError
from celeray.ledger import Ledger
from celeray.settings import Settings
from celeray.staging import stage_files
from ray_jobs.process import process_unit
from ray_jobs.writer import arrow_filesystem, write_parquet
from tests._plans import limits, plan
from tests._s3 import S3Server


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: the S3 server lives for the whole session."""
    return f"t-{uuid.uuid4().hex[:12]}"


def _entry(batch_id: str, rel: str, run_id: str = "r1") -> dict:
    return {
        "batch_id": batch_id,
        "run_id": run_id,
        "inputs": [{"url": f"s3://landing/{batch_id}.csv", "size": 1}],
        "quarantined": [{"url": "s3://landing/bad.csv", "kind": "parse", "error": "boom"}],
        "outputs": [{"path": rel, "rows": 1, "bytes": 1}],
    }


def test_options_come_from_the_environment_only() -> None:
    env = {"CELERAY_S3_ENDPOINT_URL": "http://127.0.0.1:9", "CELERAY_S3_REGION": "eu-west-1",
           "AWS_SECRET_ACCESS_KEY": "s3cr3t"}  # fmt: skip
    options = fsoptions.storage_options("s3://lake/x", env)
    assert options == {
        "use_listings_cache": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"},
    }
    assert "s3cr3t" not in repr(options)
    assert fsoptions.storage_options("s3a://lake/x", {}) == {"use_listings_cache": False}
    assert fsoptions.storage_options("file:///srv/lake", env) == {}
    # The names fsoptions reads are the Settings fields'.
    s = Settings(s3_endpoint_url="http://127.0.0.1:9", s3_region="eu-west-1")
    assert (s.s3_endpoint_url, s.s3_region) == ("http://127.0.0.1:9", "eu-west-1")
    assert {fsoptions.S3_ENDPOINT_ENV, fsoptions.S3_REGION_ENV} == {
        "CELERAY_S3_ENDPOINT_URL", "CELERAY_S3_REGION"}  # fmt: skip
    with pytest.raises(ValueError, match="CELERAY_S3_ENDPOINT_URL"):
        Settings(s3_endpoint_url="127.0.0.1:9")


@pytest.mark.parametrize(
    "url",
    ["/tmp/a b/c.csv", "file:///tmp/x.csv", "file://localhost/tmp/z", "/tmp/../etc/x",
     "/tmp/a//b", "file:///tmp/%20x", "file://rel/x", "/"],
)  # fmt: skip
def test_a_local_url_gets_what_fsspec_would_give(url: str) -> None:
    fs, path = fsoptions.url_to_fs(url)
    assert (fs, path) == fsspec.core.url_to_fs(url)
    assert fs is fsspec.filesystem("file")  # fsspec's cached instance, not one of its own


def _client_error(code: str, status: int, condition: str | None = None) -> OSError:
    error: dict = {"Code": code, "Message": f"{code} said the store"}
    if condition:
        error["Condition"] = condition
    response = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
    return translate_boto_error(botocore.exceptions.ClientError(response, "PutObject"))


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (_client_error("PreconditionFailed", 412), False),  # a 412 s3fs did not label
        (_client_error("NotImplemented", 501), True),  # a store without conditional PUT
        (_client_error("ConditionalRequestConflict", 409), TransientIOError),
        (_client_error("AccessDenied", 403), PermissionError),
    ],
)
def test_create_json_answers_to_what_the_store_said(
    error, outcome, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The decisions behind a conditional PUT, from the errors s3fs raises for S3 answers."""

    class Store:
        def __init__(self) -> None:
            self.puts: list[str] = []

        def pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None:
            self.puts.append(mode)
            if mode == "create":
                raise error

    store = Store()
    monkeypatch.setattr(storage, "_warned", set())
    monkeypatch.setattr(storage, "open_fs", lambda url, options=None: (store, "lake/e.json"))
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            storage.create_json("s3://lake/e.json", {"a": 1})
    else:
        assert storage.create_json("s3://lake/e.json", {"a": 1}) is outcome
    assert store.puts == (["create", "overwrite"] if outcome is True else ["create"])
    warned = [r.getMessage() for r in caplog.records if "conditional writes" in r.getMessage()]
    assert bool(warned) == (outcome is True), warned  # the fallback says so in the log


def test_list_source_sees_new_files_at_once(s3: S3Server, prefix: str) -> None:
    fs = s3.filesystem()
    fs.pipe({f"landing/{prefix}/a.csv": b"x,y\n1,2\n", f"landing/{prefix}/_partial.csv": b"x"})
    url = f"s3://landing/{prefix}/*.csv"
    first = storage.list_source(url)
    assert [f.url for f in first] == [f"s3://landing/{prefix}/a.csv"]
    assert first[0].size == 8 and first[0].etag and first[0].mtime
    fs.pipe_file(f"landing/{prefix}/b.csv", b"x,y\n3,4\n")
    assert [f.url.rsplit("/", 1)[1] for f in storage.list_source(url)] == ["a.csv", "b.csv"]
    folder = storage.list_source(f"s3://landing/{prefix}")
    assert len(folder) == 2
    assert storage.list_source(f"s3://landing/{prefix}-nothing/*.csv") == []


def test_conditional_entry_write_has_one_winner(s3: S3Server, prefix: str) -> None:
    url = f"s3://lake/{prefix}/_celeray/ledger/b1.json"
    assert storage.create_json(url, {"run_id": "first"}) is True
    assert storage.create_json(url, {"run_id": "second"}) is False  # 412 from the server
    assert storage.read_json(url) == {"run_id": "first"}
    # Eight writers at once: exactly one wins.
    race = f"s3://lake/{prefix}/_celeray/ledger/race.json"
    gate = threading.Barrier(8)
    won: list[bool] = []

    def write(i: int) -> None:
        gate.wait()
        won.append(storage.create_json(race, {"run_id": f"w{i}"}))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]


def test_commit_on_s3_moves_after_the_entry_and_is_idempotent(s3: S3Server, prefix: str) -> None:
    fs = s3.filesystem()
    ledger = Ledger(f"s3://lake/{prefix}/flights")
    rel = "year=2013/part-b1-0.parquet"
    fs.pipe_file(f"lake/{prefix}/flights/_celeray/staging/b1/{rel}", b"parquet")
    assert ledger.commit(_entry("b1", rel)) is True
    assert fs.cat_file(f"lake/{prefix}/flights/{rel}") == b"parquet"
    assert not storage.exists(ledger.staging_url("b1"))
    assert set(ledger.done_inputs()) == {"s3://landing/b1.csv", "s3://landing/bad.csv"}
    assert storage.read_json(ledger.quarantine_url("s3://landing/bad.csv"))["error"] == "boom"
    assert ledger.commit(_entry("b1", rel, run_id="r2")) is False  # redelivered commit
    assert storage.read_json(ledger.entry_url("b1"))["run_id"] == "r1"


def test_commit_that_loses_the_conditional_put_rolls_the_winner_forward(
    s3: S3Server, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two committers of one batch both saw no entry; the second one's PUT gets 412."""
    fs = s3.filesystem()
    ledger = Ledger(f"s3://lake/{prefix}/flights")
    rel = "part-b2-0.parquet"
    fs.pipe_file(f"lake/{prefix}/flights/_celeray/staging/b2/{rel}", b"winner")
    # The winner's entry lands between the loser's check and its PUT.
    storage.atomic_write_json(ledger.entry_url("b2"), {**_entry("b2", rel), "run_id": "won"})
    monkeypatch.setattr(ledger, "is_committed", lambda batch_id: False)
    assert ledger.commit(_entry("b2", rel, run_id="lost")) is False
    assert storage.read_json(ledger.entry_url("b2"))["run_id"] == "won"
    assert fs.cat_file(f"lake/{prefix}/flights/{rel}") == b"winner"
    assert not storage.exists(ledger.staging_url("b2"))


def test_recover_on_s3_rolls_forward_and_drops_orphans(s3: S3Server, prefix: str) -> None:
    fs = s3.filesystem()
    ledger = Ledger(f"s3://lake/{prefix}/flights")
    for batch in ("b1", "orphan", "inflight"):
        fs.pipe_file(f"lake/{prefix}/flights/_celeray/staging/{batch}/part-{batch}-0.parquet", b"x")
    # A crash right after the entry of b1: the entry exists, no move happened.
    storage.atomic_write_json(ledger.entry_url("b1"), _entry("b1", "part-b1-0.parquet"))
    assert ledger.recover(keep={"inflight"}) == {"rolled_forward": 1, "dropped": 1}
    assert fs.exists(f"lake/{prefix}/flights/part-b1-0.parquet")
    assert not fs.exists(f"lake/{prefix}/flights/part-orphan-0.parquet")
    assert storage.exists(ledger.staging_url("inflight"))
    assert not storage.exists(ledger.staging_url("b1"))
    assert ledger.recover(keep={"inflight"}) == {"rolled_forward": 0, "dropped": 0}


def test_ray_side_reads_and_writes_s3_with_deterministic_names(s3: S3Server, prefix: str) -> None:
    """process_unit (the body of a Ray task) from s3://landing to s3://lake, run twice."""
    fs = s3.filesystem()
    rows = "".join(f"{i},{i % 3},x{i}\n" for i in range(5000))
    fs.pipe({
        f"landing/{prefix}/a.csv.zst": zstandard.ZstdCompressor().compress(
            ("a,b,c\n" + rows).encode()),
        f"landing/{prefix}/b.csv": ("a,b,c\n" + rows).encode(),
    })  # fmt: skip
    files = [
        {"url": f.url, "read_url": f.url, "size": f.size}
        for f in storage.list_source(f"s3://landing/{prefix}/*")
    ]
    out_url = f"s3://lake/{prefix}/flights/_celeray/staging/b1"
    unit = {"batch_id": "b1", "unit": 0, "files": files, "out_url": out_url}
    job_plan = plan(limits(), partition_by=["b"], sql="SELECT * FROM input WHERE a % 2 = 0")
    first = process_unit(job_plan, unit)
    again = process_unit(job_plan, unit)  # a retried Ray task: overwrites, never adds
    assert first["outputs"] == again["outputs"] and first["rows_out"] == 5000
    assert first["quarantined"] == []
    written = sorted(p.split("/b1/", 1)[1] for p in fs.find(f"lake/{prefix}/flights"))
    assert written == [o["path"] for o in first["outputs"]]
    table = ds.dataset(
        f"lake/{prefix}/flights/_celeray/staging/b1", partitioning="hive",
        filesystem=arrow_filesystem(fs),
    ).to_table()  # fmt: skip
    assert table.num_rows == 5000
    # No bucket is made for a sink that names a missing one: the write fails instead.
    with pytest.raises(StorageError, match=f"s3://no-such-{prefix}/x: .*bucket does not exist"):
        write_parquet(
            iter([pa.record_batch({"a": [1]})]), out_url=f"s3://no-such-{prefix}/x",
            basename="p", partition_by=[],
        )  # fmt: skip
    assert f"no-such-{prefix}" not in fs.ls("")


def test_staging_into_s3(s3: S3Server, prefix: str, tmp_path: Path) -> None:
    """Inputs Ray cannot read in place (here memory://) are copied into an S3 staging URL
    that the worker derives from its settings, with the record of what it could not stage."""
    import fsspec

    from celeray.batch import resolve
    from celeray.ledger import batch_id_for
    from celeray.staging import load_staged

    mem = fsspec.filesystem("memory")
    mem.pipe_file(f"/{prefix}/a.csv", b"a\n1\n")
    pipelines = tmp_path / "pipelines.toml"
    pipelines.write_text(f'[pipelines.p]\nsource = "memory:///{prefix}/*.csv"\n'
                         f'sink = "{tmp_path}/lake"\n')  # fmt: skip
    settings = Settings(home=tmp_path, pipelines=pipelines,
                        staging_url=f"s3://lake/{prefix}/staging")  # fmt: skip
    files = [{"url": f"memory:///{prefix}/a.csv", "size": 4, "mtime": None, "etag": None}]
    message = {"pipeline": "p", "run_id": str(uuid.uuid4()),
               "batch_id": batch_id_for("p", files), "files": files}  # fmt: skip
    batch = resolve(message, settings)
    stage_files(batch, settings)
    read_url = batch.files[0]["read_url"]
    assert read_url.startswith(f"s3://lake/{prefix}/staging/p/{batch.batch_id}/")
    assert s3.filesystem().cat_file(read_url.removeprefix("s3://")) == b"a\n1\n"
    assert load_staged(batch).prequarantined == {}
    storage.remove_tree(batch.staging_url)
    assert not storage.exists(batch.staging_url)
