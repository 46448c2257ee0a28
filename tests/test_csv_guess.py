"""A CSV read told the types the file before it had reads exactly as one that infers them.

The guess (``ray_jobs._csv_guess``) tells pyarrow a type only when the file's first row
proves it; these tests hold it to pyarrow's own inference, value by value and over many
generated files, including the files where the guess is wrong.
"""

from __future__ import annotations

import io
import random
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from celeray.errors import InputError
from ray_jobs._csv_guess import (
    BOOLEAN,
    DATE,
    INTEGER,
    NULL,
    REAL,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMP_NS,
    TypeGuess,
    first_row,
    witness_kind,
)
from ray_jobs._read_csv import csv_batches

_TYPES_IN_ORDER = [
    pa.null(), pa.int64(), pa.bool_(), pa.date32(), pa.time32("s"), pa.timestamp("s"),
    pa.timestamp("ns"), pa.float64(), pa.string(),
]  # fmt: skip
# values that look like a kind and are not, or are several kinds at once
_TRICKY = [
    "", "NA", "nan", "NaN", "-nan", "null", "NULL", "N/A", "n/a", "#N/A", "None", "inf",
    "Inf", "INFINITY", "inFinity", "-inf", "+inf", "infinite", "nanx", "1", "0", "-0", "+5",
    " 5", "5 ", "007", "0x10", "1_000", "12345678901234567890", "1e5", "1E5", "1.", ".5",
    "-1.5e-3", "517.0", "true", "True", "TRUE", "false", "t", "yes", "2013-01-01",
    "2013-13-45", "2013-1-1", "2013-01-01T10", "2013-01-01 10:00", "2013-01-01T10:00:00Z",
    "2013-01-01T10:00:00+02:00", "2013-01-01T10:00:00-0500", "2013-01-01 10:00:00.000",
    "2013-01-01 10:00:00.5", "2013-01-01T10:00:00.5Z", "10:00", "10:00:00", "10:00:00.5",
    "99:99", "UA", "N14228", "abc_1", "x", "e5", "E", "_a",
]  # fmt: skip


def _inferred(values: list[str]) -> pa.DataType:
    text = "a\n" + "".join(v + "\n" for v in values)
    table = pacsv.read_csv(
        pa.BufferReader(text.encode()), read_options=pacsv.ReadOptions(use_threads=False)
    )
    return table.schema.field("a").type


def _kind(kind: pa.DataType) -> int:
    for index, known in enumerate(_TYPES_IN_ORDER):
        if kind == known or (pa.types.is_timestamp(kind) and pa.types.is_timestamp(known)
                             and kind.unit == known.unit):  # fmt: skip
            return index
    return len(_TYPES_IN_ORDER)  # binary


@pytest.mark.parametrize("text", _TRICKY)
def test_a_witness_never_claims_more_than_pyarrow_infers(text: str) -> None:
    assert witness_kind(text.encode()) <= _kind(_inferred([text]))


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("5", INTEGER), ("-12", INTEGER), ("true", BOOLEAN), ("FALSE", BOOLEAN),
        ("2013-01-01", DATE), ("10:00", TIME), ("10:00:00", TIME),
        ("2013-01-01T10:00:00Z", TIMESTAMP), ("2013-01-01 10:00", TIMESTAMP),
        ("2013-01-01 10:00:00.5", TIMESTAMP_NS), ("517.0", REAL), ("1e5", REAL),
        ("UA", TEXT), ("N14228", TEXT),
        ("", NULL), ("NA", NULL), ("nan", NULL), ("inf", NULL), ("1", INTEGER), ("+5", NULL),
    ],
)  # fmt: skip
def test_the_common_values_witness_their_own_kind(text: str, kind: int) -> None:
    assert witness_kind(text.encode()) == kind


@pytest.mark.parametrize(
    "data",
    [
        b'a,b\n"1",2\n',  # a quote: a plain split is not pyarrow's parse
        b"\xef\xbb\xbfa,b\n1,2\n",  # a byte-order mark
        b"a,b\r1,2\r",  # lone carriage returns end lines too
        b"a,b\n\n1,2\n",  # a blank line is skipped by pyarrow
        b"a,b\n1,2,3\n",  # a malformed first row
        b"a,a\n1,2\n",  # a name twice
        b"a,b\n1,2",  # no end to the first row: it may go on past the block
        b"a,b\n",
    ],
)
def test_first_row_refuses_what_a_plain_split_would_misread(data: bytes) -> None:
    assert first_row(data) is None


def test_first_row_of_a_plain_file() -> None:
    assert first_row(b"a,b\r\n1,x\r\n2,y\r\n") == (["a", "b"], [b"1", b"x"])


