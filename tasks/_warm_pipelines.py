"""Each worker process reads the pipeline file once before its first task.

A run's first step in a process validates the pipeline file, and a pipeline with ``sql``
has it parsed by DuckDB's parser: the first time in a process that imports DuckDB and
opens its first database, which is most of a run's start. Doing it when the process is
ready moves that off the first run's clock (per process cost in ``bench/RESULTS.md``).

Nothing is imported that the file does not need: a file without ``sql`` never imports
DuckDB here. A missing or broken file is left for the run, which says what is wrong.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_process_init, worker_ready

from celeray.pipelines import read_ahead
from celeray.settings import get_settings

__all__: list[str] = []


def read_pipeline_file() -> int:
    """:func:`celeray.pipelines.read_ahead` of the server's pipeline file."""
    settings = get_settings()
    return read_ahead(settings.pipelines, **settings.pipeline_rules())


@worker_process_init.connect
def _in_each_pool_child(**_: Any) -> None:
    """Prefork children (the ``io`` worker): each reads the file once, after the fork."""
    read_pipeline_file()


@worker_ready.connect
def _in_a_threads_worker(sender: Any = None, **_: Any) -> None:
    """A threads (or solo) pool runs tasks in the main process: read the file there, on a
    thread of its own so the worker starts consuming at once.

    A prefork parent is left alone: DuckDB is not imported into a process that forks.
    """
    pool = type(getattr(sender, "pool", None)).__module__
    if not pool.endswith(".prefork"):
        threading.Thread(target=read_pipeline_file, name="read-pipelines", daemon=True).start()
