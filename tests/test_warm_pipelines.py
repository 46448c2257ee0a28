"""Each worker process reads the pipeline file before its first task (tasks._warm_pipelines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from tasks._warm_pipelines import read_pipeline_file
before = "duckdb" in sys.modules
found = read_pipeline_file()
print(json.dumps({"before": before, "found": found, "duckdb": "duckdb" in sys.modules}))
"""


def _probe(tmp_path: Path, text: str | None) -> dict[str, object]:
    path = tmp_path / "pipelines.toml"
    if text is not None:
        path.write_text(text)
    env = {
        **os.environ,
        "CELERAY_HOME": str(tmp_path / "home"),
        "CELERAY_PIPELINES": str(path),
        "CELERAY_LOCAL_ROOTS": str(tmp_path),
        "CELERAY_MONITOR_ONLY": "1",  # no signing key: the probe sends nothing
    }
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, timeout=120,
                          capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _pipeline(tmp_path: Path, extra: str = "") -> str:
    return (f'[pipelines.p]\nsource = "file://{tmp_path}/in/*.csv"\nformat = "csv"\n'
            f'sink = "file://{tmp_path}/lake/p"\n{extra}')


@pytest.mark.parametrize("with_sql", [True, False])
def test_the_file_is_read_and_duckdb_imported_only_for_sql(tmp_path: Path, with_sql: bool) -> None:
    extra = 'sql = "SELECT * FROM input WHERE x > 1"\n' if with_sql else ""
    seen = _probe(tmp_path, _pipeline(tmp_path, extra))
    assert seen == {"before": False, "found": 1, "duckdb": with_sql}


@pytest.mark.parametrize("text", [None, "[pipelines.p]\nsource = 3\n"])
def test_a_missing_or_broken_file_is_left_for_the_run(tmp_path: Path, text: str | None) -> None:
    seen = _probe(tmp_path, text)
    assert seen["found"] == -1
