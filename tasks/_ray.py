"""The one Ray connection of a ``ray``-queue worker process, made on first use, and the
converter the core's :class:`~celeray.batch_flow.BatchFlow` is given (:func:`convert`)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.signals import worker_ready

from celeray.batch import ResolvedBatch
from celeray.celeryconfig import RAY_QUEUE
from celeray.errors import RayUnavailableError
from celeray.pipelines import Pipeline
from celeray.ray_env import job_runtime_env, pipeline_extras
from celeray.ray_private import ONE_MACHINE_ENV, is_loopback
from celeray.settings import get_settings

# Importing this module also hooks the Ray warm-up to worker_ready.
__all__ = ["cluster_cpus", "convert", "ensure_ray"]

log = logging.getLogger(__name__)
_lock = threading.Lock()


def _in_prefork_child() -> bool:
    try:
        from billiard.process import current_process
    except ImportError:  # pragma: no cover - billiard ships with celery
        return False
    return current_process().name.startswith("ForkPoolWorker")


def ensure_ray() -> None:
    """Connect this process to the configured Ray cluster once; later calls return at once.

    Refuses inside a prefork child (ray#31157): the ``ray`` queue's worker runs a threads
    pool. Connects to the explicit ``host:port`` from settings, never ``auto``, so a second
    Ray on the same machine cannot be picked by mistake. Token auth follows Ray's own
    variables (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``),
    which must match the head's. The job's ``runtime_env`` ships the ``ray_jobs`` and
    ``celeray`` packages (:func:`celeray.ray_env.job_runtime_env`), so Ray nodes need no
    celeray installed; Ray uploads them once per content hash. It carries no ``env_vars``:
    Ray workers get their environment from their raylet, scrubbed by ``celeray ray-head``.

    A head on a loopback address started by ``celeray ray-head`` runs in Ray's one-machine
    mode (:data:`celeray.ray_private.ONE_MACHINE_ENV` = 0, every port on loopback); this
    process must have the same in its environment from its start (``celeray up`` sets it),
    or Ray swaps 127.0.0.1 for the host's address and finds no GCS there.
    """
    _bound_gcs_wait()
    import ray

    if ray.is_initialized():
        return
    with _lock:
        if ray.is_initialized():
            return
        if _in_prefork_child():
            raise RayUnavailableError(
                "Ray cannot be driven from a prefork child; run the 'ray' queue's worker "
                "with '-P threads'"
            )
        address = get_settings().effective_ray_address
        hint = ""
        if is_loopback(address.rsplit(":", 1)[0]) and ONE_MACHINE_ENV not in os.environ:
            hint = (f" (a Ray head on a loopback address started by `celeray ray-head` runs in "
                    f"Ray's one-machine mode: set {ONE_MACHINE_ENV}=0 in this worker's "
                    "environment too, as `celeray up` does)")
            log.warning("connecting to Ray at %s without %s set%s", address, ONE_MACHINE_ENV,
                        hint)
        try:
            ray.init(
                address=address,
                namespace="celeray",
                logging_level=logging.WARNING,
                log_to_driver=False,
                runtime_env=job_runtime_env(),
            )
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise RayUnavailableError(f"cannot reach Ray at {address}: {exc}{hint}") from exc
        log.info("connected to Ray at %s", address)
        if _watch_wanted.is_set():
            _start_raylet_watch()


GCS_WAIT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
RAY_GCS_WAIT = 60  # s: Ray's own default wait of a driver for a lost GCS


def _bound_gcs_wait() -> None:
    """Keep this driver's wait for a lost Ray head under the visibility timeout's margin.

    A driver whose head is gone waits ``RAY_gcs_rpc_server_reconnect_timeout_s`` (60 s)
    before Ray ends the process; a batch must not outlive the visibility timeout meanwhile,
    or Redis delivers it a second time. So the wait is at most half the margin between the
    visibility timeout and the time limit (the default margin, 600 s, leaves Ray's 60 s),
    and at least 5 s. Set for this process only (not the raylets), before Ray reads it; an
    explicit value in the environment wins.
    """
    settings = get_settings()
    margin = settings.effective_visibility_timeout - settings.task_time_limit
    os.environ.setdefault(GCS_WAIT_ENV, str(max(5, min(RAY_GCS_WAIT, margin // 2))))


def convert(
    batch: ResolvedBatch, plan: dict[str, Any], *, deadline: float,
    on_progress: Callable[[dict[str, int]], None],
) -> dict[str, Any]:
    """Convert ``batch`` on Ray with ``plan``: :func:`ray_jobs.convert.convert_batch`, from
    this process's Ray connection and settings (a :class:`celeray.batch_flow.Converter`)."""
    from ray_jobs.convert import convert_batch

    ensure_ray()
    settings = get_settings()
    cpus = cluster_cpus()
    return convert_batch(
        plan,
        batch.readable,
        batch_id=batch.batch_id,
        out_url=batch.out_url,
        prequarantined=list(batch.prequarantined.values()),
        unit_bytes=settings.unit_bytes,
        cpus=cpus,
        # 0 means twice the CPUs: resolved here from the cached count, since run_units
        # would ask Ray's GCS for it (~1 ms) on every batch
        max_in_flight=settings.ray_max_in_flight or 2 * cpus,
        min_free_memory=settings.min_free_memory,
        deadline=deadline,
        runtime_env=pipeline_extras(plan),
        on_progress=on_progress,
    )


def maintain_on_ray(job: str, calls: list[tuple[Any, ...]], pipeline: Pipeline, *,
                    num_cpus: int, deadline: float) -> list[Any]:  # fmt: skip
    """Table maintenance's Ray side (a :class:`celeray.maintenance_flow.OnRay`): the
    :mod:`ray_jobs.maintain` function ``job`` as Ray tasks with the pipeline's
    ``runtime_env`` (:func:`ray_jobs.dispatcher.run_calls`), from this process's Ray
    connection."""
    from ray_jobs import maintain
    from ray_jobs.dispatcher import run_calls

    if job not in maintain.__all__:
        raise ValueError(f"no maintenance job {job!r}")
    ensure_ray()
    return run_calls(getattr(maintain, job), calls, num_cpus=num_cpus, deadline=deadline,
                     runtime_env=pipeline_extras(pipeline.to_plan()),
                     what=f"maintenance of {pipeline.name!r}")  # fmt: skip


_CPUS_TTL = 30.0  # seconds; nodes join and leave rarely, batches come often
_cpus: tuple[float, int] | None = None


def cluster_cpus() -> int:
    """CPUs of the connected Ray cluster, asked of the GCS at most every 30 s."""
    import time

    import ray

    global _cpus
    now = time.monotonic()
    if _cpus is None or now - _cpus[0] > _CPUS_TTL:
        _cpus = (now, max(1, int(ray.cluster_resources().get("CPU", 1))))
    return _cpus[1]


# The local raylet's liveness, looked at from a Celery worker that drives Ray.
_watch_wanted = threading.Event()  # set in a Celery worker consuming ray; not in other drivers
RAYLET_CHECK_INTERVAL = 5.0  # s: one TCP connect to the raylet's port each time
RAYLET_MISSES = 2  # checks in a row: a stale driver is replaced ~10 s after its raylet died
WARM_STOP_GRACE = 30.0  # s: an idle worker stops in ~1 s; a batch stuck on the dead raylet not


def _start_raylet_watch() -> None:
    """Watch the raylet this driver is attached to, in a daemon thread (once per process)."""
    import ray

    try:
        node: Any = ray._private.worker.global_worker.node
        where = (str(node.node_ip_address), int(node.node_manager_port))
    except (AttributeError, TypeError, ValueError) as exc:  # Ray's internals moved
        log.warning("cannot watch the local raylet (%s); a lost head needs a restart", exc)
        return
    threading.Thread(target=_watch_raylet, args=(where,), name="raylet-watch",
                     daemon=True).start()  # fmt: skip


def _watch_raylet(where: tuple[str, int]) -> None:
    """Stop this worker when its raylet is gone, so that supervisor starts it afresh.

    A driver outlives its raylet: when the head restarts (``celeray ray-head`` after its
    raylet died, or a dead GCS), an idle driver stays attached to nothing, and the new GCS
    at the same address makes its next Ray call abort the process mid-batch, whose message
    then waits out the visibility timeout. Instead, once the raylet's port refuses
    connections :data:`RAYLET_MISSES` times in a row, this worker shuts down warm (SIGTERM
    to itself: no new messages, running ones finish or fail) and exits hard if that takes
    longer than :data:`WARM_STOP_GRACE`. supervisor (or compose) then starts it, and its
    first Ray call connects to the head as it is now.
    """
    misses = 0
    while misses < RAYLET_MISSES:
        time.sleep(RAYLET_CHECK_INTERVAL)
        try:
            with socket.create_connection(where, timeout=2):
                misses = 0
        except OSError:
            misses += 1
    log.error("the raylet this worker's Ray driver is attached to (%s:%d) is gone: stopping "
              "this worker so that it starts again and connects to the Ray head afresh", *where)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(WARM_STOP_GRACE)
    log.error("still running %.0fs after the warm shutdown began: exiting", WARM_STOP_GRACE)
    os._exit(1)


def _warm_up() -> None:
    try:
        ensure_ray()
        from ray_jobs.dispatcher import warm_workers

        log.info("warmed %d Ray worker(s)", warm_workers())
    except Exception as exc:
        log.warning("could not warm Ray workers (the first batch will): %s", exc)


@worker_ready.connect
def _warm_when_serving_ray(sender: Any = None, **_: Any) -> None:
    """In a worker that consumes the ``ray`` queue, connect and warm Ray in the background.

    This worker runs a threads pool, so its main process is the one Ray driver: connecting
    here instead of on the first batch only moves the same connection earlier, off the
    first run's clock. A failure is logged; the first batch connects again. Whichever
    connects also starts the watch of the local raylet (:func:`_watch_raylet`).
    """
    queues = getattr(getattr(sender, "app", None), "amqp", None)
    consuming = set(queues.queues.consume_from or {}) if queues is not None else set()
    if RAY_QUEUE in consuming:
        _watch_wanted.set()
        threading.Thread(target=_warm_up, name="ray-warm-up", daemon=True).start()
