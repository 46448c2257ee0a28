"""Quarantine triage: list a sink's quarantined inputs, show one, replay or dismiss it.

A quarantined input's reason lives in ``<sink>/_celeray/quarantine/<key>.json`` (written by
:meth:`celeray.ledger.Ledger.commit_entry`, overwritten when a later batch quarantines the
same URL again). The decision about it lives beside it in ``triage/<key>.json``: one
document, written atomically, naming the action, the batch whose quarantine it answers,
who and when, and the decisions before it.

- **replay**: the next run's plan takes the input again (:meth:`Ledger.done_inputs` leaves
  out a quarantine the decision names). A run that planned before the decision is written
  does not see it, and nothing else changes, so replaying during a run is safe; the input
  is committed or quarantined (again, by a new batch) by the next run.
- **dismiss**: the input stays out for good and leaves the default list.

Each input has a ``status``: ``quarantined`` (needs attention), ``replay_pending``,
``dismissed``, or ``committed`` (replayed and committed since). The default list shows the
first two.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any

from celeray.errors import QuarantineError
from celeray.ledger import Ledger, quarantine_key

__all__ = ["ATTENTION", "DISMISS", "REPLAY", "Triage", "matches"]

REPLAY, DISMISS = "replay", "dismiss"
ATTENTION = frozenset({"quarantined", "replay_pending"})  # what the default list shows
MAX_HISTORY = 50  # earlier decisions kept per input: enough to audit, bounded in size


def matches(url: str, glob: str | None) -> bool:
    """Whether ``url`` or its file name matches the shell ``glob`` (None matches all)."""
    if not glob:
        return True
    return fnmatch.fnmatchcase(url, glob) or fnmatch.fnmatchcase(url.rsplit("/", 1)[-1], glob)


class Triage:
    """The quarantined inputs of one sink and the decisions about them."""

    def __init__(self, sink_url: str) -> None:
        self.ledger = Ledger(sink_url)

    def items(self, *, kind: str | None = None, glob: str | None = None,
              include_all: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Every quarantined input with its status and decision, oldest quarantine first.

        ``kind`` keeps one error kind (``parse``, ``schema``, ``poison``...), ``glob`` the
        URLs or file names it matches; without ``include_all`` only those needing attention.
        """
        entries = self.ledger.entries()
        when = {e["batch_id"]: e.get("committed_at") for e in entries}
        committed = {f["url"]: e for e in entries for f in e.get("inputs", [])}
        triage = self.ledger.triage()
        out = []
        for rec in self.ledger.quarantine_records():
            url = rec["url"]
            if (kind and rec.get("kind") != kind) or not matches(url, glob):
                continue
            item = _view(rec, triage.get(url), committed.get(url), when.get(rec.get("batch_id")))
            if include_all or item["status"] in ATTENTION:
                out.append(item)
        return sorted(out, key=lambda i: (i["quarantined_at"] or 0, i["url"]))

    def show(self, url: str) -> dict[str, Any]:
        """One quarantined input: reason, kind, line, batch, run, when, status, decisions.

        Raises :class:`QuarantineError` when ``url`` was never quarantined in this sink.
        """
        for item in self.items(include_all=True):
            if item["url"] == url:
                return item
        raise QuarantineError(f"{url} is not quarantined in {self.ledger.sink}", missing=True)

    def url_of(self, key: str) -> str:
        """The URL of the quarantined input whose records are named ``key``
        (:func:`celeray.ledger.quarantine_key`); :class:`QuarantineError` if none is."""
        for rec in self.ledger.quarantine_records():
            if quarantine_key(rec["url"]) == key:
                return str(rec["url"])
        raise QuarantineError(f"no quarantined input {key} in {self.ledger.sink}", missing=True)

    def replay(self, url: str, who: str) -> dict[str, Any]:
        """Let the next run take ``url`` again; returns the item as it is now.

        Raises :class:`QuarantineError` when it is not quarantined, or was replayed and
        committed since. Replaying one whose replay is pending changes nothing.
        """
        item = self.show(url)
        if item["status"] == "committed":
            raise QuarantineError(f"{url} was replayed and committed by batch "
                                  f"{item['committed_by']['batch_id']}")  # fmt: skip
        if item["status"] == "replay_pending":
            return item
        return self._decide(item, REPLAY, who)

    def dismiss(self, url: str, who: str) -> dict[str, Any]:
        """Keep ``url`` out for good and off the default list; returns the item as it is now.

        Raises :class:`QuarantineError` as :meth:`replay` does. A pending replay is
        withdrawn (unless a run planned it already: that run still processes it).
        """
        item = self.show(url)
        if item["status"] == "committed":
            raise QuarantineError(f"{url} was replayed and committed by batch "
                                  f"{item['committed_by']['batch_id']}")  # fmt: skip
        if item["status"] == "dismissed":
            return item
        return self._decide(item, DISMISS, who)

    def _decide(self, item: dict[str, Any], action: str, who: str) -> dict[str, Any]:
        before = item.get("decision")
        history = (
            []
            if before is None
            else [*before.get("history", []), {k: v for k, v in before.items() if k != "history"}]
        )
        doc = {"url": item["url"], "action": action, "batch_id": item["batch_id"],
               "by": who, "at": time.time(), "history": history[-MAX_HISTORY:]}  # fmt: skip
        self.ledger.record_triage(doc)
        return self.show(item["url"])


def _view(
    rec: dict[str, Any],
    decision: dict[str, Any] | None,
    committed: dict[str, Any] | None,
    quarantined_at: float | None,
) -> dict[str, Any]:
    """One input's public face; the status follows from the decision about *this*
    quarantine (a decision about an earlier one no longer counts)."""
    current = decision if decision and decision.get("batch_id") == rec.get("batch_id") else None
    if committed is not None and current and current["action"] == REPLAY:
        status = "committed"
    elif current is None:
        status = "quarantined"
    else:
        status = "replay_pending" if current["action"] == REPLAY else "dismissed"
    return {
        "url": rec["url"],
        "key": quarantine_key(rec["url"]),
        "kind": rec.get("kind"),
        "reason": rec.get("error"),
        "line": rec.get("line"),
        "row": rec.get("row"),
        "batch_id": rec.get("batch_id"),
        "run_id": rec.get("run_id"),
        "quarantined_at": quarantined_at,
        "status": status,
        "decision": decision,
        "committed_by": None if status != "committed" or committed is None else {
            "batch_id": committed["batch_id"], "run_id": committed.get("run_id"),
            "committed_at": committed.get("committed_at")},
    }  # fmt: skip
