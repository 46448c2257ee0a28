"""Local roots for chained and archive URLs: the local file each form really opens is checked,
and forms whose local reads the URL does not show are refused."""

from __future__ import annotations

import re
import tarfile
import zipfile
from pathlib import Path

import fsspec
import pytest

from celeray.errors import OutsideRootsError, UncheckableURLError
from celeray.pipelines import load_pipelines
from celeray.roots import check_read, local_target, outside_roots, refusal, resolve_roots
from celeray.storage import list_source
from tests._pipeline_file import validate_file
from tests._plans import pipeline_file

ROWS = b"a,b\n1,2\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``allowed/`` holding ``in.zip``, ``in.tar`` and a link ``link.zip`` to ``../secret.zip``
    (outside ``allowed``), which holds the same member ``x.csv``."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for archive in (allowed / "in.zip", tmp_path / "secret.zip"):
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("x.csv", ROWS)
    with tarfile.open(allowed / "in.tar", "w") as tf:
        tf.add(_member(tmp_path), arcname="x.csv")
    (allowed / "link.zip").symlink_to(tmp_path / "secret.zip")
    return tmp_path


def _member(tmp_path: Path) -> Path:
    path = tmp_path / "x.csv"
    path.write_bytes(ROWS)
    return path


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("zip://x.csv::file:///srv/a.zip", ("/srv/a.zip", True)),
        ("zip://*.csv::/srv/a.zip", ("/srv/a.zip", True)),  # a bare path is a local part too
        ("zip://x.csv::file:/srv/a.zip", ("/srv/a.zip", True)),
        ("tar://x.csv::local:///srv/a.tar.gz", ("/srv/a.tar.gz", True)),
        ("zip://x.csv::simplecache::file:///srv/a.zip", ("/srv/a.zip", True)),
        ("simplecache::zip://x.csv::file:///srv/a.zip", ("/srv/a.zip", True)),
        ("zip://x.csv::zip://inner.zip::file:///srv/outer.zip", ("/srv/outer.zip", True)),
        ("simplecache::file:///srv/in/*.csv", ("/srv/in/*.csv", False)),
        ("blockcache::filecache::file:///srv/in/x.csv", ("/srv/in/x.csv", False)),
        ("file:///srv/in/x.csv", ("/srv/in/x.csv", False)),
        ("zip://x.csv::s3://bucket/a.zip", None),  # nothing local is read
        ("simplecache::s3://bucket/x.csv", None),
        ("s3://bucket/x.csv", None),
    ],
)
def test_the_local_target_is_what_fsspec_opens(url: str, expected: tuple | None) -> None:
    assert local_target(url) == expected
    if expected is not None and "::" in url:
        # fsspec's own parse of the chain hands exactly this path to its local file system
        chain = fsspec.core._un_chain(url, {})
        assert [p for p, proto, _ in chain if proto in ("file", "local")] == [expected[0]]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("zip://x.csv", "zip:// needs its archive as the next part of a chain"),
        ("tar://x.csv", "tar:// needs its archive"),
        ("simplecache:///srv/x.csv", "needs its target"),
        ("reference://refs", "a reference file's content names the URLs it reads"),
        ("reference::file:///srv/refs.json", "reference:// is not allowed"),
        ("reference::s3://bucket/refs.json", "reference:// is not allowed"),  # refs name files
        ("generic://file:///etc/passwd", "generic:// is not allowed"),
        ("dir://x.csv::file:///srv", "dir:// is not allowed"),
        ("git://x.csv", "git:// is not allowed"),
        ("simplecache:///etc/passwd::file:///srv/x.csv", "a cache takes the path of the part"),
        ("zip://x.csv::file:///srv/a.zip::s3://bucket", "only be the last part"),
        ("memory://x::file:///srv/a.zip", "memory:// in front of a local path"),
        ("zip://x.csv::landing/a.zip", "must be absolute"),
        ("zip://x.csv::~/a.zip", "must be absolute"),
        ("zip://x.csv::file://localhost/srv/a.zip", "must be absolute"),
    ],
)
def test_forms_that_cannot_be_checked_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UncheckableURLError, match=re.escape(reason)):
        local_target(url)
    record = refusal(url, ("/srv",))
    assert record is not None and record.kind == "outside_roots"
    assert "cannot be checked against the allowed local roots (/srv" in record.message


