"""Local inputs are checked where they are opened (ray_jobs._open_local), on real files.

Races are real: a thread flips a landing symlink (or a folder of the path) between an
inside file and a secret outside the roots while the reader opens it again and again
through ``process_unit``, the function a Ray task runs. The secret has the same size and
mtime as the inside file, so only the roots checks stand between it and the output.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from celeray.errors import ChangedInputError, InputError, OutsideRootsError, StorageError
from celeray.roots import resolve_roots
from ray_jobs import _open_local
from ray_jobs._open_local import LocalCheck, open_local
from ray_jobs.process import process_unit
from ray_jobs.readers import read_batches
from tests._plans import limits, plan

SECRET = "SECRET-c0ffee-42"
GOOD = "good-row-000000-"  # as long as SECRET: same size, so only the roots checks stop it
MIN_FLIPS = 200


@pytest.fixture
def land(tmp_path: Path) -> dict[str, Any]:
    """``roots/landing/good.csv`` inside the roots, ``outside/secret.csv`` outside, with
    the same size and mtime; the lake inside the roots."""
    roots_dir, outside = tmp_path / "roots", tmp_path / "outside"
    (roots_dir / "landing").mkdir(parents=True)
    outside.mkdir()
    good = roots_dir / "landing" / "good.csv"
    secret = outside / "secret.csv"
    good.write_text(f"name,n\n{GOOD},1\n")
    secret.write_text(f"name,n\n{SECRET},1\n")
    stamp = good.stat().st_mtime_ns
    os.utime(secret, ns=(stamp, stamp))
    return {
        "roots": resolve_roots([roots_dir]),
        "landing": roots_dir / "landing",
        "lake": roots_dir / "lake",
        "good": good,
        "secret": secret,
        "outside": outside,
    }


def entry(path: Path, like: Path) -> dict[str, Any]:
    """A unit's file entry for ``path`` as the listing saw it (``like``'s fingerprint)."""
    st = like.stat()
    url = path.as_uri()
    return {"url": url, "read_url": url, "size": st.st_size, "mtime": st.st_mtime}


def run_unit(land: dict[str, Any], file: dict[str, Any], **limit_overrides: int) -> dict:
    unit = {"batch_id": "b", "unit": 0, "files": [file], "out_url": land["lake"].as_uri()}
    job = plan({**limits(), **limit_overrides}, local_roots=list(land["roots"]))
    return process_unit(job, unit)


def lake_text(land: dict[str, Any]) -> str:
    """Every value of every Parquet file in the lake, as one string."""
    files = sorted(land["lake"].rglob("*.parquet"))
    return " ".join(str(pq.read_table(f).to_pydict()) for f in files)


def _flip(kind: str, a: Path, b: Path, c: Path, stamp: int, i: int) -> None:
    """One flip of the attacker's loop (see :class:`Flipper`)."""
    if kind == "link":  # a: the landing symlink, b/c: its two targets
        tmp = a.with_name(".flip.tmp")
        os.symlink(b if i % 2 == 0 else c, tmp)
        os.replace(tmp, a)
    elif kind == "swap":  # a: a regular file, b: the secret, c: the good content
        tmp = a.with_name(".swap.tmp")
        if i % 2 == 0:
            os.symlink(b, tmp)
        else:
            tmp.write_bytes(c.read_bytes())
            os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, a)
    elif i % 2 == 0:  # "folder": a: a folder of the path, b: where it is parked, c: outside
        os.rename(a, b)
        os.symlink(c, a)
    else:
        os.unlink(a)
        os.rename(b, a)


def _flip_forever(args: tuple[Any, ...], flips: Any, stop: Any) -> None:
    while not stop.is_set():
        _flip(*args, flips.value)
        flips.value += 1