def test_a_guess_tells_only_what_the_first_row_proves() -> None:
    guess = TypeGuess()
    guess.learn(
        ["n", "f", "s", "t", "z", "gone"],
        [pa.int64(), pa.float64(), pa.string(), pa.timestamp("s"), pa.timestamp("s", "UTC"),
         pa.int64()],
    )  # fmt: skip
    data = b"n,f,s,t,z,new\n5,NA,UA,2013-01-01T10:00:00,2013-01-01T10:00:00,1\n"
    # f: a null proves nothing; z: no offset where one is guessed; new: nothing guessed
    assert guess.told(data, {"s": pa.large_string()}) == {
        "n": pa.int64(), "s": pa.large_string(), "t": pa.timestamp("s"),
    }  # fmt: skip
    assert guess.told(b"n\nNA\n", {}) is None
    assert TypeGuess().told(data, {}) is None


# ---- whole files: a told read against pyarrow's inference ----------------------------------

_FAMILIES: dict[str, list[str]] = {
    "ints": ["1", "-7", "42", "0"],
    "floats": ["517.0", "2.5", "-1e3", "0.0"],
    "int_floats": ["1", "2.0", "3"],
    "bools": ["true", "false", "True"],
    "ones": ["1", "0"],
    "mixed_bool": ["true", "0", "1"],
    "dates": ["2013-01-01", "2014-12-31"],
    "stamps": ["2013-01-01T10:00:00", "2013-01-01 00:00:00"],
    "zoned": ["2013-01-01T10:00:00Z", "2013-01-01T10:00:00+02:00"],
    "naive_zoned": ["2013-01-01T10:00:00", "2013-01-01T10:00:00Z"],
    "fraction": ["2013-01-01 10:00:00.5", "2013-01-01 10:00:00"],
    "times": ["10:00", "23:59:59"],
    "words": ["UA", "N14228", "x", "abc_1"],
    "numbers_then_words": ["5", "UA"],
    "nulls": ["", "NA", "nan", "null"],
    "tricky": _TRICKY,
}


def _file(rng: random.Random, names: list[str], families: dict[str, str]) -> bytes:
    rows = [",".join(names)]
    for _ in range(rng.randint(1, 30)):
        row = []
        for name in names:
            pool = _FAMILIES[families[name]]
            value = rng.choice([*pool, "", "NA"]) if rng.random() < 0.1 else rng.choice(pool)
            row.append(value)
        if rng.random() < 0.03:
            row.append("extra")  # a malformed row
        rows.append(",".join(row))
    return ("\n".join(rows) + "\n").encode()


def _read(data: bytes, guess: TypeGuess | None, skipped: list[Any]) -> Any:
    try:
        batches = list(csv_batches(
            io.BytesIO(data), url="mem://f.csv", types={}, max_row_bytes=1 << 20,
            skip_row=lambda *row: skipped.append(row), guess=guess,
        ))  # fmt: skip
    except InputError as exc:
        return type(exc).__name__, str(exc)
    return pa.Table.from_batches(batches) if batches else None


def test_files_read_with_the_last_files_types_as_pyarrow_infers_them() -> None:
    rng = random.Random(20261207)
    told = 0
    for _ in range(1000):
        names = [f"c{i}" for i in range(rng.randint(1, 5))]
        first = {n: rng.choice(list(_FAMILIES)) for n in names}
        # the next file keeps some columns' families and changes others
        second = {n: first[n] if rng.random() < 0.6 else rng.choice(list(_FAMILIES)) for n in names}
        guess = TypeGuess()
        _read(_file(rng, names, first), guess, [])
        data = _file(rng, names, second)
        told += guess.told(data, {}) is not None
        alone: list[Any] = []
        guessed: list[Any] = []
        expected = _read(data, None, alone)
        got = _read(data, guess, guessed)
        if isinstance(expected, pa.Table):
            assert isinstance(got, pa.Table), data
            assert got.schema == expected.schema, data
            assert got.equals(expected), data
        else:
            assert got == expected, data
        assert guessed == alone, data  # each malformed row reported once
    assert told > 300  # the guess was put to the test, not refused every time


def test_a_wrong_guess_reads_again_inferring_and_reports_skipped_rows_once() -> None:
    guess = TypeGuess()
    guess.learn(["a", "b"], [pa.int64(), pa.string()])
    data = b"a,b\n1,x\n2,y,z\n2.5,w\n"  # a is int in the first row, float later
    skipped: list[Any] = []
    table = _read(data, guess, skipped)
    assert table.schema.field("a").type == pa.float64()
    assert table.column("a").to_pylist() == [1.0, 2.5]
    assert [line for line, _, _ in skipped] == [3]
    assert guess.types == {"a": pa.float64(), "b": pa.string()}  # learnt from this file
