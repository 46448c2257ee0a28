"""Files whose columns drift, end to end: one table schema per sink, under each mode.

Two CSV files: A (``id``, ``x`` as integers) and B (``id``, ``x`` holding text such as
``B100``, and a new column ``y``). Each mode gets them in one run (with the names in both
sort orders) and across two runs (A first, then B first). The documented readers
(``celeray.reading.dataset``, and DuckDB over the sink's Parquet with ``union_by_name``)
must return exactly the rows and columns the mode promises, compared with an oracle
DuckDB builds from the raw files (``EXCEPT ALL`` both ways), and what was not taken must
be counted in the run summary or quarantined with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from celeray import reading
from celeray.ledger import Ledger
from celeray.schema_log import SchemaLog
from tests._stack import Stack

pytestmark = pytest.mark.stack

N = 100
A_CSV = "id,x\n" + "".join(f"{i},{i * 10}\n" for i in range(N))
B_CSV = "id,x,y\n" + "".join(f"{i},B{i},{i * 2}\n" for i in range(N, 2 * N))
TEXT_X = "CAST(x AS VARCHAR) AS x"


def _run(stack: Stack, name: str) -> dict[str, Any]:
    out = stack.celeray("run", name, "--wait", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    result = stack.client.AsyncResult(run_id)
    assert result.state == "SUCCESS", (result.state, result.result)
    return dict(result.result)


class Case:
    """One pipeline of the matrix: its landing folder, sink and raw files."""

    def __init__(self, stack: Stack, root: Path, name: str, extra: str = "") -> None:
        self.stack, self.name = stack, name
        self.landing, self.sink = root / name / "in", root / name / "lake"
        self.landing.mkdir(parents=True)
        stack.add_pipeline(
            name,
            f'source = "{self.landing.as_uri()}/*.csv"\nsink = "{self.sink.as_uri()}"\n'
            f"{extra}",
        )

    def land(self, name: str, text: str) -> Path:
        path = self.landing / name
        path.write_text(text)
        return path

    def run(self) -> dict[str, Any]:
        return _run(self.stack, self.name)

    def read(self) -> pa.Table:
        """The table as the documented pyarrow reader gives it."""
        return reading.dataset(self.sink.as_uri()).to_table()

    def same_as(self, oracle_sql: str, columns: str = f"id, {TEXT_X}, y") -> None:
        """The table equals ``oracle_sql`` (over the raw files), both readers, EXCEPT ALL
        both ways; ``columns`` projects the table as the oracle does."""
        con = duckdb.connect()
        con.register("sink_rows", self.read())
        con.register("oracle", con.sql(oracle_sql).arrow().read_all())
        glob = f"{self.sink}/*.parquet"
        for source in ("sink_rows", f"read_parquet('{glob}', union_by_name=true)"):
            for a, b in ((f"SELECT {columns} FROM {source}", "SELECT * FROM oracle"),
                         ("SELECT * FROM oracle", f"SELECT {columns} FROM {source}")):  # fmt: skip
                extra = con.sql(f"{a} EXCEPT ALL {b}").fetchall()
                assert extra == [], (self.name, source, a, extra[:5])

    def csv(self, *names: str, options: str = "") -> str:
        files = ", ".join(f"'{self.landing / n}'" for n in names)
        return f"read_csv([{files}], union_by_name=true, all_varchar=true{options})"


MODES = {
    "add": 'schema_evolution = "add_columns"',
    "rescue": 'schema_evolution = "rescue"',
    "fail": 'schema_evolution = "fail"',
    # none drops y; the bad x values are kept aside (rescued), so B's rows land
    "none": 'schema_evolution = "none"\non_bad_rows = "rescue"\nmax_bad_rows = 1.0',
}


@pytest.mark.parametrize("mode", list(MODES))
def test_one_run_any_name_order_pins_one_schema(stack: Stack, tmp_path: Path, mode: str) -> None:
    """Both files in one run: the first batch settles x as text (what B holds) and adds y,
    whichever file name sorts first; nothing is quarantined, every row is there."""
    for order, (a_name, b_name) in enumerate((("a.csv", "b.csv"), ("b.csv", "a.csv"))):
        case = Case(stack, tmp_path, f"one-{mode}-{order}", MODES[mode])
        case.land(a_name, A_CSV)
        case.land(b_name, B_CSV)
        s = case.run()
        assert (s["files_committed"], s["files_quarantined"]) == (2, 0), s
        assert s["rows_out"] == 2 * N
        schema = SchemaLog(case.sink.as_uri()).current()
        assert schema is not None
        assert [str(schema.table.field(c).type) for c in ("id", "x", "y")] == [
            "int64", "string", "int64"
        ]
        case.same_as(f"SELECT CAST(id AS BIGINT) id, x, CAST(y AS BIGINT) y "
                     f"FROM {case.csv(a_name, b_name)}")  # fmt: skip


def _across(stack: Stack, root: Path, mode: str, first: str) -> tuple[Case, dict, dict]:
    case = Case(stack, root, f"across-{mode}-{first.lower()}", MODES[mode])
    files = {"A": ("a.csv", A_CSV), "B": ("b.csv", B_CSV)}
    later = "B" if first == "A" else "A"
    case.land(*files[first])
    s1 = case.run()
    assert (s1["files_committed"], s1["files_quarantined"]) == (1, 0)
    case.land(*files[later])
    return case, s1, case.run()


@pytest.mark.parametrize("mode", list(MODES))
def test_b_first_pins_text_and_a_reads_into_it(stack: Stack, tmp_path: Path, mode: str) -> None:
    """B pins x as text and y; A's integers are read as text (not re-inferred), y null."""
    case, _, s2 = _across(stack, tmp_path, mode, "B")
    assert (s2["files_committed"], s2["files_quarantined"]) == (1, 0), s2
    case.same_as(f"SELECT CAST(id AS BIGINT) id, x, CAST(y AS BIGINT) y "
                 f"FROM {case.csv('a.csv', 'b.csv')}")  # fmt: skip


