"""Local-root confinement: the pure checks, the pipeline file, the listing and the Ray side."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from celeray.errors import OutsideRootsError
from celeray.pipelines import load_pipelines
from celeray.roots import (
    _resolved,
    check_read,
    inside,
    local_path,
    outside,
    outside_roots,
    resolve_roots,
)
from celeray.settings import Settings
from celeray.storage import list_source
from ray_jobs.process import process_unit
from tests._data import write_landing
from tests._pipeline_file import validate_file
from tests._plans import limits, pipeline_file, plan
from tests._stack import Stack


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``allowed/landing`` with a good file and a symlink to a secret outside ``allowed``."""
    allowed = tmp_path / "allowed"
    (allowed / "landing").mkdir(parents=True)
    (allowed / "landing" / "good.csv").write_text("a,b\n1,2\n")
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nroot,hunter2\n")
    (allowed / "landing" / "evil.csv").symlink_to(secret)
    (allowed / "escape").symlink_to(tmp_path, target_is_directory=True)
    return tmp_path


def test_local_paths_are_what_fsspec_opens() -> None:
    assert local_path("file:///etc/passwd") == "/etc/passwd"
    assert local_path("local:///etc/passwd") == "/etc/passwd"
    assert local_path("/srv/x/*.csv") == "/srv/x/*.csv"
    assert local_path("s3://bucket/x") is None
    assert local_path("simplecache::file:///etc/passwd") is None  # checked part by part


def test_inside_resolves_dots_and_symlinks(tree: Path) -> None:
    roots = resolve_roots([tree / "allowed"])
    assert inside(str(tree / "allowed/landing/good.csv"), roots)
    assert inside(str(tree / "allowed"), roots)
    assert not inside(str(tree / "allowed/../secret.csv"), roots)
    assert not inside(str(tree / "allowed/landing/evil.csv"), roots)  # symlink out
    assert not inside(str(tree / "allowed/escape/secret.csv"), roots)  # symlinked folder
    assert not inside(str(tree / "allowed-not"), roots)  # a prefix is not a parent
    assert outside("file:///etc/passwd", roots) == "/etc/passwd"
    assert outside("s3://b/etc/passwd", roots) is None


def test_check_read_raises_an_input_error_naming_path_and_roots(tree: Path) -> None:
    roots = resolve_roots([tree / "allowed"])
    check_read((tree / "allowed/landing/good.csv").as_uri(), roots)
    check_read("file:///etc/passwd", None)  # no roots in the plan: nothing asked
    with pytest.raises(OutsideRootsError) as caught:
        check_read((tree / "allowed/landing/evil.csv").as_uri(), roots)
    record = caught.value.record()
    assert record["kind"] == "outside_roots"
    assert str(tree / "secret.csv") in record["error"] and roots[0] in record["error"]


@pytest.mark.parametrize(
    ("source", "sink", "key"),
    [
        ("file:///etc/passwd", "lake/p", "source"),
        ("/etc/*.conf", "lake/p", "source"),
        ("../secret.csv", "lake/p", "source"),
        ("file://{allowed}/landing/../../secret.csv", "lake/p", "source"),
        ("landing/*/../../../*.csv", "lake/p", "source"),
        ("escape/*.csv", "lake/p", "source"),  # a symlinked folder pointing out
        ("landing/*.csv", "/tmp/elsewhere", "sink"),
        ("landing/*.csv", "escape/lake", "sink"),
    ],
)
def test_pipeline_outside_the_roots_is_refused(
    tree: Path, source: str, sink: str, key: str
) -> None:
    allowed = tree / "allowed"
    path = pipeline_file(tree, source.format(allowed=allowed), sink)
    rules = Settings(pipelines=path).pipeline_rules()
    assert rules["local_roots"] == (str(allowed),)  # the default: the pipeline file's folder
    (issue,) = validate_file(path, **rules)
    assert (issue.pipeline, issue.key) == ("p", key), issue
    assert "allowed local roots" in issue.message or "'..'" in issue.message
    if "'..'" not in issue.message:
        assert str(allowed) in issue.message and "resolves to /" in issue.message


def test_pipeline_inside_the_roots_and_remote_urls_pass(tree: Path) -> None:
    path = pipeline_file(tree, "landing/*.csv")
    assert load_pipelines(path, **Settings(pipelines=path).pipeline_rules())["p"]
    path.write_text('[pipelines.p]\nsource = "s3://b/etc/*"\nsink = "gs://b/etc"\n')
    assert validate_file(path, **Settings(pipelines=path).pipeline_rules()) == []