def test_an_accepted_archive_chain_reads_the_archive_that_was_checked(tree: Path) -> None:
    roots = resolve_roots([tree / "allowed"])
    for url in (f"zip://x.csv::file://{tree}/allowed/in.zip",
                f"tar://x.csv::file://{tree}/allowed/in.tar"):  # fmt: skip
        check_read(url, roots)
        with fsspec.open(url, "rb") as fh:
            assert fh.read() == ROWS
    with pytest.raises(OutsideRootsError, match=r"secret\.zip, outside the allowed local roots"):
        check_read(f"zip://x.csv::file://{tree}/allowed/link.zip", roots)  # symlink out


@pytest.mark.parametrize(
    ("source", "sink", "key", "named"),
    [
        ("zip://*.csv::file://{tmp}/secret.zip", "lake/p", "source", "{tmp}/secret.zip"),
        ("zip://*.csv::{tmp}/secret.zip", "lake/p", "source", "{tmp}/secret.zip"),
        ("zip://*.csv::file://{tmp}/allowed/link.zip", "lake/p", "source", "{tmp}/secret.zip"),
        ("tar://*.csv::file://{tmp}/other.tar", "lake/p", "source", "{tmp}/other.tar"),
        ("zip://*.csv::simplecache::file://{tmp}/secret.zip", "lake/p", "source",
         "{tmp}/secret.zip"),
        ("simplecache::zip://*.csv::file://{tmp}/secret.zip", "lake/p", "source",
         "{tmp}/secret.zip"),
        ("simplecache::file://{tmp}/*.csv", "lake/p", "source", "{tmp}"),
        ("landing/*.csv", "zip://out::file://{tmp}/lake.zip", "sink", "{tmp}/lake.zip"),
    ],
)  # fmt: skip
def test_a_pipeline_reading_an_archive_outside_the_roots_is_refused(
    tree: Path, source: str, sink: str, key: str, named: str
) -> None:
    path = pipeline_file(tree, source.format(tmp=tree), sink.format(tmp=tree))
    roots = resolve_roots([tree / "allowed"])
    (issue,) = validate_file(path, allow_chained_urls=True, local_roots=roots)
    assert (issue.pipeline, issue.key) == ("p", key), issue
    assert f"resolves to {named.format(tmp=tree)}" in issue.message, issue.message
    assert f"outside the allowed local roots ({roots[0]})" in issue.message
    assert "CELERAY_LOCAL_ROOTS" in issue.message


@pytest.mark.parametrize(
    ("source", "chained"),
    [
        ("reference::file://{tmp}/allowed/refs.json", True),
        ("zip://*.csv::landing/in.zip", True),  # relative: each worker's folder decides
        ("zip://*.csv", False),  # no archive named: fsspec would open its working folder
        ("tar://*.csv", False),
    ],
)
def test_a_pipeline_whose_local_reads_cannot_be_told_is_refused(
    tree: Path, source: str, chained: bool
) -> None:
    path = pipeline_file(tree, source.format(tmp=tree))
    roots = resolve_roots([tree / "allowed"])
    (issue,) = validate_file(path, allow_chained_urls=chained, local_roots=roots)
    assert (issue.pipeline, issue.key) == ("p", "source"), issue
    assert f"cannot be checked against the allowed local roots ({roots[0]})" in issue.message


def test_archives_inside_the_roots_and_remote_archives_pass(tree: Path) -> None:
    roots = resolve_roots([tree / "allowed"])
    for source in (f"zip://*.csv::file://{tree}/allowed/in.zip",
                   f"tar://*.csv::{tree}/allowed/in.tar",
                   f"simplecache::zip://*.csv::file://{tree}/allowed/in.zip",
                   "zip://*.csv::s3://bucket/in.zip"):  # fmt: skip
        path = pipeline_file(tree, source)
        assert validate_file(path, allow_chained_urls=True, local_roots=roots) == [], source
    assert load_pipelines(path, allow_chained_urls=True)["p"]  # no roots given: unchecked


def test_listing_an_archive_gives_urls_that_are_quarantined_not_read(tree: Path) -> None:
    """fsspec lists an archive's members as ``zip://x.csv``, without the archive's location:
    such a URL is refused at listing (and again on the Ray side), never opened."""
    roots = resolve_roots([tree / "allowed"])
    listed = list_source(f"zip://*.csv::file://{tree}/allowed/in.zip")
    assert [f.url for f in listed] == ["zip://x.csv"]
    escaped = outside_roots([f.url for f in listed], roots)
    assert escaped["zip://x.csv"]["kind"] == "outside_roots"
    assert "zip:// needs its archive" in escaped["zip://x.csv"]["error"]