def test_a_first_then_b_add_columns_quarantines_the_text(stack: Stack, tmp_path: Path) -> None:
    case, _, s2 = _across(stack, tmp_path, "add", "A")
    assert (s2["files_committed"], s2["files_quarantined"]) == (0, 1)
    (q,) = s2["quarantined"]
    assert q["url"].endswith("b.csv") and q["kind"] == "schema" and q["line"] == 2
    assert "column 'x': value 'B100' does not convert to int64" in q["error"]
    case.same_as(f"SELECT CAST(id AS BIGINT) id, x FROM {case.csv('a.csv')}",
                 columns=f"id, {TEXT_X}")  # fmt: skip


def test_a_first_then_b_fail_quarantines_the_new_column(stack: Stack, tmp_path: Path) -> None:
    case, _, s2 = _across(stack, tmp_path, "fail", "A")
    assert (s2["files_committed"], s2["files_quarantined"]) == (0, 1)
    (q,) = s2["quarantined"]
    assert 'schema_evolution = "fail"' in q["error"] and q["kind"] == "schema"
    assert "'x'" in q["error"] or "'y'" in q["error"]
    case.same_as(f"SELECT CAST(id AS BIGINT) id, x FROM {case.csv('a.csv')}",
                 columns=f"id, {TEXT_X}")  # fmt: skip


def test_a_first_then_b_rescue_keeps_every_raw_value(stack: Stack, tmp_path: Path) -> None:
    case, _, s2 = _across(stack, tmp_path, "rescue", "A")
    assert (s2["files_committed"], s2["files_quarantined"]) == (1, 0)
    assert s2["rows_rescued"] == N and s2["values_rescued"] == 2 * N  # x and y of each row
    table = case.read()
    assert "y" not in table.column_names  # the schema stays
    rescued = [json.loads(r) for r in table["_rescued_data"].to_pylist() if r is not None]
    assert len(rescued) == N
    b_url = (case.landing / "b.csv").as_uri()
    assert {(r["x"], r["y"], r["_file_path"]) for r in rescued} == {
        (f"B{i}", str(i * 2), b_url) for i in range(N, 2 * N)
    }
    # every row once; B's x is null (its raw value is in _rescued_data)
    case.same_as(
        f"SELECT CAST(id AS BIGINT) id, CASE WHEN x LIKE 'B%' THEN NULL ELSE x END x "
        f"FROM {case.csv('a.csv', 'b.csv')}",
        columns=f"id, {TEXT_X}",
    )


