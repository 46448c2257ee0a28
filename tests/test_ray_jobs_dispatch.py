"""ray_jobs.dispatcher on a real local Ray (its own, started and shut down here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray

from celeray.errors import RayUnavailableError, TransformError
from celeray.ray_private import private_temp_dir, remove_private_temp_dir
from ray_jobs.dispatcher import run_units
from tests._plans import MiB, limits, plan

REPO = str(Path(__file__).resolve().parents[1])
PROBE_ENV = "CELERAY_TEST_PROBE_DIR"
LIMITS = limits(64 * MiB, 1 * MiB)


def test_needs_ray_init() -> None:
    if ray.is_initialized():
        pytest.skip("Ray already connected in this process")
    with pytest.raises(RayUnavailableError, match=r"ray\.init"):
        run_units({}, [{}], max_in_flight=1, min_free_memory=0.0)


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray of 2 CPUs whose workers can import tests._sample_transforms."""
    folder = tmp_path_factory.mktemp("probe")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", PROBE_ENV)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, saved["PYTHONPATH"]) if p)
    os.environ[PROBE_ENV] = str(folder)
    temp = private_temp_dir()  # not the shared /tmp/ray: Ray makes its folders 0777
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * MiB,
             _temp_dir=str(temp))
    try:
        yield folder
    finally:
        ray.shutdown()
        remove_private_temp_dir(temp)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def probes(probe_dir: Path) -> Iterator[Path]:
    yield probe_dir
    for f in probe_dir.iterdir():
        f.unlink()


def make_plan(**overrides: Any) -> dict[str, Any]:
    return plan(LIMITS, **{"pipeline": "t", "format": "csv", **overrides})


def make_units(tmp_path: Path, n: int) -> list[dict[str, Any]]:
    units = []
    for i in range(n):
        path = tmp_path / "in" / f"f{i}.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("k,v\n" + "".join(f"{i},{j}\n" for j in range(10 + i)))
        url = path.as_uri()
        units.append(
            {
                "batch_id": "b1",
                "unit": i,
                "files": [{"url": url, "read_url": url, "size": path.stat().st_size}],
                "out_url": (tmp_path / "out").as_uri(),
            }
        )
    return units


def intervals(folder: Path) -> list[tuple[float, float]]:
    spans = []
    for f in folder.iterdir():
        start, end, _pid = f.read_text().split()
        spans.append((float(start), float(end)))
    return sorted(spans)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_results_in_unit_order_and_on_result(tmp_path: Path, probe_dir: Path) -> None:
    units = make_units(tmp_path, 6)
    seen: list[dict[str, Any]] = []
    results = run_units(
        make_plan(), units, max_in_flight=2, min_free_memory=0.0, on_result=seen.append
    )
    assert [r["unit"] for r in results] == list(range(6))
    assert [r["rows_out"] for r in results] == [10 + i for i in range(6)]
    assert sorted(r["unit"] for r in seen) == list(range(6))
    assert all(not r["quarantined"] for r in results)
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 6


def test_max_in_flight_is_respected(tmp_path: Path, probes: Path) -> None:
    plan = make_plan(transform="tests._sample_transforms:probe")
    run_units(plan, make_units(tmp_path, 3), max_in_flight=1, min_free_memory=0.0)
    spans = intervals(probes)
    assert len(spans) == 3
    assert max_overlap(spans) == 1


def test_two_in_flight_run_side_by_side(tmp_path: Path, probes: Path) -> None:
    plan = make_plan(transform="tests._sample_transforms:probe")
    run_units(plan, make_units(tmp_path, 6), max_in_flight=2, min_free_memory=0.0)
    assert max_overlap(intervals(probes)) == 2


def test_memory_backpressure_waits_for_one_to_finish(tmp_path: Path, probes: Path) -> None:
    plan = make_plan(transform="tests._sample_transforms:probe")
    # 0.9999 free memory is never there: each submission waits for the one in flight.
    results = run_units(plan, make_units(tmp_path, 3), max_in_flight=0, min_free_memory=0.9999)
    assert [r["unit"] for r in results] == [0, 1, 2]
    assert max_overlap(intervals(probes)) == 1


