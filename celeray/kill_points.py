"""Test-only kill points: the fault suite's way to SIGKILL a process between two commit steps.

The fault suite (``tests/faults/test_delta_kills.py``) must kill the worker that commits a
batch at an exact moment: right after the batch's ledger entry, before its Delta commit
(``"after-ledger-entry"``), or right after the Delta commit, before its version is written
down (``"after-delta-commit"``), or while a committed batch's inputs are being moved
(``"during-archive"``). A random SIGKILL from outside seldom lands there, so the
committing process kills itself when told to.

It is told only through :data:`ENV`, an environment variable that no setting, no document
for operators and no deploy file sets (``tests/test_kill_points.py`` checks the deploy
files and the settings never name it): the fault suite sets it on the stack it starts. It
names a file; nothing happens while that file does not exist, so a stack started with the
variable behaves as any other until a trial writes the file. The file holds
``<point> <batch_id or *>``; the first process to reach that point for that batch claims
the file (an atomic rename to ``<file>.fired``, holding its pid) and kills itself with
SIGKILL: one kill per arming, so recovery afterwards runs undisturbed. Without the variable
:func:`reach` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["AFTER_DELTA_COMMIT", "AFTER_LEDGER_ENTRY", "DURING_ARCHIVE", "ENV", "POINTS", "reach"]

ENV = "CELERAY_TESTONLY_KILL_FILE"  # set by the fault suite only; never in production
AFTER_LEDGER_ENTRY = "after-ledger-entry"  # the entry written, the Delta commit not made
AFTER_DELTA_COMMIT = "after-delta-commit"  # the Delta commit made, its version not recorded
POINTS = (AFTER_LEDGER_ENTRY, AFTER_DELTA_COMMIT)  # the Delta commit's points
# A committed batch's inputs being archived (celeray.archive): the first one moved, the
# others not yet, no archive record written.
DURING_ARCHIVE = "during-archive"


def reach(point: str, batch_id: str) -> None:
    """Kill this process with SIGKILL if the file :data:`ENV` names arms ``point`` for
    ``batch_id`` (or ``*``); return at once otherwise (see the module docstring)."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as f:
            armed = f.read().split()
    except OSError:
        return
    if len(armed) != 2 or armed[0] != point or armed[1] not in ("*", batch_id):
        return
    fired = path + ".fired"
    try:
        os.rename(path, fired)  # the claim: one process wins it
    except OSError:
        return
    with open(fired, "a", encoding="utf-8") as f:
        f.write(f" {batch_id} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
