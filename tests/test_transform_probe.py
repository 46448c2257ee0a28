"""``celeray validate``'s import of each transform: in a child process, as a Ray worker does.

Each way a transform can fail is named (module missing, import raised, attribute missing,
not a callable, the process ended, too slow), and what the module does at import stays in
the child: its files, its exit, its hang, its own subprocesses.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from celeray.transform_probe import key, probe, probe_all
from celeray.transform_ref import TransformLoadError, load, parts

MODULES = {
    "ok.py": "def fn(t):\n    return t\n\nDATA = 3\n",
    "boom.py": "x = 1\ny = x / 0\n",
    "dep.py": "import polars_not_here_xyz\n",
    "crash.py": "import os\nos._exit(7)\n",
    "segv.py": "import ctypes\nctypes.string_at(0)\n",
    "quits.py": "raise SystemExit(3)\n",
    "writes.py": "open('side-effect.txt', 'w').close()\ndef fn(t):\n    return t\n",
}


@pytest.fixture
def mods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``pm`` on PYTHONPATH (as the stack would inherit it) with one module a case."""
    root = tmp_path / "mods"
    (root / "pm").mkdir(parents=True)
    (root / "pm" / "__init__.py").write_text("")
    for name, text in MODULES.items():
        (root / "pm" / name).write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root


def test_a_transform_that_loads_is_ok(mods: Path) -> None:
    found = probe("pm.ok:fn")
    assert found.ok and found.kind is None and found.missing is None


@pytest.mark.parametrize(
    ("spec", "kind", "words", "missing"),
    [
        ("nosuchpkg_xyz.mod:fn", "not_found", "module 'nosuchpkg_xyz' is not found",
         "nosuchpkg_xyz"),
        ("pm.nope:fn", "not_found", "module 'pm.nope' is not found", "pm.nope"),
        ("pm.boom:fn", "import_failed",
         "importing 'pm.boom' raised ZeroDivisionError: division by zero (at ", None),
        ("pm.dep:fn", "import_failed",
         "raised ModuleNotFoundError: No module named 'polars_not_here_xyz'",
         "polars_not_here_xyz"),
        ("pm.ok:nope", "no_attribute", "'pm.ok' has no attribute 'nope'", None),
        ("pm.ok:fn.deeper", "no_attribute", "'pm.ok.fn' has no attribute 'deeper'", None),
        ("pm.ok:DATA", "not_callable", "'DATA' is not a callable but 'int' data", None),
        ("pm.quits:fn", "import_failed", "importing 'pm.quits' raised SystemExit: 3", None),
        ("pm.crash:fn", "crashed", "importing 'pm.crash' ended the process: it exited with code 7",
         None),
        ("pm.segv:fn", "crashed", "it was killed by SIGSEGV", None),
    ],
)  # fmt: skip
def test_each_failure_is_named(
    mods: Path, spec: str, kind: str, words: str, missing: str | None
) -> None:
    found = probe(spec)
    assert (found.kind, found.missing) == (kind, missing), found.message
    assert found.message.startswith(f"transform {spec!r}: ") and words in found.message
    if kind == "import_failed" and "ZeroDivision" in words:
        assert f"{mods / 'pm' / 'boom.py'}:2)" in found.message  # the user's line


def test_in_process_load_says_the_same(mods: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray side's load (ray_jobs.transforms) and the probe word each failure alike."""
    monkeypatch.syspath_prepend(str(mods))
    try:
        assert load("pm.ok:fn")(5) == 5
        for spec, kind in (("pm.boom:fn", "import_failed"), ("pm.ok:nope", "no_attribute"),
                           ("pm.ok:DATA", "not_callable"), ("nosuchpkg_xyz:fn", "not_found")):
            with pytest.raises(TransformLoadError) as info:
                load(spec)
            assert info.value.kind == kind and str(info.value) == probe(spec).message
    finally:
        for name in [n for n in sys.modules if n == "pm" or n.startswith("pm.")]:
            del sys.modules[name]
    for bad in ("no_colon", "a.b:", "1mod:fn", "mod:fn-x"):
        with pytest.raises(TransformLoadError, match=r"must look like 'module\.path:function'"):
            parts(bad)


def test_a_hang_is_cut_with_what_it_started(mods: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    (mods / "pm" / "hangs.py").write_text(
        "import subprocess, time\n"
        f"p = subprocess.Popen(['sleep', '600'])\nopen({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    started = time.monotonic()
    found = probe("pm.hangs:fn", timeout=3)
    assert found.kind == "timeout" and "did not finish within 3 s" in found.message
    assert time.monotonic() - started < 30
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the module's own subprocess outlived the probe"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_child_runs_as_a_ray_worker_would(
    mods: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in the caller's folder, without celeray's secrets, with the pipeline's env_vars."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "local_only_xyz.py").write_text("def fn(t):\n    return t\n")
    monkeypatch.chdir(here)
    found = probe("local_only_xyz:fn")  # a worker does not search the folder celeray ran in
    assert found.kind == "not_found", found.message
    assert probe("pm.writes:fn").ok
    assert not (here / "side-effect.txt").exists()  # written in the child's own folder
    seen = tmp_path / "seen.txt"
    (mods / "pm" / "env.py").write_text(
        "import os\n"
        f"open({str(seen)!r}, 'w').write(repr((os.environ.get('CELERAY_API_TOKEN'), "
        "os.environ.get('MY_SETTING'))))\n"
        "def fn(t):\n    return t\n"
    )
    monkeypatch.setenv("CELERAY_API_TOKEN", "not-for-transforms")
    assert probe("pm.env:fn", {"MY_SETTING": "v1"}).ok
    assert seen.read_text() == repr((None, "v1"))


def test_probe_all_imports_each_distinct_transform_once(mods: Path, tmp_path: Path) -> None:
    count = tmp_path / "count.txt"
    (mods / "pm" / "counted.py").write_text(
        f"open({str(count)!r}, 'a').write('x')\ndef fn(t):\n    return t\n"
    )
    wanted = [("pm.counted:fn", {}), ("pm.counted:fn", {}), ("pm.ok:nope", {}),
              ("pm.counted:fn", {"A": "1"})]  # fmt: skip
    found = probe_all(wanted)
    assert len(found) == 3 and count.read_text() == "xx"
    assert found[key("pm.counted:fn", {})].ok
    assert found[key("pm.ok:nope", {})].kind == "no_attribute"
    assert os.environ.get("PYTHONPATH") == str(mods)