def test_a_first_then_b_none_drops_and_counts_the_new_column(
    stack: Stack, tmp_path: Path
) -> None:
    case, _, s2 = _across(stack, tmp_path, "none", "A")
    assert (s2["files_committed"], s2["files_quarantined"]) == (1, 0)
    assert s2["schema"]["dropped_columns"] == {"y": N}  # never silently
    assert s2["rows_rescued"] == N  # B's x values do not fit int64: kept aside
    assert "y" not in case.read().column_names
    out = case.stack.celeray("runs", case.name)
    assert out.returncode == 0
    case.same_as(
        f"SELECT CAST(id AS BIGINT) id, CASE WHEN x LIKE 'B%' THEN NULL ELSE x END x "
        f"FROM {case.csv('a.csv', 'b.csv')}",
        columns=f"id, {TEXT_X}",
    )


def test_skip_sends_bad_rows_to_the_rejects_and_max_bad_rows_quarantines(
    stack: Stack, tmp_path: Path
) -> None:
    case = Case(stack, tmp_path, "skip", 'on_bad_rows = "skip"\nmax_bad_rows = 0.5')
    case.land("a.csv", A_CSV)
    case.run()
    mixed = "id,x\n" + "".join(f"{i},{'B' if i % 10 == 0 else ''}{i}\n" for i in range(N, 2 * N))
    case.land("m.csv", mixed + "999,1,extra\n")  # a malformed row: three values
    case.land("z.csv", "id,x\n" + "".join(f"{i},B{i}\n" for i in range(N)))  # all text
    s = case.run()
    assert s["files_committed"] == 1 and s["files_quarantined"] == 1
    (q,) = s["quarantined"]
    assert q["url"].endswith("z.csv") and "over max_bad_rows" in q["error"]
    assert s["rows_skipped"] == 11  # 10 text values and the malformed row
    rejects = duckdb.sql(
        f"SELECT * FROM read_parquet('{case.sink}/_celeray/rejects/*.parquet')"
    ).arrow().read_all()
    assert rejects.num_rows == 11
    lines = sorted(r["line"] for r in rejects.to_pylist())
    assert lines == sorted([i - N + 2 for i in range(N, 2 * N) if i % 10 == 0] + [N + 2])
    assert any("malformed row" in e for e in rejects["error"].to_pylist())
    case.same_as(
        f"SELECT CAST(id AS BIGINT) id, x FROM "
        f"{case.csv('a.csv', 'm.csv', options=', ignore_errors=true')} "
        "WHERE x NOT LIKE 'B%' AND id <> '999'",
        columns=f"id, {TEXT_X}",
    )


def test_metadata_columns_name_each_rows_file_and_batch(stack: Stack, tmp_path: Path) -> None:
    names = ["_source_file", "_source_size", "_source_modified", "_batch_id", "_processed_at"]
    case = Case(stack, tmp_path, "meta", f"metadata_columns = {json.dumps(names)}\n"
                                         'batch_bytes = "1KiB"')  # fmt: skip
    paths = [case.land(f"f{i}.csv", A_CSV.replace("\n0,", f"\n{1000 + i},")) for i in range(3)]
    s = case.run()
    assert s["files_committed"] == 3
    table = case.read()
    by_file = {p.as_uri(): p for p in paths}
    batches = {f["url"]: e["batch_id"] for e in Ledger(case.sink.as_uri()).entries()
               for f in e["inputs"]}  # fmt: skip
    for row in table.select(["id", *names]).to_pylist():
        path = by_file[row["_source_file"]]
        assert row["_source_size"] == path.stat().st_size
        assert abs(row["_source_modified"].timestamp() - path.stat().st_mtime) < 1e-3
        assert row["_batch_id"] == batches[row["_source_file"]]
        assert row["_processed_at"] is not None
        assert f"\n{row['id']}," in path.read_text()


def test_concurrent_batches_adding_columns_all_land(stack: Stack, tmp_path: Path) -> None:
    case = Case(stack, tmp_path, "concurrent", 'batch_bytes = "1B"')  # one batch per file
    case.land("base.csv", A_CSV)
    case.run()
    for c in range(4):
        case.land(f"c{c}.csv", f"id,x,c{c}\n" + "".join(f"{i},{i},{c}\n" for i in range(N)))
    s = case.run()
    assert s["files_committed"] == 4 and s["batches_total"] == 4
    schema = SchemaLog(case.sink.as_uri()).current()
    assert schema is not None and {"c0", "c1", "c2", "c3"} <= set(schema.table.names)
    table = case.read()
    assert table.num_rows == 5 * N
    for c in range(4):
        assert table[f"c{c}"].null_count == 4 * N
    out = case.stack.celeray("schema", case.name)
    assert out.returncode == 0 and "c3" in out.stdout and "history" in out.stdout
