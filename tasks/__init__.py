"""The Celery side of celeray: ``celery -A tasks worker|beat``.

Importing this package registers the tasks and connects to nothing. A worker that consumes
the ``ray`` queue connects to Ray once it is ready and warms Ray's workers (tasks._ray).
"""

from tasks import _ray  # noqa: F401  (hooks the Ray warm-up to worker_ready)
from tasks import health as _health  # noqa: F401  (registers tasks.ray_status)
from tasks import reconcile as _reconcile  # noqa: F401  (registers tasks.reconcile)
from tasks import run as _run  # noqa: F401  (registers the tasks)
from tasks.app import app

__all__ = ["app"]
