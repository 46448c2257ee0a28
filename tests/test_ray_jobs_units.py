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
    assert urls(plan_units(files(30, 30, 0, 1), unit_bytes=60)) == [[0, 1, 2], [3]]


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
