"""ray_jobs.units: grouping small files into units by bytes."""

from __future__ import annotations

import pytest

from ray_jobs.units import plan_units


def files(*sizes: int) -> list[dict]:
    return [{"url": f"file:///in/{i}.csv", "size": s} for i, s in enumerate(sizes)]


def urls(units: list[list[dict]]) -> list[list[int]]:
    return [[int(f["url"].rsplit("/", 1)[1].split(".")[0]) for f in unit] for unit in units]


def test_small_files_share_units_in_order() -> None:
    assert urls(plan_units(files(10, 20, 30, 40, 50), unit_bytes=60)) == [[0, 1, 2], [3], [4]]


def test_large_files_are_alone() -> None:
    assert urls(plan_units(files(10, 100, 10, 10, 60, 5), unit_bytes=60)) == [
        [0],
        [1],
        [2, 3],
        [4],
        [5],
    ]


def test_exact_fill_and_zero_sizes() -> None:
    # A file joins the share its middle falls in: 0-60 holds files 0 and 1, the empty file
    # sits at 60, the start of the next share.
    assert urls(plan_units(files(30, 30, 0, 1), unit_bytes=60)) == [[0, 1], [2, 3]]


def test_deterministic_and_empty() -> None:
    sample = files(*(i * 7 % 50 for i in range(200)))
    assert plan_units(sample, unit_bytes=100) == plan_units(sample, unit_bytes=100)
    assert sum(len(u) for u in plan_units(sample, unit_bytes=100)) == 200
    assert plan_units([], unit_bytes=100) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        plan_units(files(1), unit_bytes=0)
    with pytest.raises(ValueError):
        plan_units(files(-1), unit_bytes=10)


def test_compressed_files_weigh_what_they_inflate_to() -> None:
    from ray_jobs.units import COMPRESSED_EXPANSION, work_bytes

    assert work_bytes({"url": "file:///a.csv", "size": 10}) == 10
    assert work_bytes({"url": "file:///a.csv.zst", "size": 10}) == 10 * COMPRESSED_EXPANSION
    assert work_bytes({"url": "file:///a.jsonl.gz", "size": 10}) == 10 * COMPRESSED_EXPANSION


def test_units_come_in_a_multiple_of_the_cpus() -> None:
    from ray_jobs.units import MIN_UNIT_BYTES, balanced_unit_bytes

    mib = 1024**2
    one_big = [{"url": "file:///big.csv", "size": 342 * mib}]
    unit = balanced_unit_bytes(one_big, unit_bytes=32 * mib, cpus=2)
    units = plan_units(one_big, unit_bytes=unit, plan={"format": None})
    assert len(units) == 12  # 11 ranges of 32 MiB would leave a core idle at the end
    zst = [{"url": f"file:///f{i:02d}.csv.zst", "size": int(2.4 * mib)} for i in range(32)]
    unit = balanced_unit_bytes(zst, unit_bytes=32 * mib, cpus=2)
    assert len(plan_units(zst, unit_bytes=unit)) % 2 == 0
    tiny = [{"url": "file:///t.csv", "size": 1000}]
    assert balanced_unit_bytes(tiny, unit_bytes=32 * mib, cpus=2) == MIN_UNIT_BYTES
    assert balanced_unit_bytes(one_big, unit_bytes=32 * mib, cpus=1) == 32 * mib


def test_the_largest_units_start_first_so_the_cores_finish_together() -> None:
    from ray_jobs.units import balanced_unit_bytes, largest_first, unit_work

    mib = 1024**2
    zst = [{"url": f"file:///f{i:02d}.csv.zst", "size": int(2.4 * mib)} for i in range(32)]
    unit = balanced_unit_bytes(zst, unit_bytes=32 * mib, cpus=2)
    units = [{"files": f} for f in plan_units(zst, unit_bytes=unit)]
    sizes = [len(u["files"]) for u in units]
    assert sorted(set(sizes)) == [3, 4]  # 32 files do not divide into 10 even units
    order = largest_first(units)
    assert sorted(order) == list(range(len(units)))
    started = [len(units[i]["files"]) for i in order]
    assert started == sorted(sizes, reverse=True)
    # taken by two cores in that order, each takes the next when it is free
    cores = [0, 0]
    for i in order:
        cores[cores.index(min(cores))] += unit_work(units[i])
    assert max(cores) - min(cores) <= unit_work({"files": zst[:1]})
    # a byte range weighs its length, not its file's size; ties keep the plan's order
    ranged = [{"files": [{"url": "file:///a.csv", "size": 100, "range": [0, 50]}]},
              {"files": [{"url": "file:///b.csv", "size": 60}]},
              {"files": [{"url": "file:///a.csv", "size": 100, "range": [50, 100]}]}]
    assert largest_first(ranged) == [1, 0, 2]