def test_transform_error_comes_back_as_itself(tmp_path: Path, probe_dir: Path) -> None:
    with pytest.raises(TransformError, match="sql failed") as info:
        run_units(
            make_plan(sql="SELECT missing FROM input"),
            make_units(tmp_path, 3),
            max_in_flight=2,
            min_free_memory=0.0,
        )
    assert type(info.value) is TransformError


def test_a_file_whose_worker_always_dies_is_quarantined_as_poison(
    tmp_path: Path, probe_dir: Path
) -> None:
    [result] = run_units(
        make_plan(transform="tests._sample_transforms:crash"),
        make_units(tmp_path, 1),
        max_in_flight=1,
        min_free_memory=0.0,
        task_options={"max_retries": 0},
    )
    [record] = result["quarantined"]
    assert record["kind"] == "poison" and record["url"].endswith("f0.csv")
    assert "died every time" in record["error"] and "WorkerCrashedError" in record["error"]
    assert (result["files"], result["outputs"], result["files_done"]) == ([], [], 1)


def test_a_crashed_unit_of_several_files_is_retried_file_by_file(
    tmp_path: Path, probe_dir: Path
) -> None:
    units = make_units(tmp_path, 5)
    together = [{**units[0], "files": [f for u in units for f in u["files"]]}]
    results = run_units(
        make_plan(transform="tests._sample_transforms:crash_on_k3"),
        together,
        max_in_flight=2,
        min_free_memory=0.0,
        task_options={"max_retries": 0},
    )
    assert [r["unit"] for r in results] == [1, 2, 3, 4, 5]  # numbered after the first
    good = sorted(f["url"].rsplit("/", 1)[1] for r in results for f in r["files"])
    assert good == ["f0.csv", "f1.csv", "f2.csv", "f4.csv"]
    [poison] = [q for r in results for q in r["quarantined"]]
    assert poison["url"].endswith("f3.csv") and poison["kind"] == "poison"
    assert sum(r["rows_out"] for r in results) == 10 + 11 + 12 + 14


def test_the_deadline_cancels_and_kills_hanging_tasks(tmp_path: Path, probes: Path) -> None:
    import time

    import psutil

    from celeray.errors import TimeLimitError

    started = time.monotonic()
    with pytest.raises(TimeLimitError, match="time limit"):
        run_units(
            make_plan(transform="tests._sample_transforms:sleep_long"),
            make_units(tmp_path, 2),
            max_in_flight=2,
            min_free_memory=0.0,
            deadline=time.monotonic() + 5.0,
        )
    assert time.monotonic() - started < 10
    pids = [int(p.read_text()) for p in probes.glob("*.pid")]
    assert pids  # the tasks had started
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) for p in pids)  # force-cancelled: workers killed


def test_warm_workers_warms_one_worker_per_cpu_and_cleans_up(probe_dir: Path) -> None:
    import glob
    import tempfile

    from ray_jobs.dispatcher import warm_workers

    before = set(glob.glob(f"{tempfile.gettempdir()}/celeray-warm-*"))
    assert warm_workers() == 2  # the module's cluster has two CPUs
    assert set(glob.glob(f"{tempfile.gettempdir()}/celeray-warm-*")) == before


def test_warming_grows_the_arrow_pool_to_a_units_size_and_gives_the_buffers_back() -> None:
    import pyarrow as pa

    from ray_jobs.dispatcher import _grow_memory_pool

    pool = pa.default_memory_pool()
    before = pool.bytes_allocated()
    _grow_memory_pool(64 * 1024**2, 4 * 1024**2)
    assert pool.bytes_allocated() == before  # freed: the pool keeps the pages for the next unit
    assert pool.max_memory() >= before + 64 * 1024**2


