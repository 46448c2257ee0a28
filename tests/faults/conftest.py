"""The fault suite's stack and its report: one table row per fault, printed at the end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults._faultstack import FaultStack

RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """One supervised stack for the whole suite, with a Redis the suite may kill."""
    s = FaultStack(tmp_path_factory.mktemp("faults"))
    try:
        yield s
    finally:
        s.down()


def record(fault: str, **row: Any) -> None:
    """Add one trial's outcome to the suite's table."""
    RESULTS.append({"fault": fault, **row})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    by_fault: dict[str, dict[str, Any]] = {}
    for r in RESULTS:
        agg = by_fault.setdefault(r["fault"], {"trials": 0, "mid_run": 0, "expected": 0,
                                               "found": 0, "duplicates": 0, "losses": 0})
        agg["trials"] += 1
        agg["mid_run"] += int(bool(r.get("mid_run", True)))
        for k in ("expected", "found", "duplicates", "losses"):
            agg[k] += int(r.get(k, 0))
    tr = terminalreporter
    tr.section("fault suite")
    tr.write_line(f"{'fault':<40} {'trials':>6} {'mid-run':>7} {'rows expected':>14} "
                  f"{'rows found':>11} {'duplicates':>10} {'losses':>6}")
    for fault, a in by_fault.items():
        tr.write_line(f"{fault:<40} {a['trials']:>6} {a['mid_run']:>7} {a['expected']:>14} "
                      f"{a['found']:>11} {a['duplicates']:>10} {a['losses']:>6}")
    report = os.environ.get("CELERAY_FAULT_REPORT")
    if report:
        Path(report).write_text(json.dumps({"trials": RESULTS, "by_fault": by_fault}, indent=1))
