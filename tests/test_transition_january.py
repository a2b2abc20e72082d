"""What ``vespa-ops run year_transition`` tells the operator about a 1 January close: a calendar year
closes alone and nothing opens (docs/YEARLY_PROCEDURE.md), said in words, never as "open None"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import nbformat
import pytest
from transition_data import build

from vespa_lib.ops import cli

pytestmark = [pytest.mark.notebook]
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def printed(run_dir: Path) -> str:
    """Every text the executed notebook in the evidence showed: streams, plain text and markdown."""
    nb = nbformat.read(str(run_dir / "year_transition.ipynb"), as_version=4)
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            out.extend(str(v) for k, v in o.get("data", {}).items() if k in ("text/plain", "text/markdown"))
    return "\n".join(out)


def test_a_1_january_rollover_says_the_calendar_year_closes_and_nothing_opens(tmp_path):
    path = tmp_path / "t.duckdb"
    con = duckdb.connect(str(path))
    build(con)
    con.close()
    shutil.copy(path, tmp_path / "untouched.duckdb")
    base = ["--notebooks", str(NOTEBOOKS), "--outputs", str(tmp_path / "out"), "run", "year_transition",
            "-p", f"target=duckdb:{path}", "-p", "mode=rollover", "-p", "as_of='2026-01-01'",
            "-p", "require_clean_sync=false"]
    assert cli.main([*base, "-p", "approve=auto"]) == 0
    (manifest,) = (tmp_path / "out").rglob("manifest.json")
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    assert doc["rollover"]["rollover"] == {"close": "2025/2025", "open": None}
    text = printed(manifest.parent)
    said = [line for line in text.splitlines() if "2025/2025" in line and ("close" in line or "open" in line)]
    assert said and not [line for line in said if "None" in line], said
    assert "nothing opens" in text
    assert "APPLIED: the rollover committed" in text and "2025/2025 closed (archived)" in text
