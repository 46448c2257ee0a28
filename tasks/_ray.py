"""The one Ray connection of a ``ray``-queue worker process, made on first use."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from celeray.errors import RayUnavailableError
from celeray.settings import get_settings

__all__ = ["ensure_ray"]

log = logging.getLogger(__name__)
_lock = threading.Lock()


def _in_prefork_child() -> bool:
    try:
        from billiard.process import current_process
    except ImportError:  # pragma: no cover - billiard ships with celery
        return False
    return current_process().name.startswith("ForkPoolWorker")


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return os.path.isfile(path)


def _match_ray_start_auth() -> None:
    """Use token auth when a token exists, as ``ray start --head`` does on this machine.

    Ray turns token auth on for a head when it finds a token (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset, but a
    driver given an explicit address does not; without this the driver is refused.
    An explicit ``RAY_AUTH_MODE`` always wins.
    """
    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"


def ensure_ray() -> None:
    """Connect this process to the configured Ray cluster once; later calls return at once.

    Refuses inside a prefork child (ray#31157): the ``ray`` queue's worker runs a threads
    pool. Connects to the explicit ``host:port`` from settings, never ``auto``, so a second
    Ray on the same machine cannot be picked by mistake.
    """
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
        _match_ray_start_auth()
        try:
            ray.init(
                address=address,
                namespace="celeray",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise RayUnavailableError(f"cannot reach Ray at {address}: {exc}") from exc
        log.info("connected to Ray at %s", address)
