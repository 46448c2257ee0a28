"""Run one peer job in a subprocess of its own and sample its memory from outside.

The child is ``python -m bench.peers SPEC.json``; this process samples the RSS of the
child's whole process tree (Ray Data starts a GCS, a raylet and workers) and reports the
largest single process. The child's output folder is measured and then removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.datasets import DataSet
from bench.memory import TreeSampler
from bench.out_types import kinds_of

__all__ = ["PeerFailedError", "run_isolated"]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 1800


class PeerFailedError(RuntimeError):
    """The peer's process failed; the message holds the tail of its output."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERAY_", "RAY_"))}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    return env


def folder_bytes(folder: Path) -> int:
    """Bytes of the Parquet files under ``folder`` (celeray's ``_celeray`` excluded)."""
    return sum(p.stat().st_size for p in folder.rglob("*.parquet")
               if "_celeray" not in p.relative_to(folder).parts)


def run_isolated(engine: str, job: str, data: DataSet, out_root: Path) -> dict[str, Any]:
    """Run ``engine`` on ``job`` over ``data``; return seconds, rows, bytes out, peak memory."""
    work = Path(tempfile.mkdtemp(prefix=f"{engine}-", dir=out_root))
    spec = {"engine": engine, "job": job, "fmt": data.fmt,
            "files": [str(f) for f in data.files], "out": str(work / "out"),
            "result": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    log = work / "peer.log"
    started = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peers", str(work / "spec.json")],
            cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        with TreeSampler(lambda: proc.pid if proc.poll() is None else None) as sampler:
            try:
                code = proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = -9
    wall = time.perf_counter() - started
    try:
        if code != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise PeerFailedError(f"{engine} {job} on {data.name} exited {code}:\n{tail}")
        result = json.loads((work / "result.json").read_text())
        return {**result, "process_seconds": round(wall, 3),
                "bytes_out": folder_bytes(work / "out"), "kinds": kinds_of(work / "out"),
                "peak": sampler.peak()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
