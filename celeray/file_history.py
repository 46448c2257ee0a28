"""Where each input went, and the runs that took them, from a sink's ledger alone.

The ledger outlives the result backend's expiry, so this history does too: every entry
names its run, its inputs (with ``rows_in`` each), its outputs and, for a Delta sink, the
Delta version that published it.
"""

from __future__ import annotations

from typing import Any

from celeray.archive import archive_records
from celeray.archive_spec import archived_inputs, target_of
from celeray.ledger import Ledger
from celeray.quarantine import Triage, matches

__all__ = ["file_history", "run_history"]


def file_history(sink: str, glob: str | None = None) -> list[dict[str, Any]]:
    """Every input the ledger knows (committed or quarantined), oldest first.

    Each names the run and batch that took it, when, its rows (in: read from the file;
    the batch's rows out, which a transform may not map to one file) and where its rows
    are: the batch's Parquet files, or the Delta version that published them. A
    quarantined input carries its reason and triage status instead of outputs; one that
    was replayed and committed appears once, as committed. An input that ``after_commit``
    deleted or moved says so in ``archived`` (``action``, ``to``: its URL now, or null;
    ``pending`` while a kill left its move to the next run's start).
    """
    ledger = Ledger(sink)
    archived = archive_records(ledger)
    out: dict[str, dict[str, Any]] = {}
    pending: dict[str, dict[str, Any]] = {}
    for entry in ledger.entries():
        where = _where(entry)
        for url in archived_inputs(entry):
            spec = entry["after_commit"]
            to = target_of(url, spec["source_root"], spec["to"]) if spec.get("to") else None
            pending[url] = {"action": spec["action"], "to": to, "archived_at": None,
                            "pending": True}  # fmt: skip
        for f in entry.get("inputs", []):
            if matches(f["url"], glob):
                out[f["url"]] = {
                    "url": f["url"], "state": "committed",
                    "run_id": entry.get("run_id"), "batch_id": entry["batch_id"],
                    "committed_at": entry.get("committed_at"),
                    "size": f.get("size"), "mtime": f.get("mtime"),
                    "rows_in": f.get("rows_in"), "batch_rows_out": entry.get("rows_out"),
                    **where,
                }  # fmt: skip
    for item in Triage(sink).items(glob=glob, include_all=True):
        if item["url"] in out:
            continue
        out[item["url"]] = {
            "url": item["url"], "state": "quarantined", "status": item["status"],
            "run_id": item["run_id"], "batch_id": item["batch_id"],
            "committed_at": item["quarantined_at"], "kind": item["kind"],
            "reason": item["reason"], "line": item["line"],
        }  # fmt: skip
    for url, item in out.items():
        if url in archived:
            item["archived"] = {k: archived[url][k] for k in ("action", "to", "archived_at")}
        elif url in pending:
            item["archived"] = pending[url]
    return sorted(out.values(), key=lambda f: (f["committed_at"] or 0, f["url"]))


def _where(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("table_format") == "delta":
        return {"delta_version": entry.get("delta_version"),
                "outputs": [o["path"] for o in entry.get("outputs", [])]}  # fmt: skip
    return {"outputs": [o["path"] for o in entry.get("outputs", [])]}


def run_history(sink: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Each run that committed a batch to ``sink``, newest first, with its batches, files
    committed and quarantined, rows in and out, and its first and last commit times
    (``started``/``ended``: a run's commits, not its planning, which the ledger does not
    hold). ``limit`` keeps the newest ones."""
    runs: dict[str, dict[str, Any]] = {}
    for entry in ledger_entries(sink):
        run_id = entry.get("run_id") or "(unknown)"
        r = runs.setdefault(run_id, {
            "run_id": run_id, "batches": 0, "files_committed": 0, "files_quarantined": 0,
            "rows_in": 0, "rows_out": 0, "bytes_in": 0, "bytes_out": 0,
            "started_at": entry.get("committed_at"), "ended_at": entry.get("committed_at"),
        })  # fmt: skip
        r["batches"] += 1
        r["files_committed"] += len(entry.get("inputs", []))
        r["files_quarantined"] += len(entry.get("quarantined", []))
        for k in ("rows_in", "rows_out", "bytes_in", "bytes_out"):
            r[k] += int(entry.get(k) or 0)
        at = entry.get("committed_at")
        if at is not None:
            r["started_at"] = min(r["started_at"] or at, at)
            r["ended_at"] = max(r["ended_at"] or at, at)
    newest = sorted(runs.values(), key=lambda r: r["ended_at"] or 0, reverse=True)
    return newest if limit is None else newest[:limit]


def ledger_entries(sink: str) -> list[dict[str, Any]]:
    """The committed entries of ``sink``, oldest first."""
    return Ledger(sink).entries()
