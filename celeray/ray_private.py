"""What a Ray head that celeray starts lets other users and pipeline code reach.

Three things, each where Ray itself gives no setting for it:

- **Its folder.** Ray makes its temp folder and every session folder below it mode 0777
  without the sticky bit (``ray._common.utils.try_make_directory_shared``), so any local
  user could write into the unpacked ``runtime_env`` packages (``session_*/runtime_resources``)
  that the next Ray worker imports. The temp folder celeray gives Ray therefore lives in a
  parent of mode 0700 owned by the head's user (:func:`private_temp_dir`); nobody else can
  even traverse into it, whatever Ray chmods below. :func:`check_temp_dir` refuses a parent
  that is not so, and a path to it that another user could swap.
- **Its ports.** ``ray start --node-ip-address 127.0.0.1`` swaps the loopback address for the
  host's own (``ray._private.services.resolve_ip_for_localhost``), so the GCS, the raylet and
  the agents listen on the network. Ray keeps loopback only in its one-machine mode,
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (:data:`ONE_MACHINE_ENV`), which every process of
  the stack (the head and its drivers) must then share: :func:`head_environ` sets it for a
  head on a loopback address; ``celeray up`` sets it for the drivers.
- **Its environment.** Ray workers, where pipeline code runs, inherit the raylet's
  environment, which is ``ray start``'s. :func:`worker_environ` drops celeray's own settings
  (the broker URL with its password, the result backend, the API token, key paths...) but
  those the Ray side reads, and whatever else looks like a secret, keeping what Ray and the
  Ray side need: ``PATH``, ``HOME``, locale, ``PYTHONPATH``, ``RAY_*`` (token auth),
  ``AWS_*`` (the S3 credential chain of the Ray side's reads and writes).

This is a denylist, not an allowlist, on purpose: a Ray node is configured through its
environment (proxies, CA bundles, thread counts, a transform's own settings), and an
allowlist would silently break those; what is dropped is what celeray knows to be secret or
Celery-side. Pipeline code runs as the head's user, so it could still read other processes'
``/proc/<pid>/environ`` of that user: this keeps secrets out of what Ray workers hold, log
and pass on, not away from a hostile transform (run the stack as its own user for that).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from celeray.errors import CelerayError
from celeray.fsoptions import S3_ENDPOINT_ENV, S3_REGION_ENV

__all__ = [
    "ONE_MACHINE_ENV",
    "RAY_SIDE_SETTINGS",
    "TEMP_PREFIX",
    "RayPrivacyError",
    "check_temp_dir",
    "head_environ",
    "is_loopback",
    "option_value",
    "private_temp_dir",
    "remove_private_temp_dir",
    "worker_environ",
]

# Ray's own switch to its one-machine mode: node address and every port stay on loopback
# (read once, when the ``ray`` package is imported, by the head and by each driver).
ONE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# /tmp/cr<8 chars>/ray: unix socket paths (session_*/sockets/plasma_store, ~62 bytes
# below the temp folder) must stay under ~107 bytes, so the folder lives right in /tmp.
TEMP_PREFIX = "cr"
TEMP_ROOT = "/tmp"
TEMP_NAME = "ray"  # the folder Ray gets, inside the private parent
# celeray settings the Ray side reads (celeray.fsoptions; the roots for messages to come):
# every other CELERAY_* setting configures the Celery side, and some hold secrets.
RAY_SIDE_SETTINGS = frozenset({S3_ENDPOINT_ENV, S3_REGION_ENV, "CELERAY_LOCAL_ROOTS"})
# Kept whatever they look like: Ray's own settings (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH: the
# workers talk to the GCS with token auth) and botocore's chain for S3 (AWS_ACCESS_KEY_ID...).
_KEEP_PREFIXES = ("RAY_", "AWS_")
# Celery's and Flower's own settings: the Celery side's, never the Ray workers'.
_DROP_PREFIXES = ("CELERAY_", "CELERY_", "FLOWER_")
_SECRET_NAME = re.compile(
    r"(?i)(SECRET|PASSW|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_)|(^|_)AUTH($|_)|(^|_)DSN$)"
)
_URL_USERINFO = re.compile(r"://[^/@\s]+@")  # scheme://user:password@host


class RayPrivacyError(CelerayError):
    """A Ray head would start with a folder other users can reach; the message says which."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) names this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def option_value(args: Sequence[str], option: str) -> str | None:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in ``args`` (the last one)."""
    found = None
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(option + "="):
            found = arg.split("=", 1)[1]
    return found


