"""What a reviewer reads: real import runs through ``vespa-ops run`` and their report.html, first screen first."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import nbformat
import pytest

from vespa_lib.ops import cli
from vespa_lib.sandbox import synth

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reports")
    synth.generate(folder, students=120)
    return folder


def run_import(outputs: Path, capsys, **params) -> tuple[int, str, Path]:
    argv = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(outputs), "run", "import",
            "-f", str(REPO / "params" / "demo" / "import.yaml")]
    argv += [f"-p{k}={json.dumps(v)}" for k, v in params.items()]
    code = cli.main(argv)
    out = capsys.readouterr().out
    return code, out, Path(out.strip().splitlines()[-1])


def text_of(html: str) -> str:
    """The visible text of a report, in order (styles and scripts dropped, tags as spaces)."""
    html = re.sub(r"(?s)<(head|style|script)\b.*?</\1>", " ", html)
    html = re.sub(r"(?s)<img\b[^>]*>", " [chart] ", html)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


@pytest.fixture(scope="module")
def runs(generated, tmp_path_factory):
    """A plan run and an apply run of the import into a copy of the generated database."""
    base = tmp_path_factory.mktemp("reports_runs")
    db = base / "p.duckdb"
    shutil.copyfile(generated / "production.duckdb", db)
    common = {"snapshot_dir": str(generated / "snapshot"), "target": f"duckdb:{db}",
              "backup_dir": str(base / "bk"), "sample_students": 20}
    return base, common


def test_import_plan_report_opens_with_the_verdict(runs, capsys):
    base, common = runs
    code, _, folder = run_import(base / "out", capsys, **common)
    assert code == 0
    page = (folder / "report.html").read_text(encoding="utf-8")
    text = text_of(page)
    first = text[: text.index("Preflight")]  # what a reviewer reads before the first section
    assert first.startswith("PASSED: import")
    for words in ("Academic year 2024/2025", "Mode plan", "Checks 3 of 3 passed", "Would be written (nothing written)",
                  "3 schema migration(s) first: 1 create vespa_ops schema and tables"):
        assert words in first, words
    assert f"Target duckdb:{common['target'].split(':', 1)[1]}" in first
    # masking only of personal data: migration names readable, emails still masked
    assert "create vespa_ops schema and tables" in text[len(first):] and "C.V.S.A.T." not in text
    assert re.search(r"\w\*\*\*@", text) and not re.search(r"[\w.]+@[\w-]+\.(?:ac\.uk|org|com)\b", text)
    # tables without the index, no NaN / bare True / 302.0, no cut text
    assert "NaN" not in text and "…" not in text and not re.search(r"\b\d+\.0\b", text)
    assert not re.search(r'<th[^>]*class="row_heading', page)
    nb = nbformat.read(str(folder / "import.ipynb"), as_version=4)
    results = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "execute_result"]
    assert all("text/html" in o["data"] for o in results), [o["data"].get("text/plain") for o in results]


def test_import_apply_report_says_what_was_written_with_a_chart(runs, capsys):
    base, common = runs
    code, _, folder = run_import(base / "out", capsys, **common, mode="apply", approve="auto")
    assert code == 0
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    text = text_of((folder / "report.html").read_text(encoding="utf-8"))
    first = text[: text.index("Preflight")]
    inserted = manifest["counts"]["question_responses"]["2024/2025"]["insert"]
    assert inserted >= 1000
    assert first.startswith("PASSED: import") and "Mode apply" in first and "Written table" in first
    assert f"question_responses 2024/2025 {inserted:,}" in first
    assert "3 schema migration(s) applied." in first
    assert "[chart]" in text[text.index("Applied (the approved plan)"):]
    index = text_of((base / "out" / "index.html").read_text(encoding="utf-8"))
    assert f"import apply 2024/2025 duckdb:{common['target'].split(':', 1)[1]} passed" in index


def test_failed_run_report_and_cli_name_the_step(runs, capsys):
    base, common = runs
    code, out, folder = run_import(base / "out", capsys, **common | {"snapshot_dir": str(base / "no_such_folder")})
    assert code == 1
    assert 'import: FAILED at "1. Preflight: the csv_profile blockers and their fallbacks (F4, F5)": SnapshotError' in out
    page = (folder / "report.html").read_text(encoding="utf-8")
    text = text_of(page)
    assert text.startswith("FAILED: import Stopped at step “1. Preflight: the csv_profile blockers and their "
                           "fallbacks (F4, F5)”: ")
    assert "An Exception was encountered" not in text
    sentence_end = text.index("Not reached:")
    assert "Traceback" in text[sentence_end:] or "Error" in text[sentence_end:]
    assert "2. Rule-chain outcomes" in text[sentence_end:text.index("The traceback is below")]
    assert "Rule-chain outcomes" not in text[text.index("The traceback is below"):]  # no empty later sections
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["failed_step"].startswith("1. Preflight")
