"""Scale-out on one machine: a second Ray node without celeray, two Celery hosts, a host lost.

The stack: a Ray head of 1 CPU (this venv) and a second Ray node of 1 CPU started from a
virtualenv of its own that has Ray, pyarrow and the data libraries but not celeray; two
"hosts" ``hostA`` and ``hostB``, each an io worker and a ray worker (``io@hostA``,
``ray@hostA``...) on the same broker. The pipeline's transform lives only in this test's
folder, on the workers' ``PYTHONPATH``: the Ray workers of both nodes get it, with
``ray_jobs`` and celeray's core, through the ``runtime_env`` celeray builds.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pytest

from celeray import reading
from tests._data import write_landing
from tests._node_venv import build_node_venv
from tests._s3 import S3Server
from tests._stack import Stack, wait_for
from tests.test_e2e_runs import _assert_sink_matches, _pipeline, _summary

pytestmark = pytest.mark.stack

DBS = (11, 12)  # beside the session stack's 13/14, the API tests' 7/8 and the bench's 9/10
HOSTS = ("hostA", "hostB")
TAG = "from-pipeline-file"

TRANSFORM = '''
"""A pipeline's own transform: says where its code and celeray's came from."""
import os

import pyarrow as pa


def tag(table: pa.Table) -> pa.Table:
    import time

    import celeray.errors
    import cr_clean

    time.sleep(float(os.environ.get("CR_SLEEP", "0")))

    def origin(module) -> str:
        return "shipped" if "runtime_resources" in (module.__file__ or "") else "local"

    n = table.num_rows
    code = f"{origin(cr_clean)}/{origin(celeray.errors)}"
    table = table.append_column("code_from", pa.array([code] * n, pa.string()))
    return table.append_column("tag", pa.array([os.environ.get("CR_TAG", "")] * n, pa.string()))
'''


@pytest.fixture(scope="module")
def node_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The second node's virtualenv ``bin``, built once; celeray is not importable there."""
    folder = tmp_path_factory.mktemp("node-venv")
    bin_dir, seconds = build_node_venv(folder / "venv", extra=("s3fs",))  # S3 too
    (folder / "build-seconds").write_text(f"{seconds:.1f}\n")
    print(f"\nnode venv built in {seconds:.1f} s")
    probe = subprocess.run([str(bin_dir / "python"), "-c", "import celeray"], cwd=folder,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'celeray'" in probe.stderr, probe
    probe = subprocess.run([str(bin_dir / "python"), "-c", "import ray, pyarrow, duckdb"],
                           cwd=folder, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    return bin_dir


@pytest.fixture(scope="module")
def scale_stack(
    tmp_path_factory: pytest.TempPathFactory, node_bin: Path, s3_server: S3Server
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("scale")
    code = root / "code"  # not the workers' cwd: Ray adds a driver's cwd to workers' paths
    (code / "cr_clean").mkdir(parents=True)
    (code / "cr_clean" / "__init__.py").write_text("")
    (code / "cr_clean" / "clean.py").write_text(TRANSFORM)
    s = Stack(root, ray_cpus=1, node_bins=(node_bin,), hosts=HOSTS, dbs=DBS,
              worker_env={"PYTHONPATH": str(code)}, extra_env=s3_server.env)
    try:
        yield s
    finally:
        s.stop()


def _entries(sink: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (sink / "_celeray/ledger").glob("[!.]*.json")]


def test_tasks_run_on_both_ray_nodes_and_batches_on_both_hosts(
    scale_stack: Stack, flights_df, tmp_path: Path
):
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df, landing, 24)
    _pipeline(scale_stack, "spread", landing, sink, batch_bytes="1MiB",
              transform='"cr_clean.clean:tag"',
              ray_env=f'{{ env_vars = {{ CR_TAG = "{TAG}" }} }}')

    run = scale_stack.celeray("run", "spread", "--wait", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = _summary(scale_stack, run.stdout)
    assert summary["files_committed"] == 24, summary
    _assert_sink_matches(sink, files)  # every row exactly once

    table = reading.dataset(sink.as_uri()).to_table(columns=["code_from", "tag"])
    assert pc.unique(table["code_from"]).to_pylist() == ["shipped/shipped"]
    assert pc.unique(table["tag"]).to_pylist() == [TAG]

    entries = _entries(sink)
    nodes = {node for e in entries for node in e["timings"]["nodes"]}
    assert len(nodes) == 2, nodes  # the head and the node without celeray
    assert sum(n["units"] for e in entries for n in e["timings"]["nodes"].values()) == sum(
        e["timings"]["units"] for e in entries)
    transformed = {e["workers"]["transform"] for e in entries}
    committed = {e["workers"]["commit"] for e in entries}
    assert transformed == {f"ray@{h}" for h in HOSTS}, transformed
    # a local sink: each batch is committed by the worker that transformed it
    assert committed == {f"ray@{h}" for h in HOSTS}, committed
    assert all(e["workers"]["commit"] == e["workers"]["transform"] for e in entries)


def test_s3_to_s3_on_both_ray_nodes_and_both_hosts(
    scale_stack: Stack, s3_server: S3Server, flights_df, tmp_path: Path
):
    """The whole scale-out at once: s3://landing to s3://lake, exactly once, with Ray tasks
    on the head and on the node without celeray, and batches on both Celery hosts (before
    the next test takes hostB away)."""
    import uuid

    from tests.test_e2e_s3 import _assert_sink_matches as _assert_s3_sink_matches

    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    files = write_landing(flights_df.iloc[:160_000], tmp_path / "landing", 16)
    s3_server.filesystem().put([str(p) for p in files], f"landing/{prefix}/flights/")
    sink_key = f"lake/{prefix}/flights"
    scale_stack.add_pipeline("s3spread", "\n".join([
        f'source = "s3://landing/{prefix}/flights/*"',
        f'sink = "s3://{sink_key}"',
        'sql = "SELECT *, distance / air_time * 60 AS mph FROM input '
        'WHERE dep_delay IS NOT NULL"',
        'partition_by = ["year", "month"]',
        'batch_bytes = "1MiB"',
        "[pipelines.s3spread.schema]",
        'time_hour = "timestamp[s, tz=UTC]"',
    ]))
    run = scale_stack.celeray("run", "s3spread", "--wait", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _summary(scale_stack, run.stdout)["files_committed"] == 16
    _assert_s3_sink_matches(s3_server, sink_key, files)  # every row exactly once

    fs = s3_server.filesystem()
    entries = [json.loads(fs.cat_file(p)) for p in fs.glob(f"{sink_key}/_celeray/ledger/*.json")]
    nodes = {node for e in entries for node in e["timings"]["nodes"]}
    assert len(nodes) == 2, nodes
    assert {e["workers"]["transform"] for e in entries} == {f"ray@{h}" for h in HOSTS}
    assert {e["workers"]["commit"] for e in entries} == {f"io@{h}" for h in HOSTS}


def test_losing_a_host_mid_run_loses_nothing(scale_stack: Stack, flights_df, tmp_path: Path):
    """SIGKILL hostB's io and ray workers (process groups, pool children too) while hostB
    transforms: its unacknowledged batches come back to hostA after the visibility timeout
    (25 s here), or are resent by the run's watchdog; every row lands exactly once."""
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df, landing, 24)
    # A pause per chunk, so a transform runs for seconds: hostB dies in the middle of one.
    _pipeline(scale_stack, "lose", landing, sink, batch_bytes="1MiB",
              transform='"cr_clean.clean:tag"', ray_env='{ env_vars = { CR_SLEEP = "0.2" } }')
    run = scale_stack.celeray("run", "lose")
    assert run.returncode == 0, run.stderr
    run_id = run.stdout.split("run ", 1)[1].split()[0]

    host_b = scale_stack.hosts["hostB"]
    inspect = scale_stack.client.control.inspect([host_b["ray"].name], timeout=0.5, limit=1)

    def transforming() -> tuple[str, str] | None:
        for task in (inspect.active() or {}).get(host_b["ray"].name, []):
            if task["name"] == "tasks.transform_batch":
                found = re.search(r"'batch_id': '([^']+)'", str(task["args"]))
                return (task["id"], found.group(1)) if found else None
        return None

    task_id, batch = wait_for(transforming, 120, "hostB transforming a batch", interval=0.05)
    for worker in (host_b["ray"], host_b["io"]):
        worker.proc.kill()
    assert not host_b["ray"].proc.alive() and not host_b["io"].proc.alive()

    result = scale_stack.wait_run(run_id, timeout=240)
    assert result.state == "SUCCESS", result.result
    assert result.result["files_committed"] == 24
    _assert_sink_matches(sink, files)
    entries = _entries(sink)
    assert sum(len(e["inputs"]) for e in entries) == 24
    # The batch hostB was transforming was delivered again, to hostA, and committed there
    # (unless hostB finished it in the milliseconds between the look and the kill).
    [redone] = [e for e in entries if e["batch_id"] == batch]
    finished_on_b = f"{task_id}] succeeded" in host_b["ray"].proc.log.read_text()
    assert redone["workers"]["transform"] == ("ray@hostB" if finished_on_b else "ray@hostA")
