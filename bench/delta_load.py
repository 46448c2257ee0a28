"""``python -m bench.delta_load``: a Delta commit as the table grows, by checkpoint interval.

Every batch's commit starts from the table's newest version. On a local table, ``--commits``
one-file batches are committed the way celeray commits them: from the snapshot the process
kept, brought up to date (:func:`celeray.delta_snapshot.newest`, given back after), with one
commit (:func:`celeray.delta_table.commit_entry`, as for a batch's first delivery: ``unseen``);
once on a table with ``delta.checkpointInterval`` 10 (what celeray gives a table it creates)
and once with 100 (delta-rs's default). Timed:
a fresh load of the table (:func:`celeray.delta_location.open_table`, what each batch did
before snapshots were kept), the kept snapshot's update, and the whole commit (update
included); their mean and worst are printed per window of ``--window`` commits.
``--threads 2`` commits on two threads in turn, as a ray worker's pool takes batches.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

INTERVALS = (10, 100)


def _batch(folder: Path, i: int) -> dict[str, Any]:
    """One batch's entry: a 2-row file written into the table folder, its add action."""
    name = f"part-{i:06d}.parquet"
    pq.write_table(pa.table({"id": [i, i + 1]}), folder / name)
    action = {"path": name, "size": (folder / name).stat().st_size, "partition_values": {},
              "rows": 2}  # fmt: skip
    return {"batch_id": f"b{i}", "run_id": "bench", "delta_actions": [action],
            "delta": {"partition_by": []}}  # fmt: skip


def run(commits: int, interval: int, threads: int = 1
        ) -> tuple[list[float], list[float], list[float]]:  # fmt: skip
    """Per-commit seconds of a fresh load, of the kept snapshot's update and of the whole
    commit from it, ``commits`` commits; with ``threads`` > 1, commit ``i`` runs on thread
    ``i % threads`` (one after another), as a ray worker's threads take batches in turn."""
    from celeray import delta_snapshot, delta_table

    schema = pa.schema([("id", pa.int64())])
    folder = Path(tempfile.mkdtemp(prefix=f"bench-delta-load-{interval}-"))
    sink = folder.as_uri()
    delta_snapshot.forget()
    pools = [ThreadPoolExecutor(1) for _ in range(threads)]
    try:
        delta_table.commit_entry(sink, _batch(folder, 0), schema)
        table = delta_table.open_table(sink)
        table.alter.set_table_properties({delta_table.CHECKPOINT_KEY: str(interval)})
        loads, updates, whole = [], [], []

        def commit(entry: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            delta_table.open_table(sink)
            t1 = time.perf_counter()
            start = delta_snapshot.newest(sink)
            t2 = time.perf_counter()
            delta_table.commit_entry(sink, entry, schema, start, unseen=True)
            delta_snapshot.keep(sink, start)  # as runs.commit_result gives it back
            t3 = time.perf_counter()
            loads.append(t1 - t0)
            updates.append(t2 - t1)
            whole.append(t3 - t1)

        for i in range(1, commits + 1):
            pools[i % threads].submit(commit, _batch(folder, i)).result()
        return loads, updates, whole
    finally:
        for pool in pools:
            pool.shutdown()
        delta_snapshot.forget()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Print, per interval and window of commits, the mean and worst of a fresh load, of the
    kept snapshot's update and of the commit."""
    p = argparse.ArgumentParser(prog="python -m bench.delta_load", description=__doc__)
    p.add_argument("--commits", type=int, default=300, help="batches committed per table")
    p.add_argument("--window", type=int, default=100, help="commits per printed line")
    p.add_argument("--threads", type=int, default=1,
                   help="threads the commits take turns on (a ray worker's pool)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be 1 or more")
    print(f"{'interval':>8} {'commits':>9} {'fresh load ms mean/worst':>26} "
          f"{'kept update ms mean/worst':>27} {'commit ms mean/worst':>22}")
    for interval in INTERVALS:
        loads, updates, whole = run(args.commits, interval, args.threads)
        for lo in range(0, args.commits, args.window):
            a, u, b = (x[lo:lo + args.window] for x in (loads, updates, whole))
            print(f"{interval:>8} {f'{lo + 1}-{lo + len(a)}':>9} "
                  f"{statistics.mean(a) * 1000:>17.1f} / {max(a) * 1000:<6.1f} "
                  f"{statistics.mean(u) * 1000:>18.1f} / {max(u) * 1000:<6.1f} "
                  f"{statistics.mean(b) * 1000:>13.1f} / {max(b) * 1000:<6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
