"""Pure planning: new files only, grouped by bytes, deterministic batch ids."""

from celeray.planner import needs_staging, plan_batches
from celeray.storage import FileInfo


def _files(*sizes: int) -> list[FileInfo]:
    return [FileInfo(url=f"file:///land/f{i}.csv", size=s, mtime=1.0) for i, s in enumerate(sizes)]


def test_groups_by_bytes_and_keeps_order() -> None:
    plan = plan_batches("p", _files(40, 40, 40, 200, 10), {}, batch_bytes=100)
    assert [[f["url"][-6:] for f in b.files] for b in plan.batches] == [
        ["f0.csv", "f1.csv"],
        ["f2.csv"],
        ["f3.csv"],
        ["f4.csv"],
    ]
    assert plan.files_total == 5 and plan.bytes_total == 330


def test_skips_done_files_and_reports_changed_ones() -> None:
    files = _files(10, 20, 30)
    done = {files[0].url: {"url": files[0].url, "size": 10}, files[1].url: {"size": 99}}
    plan = plan_batches("p", files, done, batch_bytes=100)
    assert plan.already_done == 2
    assert plan.changed_after_commit == [files[1].url]
    assert [f["url"] for b in plan.batches for f in b.files] == [files[2].url]


def test_batch_ids_are_deterministic_and_depend_on_fingerprints() -> None:
    a = plan_batches("p", _files(10, 20), {}, batch_bytes=100).batches[0].batch_id
    b = plan_batches("p", _files(10, 20), {}, batch_bytes=100).batches[0].batch_id
    c = plan_batches("p", _files(10, 21), {}, batch_bytes=100).batches[0].batch_id
    d = plan_batches("q", _files(10, 20), {}, batch_bytes=100).batches[0].batch_id
    assert a == b and a != c and a != d


def test_staging_only_for_what_ray_cannot_read_in_place() -> None:
    assert not needs_staging("file:///land/a.csv")
    assert not needs_staging("s3://bucket/a.csv")
    assert needs_staging("https://example.org/a.csv")
    assert needs_staging("sftp://host/a.csv")