def private_temp_dir() -> Path:
    """A new ``/tmp/crXXXXXXXX/ray`` for a Ray head: the parent made 0700 for this user.

    Ray creates the returned folder itself (and chmods it 0777); nothing is in it yet.
    """
    return Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=TEMP_ROOT)) / TEMP_NAME


def remove_private_temp_dir(temp_dir: str | Path) -> None:
    """Remove a folder :func:`private_temp_dir` made, parent and all; others are left alone."""
    parent = Path(temp_dir).parent
    if parent.parent == Path(TEMP_ROOT) and parent.name.startswith(TEMP_PREFIX):
        shutil.rmtree(parent, ignore_errors=True)


def check_temp_dir(temp_dir: str | Path) -> Path:
    """Refuse ``temp_dir`` unless other users can neither enter its parent nor swap it.

    The parent must belong to this process's user and grant nothing to group or others; a
    missing parent is made so (mode 0700), its own parent must exist. Every folder above it
    must belong to root or this user and be writable by nobody else unless sticky (as /tmp),
    so that nobody can rename the parent away and put their own in its place. Returns the
    parent. Raises :class:`RayPrivacyError` naming the folder and what is wrong with it.
    """
    parent = Path(os.path.abspath(temp_dir)).parent
    uid = os.geteuid()
    try:
        parent.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RayPrivacyError(
            f"cannot make {parent}, the parent of Ray's --temp-dir: {exc}"
        ) from exc
    st = os.stat(parent)
    if st.st_uid != uid:
        raise RayPrivacyError(
            f"{parent}, the parent of Ray's --temp-dir, belongs to uid {st.st_uid}, not to "
            f"this user (uid {uid}): give Ray a --temp-dir inside a folder of your own"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise RayPrivacyError(
            f"{parent}, the parent of Ray's --temp-dir, is mode "
            f"{stat.S_IMODE(st.st_mode):04o}: Ray makes its folders 0777, so other users "
            f"could enter it and change the code Ray workers run. `chmod 700 {parent}`, or "
            "give Ray a --temp-dir inside a folder of mode 0700"
        )
    for above in Path(os.path.realpath(parent)).parents:
        st = os.stat(above)
        shared = stat.S_IMODE(st.st_mode) & 0o022 and not st.st_mode & stat.S_ISVTX
        if st.st_uid not in (0, uid) or shared:
            raise RayPrivacyError(
                f"{above}, above Ray's --temp-dir, belongs to uid {st.st_uid} (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): another user could swap the private folder "
                f"{parent} for their own; choose a --temp-dir under folders only root or "
                "you can change"
            )
    return parent


def _dropped(name: str, value: str) -> bool:
    if name.startswith(_KEEP_PREFIXES):
        return False
    if name.startswith(_DROP_PREFIXES):
        return name not in RAY_SIDE_SETTINGS
    return bool(_SECRET_NAME.search(name) or _URL_USERINFO.search(value))


def worker_environ(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``environ`` without what Ray workers must not hold, and the names dropped (sorted).

    Dropped: every ``CELERAY_*`` setting but :data:`RAY_SIDE_SETTINGS`, ``CELERY_*`` and
    ``FLOWER_*``, names that look like secrets (``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``,
    ``*_KEY``, ``*CREDENTIAL*``, ``*_AUTH``...) and values holding a URL with credentials.
    Kept whatever they look like: ``RAY_*`` and ``AWS_*``.
    """
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in environ.items():
        if _dropped(name, value):
            dropped.append(name)
        else:
            kept[name] = value
    return kept, sorted(dropped)


def head_environ(
    ray_args: Sequence[str], environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The environment of ``ray start ARGS`` for a head: :func:`worker_environ`, and Ray's
    one-machine mode when ``--node-ip-address`` is a loopback address (unless the
    environment says otherwise). Returns it and the names dropped."""
    env, dropped = worker_environ(environ)
    node_ip = option_value(ray_args, "--node-ip-address")
    if node_ip is not None and is_loopback(node_ip):
        env.setdefault(ONE_MACHINE_ENV, "0")
    return env, dropped
