"""Pipeline SQL cannot reach files, settings or the environment: at validate and at run time.

The validator (:mod:`celeray.sql_policy`) is tested by a table of queries; the run time by
real DuckDB: the confined connection alone (every attack must fail in DuckDB itself, even
with the validator out of the way) and ``ray_jobs.transforms.apply`` as a Ray task calls it,
with a secret file whose bytes must never come out. Also here: ``celeray validate`` finds a
``transform``'s module without running its code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from celeray.errors import TransformError
from celeray.sql_policy import check_sql
from celeray.transform_ref import TransformLoadError, find
from ray_jobs._duckdb_conn import cursor
from ray_jobs.transforms import apply, connect
from tests._pipeline_file import validate_file

SECRET = "TOP-SECRET-7f3a9c"

ALLOWED = [
    "SELECT * FROM input",
    "FROM input",
    "SELECT * FROM main.INPUT",
    "select a, b * 2 AS c FROM input WHERE a > 1;",
    "WITH t AS MATERIALIZED (SELECT * FROM input) SELECT * FROM t JOIN t t2 USING (a)",
    "WITH x AS (SELECT * FROM input), y AS (SELECT * FROM x) SELECT * FROM y",
    "SELECT a, (SELECT max(a) FROM input) AS m FROM input",
    "SELECT * FROM input WHERE a IN (SELECT a FROM input WHERE b > 0)",
    "SELECT a, sum(b) OVER (PARTITION BY a) FROM input",
    "SELECT * FROM input, unnest([1, 2]) AS u(x)",
    "SELECT * FROM input CROSS JOIN range(3) r(i)",
    "SELECT a, upper(CAST(b AS VARCHAR)), strftime(now(), '%Y') FROM input",
    "SELECT a FROM input UNION ALL SELECT a FROM input",
    "SELECT * FROM input JOIN (VALUES (1, 'x')) v(a, label) USING (a)",
]

REFUSED = [
    ("SELECT 1; SELECT * FROM input", "exactly one SELECT query, found 2"),
    ("COPY (SELECT 1) TO '/tmp/x.csv'", "found 1 statement(s): COPY"),
    ("ATTACH '/tmp/x.db'; SELECT * FROM input", "ATTACH, SELECT"),
    ("SET enable_external_access = true", "SET"),
    ("INSTALL httpfs", "exactly one SELECT"),
    ("LOAD httpfs", "exactly one SELECT"),
    ("PRAGMA enable_profiling", "exactly one SELECT"),
    ("CREATE TABLE t AS SELECT * FROM input", "CREATE"),
    ("SELECT * FROM read_text('/etc/shadow')", "read_text() is not allowed: it reads files"),
    (
        "SELECT (SELECT string_agg(content, '') FROM read_text('/etc/shadow')) AS s, * "
        "FROM input",
        "read_text() is not allowed",
    ),
    ("SELECT * FROM input WHERE a IN (SELECT 1 FROM read_blob('/x'))", "read_blob()"),
    ("WITH s AS (SELECT * FROM read_csv('/x.csv')) SELECT * FROM input, s", "read_csv()"),
    ("SELECT * FROM input JOIN read_parquet('/x.pq') USING (a)", "read_parquet()"),
    ("SELECT * FROM input, read_json('/x.json')", "read_json()"),
    ("SELECT * FROM input, glob('/etc/*')", "glob()"),
    ("SELECT * FROM input, system.main.read_text('/x')", "read_text()"),
    ("SELECT getenv('HOME') FROM input", "getenv() is not allowed: it reads the environment"),
    ("SELECT current_setting('home_directory') FROM input", "current_setting()"),
    ("SELECT getvariable('x') FROM input", "getvariable()"),
    ("SELECT * FROM input, query('SELECT 1')", "runs SQL held in a string"),
    ("SELECT * FROM input, duckdb_settings()", "duckdb_settings()"),
    ("SELECT * FROM input, pragma_version()", "table function pragma_version() is not allowed"),
    ("SELECT * FROM input, sniff_csv('/x')", "sniff_csv()"),
    ("SELECT pg_sleep(100) FROM input", "stalls the worker"),
    ("SELECT * FROM '/etc/shadow'", "table '/etc/shadow' is not allowed"),
    ("SELECT * FROM other JOIN input ON true", "table 'other' is not allowed"),
    ("SELECT * FROM memory.main.input", "table 'memory.main.input' is not allowed"),
    ("SELECT * FROM information_schema.tables, input", "information_schema.tables"),
    ("DESCRIBE input", "not row transformations"),
    ("SELECT 1", "does not read the table `input`"),
    ("SELEC * FROM input", "syntax error"),
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_sql(sql: str) -> None:
    check_sql(sql)


@pytest.mark.parametrize(("sql", "message"), REFUSED)
def test_refused_sql(sql: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_sql(sql)
    assert message in str(info.value)


def test_validate_names_pipeline_and_key(tmp_path: Path) -> None:
    sql = "SELECT (SELECT string_agg(content,'') FROM read_text('/etc/shadow')) AS s FROM input"
    path = tmp_path / "pipelines.toml"
    path.write_text(f'[pipelines.leak]\nsource = "in/*.csv"\nsink = "lake"\nsql = "{sql}"\n')
    (issue,) = validate_file(path)
    assert str(issue).startswith("pipelines.leak.sql: ")
    assert "read_text() is not allowed: it reads files" in str(issue)


def test_transform_find_runs_nothing(tmp_path: Path) -> None:
    pkg = tmp_path / "trap_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (pkg / "mod.py").write_text("def fn(t): return t\n")
    find("trap_pkg.mod:fn", path=[str(tmp_path)])
    assert not (tmp_path / "ran").exists()  # the package's __init__ never ran
    with pytest.raises(TransformLoadError, match=r"'trap_pkg\.nope' is not found in package"):
        find("trap_pkg.nope:fn", path=[str(tmp_path)])
    with pytest.raises(TransformLoadError, match="'nosuchpkg' is not found in the Python path"):
        find("nosuchpkg.mod:fn")
    with pytest.raises(TransformLoadError, match=r"'json\.decoder' is a module, not a package"):
        find("json.decoder.x:fn")
    find("tests._sample_transforms:double_v")


def test_cli_validate_imports_transforms_and_no_import_runs_nothing(tmp_path: Path) -> None:
    pkg = tmp_path / "trap_pkg"
    pkg.mkdir()
    marker = tmp_path / "ran"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "mod.py").write_text("def fn(t): return t\n")
    path = tmp_path / "pipelines.toml"
    base = 'source = "in/*.csv"\nsink = "lake/{0}"\ntransform = "{1}"\n'
    path.write_text(
        "[pipelines.ok]\n" + base.format("ok", "trap_pkg.mod:fn")
        + "[pipelines.missing]\n" + base.format("missing", "nosuchpkg.mod:fn")
        + "[pipelines.viapip]\n" + base.format("viapip", "nosuchpkg.mod:fn")
        + 'ray_env = { pip = ["nosuchpkg==1.0"] }\n'
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "300"}
    celeray = str(Path(sys.executable).parent / "celeray")
    for argv, ran in (["validate", "--no-import"], False), (["validate"], True):
        out = subprocess.run([celeray, *argv, str(path)], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        text = out.stdout + out.stderr
        assert out.returncode == 1, text
        assert "pipelines.missing.transform: transform 'nosuchpkg.mod:fn': module 'nosuchpkg' " \
            "is not found" in text  # fmt: skip
        assert "1 warning(s)" in text and "pipelines.viapip.transform" in text
        assert "ray_env.pip may install it" in text and "pipelines.ok" not in text
        assert marker.exists() is ran  # --no-import finds it; validate imports it
    path.write_text("[pipelines.ok]\n" + base.format("ok", "trap_pkg.mod:fn"))
    out = subprocess.run([celeray, "validate", str(path)], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "ok, 1 pipeline(s): ok" in out.stdout, out.stderr
    # Beside the pipeline file, but not on PYTHONPATH: the workers would not find it.
    (tmp_path / "beside_xyz.py").write_text("def fn(t): return t\n")
    path.write_text("[pipelines.beside]\n" + base.format("beside", "beside_xyz:fn"))
    out = subprocess.run([celeray, "validate", str(path)], env={**env, "PYTHONPATH": ""},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and f"{tmp_path / 'beside_xyz.py'} is there, but the stack's " \
        "workers do not search that folder" in out.stderr  # fmt: skip


# --- run time: real DuckDB -------------------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    return path


def batches(n: int = 3, rows: int = 100) -> Iterator[pa.RecordBatch]:
    for i in range(n):
        yield pa.record_batch({"a": list(range(i * rows, (i + 1) * rows))})


def attacks(secret: Path, tmp_path: Path) -> list[str]:
    out = tmp_path / "out.csv"
    return [
        f"SELECT (SELECT string_agg(content, '') FROM read_text('{secret}')) AS s, * FROM input",
        f"SELECT * FROM input WHERE a IN (SELECT 1 FROM read_blob('{secret}'))",
        f"SELECT * FROM input, read_csv('{secret}', header=false)",
        f"SELECT * FROM '{secret}'",
        f"COPY (SELECT '{SECRET}') TO '{out}'",
        f"ATTACH '{tmp_path / 'x.db'}'",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"SELECT * FROM glob('{tmp_path}/*')",
    ]


def test_duckdb_itself_refuses_every_attack(secret: Path, tmp_path: Path) -> None:
    """The second layer alone: the confined connection, with ``input`` registered."""
    for sql in attacks(secret, tmp_path):
        con = connect(1)
        t = pa.table({"a": [1, 2, 3]})
        con.register("input", pa.RecordBatchReader.from_batches(t.schema, t.to_batches()))
        with pytest.raises(duckdb.Error) as info:
            result = con.sql(sql)
            rows = result.fetchall() if result is not None else []
            raise AssertionError(f"{sql!r} ran: {rows!r}")
        assert SECRET not in str(info.value)
        # and external access is still off afterwards
        setting = "SELECT current_setting('enable_external_access')"
        assert con.execute(setting).fetchone() == (False,)
        con.close()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()


def test_python_variables_are_not_scanned() -> None:
    leaked_table = pa.table({"s": [SECRET]})  # noqa: F841 - DuckDB would find it by name
    con = connect(1)
    with pytest.raises(duckdb.CatalogException):
        con.sql("SELECT * FROM leaked_table").fetchall()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT (SELECT string_agg(content, '') FROM read_text('{secret}')) AS s, * FROM input",
        "COPY (SELECT * FROM input) TO '{out}'",
        "ATTACH '{db}'",
        "SET enable_external_access = true",
        "SELECT 1 AS a; SELECT (SELECT content FROM read_text('{secret}')) AS a FROM input",
        "SELECT * FROM input, read_text('{secret}')",
    ],
)
def test_run_time_refuses_and_leaks_nothing(sql: str, secret: Path, tmp_path: Path) -> None:
    text = sql.format(secret=secret, out=tmp_path / "out.csv", db=tmp_path / "x.db")
    got: list[pa.RecordBatch] = []
    with pytest.raises(TransformError, match="pipeline 'leak': sql failed") as info:
        got.extend(apply(batches(), sql=text, transform=None, threads=1, pipeline="leak"))
    assert got == []
    assert SECRET not in str(info.value)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()


def test_ordinary_queries_still_run() -> None:
    sql = "SELECT a * 2 AS b FROM input WHERE a % 2 = 0"
    out = pa.Table.from_batches(list(apply(batches(), sql=sql, transform=None, threads=1)))
    assert out.num_rows == 150 and out.column("b").to_pylist()[:3] == [0, 4, 8]
    sql = (
        "WITH t AS MATERIALIZED (SELECT * FROM input) "
        "SELECT count(*) AS n, (SELECT max(a) FROM t) AS m FROM t"
    )
    out = pa.Table.from_batches(list(apply(batches(), sql=sql, transform=None, threads=2)))
    assert out.to_pydict() == {"n": [300], "m": [299]}


def test_process_database_cursors_stay_confined_and_apart(secret: Path, tmp_path: Path) -> None:
    """A unit's cursor on the process's shared database: locked down as a fresh connection,
    and another cursor (a later unit, or a unit on another thread) never sees its ``input``."""
    t = pa.table({"a": [1, 2, 3]})
    for sql in attacks(secret, tmp_path):
        with cursor(1) as con:
            con.register("input", pa.RecordBatchReader.from_batches(t.schema, t.to_batches()))
            with pytest.raises(duckdb.Error) as info:
                result = con.sql(sql)
                rows = result.fetchall() if result is not None else []
                raise AssertionError(f"{sql!r} ran: {rows!r}")
            assert SECRET not in str(info.value)
    with cursor(1) as con:
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (
            False,
        )
        with pytest.raises(duckdb.CatalogException):
            con.sql("SELECT * FROM input").fetchall()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()

    seen: dict[int, list[int]] = {}
    ready = threading.Barrier(4)

    def unit(i: int) -> None:
        with cursor(1) as con:
            mine = pa.table({"a": [i] * 5})
            con.register("input", mine)
            ready.wait(timeout=30)  # all four have registered their `input` at once
            seen[i] = [r[0] for r in con.sql("SELECT a FROM input").fetchall()]

    workers = [threading.Thread(target=unit, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert seen == {i: [i] * 5 for i in range(4)}
