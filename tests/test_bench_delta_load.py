"""``python -m bench.delta_load`` runs and prints a line per interval and window."""

from __future__ import annotations

import re

import pytest

from bench import delta_load


@pytest.mark.parametrize("threads", ["1", "2"])
def test_delta_load_prints_each_interval_and_window(
    capsys: pytest.CaptureFixture[str], threads: str
) -> None:
    assert delta_load.main(["--commits", "12", "--window", "6", "--threads", threads]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    row = re.compile(r"\s*(\d+)\s+(\d+-\d+)(\s+[\d.]+ / [\d.]+){3}")
    found = [row.match(x) for x in lines]
    assert [(m.group(1), m.group(2)) for m in found if m] == [
        ("10", "1-6"), ("10", "7-12"), ("100", "1-6"), ("100", "7-12")]
