"""The settings table of ``docs/settings.md``, made from :class:`celeray.settings.Settings`.

``python -m celeray.settings_doc [FILE]`` writes the table between the file's two markers
(default ``docs/settings.md``); ``--check`` only compares and exits 1 when they differ.
Each row is one field: its environment variable(s), type, default and description, so the
model is the one place a setting is described.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import AliasChoices, BeforeValidator, SecretStr
from pydantic.fields import FieldInfo

from celeray.settings import Settings
from celeray.sizes import parse_size

__all__ = ["BEGIN", "DEFAULT_DOC", "END", "REGENERATE", "main", "render", "settings_table"]

BEGIN = "<!-- settings table: begin (generated; do not edit) -->"
END = "<!-- settings table: end -->"
DEFAULT_DOC = Path("docs/settings.md")  # relative to the checkout, where the docs live
REGENERATE = "python -m celeray.settings_doc"

_BINARY_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _env_names(name: str, info: FieldInfo) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"{Settings.model_config.get('env_prefix', '')}{name}".upper()]


def _is_size(info: FieldInfo) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_size for m in info.metadata)


def _bounds(info: FieldInfo) -> str:
    found = [f"{sign} {getattr(m, attr)}" for m in info.metadata
             for attr, sign in _BOUNDS if getattr(m, attr, None) is not None]  # fmt: skip
    return f", {' and '.join(found)}" if found else ""


def _type(info: FieldInfo) -> str:
    """The field's type as a reader writes the variable."""
    annotation = info.annotation
    if _is_size(info):
        return "size"
    if get_origin(annotation) is tuple:
        return "paths, `:`-separated"
    base: Any = annotation
    if get_origin(annotation) in (Union, UnionType):  # X | None: the variable holds an X
        (base,) = [a for a in get_args(annotation) if a is not type(None)]
    names: dict[Any, str] = {bool: "`true` / `false`", int: "integer", float: "number",
                             str: "text", Path: "path", SecretStr: "secret"}  # fmt: skip
    return names.get(base, str(base)) + _bounds(info)


def _size(n: int) -> str:
    for unit, factor in _BINARY_UNITS:
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _default(info: FieldInfo) -> str:
    value = info.default
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if _is_size(info) and isinstance(value, int):
        return f"`{_size(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """The Markdown table of every setting, in the model's order."""
    rows = ["| variable | type | default | what |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        if not info.description:
            raise ValueError(f"Settings.{name} has no description: give its Field one")
        variables = " or ".join(f"`{v}`" for v in _env_names(name, info))
        cells = (variables, _type(info), _default(info), info.description)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render(doc: str) -> str:
    """``doc`` with the text between :data:`BEGIN` and :data:`END` replaced by the table.

    Raises ``ValueError`` when the markers are missing or out of order.
    """
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the settings document needs the two lines {BEGIN!r} and {END!r}")
    return doc[: start + len(BEGIN)] + "\n" + settings_table() + doc[end:]


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the settings table; 1 when ``--check`` differs."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__)
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = parser.parse_args(argv)
    doc = args.file.read_text()
    new = render(doc)
    if args.check:
        if new != doc:
            print(f"{args.file}: the settings table is stale; run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if new != doc:
        args.file.write_text(new)
        print(f"{args.file}: settings table written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
