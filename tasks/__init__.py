"""The Celery side of celeray: ``celery -A tasks worker|beat``.

Importing this package registers the tasks and connects to nothing. A worker that consumes
the ``ray`` queue connects to Ray once it is ready and warms Ray's workers (tasks._ray);
every worker process reads the pipeline file once before its first task.
First it checks that the ``ray_jobs`` and ``beat_schedule`` it will import are celeray's
own, not a module of the same name earlier on the path (:mod:`celeray.toplevel`).
"""

from celeray import toplevel as _toplevel

_toplevel.check()

# Importing them registers the tasks (run, health: tasks.ray_status, reconcile, maintain:
# tasks.compact, tasks.vacuum, tasks.maintain) and hooks the Ray warm-up to worker_ready
# (_ray) and the pipeline file's first read to each worker process's start (_warm_pipelines).
from tasks import _ray, _warm_pipelines, health, maintain, reconcile, run  # noqa: E402, F401
from tasks.app import app  # noqa: E402

__all__ = ["app"]
