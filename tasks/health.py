"""``tasks.ray_status``: the Ray cluster as the ``ray`` worker sees it, for the API's health.

The HTTP API never connects to Ray itself; it sends this task (with a short ``expires``, so
a check nobody waits for any more is dropped instead of run) and waits a few seconds.
"""

from __future__ import annotations

from typing import Any

from celeray.celeryconfig import RAY_QUEUE
from tasks.app import app

__all__ = ["ray_status"]


@app.task(
    name="tasks.ray_status",
    queue=RAY_QUEUE,
    ignore_result=False,
    acks_late=False,  # a health check is not worth redelivering after a worker dies
    soft_time_limit=10,  # the threads pool does not enforce limits; prefork would
    time_limit=15,
)
def ray_status() -> dict[str, Any]:
    """Resources of the whole cluster, what is free now, and how many nodes are alive.

    Connects this worker process to Ray first if it is not yet (``tasks._ray.ensure_ray``);
    raises RayUnavailableError when Ray cannot be reached.
    """
    import ray

    from tasks._ray import ensure_ray

    ensure_ray()
    return {
        "cluster": ray.cluster_resources(),
        "available": ray.available_resources(),
        "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
    }
