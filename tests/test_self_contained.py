"""The repository documents itself: no committed file points at documents outside it.

Code, notebooks, reports and docs cite the project's own documents by section name
(``docs/DOMAIN.md``, ``docs/ARCHITECTURE.md``, ``docs/OPERATIONS.md``, ``docs/YEARLY_PROCEDURE.md``),
never a brief kept beside the repository or a tracker's issue numbers, which a reader of the
repository does not have.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Built from pieces so this file does not match itself.
_SPEC, _STYLE, _SHARED = "SPEC" + r"\.md", "STYLE" + r"\.md", r"\.\./" + "shared"
FOREIGN = re.compile(rf"{_SPEC}|{_STYLE}|{_SHARED}|(?<![\w/[(])DOMAIN\.md|\bSPEC\s*§|§\s*\d|\bissue\s+#?\d+",
                     re.IGNORECASE)
BINARY = {".png", ".parquet", ".duckdb", ".ico", ".gz"}


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the committed files cannot be listed")
    return [REPO / name for name in out.stdout.splitlines() if Path(name).suffix not in BINARY]


def test_no_committed_file_cites_the_brief_the_shared_folder_or_an_issue_number():
    found = []
    for path in tracked_files():
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if FOREIGN.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not found, "cite docs/ by section name instead:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    "see SPEC" + ".md \u00a77", "(DOMAIN" + ".md \u00a74)", "the brief in ../" + "shared/", "as issue" + " 5 asks",
    "STYLE" + ".md's notes", "SPEC" + " \u00a79 measure",
])
def test_the_pattern_catches_each_kind_of_foreign_reference(line):
    assert FOREIGN.search(line)


@pytest.mark.parametrize("line", [
    'docs/DOMAIN.md, "Academic years"', "docs/ARCHITECTURE.md, “Guarded writes”", "READ_SPEC = {",
    "F11: 2024-25 is 2024/2025",
])
def test_the_projects_own_references_pass(line):
    assert not FOREIGN.search(line)
