"""The documents: the settings table equals the model's, links lead somewhere, the README is short.

No stack, no Redis: these read files only.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from celeray.settings import Settings
from celeray.settings_doc import BEGIN, END, REGENERATE, render, settings_table

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DOC = ROOT / "docs" / "settings.md"
README_MAX_LINES = 200  # a front page: what it is, two pictures, two commands, a first pipeline
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                    *(ROOT / "bench").glob("*.md")])  # fmt: skip
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def test_settings_table_is_the_models() -> None:
    doc = SETTINGS_DOC.read_text()
    assert render(doc) == doc, (
        f"docs/settings.md's settings table differs from celeray/settings.py: run `{REGENERATE}`"
    )


def test_settings_table_has_every_setting() -> None:
    table = settings_table()
    for name, info in Settings.model_fields.items():
        assert info.description, f"Settings.{name} needs a description"
        assert f"`CELERAY_{name.upper()}`" in table


def test_a_stale_table_is_noticed() -> None:
    doc = SETTINGS_DOC.read_text()
    stale = doc.replace("`CELERAY_HOME`", "`CELERAY_HOUSE`", 1)
    assert render(stale) == doc
    with pytest.raises(ValueError, match="two lines"):
        render(doc.replace(END, ""))
    assert doc.index(BEGIN) < doc.index(END)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()  # a link: its text
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", path.read_text()))


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http(s), mailto: not ours to check offline
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_slugs_follow_github() -> None:
    assert _slug("One machine: `celeray up`") == "one-machine-celeray-up"
    assert _slug("`ray_env`") == "ray_env"
    assert _slug("Ray's folders, ports and environment") == "rays-folders-ports-and-environment"
    assert _slug("The fault suite (2026-12-04)") == "the-fault-suite-2026-12-04"


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it a front page (at most {README_MAX_LINES}) "
        "and move reference material into docs/"
    )
    text = "\n".join(lines)
    for command in ("scripts/demo", "scripts/test"):
        assert command in text
