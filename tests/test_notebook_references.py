"""The runbooks' own words cite the project's docs by section name, never the product brief, a shared
folder or an issue number, and every section they cite exists (docs/ARCHITECTURE.md, "Evidence and
privacy": the evidence a reviewer reads must point at documents the repository holds)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FOREIGN = re.compile(r"SPEC(\.md)?\b|DOMAIN\.md\s*§|(?<!docs/)\bDOMAIN\.md|\.\./shared|§|\bissues?\s*#?\d+",
                     re.IGNORECASE)
CITED = re.compile(r"docs/([A-Z_]+\.md),?\s*\(?\"([^\"]+)\"")


def markdown(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "markdown")


def headings(doc: str) -> set[str]:
    return {line.lstrip("#").strip() for line in (REPO / "docs" / doc).read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runbook_text_cites_no_brief_shared_folder_or_issue(path):
    found = [line for line in markdown(path).splitlines() if FOREIGN.search(line)]
    assert not found, found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_docs_section_a_runbook_cites_exists(path):
    for doc, cited in CITED.findall(markdown(path)):
        section = " ".join(cited.split())  # a name may wrap across lines
        assert any(h == section or h.startswith(f"{section} ") for h in headings(doc)), (doc, section)