def test_roots_from_settings_and_chained_urls(tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("CELERAY_LOCAL_ROOTS", f"{tree / 'allowed'}{os.pathsep}/srv/other")
    monkeypatch.setenv("CELERAY_ALLOW_CHAINED_URLS", "true")
    settings = Settings()
    assert settings.local_roots_for() == (str(tree / "allowed"), "/srv/other")
    for chained in ("simplecache::file:///etc/*.conf", "filecache::/etc/*.conf"):
        path = pipeline_file(tree, chained)
        (issue,) = validate_file(path, **settings.pipeline_rules())
        assert issue.key == "source" and "resolves to /etc" in issue.message
    path = pipeline_file(tree, "simplecache::s3://b/*.csv")
    assert validate_file(path, **settings.pipeline_rules()) == []
    monkeypatch.delenv("CELERAY_ALLOW_CHAINED_URLS")
    (issue,) = validate_file(path, **Settings().pipeline_rules())
    assert "CELERAY_ALLOW_CHAINED_URLS" in issue.message


def test_a_listed_symlink_out_of_the_roots_is_quarantined_not_read(tree: Path) -> None:
    roots = resolve_roots([tree / "allowed"])
    listed = list_source((tree / "allowed/landing").as_uri() + "/*.csv")
    assert [Path(f.url).name for f in listed] == ["evil.csv", "good.csv"]
    escaped = outside_roots([f.url for f in listed], roots)
    assert list(escaped) == [(tree / "allowed/landing/evil.csv").as_uri()]
    assert escaped[listed[0].url]["kind"] == "outside_roots"


def test_many_paths_checked_at_once_resolve_as_realpath_does(tree: Path) -> None:
    """outside_roots resolves each folder once; every path still comes out as realpath's."""
    (tree / "allowed/landing/sub").mkdir()
    (tree / "allowed/landing/sub/x.csv").write_text("a\n1\n")
    (tree / "allowed/inner").symlink_to(tree / "allowed/landing", target_is_directory=True)
    (tree / "allowed/landing/dangling.csv").symlink_to(tree / "nowhere.csv")
    paths = [
        "allowed/landing/good.csv", "allowed/landing/evil.csv", "allowed/escape/secret.csv",
        "allowed/inner/good.csv", "allowed/inner/evil.csv", "allowed/inner/sub/x.csv",
        "allowed/landing/../secret.csv", "allowed/landing/missing.csv",
        "allowed/landing/dangling.csv", "allowed/escape/allowed/landing/good.csv",
        "allowed/landing/sub/", "allowed/landing/.", "allowed/inner",
    ]  # fmt: skip
    folders: dict[str, str] = {}
    for rel in paths * 2:  # the second time from the memo
        path = str(tree / rel) if not rel.endswith("/") else str(tree / rel) + "/"
        assert _resolved(path, folders) == os.path.realpath(path), rel
    roots = resolve_roots([tree / "allowed"])
    urls = [(tree / p).as_uri() for p in paths if not p.endswith(("/", "."))]
    one_by_one = {u: r for u in urls if (r := outside(u, roots)) is not None}
    assert set(outside_roots(urls, roots)) == set(one_by_one)


def test_ray_side_quarantines_a_read_outside_its_roots(tree: Path) -> None:
    """Defence in depth: a symlink swapped in after listing is still not read."""
    allowed = tree / "allowed"
    roots = list(resolve_roots([allowed]))
    files = [
        {"url": (allowed / "landing" / n).as_uri(), "size": 8} for n in ("evil.csv", "good.csv")
    ]
    unit = {"batch_id": "b", "unit": 0, "files": files, "out_url": (allowed / "out").as_uri()}
    result = process_unit(plan(limits(), local_roots=roots), unit)
    assert [f["url"] for f in result["files"]] == [files[1]["url"]]
    [q] = result["quarantined"]
    assert q["url"] == files[0]["url"] and q["kind"] == "outside_roots"
    assert "hunter2" not in str(result)
    with pytest.raises(Exception, match="outside the allowed local roots"):
        process_unit(plan(limits(), local_roots=roots), {**unit, "out_url": tree.as_uri()})


@pytest.mark.stack
def test_a_run_quarantines_a_symlink_out_of_the_roots(stack: Stack, flights_df, tmp_path):
    """The real stack: a symlink in the landing folder to a file outside the roots is
    quarantined with its reason (one alone in its batch, too); the other files commit."""
    outside_dir = Path(tempfile.mkdtemp(prefix="celeray-secret-"))  # not under the roots
    try:
        secret = outside_dir / "secret.csv"
        flights_df.iloc[:10].to_csv(secret, index=False)
        landing, sink = tmp_path / "landing", tmp_path / "lake"
        good = write_landing(flights_df.iloc[:2000], landing, 2)
        (landing / "flights-009-evil.csv").symlink_to(secret)
        (landing / "flights-010-inside.csv").symlink_to(good[0])  # a link inside: read
        body = f'source = "{landing.as_uri()}/*"\nsink = "{sink.as_uri()}"\nbatch_bytes = 1'
        stack.add_pipeline("roots", body)
        run = stack.celeray("run", "roots", "--wait")
        assert run.returncode == 0, run.stdout + run.stderr
        run_id = run.stdout.split("run ", 1)[1].split()[0]
        summary = stack.client.AsyncResult(run_id).result
        assert (summary["files_committed"], summary["files_quarantined"]) == (3, 1), summary
        [q] = summary["quarantined"]
        assert q["url"].endswith("flights-009-evil.csv") and q["kind"] == "outside_roots"
        assert str(secret) in q["error"] and "CELERAY_LOCAL_ROOTS" in q["error"]
        records = [json.loads(p.read_text()) for p in (sink / "_celeray/quarantine").glob("*")]
        assert [r["kind"] for r in records] == ["outside_roots"]
        again = stack.celeray("run", "roots", "--wait")  # never listed for work again
        run_id = again.stdout.split("run ", 1)[1].split()[0]
        assert stack.client.AsyncResult(run_id).result["files_skipped"] == 4
    finally:
        shutil.rmtree(outside_dir, ignore_errors=True)


def test_celeray_validate_names_pipeline_key_path_and_roots(tree: Path) -> None:
    import subprocess

    from tests._stack import VENV_BIN

    path = pipeline_file(tree, "file:///etc/passwd")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERAY_")}
    out = subprocess.run([str(VENV_BIN / "celeray"), "validate", str(path)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1
    text = " ".join(out.stderr.split())
    assert "pipelines.p.source" in text and "resolves to /etc/passwd" in text, text
    assert str(tree / "allowed") in text and "CELERAY_LOCAL_ROOTS" in text
