"""Tell pyarrow a CSV file's column types when they are provably the ones it would infer.

pyarrow infers a column's type by trying kinds in a fixed order (null, int64, bool,
date32, time32[s], timestamp[s], timestamp[ns], float64, string, binary) and taking the
first that every value of the block converts to; each kind that fails costs a conversion
attempt per column however few the rows, so a small file pays for it dearly (measured in
``bench/RESULTS.md``). A unit reads many files of
one pipeline, so a file's types are guessed from the file read before it
(:class:`TypeGuess`), and a guessed type is told to pyarrow only when it is provably the
inferred one:

- the file's first data row holds, in that column, a value that every kind before the
  guessed one refuses (a *witness*, :func:`witness_kind`): the inferred kind is then at
  least the guessed one, since inference must pass over every kind that refuses a value;
- the told read succeeds: every value converts to the guessed type, so the inferred kind
  is at most the guessed one.

Both hold only for the guessed kind itself, so the told types are the inferred types, and
the values are those of the same converters. A told read that fails is read again
inferring (:func:`ray_jobs._read_csv.csv_batches` does both): whatever the guess, a file
reads as pyarrow's inference reads it. The witnesses are conservative patterns under
pyarrow's default conversion options (the ones celeray reads with); a value they do not
recognise proves nothing, and its column is inferred as before.
"""

from __future__ import annotations

import codecs
import re

import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = ["TypeGuess", "first_row", "witness_kind"]

# pyarrow's order of inference (arrow/csv/inference_internal.h), without the dictionary
# kinds (auto_dict_encode is off) and binary (no witness can prove it).
NULL, INTEGER, BOOLEAN, DATE, TIME, TIMESTAMP, TIMESTAMP_NS, REAL, TEXT = range(9)

_DEFAULTS = pacsv.ConvertOptions()
# words some kind before text accepts: null markers, booleans, the floats' inf and nan
_NOT_TEXT = {w.lower() for w in [*_DEFAULTS.null_values, *_DEFAULTS.true_values,
                                 *_DEFAULTS.false_values]}  # fmt: skip
_BOOLEAN_WORDS = {
    w.encode() for w in [*_DEFAULTS.true_values, *_DEFAULTS.false_values] if not w.isdigit()
}
_INT = re.compile(rb"-?[0-9]+")
_REAL = re.compile(rb"-?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?[0-9]+[eE][-+]?[0-9]+")
_DATE = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(rb"[0-9]{2}:[0-9]{2}(?::[0-9]{2})?")
_STAMP = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}")  # a prefix
_STAMP_NS = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]")
_ZONED = re.compile(rb"(?:Z|[-+][0-9]{2}(?::?[0-9]{2})?)\Z")
_WORD = re.compile(rb"[A-Za-z][A-Za-z0-9_]*")


def witness_kind(text: bytes) -> int:
    """The kind that ``text`` (one raw CSV value, unquoted) shows a column's inferred kind
    reaches at least: every kind before it refuses ``text``. ``NULL`` proves nothing."""
    if _INT.fullmatch(text):
        return INTEGER
    if text in _BOOLEAN_WORDS:
        return BOOLEAN
    if _DATE.fullmatch(text):
        return DATE
    if _TIME.fullmatch(text):
        return TIME
    if _STAMP_NS.match(text):  # timestamp[s] refuses any fraction of a second
        return TIMESTAMP_NS
    if _STAMP.match(text):
        return TIMESTAMP
    if _REAL.fullmatch(text):
        return REAL
    if _WORD.fullmatch(text):
        word = text.decode().lower()
        if word not in _NOT_TEXT and not word.startswith(("inf", "nan")):
            return TEXT
    return NULL


def _kind_of(kind: pa.DataType) -> int | None:
    """The inference kind whose type is ``kind``; ``None`` for types inference never gives
    or that no witness proves."""
    if pa.types.is_timestamp(kind):
        if kind.tz not in (None, "UTC"):
            return None
        return {"s": TIMESTAMP, "ns": TIMESTAMP_NS}.get(kind.unit)
    return _KINDS.get(kind)


_KINDS = {
    pa.int64(): INTEGER,
    pa.bool_(): BOOLEAN,
    pa.date32(): DATE,
    pa.time32("s"): TIME,
    pa.float64(): REAL,
    pa.string(): TEXT,
}


def first_row(data: bytes) -> tuple[list[str], list[bytes]] | None:
    """The header's names and the first data row's values in the start of a CSV file,
    when both lines are plain: no quote character, no blank line, no lone carriage
    return, no byte-order mark, as many values as names and no name twice. ``None``
    otherwise (nothing is then told: a plain split would not be pyarrow's parse).

    The split is pyarrow's default parse (comma, double quote, no escapes), the one
    celeray reads with: a reader given other parse options must not use it.
    """
    end1 = data.find(b"\n")
    end2 = data.find(b"\n", end1 + 1) if end1 >= 0 else -1
    if end2 < 0 or data.startswith(codecs.BOM_UTF8):
        return None
    lines = data[:end2]
    if b'"' in lines:
        return None
    header, row = lines[:end1].removesuffix(b"\r"), lines[end1 + 1 :].removesuffix(b"\r")
    if not header or not row or b"\r" in header or b"\r" in row:
        return None
    try:
        names = header.decode().split(",")
    except UnicodeDecodeError:
        return None
    values = row.split(b",")
    if len(names) != len(values) or len(set(names)) != len(names):
        return None
    return names, values


class TypeGuess:
    """The types of the last CSV file a unit read, told to the next where provable."""

    def __init__(self) -> None:
        self.types: dict[str, pa.DataType] = {}
        self._learnt: tuple[list[str], list[pa.DataType]] = ([], [])
        self._kinds: dict[str, tuple[pa.DataType, int]] = {}  # the types a witness can prove

    def learn(self, names: list[str], types: list[pa.DataType]) -> None:
        """Keep the types a file's first block was read with (null columns prove nothing)."""
        if (names, types) == self._learnt:
            return  # the usual case: the unit's files are alike
        self._learnt = (names, types)
        self.types = {n: t for n, t in zip(names, types, strict=True) if not pa.types.is_null(t)}
        self._kinds = {n: (t, k) for n, t in self.types.items() if (k := _kind_of(t)) is not None}

    def told(self, data: bytes, declared: dict[str, pa.DataType]) -> dict[str, pa.DataType] | None:
        """``declared`` and the guessed types that ``data``'s first row witnesses (see the
        module's docstring); ``None`` when none is (read as before, inferring)."""
        if not self._kinds or (row := first_row(data)) is None:
            return None
        told = dict(declared)
        added = False
        for name, text in zip(*row, strict=True):
            known = self._kinds.get(name)
            if known is None or name in told:
                continue
            guessed, kind = known
            if witness_kind(text) != kind:
                continue
            if kind in (TIMESTAMP, TIMESTAMP_NS) and (
                bool(_ZONED.search(text)) != (guessed.tz is not None)
            ):
                continue  # the told read would refuse it: no offset where one is told
            told[name] = guessed
            added = True
        return told if added else None