def test_warming_needs_no_numpy() -> None:
    """A Ray node installed from celeray's node requirements has no numpy (pyarrow does not
    need it): the pool still grows there."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['numpy'] = None\n"  # any import of numpy now fails
            "from ray_jobs.dispatcher import _grow_memory_pool\n"
            "_grow_memory_pool(8 * 1024**2, 4 * 1024**2)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_transform_package_is_shipped_once_with_its_env_vars(
    tmp_path: Path, probe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package only this process can import reaches the Ray workers through the task's
    runtime_env, uploaded once for as long as its files do not change."""
    from celeray.ray_env import pipeline_extras
    from ray_jobs import _runtime_env

    code = tmp_path / "code"
    (code / "shipme").mkdir(parents=True)
    (code / "shipme" / "__init__.py").write_text(
        "import os\nimport pyarrow as pa\n\n\ndef fn(t):\n"
        "    return t.append_column('m', pa.array([os.environ['SHIP_MODE']] * t.num_rows))\n"
    )
    monkeypatch.syspath_prepend(str(code))  # here only: Ray's workers do not have it
    plan = make_plan(transform="shipme:fn", ray_env={"pip": [], "env_vars": {"SHIP_MODE": "on"}})
    extras = pipeline_extras(plan)
    assert extras == {"py_modules": [str(code / "shipme")], "env_vars": {"SHIP_MODE": "on"}}
    first = run_units(plan, make_units(tmp_path, 2), max_in_flight=0, min_free_memory=0.0,
                      runtime_env=extras)
    uri = _runtime_env._uris[str(code / "shipme")][1]
    assert uri.startswith("gcs://")
    again = run_units(plan, make_units(tmp_path, 2), max_in_flight=0, min_free_memory=0.0,
                      runtime_env=extras)
    assert _runtime_env._uris[str(code / "shipme")][1] == uri  # unchanged: no new package
    assert all(not r["quarantined"] and r["rows_out"] for r in first + again)
    import pyarrow.parquet as pq

    table = pq.read_table(next((tmp_path / "out").glob("*.parquet")))
    assert set(table["m"].to_pylist()) == {"on"}
    assert all(r["node"] == ray.get_runtime_context().get_node_id() for r in first)


def test_a_large_compressed_file_runs_as_ranges_on_every_cpu(
    tmp_path: Path, probe_dir: Path
) -> None:
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import zstandard

    from ray_jobs.convert import convert_batch

    text = "k,v,name\n" + "".join(f"{i},{i * 0.5},n{i % 97}\n" for i in range(200_000))
    path = tmp_path / "in" / "big.csv.zst"
    path.parent.mkdir()
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(text.encode()))
    url = path.as_uri()
    size = path.stat().st_size
    result = convert_batch(
        make_plan(), [{"url": url, "read_url": url, "size": size}], batch_id="b9",
        out_url=(tmp_path / "out").as_uri(), prequarantined=[], unit_bytes=size, cpus=2,
        max_in_flight=4, min_free_memory=0.0, deadline=None,
    )  # fmt: skip
    assert result["timings"]["units"] == 2 and result["quarantined"] == []
    nodes = result["timings"]["nodes"]  # one local node ran both, their seconds summed
    assert [n["units"] for n in nodes.values()] == [2]
    assert sum(n["seconds"] for n in nodes.values()) == pytest.approx(
        result["timings"]["units_s"], abs=1e-3)
    assert result["files"] == [{"url": url, "rows_in": 200_000, "bytes_in": size}]
    got = pa.concat_tables(pq.read_table(tmp_path / "out" / o["path"]) for o in result["outputs"])
    whole = pacsv.read_csv(io.BytesIO(text.encode()))
    assert got.sort_by("k").to_pylist() == whole.sort_by("k").to_pylist()


def test_nodes_of_counts_units_and_sums_seconds_per_node() -> None:
    from ray_jobs.convert import nodes_of

    results = [{"node": "a", "host": "h1", "seconds": 0.5},
               {"node": "b", "host": "h2", "seconds": 0.25},
               {"node": "a", "host": "h1", "seconds": 1.0},
               {"seconds": 2.0}]  # a poison quarantine: ran nowhere  # fmt: skip
    assert nodes_of(results) == {"a": {"host": "h1", "units": 2, "seconds": 1.5},
                                 "b": {"host": "h2", "units": 1, "seconds": 0.25}}  # fmt: skip
