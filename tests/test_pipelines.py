"""The pipeline file: a good file round trip, and every problem reported with pipeline and key."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from celeray.arrow_types import arrow_type
from celeray.errors import PipelineFileError, PipelineIssue, UnknownPipelineError
from celeray.pipelines import (
    Pipeline,
    format_issues,
    get_pipeline,
    load_pipelines,
)
from tests._pipeline_file import validate_file

GOOD = """
[pipelines.flights]
source = "file:///srv/landing/flights/*.csv.zst"
format = "csv"
schedule = "*/5 * * * *"
sink = "file:///srv/lake/flights"
sql = "SELECT *, distance / air_time * 60 AS mph FROM input WHERE dep_delay IS NOT NULL"
transform = "my_pkg.clean:drop_test_rows"
partition_by = ["year", "month"]
batch_bytes = "256MiB"
compression = "zstd"
compression_level = 3

[pipelines.flights.schema]
dep_delay = "int32"
dep_time = "timestamp[s, tz=UTC]"
fare = "decimal128(10,2)"

[pipelines.weather]
source = "s3://bucket/landing/weather/*.jsonl.gz"
sink = "s3://bucket/lake/weather"
schedule = 300

[pipelines.on-demand_1]
source = "gs://bucket/in/data.parquet"
sink = "gs://bucket/out"
"""

# One line per pipeline body: (body, key, a fragment of the message).
MINIMAL = 'source = "file:///land/*.csv"\nsink = "file:///lake/x"\n'
BROKEN = [
    (MINIMAL + "colour = 1", "colour", "unknown key 'colour'"),
    (MINIMAL + "sorce = 1", "sorce", "did you mean 'source'?"),
    ('sink = "file:///lake/x"', "source", "required key is missing"),
    (MINIMAL + 'schedule = "*/5 * * *"', "schedule", "expected 5 fields"),
    (MINIMAL + 'schedule = "61 * * * *"', "schedule", "minute field '61'"),
    (MINIMAL + 'schedule = "0 0 * 13 *"', "schedule", "month field '13'"),
    (MINIMAL + 'schedule = "0 0 * * 8"', "schedule", "day-of-week field '8'"),
    (MINIMAL + 'schedule = "x * * * *"', "schedule", "minute field 'x': not a number"),
    (MINIMAL + 'schedule = "300"', "schedule", "without quotes"),
    (MINIMAL + "schedule = 0", "schedule", "greater than 0"),
    (MINIMAL + "schedule = -5.5", "schedule", "greater than 0"),
    (MINIMAL + "schedule = true", "schedule", "cron string or a number"),
    (MINIMAL + 'schedule = "*/61 * * * *"', "schedule", "fire only once per hour"),
    (MINIMAL + 'schedule = "0 0-23/25 * * *"', "schedule", "fire only once per day"),
    (MINIMAL + 'format = "xls"', "format", "unknown format 'xls'"),
    (MINIMAL + 'compression = "lzo"', "compression", "unknown compression 'lzo'"),
    (MINIMAL + "compression_level = 99", "compression_level", "outside"),
    (MINIMAL + 'compression = "snappy"\ncompression_level = 1', "compression_level", "takes no"),
    (MINIMAL + 'batch_bytes = "12 parsecs"', "batch_bytes", "not a size"),
    (MINIMAL + "batch_bytes = 0", "batch_bytes", "at least 1 byte"),
    ('source = "file:///land/*.csv"\nsink = "file:///land"', "sink", "inside the source folder"),
    ('source = "file:///land/*.csv"\nsink = "file:///land/out"', "sink", "inside the source"),
    ('source = "s3://b/in/*.csv"\nsink = "s3a://b/in/lake"', "sink", "inside the source"),
    ('source = "file:///land/*.csv"\nsink = "file:///lake/*"', "sink", "without glob"),
    ('source = "file:///land/*.csv"\nsink = "file://lake"', "sink", "absolute path"),
    (MINIMAL + 'sql = "SELECT * FROM flights"', "sql", "table 'flights' is not allowed"),
    (MINIMAL + 'sql = "WITH input AS (SELECT 1) SELECT * FROM input"', "sql", "`input`"),
    (MINIMAL + "sql = \"SELECT * FROM read_csv('input.csv')\"", "sql", "read_csv() is not"),
    (MINIMAL + 'sql = "SELEC * FROM input"', "sql", 'syntax error at or near "SELEC"'),
    (MINIMAL + 'sql = "SELECT * FROM input\\nWHERE (a"', "sql", "(line 2)"),
    (MINIMAL + 'sql = "DELETE FROM input"', "sql", "found 1 statement(s): DELETE"),
    (MINIMAL + 'sql = "SELECT * FROM input; SELECT 1"', "sql", "found 2 statement(s): SELECT, SE"),
    (MINIMAL + 'sql = "  "', "sql", "sql is empty"),
    (MINIMAL + 'transform = "my_pkg.clean.drop"', "transform", "'module.path:function'"),
    (MINIMAL + 'transform = "my-pkg:f"', "transform", "'module.path:function'"),
    (MINIMAL + 'partition_by = ["year", "year"]', "partition_by", "'year' more than once"),
    (MINIMAL + 'partition_by = ["year", ""]', "partition_by", "non-empty"),
    (MINIMAL + 'partition_by = "year"', "partition_by", "expected an array, got string"),
    (MINIMAL + "[pipelines.p.schema]\na = 'int33'", "schema.a", "unknown column type 'int33'"),
    (MINIMAL + "[pipelines.p.schema]\na = 3", "schema.a", "expected a string, got integer 3"),
    (
        'source = "file:///land/*.parquet"\nsink = "file:///lake/x"\nformat = "parquet"\n'
        '[pipelines.p.schema]\na = "int8"',
        "schema",
        "csv and jsonl only",
    ),
    ('source = "simplecache::s3://b/*.csv"\nsink = "file:///lake/x"', "source", "chained"),
    (MINIMAL + 'name = "other"', "name", "the table key is the name"),
]


def write(tmp_path: Path, text: str, name: str = "pipelines.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def only_issue(tmp_path: Path, body: str) -> PipelineIssue:
    issues = validate_file(write(tmp_path, f"[pipelines.p]\n{body}\n"))
    assert len(issues) == 1, format_issues(issues)
    return issues[0]


def test_good_file_round_trip(tmp_path: Path) -> None:
    pipelines = load_pipelines(write(tmp_path, GOOD))
    assert list(pipelines) == ["flights", "weather", "on-demand_1"]
    f = pipelines["flights"]
    assert f.name == "flights"
    assert f.source == "file:///srv/landing/flights/*.csv.zst"
    assert f.source_root == "file:///srv/landing/flights"
    assert f.sink == "file:///srv/lake/flights"
    assert f.format == "csv"
    assert f.schedule_spec == ("cron", "*/5 * * * *")
    assert f.batch_bytes == 256 * 1024**2
    assert f.partition_by == ("year", "month")
    assert f.compression == "zstd" and f.compression_level == 3
    assert f.columns == {
        "dep_delay": "int32",
        "dep_time": "timestamp[s, tz=UTC]",
        "fare": "decimal128(10, 2)",
    }
    w = pipelines["weather"]
    assert w.format is None  # each file's format comes from its own name
    assert w.schedule_spec == ("interval", 300.0)
    assert w.batch_bytes == 256 * 1024**2 and w.compression == "zstd"
    o = pipelines["on-demand_1"]
    assert o.format is None and o.schedule_spec is None
    assert o.source_root == "gs://bucket/in"  # one file: its folder


def test_plan_is_json_and_complete(tmp_path: Path) -> None:
    plan = load_pipelines(write(tmp_path, GOOD))["flights"].to_plan()
    assert json.loads(json.dumps(plan)) == plan
    assert plan == {
        "pipeline": "flights",
        "format": "csv",
        "schema": {
            "dep_delay": "int32",
            "dep_time": "timestamp[s, tz=UTC]",
            "fare": "decimal128(10, 2)",
        },
        "sql": "SELECT *, distance / air_time * 60 AS mph FROM input WHERE dep_delay IS NOT NULL",
        "transform": "my_pkg.clean:drop_test_rows",
        "partition_by": ["year", "month"],
        "compression": "zstd",
        "compression_level": 3,
        "split_large_files": True,
        "ray_env": None,
        "schema_evolution": "add_columns",
        "on_bad_rows": "quarantine_file",
        "max_bad_rows": 0.1,
        "metadata_columns": [],
    }
    bare = load_pipelines(write(tmp_path, GOOD))["weather"].to_plan()
    assert bare["schema"] is None and bare["sql"] is None and bare["partition_by"] == []
    json.dumps(bare)


def test_pipeline_is_frozen(tmp_path: Path) -> None:
    p = load_pipelines(write(tmp_path, GOOD))["flights"]
    with pytest.raises(ValueError):
        p.sink = "file:///elsewhere"


def test_relative_paths_resolve_against_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.chdir(tmp_path)  # not the file's folder: must not matter
    text = '[pipelines.p]\nsource = "landing/*.csv"\nsink = "../lake/p/"\n'
    p = load_pipelines(write(conf, text))["p"]
    assert p.source == f"file://{conf}/landing/*.csv"
    assert p.source_root == f"file://{conf}/landing"
    assert p.sink == f"file://{tmp_path}/lake/p"


def test_folder_sources(tmp_path: Path) -> None:
    text = (
        '[pipelines.slash]\nsource = "/land/a/"\nformat = "csv"\nsink = "/lake/a"\n'
        '[pipelines.bare]\nsource = "s3://b/land"\nformat = "csv"\nsink = "s3://b/lake"\n'
    )
    pipelines = load_pipelines(write(tmp_path, text))
    assert pipelines["slash"].source == "file:///land/a/*"  # trailing slash: its files
    assert pipelines["slash"].source_root == "file:///land/a"
    # No glob, no data-file name: kept as written (listed as a folder), its own root,
    # so a sibling sink is fine.
    assert pipelines["bare"].source == "s3://b/land"
    assert pipelines["bare"].source_root == "s3://b/land"


@pytest.mark.parametrize(("body", "key", "fragment"), BROKEN)
def test_each_problem_names_pipeline_key_and_cause(
    tmp_path: Path, body: str, key: str, fragment: str
) -> None:
    issue = only_issue(tmp_path, body)
    assert (issue.pipeline, issue.key) == ("p", key)
    assert fragment in issue.message
    assert str(issue).startswith(f"pipelines.p.{key}: ")


def test_every_issue_of_every_pipeline_is_reported(tmp_path: Path) -> None:
    text = (
        "[pipelines.a]\n" + MINIMAL + 'schedule = "*/5 * *"\nformat = "xls"\nextra = 1\n'
        "[pipelines.b]\n"
        'source = "file:///srv/landing/flights/*.csv"\nsink = "file:///srv/landing/flights/out"\n'
        'sql = "SELECT * FROM flights"\n'
    )
    with pytest.raises(PipelineFileError) as caught:
        load_pipelines(write(tmp_path, text))
    found = {(i.pipeline, i.key) for i in caught.value.issues}
    assert found == {
        ("a", "schedule"),
        ("a", "format"),
        ("a", "extra"),
        ("b", "sink"),
        ("b", "sql"),
    }
    assert "5 problem(s)" in str(caught.value)


def test_format_issues_is_one_line_per_issue(tmp_path: Path) -> None:
    text = "[pipelines.flights]\n" + MINIMAL + 'schedule = "*/5 * *"\nformat = "xls"\n'
    out = format_issues(validate_file(write(tmp_path, text)))
    assert out.splitlines() == [
        "pipelines.flights.format: unknown format 'xls': expected 'csv', 'jsonl' or 'parquet'",
        "pipelines.flights.schedule: bad cron '*/5 * *': expected 5 fields "
        "(minute hour day-of-month month day-of-week)",
    ]


def test_bad_name_is_reported_on_the_pipeline(tmp_path: Path) -> None:
    issues = validate_file(write(tmp_path, "[pipelines.Flights]\n" + MINIMAL))
    assert [(i.pipeline, i.key) for i in issues] == [("Flights", None)]
    assert "bad pipeline name 'Flights'" in issues[0].message


def test_file_level_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PipelineFileError) as caught:
        load_pipelines(missing)
    (issue,) = caught.value.issues
    assert str(missing) in issue.message and "CELERAY_PIPELINES" in issue.message

    (issue,) = validate_file(write(tmp_path, '[pipelines.p]\nsource = "x\n'))
    assert "TOML syntax error" in issue.message and "line 2" in issue.message

    issues = validate_file(write(tmp_path, "[pipeline.p]\n" + MINIMAL + "[pipelines.q]\nx=1\n"))
    messages = [i.message for i in issues]
    assert "unknown top-level key 'pipeline'; expected [pipelines.NAME]" in messages

    assert validate_file(write(tmp_path, 'pipelines = "no"')) != []
    assert validate_file(write(tmp_path, "[pipelines]\np = 1")) != []
    assert load_pipelines(write(tmp_path, "# nothing yet\n")) == {}


def test_chained_urls_only_when_allowed(tmp_path: Path) -> None:
    text = '[pipelines.p]\nsource = "simplecache::s3://b/in/*.csv"\nsink = "s3://b/out"\n'
    path = write(tmp_path, text)
    issue = validate_file(path)[0]
    assert "CELERAY_ALLOW_CHAINED_URLS=true" in issue.message
    p = load_pipelines(path, allow_chained_urls=True)["p"]
    assert p.source == "simplecache::s3://b/in/*.csv"


def test_sink_next_to_source_is_fine(tmp_path: Path) -> None:
    text = (
        '[pipelines.p]\nsource = "file:///data/landing/*.csv"\nsink = "file:///data/lake"\n'
        '[pipelines.q]\nsource = "s3://b/landing/*.csv"\nsink = "gs://b/landing/lake"\n'
    )
    assert validate_file(write(tmp_path, text)) == []


def test_sql_is_parsed_not_run(tmp_path: Path) -> None:
    # A USING join on unknown columns and an unknown function would fail if bound.
    sql = (
        "WITH x AS (SELECT * FROM input) SELECT no_such_fn(a) FROM x "
        "JOIN x AS y USING (code)"
    )
    text = f'[pipelines.p]\n{MINIMAL}sql = "{sql}"\n'
    assert validate_file(write(tmp_path, text)) == []
    for ok in ("FROM input", "SELECT * FROM main.INPUT", "SELECT 1 FROM input JOIN input i ON 1"):
        assert validate_file(write(tmp_path, f'[pipelines.p]\n{MINIMAL}sql = "{ok}"\n')) == []


def test_transforms_are_checked_by_form_only(tmp_path: Path) -> None:
    path = write(tmp_path, f'[pipelines.p]\n{MINIMAL}transform = "no_such_module_xyz:f"\n')
    assert validate_file(path) == []  # celeray validate imports it (celeray.transform_probe)
    (issue,) = validate_file(write(tmp_path, f'[pipelines.p]\n{MINIMAL}transform = "a.b"\n'))
    assert issue.key == "transform" and "must look like 'module.path:function'" in issue.message


def test_get_pipeline(tmp_path: Path) -> None:
    pipelines = load_pipelines(write(tmp_path, GOOD))
    assert get_pipeline(pipelines, "weather").name == "weather"
    with pytest.raises(UnknownPipelineError) as caught:
        get_pipeline(pipelines, "nope")
    assert caught.value.known == ["flights", "on-demand_1", "weather"]


def test_direct_construction_uses_the_schema_alias() -> None:
    p = Pipeline.model_validate(
        {"name": "p", "source": "s3://b/*.csv", "sink": "s3://c", "schema": {"a": "i8"}}
    )
    assert p.columns == {"a": "int64"}
    by_name = {"name": "p", "source": "s3://b/*.csv", "sink": "s3://c", "columns": {"a": "str"}}
    assert Pipeline.model_validate(by_name).columns == {"a": "string"}


@pytest.mark.parametrize(
    "name",
    [
        "int32",
        "string",
        "bool",
        "double",
        "date32[day]",
        "timestamp[us]",
        "timestamp[ns, tz=Europe/Paris]",
        "timestamp[s, tz=+01:00]",
        "decimal128(10, 2)",
        "decimal256(40, 3)",
        "fixed_size_binary[16]",
        "large_string",
    ],
)
def test_arrow_type_names_read_back(name: str) -> None:
    assert str(arrow_type(name)) == name
    assert arrow_type(str(arrow_type(name))) == arrow_type(name)


def test_arrow_type_names() -> None:
    assert arrow_type("int32") == pa.int32()
    assert arrow_type("float64") == pa.float64()
    assert arrow_type("string") == pa.string()
    assert arrow_type("timestamp[s]") == pa.timestamp("s")
    assert arrow_type("timestamp[ms, tz=UTC]") == pa.timestamp("ms", tz="UTC")
    assert arrow_type("date32") == pa.date32()
    assert arrow_type("bool") == pa.bool_()
    assert arrow_type("decimal128(10,2)") == pa.decimal128(10, 2)
    assert arrow_type("decimal256(50, 4)") == pa.decimal256(50, 4)
    for bad in ("int", "varchar", "decimal128(99,2)", "timestamp[s, tz=Nowhere/Land]"):
        with pytest.raises(ValueError, match=r"unknown column type"):
            arrow_type(bad)


@pytest.mark.parametrize(
    "name", ["int33", "list<int32>", "timestamp[s, tz=Not/AZone]", "decimal128(99, 2)", ""]
)
def test_arrow_type_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="unknown column type"):
        arrow_type(name)
