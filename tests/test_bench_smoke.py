"""Both benches run end to end on tiny data, so they cannot rot unnoticed (issue 16).

``python -m bench --smoke`` and ``python -m bench.scale --smoke`` start their own stacks
(free ports, temporary folders, Redis databases 9 and 10 of the tests' Redis), with their
data sets and results JSON in the test's folder. What is checked is what a user reads in
their output: the exit status, every set x job row with every installed peer and its ratio,
and the summary lines. Never a timing: the figures of a smoke run measure nothing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.datasets import SETS
from bench.jobs import JOBS
from bench.peers import ENGINES
from bench.run import SMOKE_RAYDATA
from tests._stack import REDIS_PORT

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
NEEDS = {"duckdb": "duckdb", "polars": "polars", "raydata": "ray"}  # peer -> its library


def _bench(module: str, tmp_path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke", "--redis-port", str(REDIS_PORT),
         "--data", str(tmp_path / "data"), "--results", str(tmp_path / "results")],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )
    assert done.returncode == 0, f"{module} exited {done.returncode}:\n{done.stdout[-4000:]}" \
        f"\n{done.stderr[-4000:]}"
    return done.stdout


def _cells(output: str) -> list[list[str]]:
    """The rows of every table printed, each as its stripped cells."""
    return [[c.strip() for c in line.strip().strip("│").split("│")]
            for line in output.splitlines() if line.strip().startswith("│")]


def _peers(set_name: str, job: str) -> list[str]:
    """The peers the smoke run has on this set and job (those whose library is installed)."""
    peers = [p for p in ENGINES if importlib.util.find_spec(NEEDS.get(p, "pyarrow"))]
    if not SETS[set_name].small:
        peers.remove("pyarrow-loop")
    if "raydata" in peers and (set_name, job) != SMOKE_RAYDATA:
        peers.remove("raydata")
    return peers


def test_bench_smoke(tmp_path: Path) -> None:
    out = _bench("bench", tmp_path)
    rows = {(c[0], c[1], c[2]): c for c in _cells(out) if len(c) == 9}
    for set_name in SETS:
        for job in JOBS:
            mine = rows.get((set_name, job, "celeray"))
            assert mine is not None, f"no celeray row for {set_name} {job}:\n{out}"
            assert mine[3] not in ("failed", "-"), mine
            for peer in _peers(set_name, job):
                row = rows.get((set_name, job, peer))
                assert row is not None, f"no {peer} row for {set_name} {job}:\n{out}"
                assert re.fullmatch(r"\d+\.\d\d", row[8]), f"no ratio: {row}"  # celeray x
    assert "failed" not in out
    n = len(SETS) * len(JOBS)
    assert re.search(rf"celeray leads the fastest peer on \d+ of {n}\b", out), out
    if importlib.util.find_spec("ray"):
        assert re.search(r"celeray / Ray Data: >= 5x on [01] of 1 \(lowest", out), out
    assert re.search(rf"every celeray process under 600 MB on \d+ of {len(SETS)} sets", out)
    for sink in ("Parquet", "Delta"):  # the overheads with each sink format
        assert re.search(rf"per-run overhead \({sink} sink.*: \d+ ms", out), out
        assert re.search(rf"per-batch overhead \({sink} sink.*: \d+ ms", out), out
    assert re.search(r"Delta sink's cost over a Parquet sink: per run [+-]\d+ ms, per batch "
                     r"[+-]\d+ ms", out), out
    assert "throughput runs: Delta sinks" in out
    assert "targets of issue 16" in out
    # with their defaults Polars leaves the ISO timestamps as text: said, not hidden
    assert re.search(r"^  \S+ +\S+ +polars +.*time_hour: text, timestamp", out, re.M), out
    doc = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert doc["smoke"] is True and len(doc["leads"]) == n
    for kind in ("new", "later"):  # a new sink's first run, a pipeline's later runs
        assert set(doc["overhead"][kind]) == {"parquet", "delta"}
        assert set(doc["overhead"]["delta_cost"][kind]) == {"per_run_ms", "per_batch_ms"}


def test_scale_smoke(tmp_path: Path) -> None:
    out = _bench("bench.scale", tmp_path)
    assert re.search(r"^  1 node\(s\): +[\d.]+ s", out, re.M), out
    assert re.search(r"^  2 node\(s\): +[\d.]+ s", out, re.M), out
    assert re.search(r"speed-up with 2 nodes: [\d.]+x", out), out
    doc = json.loads(next((tmp_path / "results").glob("scale-*.json")).read_text())
    assert [r["nodes"] for r in doc["results"]] == [1, 2]
    assert all(sum(run["units_by_node"].values()) >= 1 for r in doc["results"]
               for run in r["runs"])
    # each node's Ray seconds beside the batches' fan-out seconds: where a node idled
    assert all(set(run["seconds_by_node"]) == set(run["units_by_node"])
               and run["transform_s"] > 0 for r in doc["results"] for run in r["runs"])
    assert re.search(r"run 0: [\d.]+ s \(Ray fan-out [\d.]+ s\)", out), out
