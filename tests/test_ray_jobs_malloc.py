"""ray_jobs._malloc: a converting process reuses the pages of its read buffers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from ray_jobs._malloc import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
MiB = 1024 * 1024
for i in range(20):  # the reads of a 10 MB file, as the text guard and pyarrow make them
    head = bytes(MiB)  # the chunk searched for the end of the header
    first = head + bytes(3 * MiB)  # the first 4 MiB block
    later = [bytes(4 * MiB), bytes(3 * MiB)]  # the rest, held by the reader
    del head, first, later
print(json.dumps({"tuned": tuned, "faults": faults() - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",)}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env},
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_read_buffers_are_reused_instead_of_faulted_in_again() -> None:
    plain, tuned = _probe("plain"), _probe("tune")
    assert tuned["tuned"] is True
    # 20 x 3,840 pages: without the thresholds most are faulted in afresh each time
    assert plain["faults"] > 20_000, plain
    assert tuned["faults"] < plain["faults"] / 5, (plain, tuned)


def test_a_process_with_malloc_settings_of_its_own_keeps_them() -> None:
    probe = _probe("tune", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert probe["tuned"] is False
