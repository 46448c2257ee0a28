"""The Celery side of celeray: ``celery -A tasks worker|beat``.

Importing this package registers the tasks; it never connects to Ray or Redis by itself.
"""

from tasks import health as _health  # noqa: F401  (registers tasks.ray_status)
from tasks import run as _run  # noqa: F401  (registers the tasks)
from tasks.app import app

__all__ = ["app"]