class Flipper:
    """An attacker in another process: ``_flip(*args, i)`` for i = 0, 1, 2... until stopped.

    A process, not a thread, so that it flips while the reader runs (2 cores), not only
    when the reader lets go of the GIL.
    """

    def __init__(self, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._flips = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._process = ctx.Process(target=_flip_forever, args=(args, self._flips, self._stop))

    @property
    def flips(self) -> int:
        return int(self._flips.value)

    def __enter__(self) -> Flipper:
        self._process.start()
        while self.flips < 2:  # started and flipping
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def race(land: dict[str, Any], file: dict[str, Any], *flip: Any) -> dict[str, int]:
    """Run the unit, and open the file directly 10 times, until ``_flip(*flip, i)`` ran
    ``MIN_FLIPS`` times (and 100 units at least); fail on any byte of the secret read by an
    open, in a unit's result or in the lake. Returns the outcomes counted by which check
    stopped the secret (``resolves``: the path check, ``symlink``: ``O_NOFOLLOW``,
    ``opened``: the descriptor's path)."""
    seen: Counter[str] = Counter()
    job = plan(limits(), local_roots=list(land["roots"]))
    check = LocalCheck.of(job, file)
    path = file["url"].removeprefix("file://")
    with Flipper(*flip) as flipper:
        while flipper.flips < MIN_FLIPS or seen["units"] < 100:
            seen["units"] += 1
            for _ in range(10):
                try:
                    f, _st = open_local(path, url=file["url"], check=check)
                except (InputError, StorageError) as exc:
                    seen[f"open {_which(exc)}"] += 1
                    continue
                with f:
                    data = f.read()
                assert SECRET.encode() not in data and GOOD.encode() in data
                seen["open read"] += 1
            try:
                result = run_unit(land, file)
            except StorageError:  # the name was missing for a moment: the batch is retried
                seen["unit missing"] += 1
                continue
            assert SECRET not in str(result)
            assert SECRET not in lake_text(land)
            for q in result["quarantined"]:
                seen[f"unit {_which(q['error'])}"] += 1
            if result["files"]:
                assert GOOD in lake_text(land)
                seen["unit read"] += 1
    seen["flips"] = flipper.flips
    print(dict(sorted(seen.items())))
    return seen


def _which(error: object) -> str:
    text = str(error)
    for key, marker in (("resolves", "resolves to"), ("symlink", "became a symlink"),
                        ("opened", "was opened as"), ("missing", "no such file"),
                        ("resolving", "while it was being resolved")):  # fmt: skip
        if marker in text:
            return key
    return text


def test_a_flipping_landing_symlink_never_reads_the_secret(land: dict[str, Any]) -> None:
    link = land["landing"] / "flip.csv"
    link.symlink_to(land["good"])
    seen = race(land, entry(link, land["good"]), "link", link, land["secret"], land["good"], 0)
    assert seen["flips"] >= MIN_FLIPS
    assert seen["unit read"] > 0 and seen["open read"] > 0 and seen["open resolves"] > 0


def test_a_file_swapped_for_a_symlink_is_not_followed(land: dict[str, Any]) -> None:
    """The checked name itself (a regular file) is replaced by a symlink to the secret."""
    name = land["landing"] / "swap.csv"
    name.write_bytes(land["good"].read_bytes())
    stamp = land["good"].stat().st_mtime_ns
    os.utime(name, ns=(stamp, stamp))
    seen = race(land, entry(name, land["good"]), "swap", name, land["secret"], land["good"], stamp)
    assert seen["flips"] >= MIN_FLIPS and seen["unit read"] > 0 and seen["open read"] > 0


def test_a_folder_swapped_for_a_symlink_is_caught_on_the_descriptor(
    land: dict[str, Any],
) -> None:
    """A folder of the resolved path becomes a symlink to a folder outside the roots."""
    sub, parked = land["landing"] / "sub", land["landing"] / ".sub-parked"
    sub.mkdir()
    (sub / "f.csv").write_bytes(land["good"].read_bytes())
    (land["outside"] / "f.csv").write_bytes(land["secret"].read_bytes())
    stamp = land["good"].stat().st_mtime_ns
    for f in (sub / "f.csv", land["outside"] / "f.csv"):
        os.utime(f, ns=(stamp, stamp))
    seen = race(land, entry(sub / "f.csv", land["good"]), "folder", sub, parked, land["outside"], 0)
    # The swap is two steps (a folder cannot be replaced atomically): under load the name
    # may be missing for most opens, so only the absence of the secret is asserted here.
    assert seen["flips"] >= MIN_FLIPS


def test_the_descriptor_check_alone(land: dict[str, Any], monkeypatch) -> None:
    """Each later check on its own: the path was resolved (and found inside) before the
    swap, which has happened by the time of the open."""
    check = LocalCheck(roots=land["roots"])
    sub = land["landing"] / "sub"
    sub.symlink_to(land["outside"])  # a folder swapped for a symlink out of the roots
    (land["outside"] / "f.csv").write_bytes(land["secret"].read_bytes())
    as_checked = str(sub / "f.csv")
    monkeypatch.setattr(_open_local.os.path, "realpath", lambda p: as_checked)
    with pytest.raises(OutsideRootsError, match=r"was opened as .*outside/f\.csv.*swapped"):
        open_local(as_checked, url="file://" + as_checked, check=check)
    link = land["landing"] / "now-a-link.csv"  # the last component swapped: O_NOFOLLOW
    link.symlink_to(land["secret"])
    monkeypatch.setattr(_open_local.os.path, "realpath", lambda p: str(link))
    with pytest.raises(ChangedInputError, match="became a symlink after it was checked"):
        open_local(str(link), url=link.as_uri(), check=check)


def test_a_hard_link_to_an_outside_file_is_quarantined(land: dict[str, Any]) -> None:
    link = land["landing"] / "hard.csv"
    os.link(land["secret"], link)
    result = run_unit(land, entry(link, link))
    [q] = result["quarantined"]
    assert q["kind"] == "outside_roots" and "has 2 hard links" in q["error"]
    assert "CELERAY_ALLOW_HARD_LINKS=true" in q["error"]
    assert result["files"] == [] and SECRET not in str(result) + lake_text(land)
    trusted = run_unit(land, entry(link, link), allow_hard_links=1)
    assert trusted["quarantined"] == [] and trusted["files"][0]["rows_in"] == 1


def test_a_file_changed_after_listing_is_quarantined(land: dict[str, Any]) -> None:
    listed = entry(land["good"], land["good"])
    with land["good"].open("a") as f:
        f.write("appended,2\n")
    result = run_unit(land, listed)
    [q] = result["quarantined"]
    assert q["kind"] == "changed"
    assert "changed after it was listed (size 26 -> 37 bytes" in q["error"]
    touched = entry(land["good"], land["good"])
    os.utime(land["good"], (time.time() + 5, time.time() + 5))
    [q] = run_unit(land, touched)["quarantined"]
    assert q["kind"] == "changed" and "mtime" in q["error"] and "size" not in q["error"]


def test_a_staged_copy_is_not_held_to_the_source_mtime(land: dict[str, Any]) -> None:
    staged = {**entry(land["good"], land["good"]), "url": "https://example.com/good.csv",
              "mtime": 1.0}  # fmt: skip
    result = run_unit(land, staged)
    assert result["quarantined"] == [] and result["files"][0]["rows_in"] == 1


def test_a_fifo_does_not_block_and_is_refused(land: dict[str, Any]) -> None:
    fifo = land["landing"] / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(ChangedInputError, match="is a FIFO, not a regular file"):
        open_local(str(fifo), url=fifo.as_uri(), check=LocalCheck(roots=land["roots"]))


def test_an_ordinary_file_still_reads(land: dict[str, Any]) -> None:
    result = run_unit(land, entry(land["good"], land["good"]))
    assert result["quarantined"] == [] and result["files"][0]["rows_in"] == 1
    assert GOOD in lake_text(land)
    inside_link = land["landing"] / "inside-link.csv"  # a symlink to a file inside: read
    inside_link.symlink_to(land["good"])
    assert run_unit(land, entry(inside_link, land["good"]))["files"][0]["rows_in"] == 1
    url = land["good"].as_uri()
    job = plan(limits(), local_roots=list(land["roots"]))
    check = LocalCheck.of(job, entry(land["good"], land["good"]))
    [batch] = read_batches(url, fmt="csv", schema=None, limits=limits(), check=check)
    assert batch.to_pydict() == {"name": [GOOD], "n": [1]}


def test_outside_the_roots_by_path(land: dict[str, Any]) -> None:
    with pytest.raises(OutsideRootsError, match=r"resolves to .*secret\.csv, outside"):
        open_local(str(land["secret"]), url="x", check=LocalCheck(roots=land["roots"]))
    with pytest.raises(StorageError, match="no such file"):
        open_local(str(land["landing"] / "gone.csv"), url="y", check=LocalCheck())
