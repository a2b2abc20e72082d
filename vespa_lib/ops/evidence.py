"""Evidence of runs (docs/ARCHITECTURE.md, “Evidence and privacy”): run folders, manifests, HTML reports and the index page.

Writes only under ``outputs/``. Layout::

    outputs/index.html                                   every run, newest first
    outputs/<YYYY-MM-DD>/<HHMMSS>_<runbook>_<run id>/
        <runbook>.ipynb      executed notebook, secrets scrubbed
        report.html          the notebook without code cells, self-contained (reads offline)
        manifest.json        runbook, status, parameters, inputs + SHA-256, target, checks, error, …
                             (written as ``running`` when the run starts, completed when it ends)
        checks.json          the checks as the notebook recorded them
        *.csv, *.json, …     files the notebook saved through ``Run.save_*``

``finalise`` runs after every unattended run, passed or failed: it scrubs known secrets from every
file it writes, scans the folder, and if any secret or raw email remains it replaces it and marks the
run failed with a ``SecretLeak`` error.
"""

from __future__ import annotations

import html
import json
import os
import secrets as _secrets
import socket
import subprocess
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import vespa_lib
from vespa_lib.ops import privacy, report

CHECKS_FILE = "checks.json"
STATE_FILE = "_run_state.json"  # records and inputs written by the kernel; merged into the manifest
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
TEMPLATES = Path(__file__).parent / "templates"
CORE_KEYS = {
    "runbook", "run_id", "status", "started_at", "finished_at", "duration_s", "parameters", "inputs",
    "target", "library_version", "git_commit", "checks", "error", "unattended", "notebook", "report",
}
RECORDABLE_KEYS = {"target"}  # core keys a notebook provides itself through run.record


def new_run_id() -> str:
    """A short random hex run id."""
    return _secrets.token_hex(4)


def new_run_dir(outputs: Path, runbook: str, now: datetime | None = None, run_id: str | None = None) -> tuple[str, Path]:
    """Create ``outputs/<date>/<HHMMSS>_<runbook>_<run id>/`` and return (run id, folder)."""
    now = now or datetime.now().astimezone()
    run_id = run_id or new_run_id()
    path = Path(outputs) / now.strftime("%Y-%m-%d") / f"{now.strftime('%H%M%S')}_{runbook}_{run_id}"
    path.mkdir(parents=True, exist_ok=False)
    return run_id, path


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (numpy scalars, paths, dates and sets converted)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def git_commit(repo: Path) -> str | None:
    """``git rev-parse HEAD`` in ``repo``, or None when git or the repository is absent. Read-only."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def build_manifest(run_dir: Path, *, runbook: str, run_id: str, parameters: dict, started_at: datetime,
                   error: str | None, unattended: bool, repo: Path | None = None) -> dict[str, Any]:
    """The manifest of a finished run, from its arguments and the state the kernel left in ``run_dir``."""
    checks = _read_json(run_dir / CHECKS_FILE, [])
    state = _read_json(run_dir / STATE_FILE, {})
    finished = datetime.now().astimezone()
    records = state.get("records", {})
    passed = error is None and all(c["passed"] for c in checks)
    manifest = {
        "runbook": runbook, "run_id": run_id, "status": "passed" if passed else "failed",
        "started_at": started_at.isoformat(timespec="seconds"), "finished_at": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started_at).total_seconds(), 3),
        "parameters": jsonable(parameters), "inputs": state.get("inputs", []), "target": records.get("target"),
        "library_version": vespa_lib.__version__, "git_commit": git_commit(repo or Path.cwd()),
        "checks": checks, "error": error, "unattended": unattended,
        "notebook": f"{runbook}.ipynb" if (run_dir / f"{runbook}.ipynb").exists() else None,
        "report": REPORT_FILE if (run_dir / REPORT_FILE).exists() else None,
    }
    manifest.update({k: v for k, v in records.items() if k not in CORE_KEYS})
    return manifest


def start_manifest(run_dir: Path, *, runbook: str, run_id: str, parameters: dict, started_at: datetime,
                   scrubber: privacy.Scrubber, unattended: bool = True, repo: Path | None = None) -> dict[str, Any]:
    """Write the manifest of a run that is starting (status ``running``, the process id that runs it) and
    update the index; ``finalise`` replaces it when the run ends. A run killed before that keeps this
    one, and the index shows it as interrupted once its process is gone (``report.run_state``)."""
    manifest = {
        "runbook": runbook, "run_id": run_id, "status": "running",
        "started_at": started_at.isoformat(timespec="seconds"), "finished_at": None, "duration_s": None,
        "parameters": jsonable(parameters), "inputs": [], "target": None,
        "library_version": vespa_lib.__version__, "git_commit": git_commit(repo or Path.cwd()),
        "checks": [], "error": None, "unattended": unattended, "notebook": None, "report": None,
        "pid": os.getpid(), "host": socket.gethostname(),
    }
    write_manifest(run_dir, manifest, scrubber)
    write_index(run_dir.parent.parent)
    return manifest


def write_manifest(run_dir: Path, manifest: dict[str, Any], scrubber: privacy.Scrubber,
                   redact: bool = False) -> Path:
    """Write ``manifest.json`` with secrets scrubbed (and, with ``redact``, secret shapes and emails too)."""
    text = json.dumps(manifest, indent=2, ensure_ascii=False)
    text = scrubber.redact(text) if redact else scrubber.scrub(text)
    path = run_dir / MANIFEST_FILE
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_interactive_manifest(run: Any, status: str) -> Path:
    """Manifest for a run started in JupyterLab (no executed notebook: the session is live)."""
    scrubber = privacy.Scrubber(privacy.collect_secrets())
    manifest = build_manifest(run.dir, runbook=run.runbook, run_id=run.run_id, parameters=run.params,
                              started_at=run.started_at, error=None, unattended=False)
    manifest["status"] = status
    path = write_manifest(run.dir, manifest, scrubber)
    write_index(run.dir.parent.parent)
    return path


def scrub_tree(obj: Any, scrubber: privacy.Scrubber) -> Any:
    """``obj`` (a notebook node or any JSON value) with every string scrubbed."""
    if isinstance(obj, str):
        return scrubber.scrub(obj)
    if isinstance(obj, dict):
        return type(obj)({k: scrub_tree(v, scrubber) for k, v in obj.items()})
    if isinstance(obj, list):
        return [scrub_tree(v, scrubber) for v in obj]
    return obj


def _new_exporter() -> Any:
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="report", extra_template_basedirs=[str(TEMPLATES)],
                        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                        embed_images=True)


def render_report(nb: Any, path: Path, manifest: dict[str, Any] | None = None) -> Path:
    """Write the notebook as self-contained HTML without code cells (images embedded, no CDN links),
    opening with the verdict box of ``manifest`` (report.verdict_html); a failed run's report stops
    at the failed cell."""
    exporter = _new_exporter()
    verdict = report.verdict_html(manifest, path.parent, report.failure(nb)) if manifest else ""
    shown = report.report_notebook(nb)
    if manifest:
        shown.metadata["title"] = f"{manifest.get('status', '')}: {manifest.get('runbook', '')} {manifest.get('run_id', '')}"
    body, _ = exporter.from_notebook_node(shown, resources={"vespa_verdict": verdict})
    path.write_text(body, encoding="utf-8")
    return path


def finalise(run_dir: Path, executed: Path | None, *, runbook: str, run_id: str, parameters: dict,
             started_at: datetime, error: str | None, scrubber: privacy.Scrubber,
             unattended: bool = True, repo: Path | None = None) -> dict[str, Any]:
    """Write the evidence of a finished run (passed or failed) and update the index; return the manifest.

    Order matters (docs/ARCHITECTURE.md, “Evidence and privacy”): every file is scrubbed before it is written, then the whole folder is
    scanned; anything left is replaced and the run is marked failed.
    """
    import nbformat

    _scrub_files(run_dir, scrubber)  # files the notebook itself saved
    nb = None
    if executed is not None and executed.is_file():
        nb = scrub_tree(nbformat.read(str(executed), as_version=4), scrubber)
        nbformat.write(nb, str(run_dir / f"{runbook}.ipynb"))
    manifest = build_manifest(run_dir, runbook=runbook, run_id=run_id, parameters=parameters,
                              started_at=started_at, error=error, unattended=unattended, repo=repo)
    if nb is not None:  # the report opens with the verdict, so it is rendered from the manifest
        if error:
            manifest["failed_step"] = report.failure(nb).step
        manifest["report"] = REPORT_FILE
        render_report(nb, run_dir / REPORT_FILE, manifest)
        _scrub_files(run_dir, scrubber, only=[run_dir / REPORT_FILE])
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    write_manifest(run_dir, manifest, scrubber)
    leaks = enforce_clean(run_dir, scrubber)
    if leaks:
        kinds = sorted({f.kind for f in leaks})
        files = sorted({Path(f.path).name for f in leaks})
        manifest["status"] = "failed"
        manifest["error"] = (f"SecretLeak: {len(leaks)} secret or personal-data finding(s) ({', '.join(kinds)}) "
                             f"in {', '.join(files)}; replaced in the evidence. Mask or remove it in the runbook.")
        write_manifest(run_dir, manifest, scrubber, redact=True)
        enforce_clean(run_dir, scrubber)  # belt and braces: nothing found may stay on disk
    write_index(run_dir.parent.parent)
    return manifest


def _scrub_files(run_dir: Path, scrubber: privacy.Scrubber, only: list[Path] | None = None) -> None:
    for path in only or privacy._text_files([run_dir]):
        text = path.read_text(encoding="utf-8", errors="replace")
        cleaned = scrubber.scrub(text)
        if cleaned != text:
            path.write_text(cleaned, encoding="utf-8")


def enforce_clean(run_dir: Path, scrubber: privacy.Scrubber) -> list[privacy.Finding]:
    """Scan ``run_dir``; redact every finding in place (a file that stays dirty is replaced). Returns findings."""
    findings = scrubber.scan([run_dir])
    for name in sorted({f.path for f in findings}):
        path = Path(name)
        path.write_text(scrubber.redact(path.read_text(encoding="utf-8", errors="replace")), encoding="utf-8")
        if scrubber.scan([path]):
            path.write_text("Removed by the evidence scanner: it contained a secret or personal data.\n")
    return findings


# --- the index page --------------------------------------------------------------------------

INDEX_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.passed { color: #fff; background: #2e7d32; padding: .1rem .5rem; border-radius: .3rem; }
.failed { color: #fff; background: #c62828; padding: .1rem .5rem; border-radius: .3rem; }
.running { color: #fff; background: #1565c0; padding: .1rem .5rem; border-radius: .3rem; }
.interrupted { color: #fff; background: #6d4c41; padding: .1rem .5rem; border-radius: .3rem; }
.rehearsal { color: #5d4037; background: #fff3e0; padding: .1rem .4rem; border-radius: .3rem; }
"""
# The runbook filter: a select that hides other runbooks' rows; the choice is kept in the address
# (#runbook=import) so a filtered index can be bookmarked or linked. Inline: the page reads offline.
INDEX_JS = """
function vespaFilter(name) {
  document.querySelectorAll('tbody tr[data-runbook]').forEach(function (row) {
    row.hidden = Boolean(name) && row.dataset.runbook !== name;
  });
  document.getElementById('runbook-filter').value = name;
}
document.getElementById('runbook-filter').addEventListener('change', function (e) {
  location.hash = e.target.value ? 'runbook=' + e.target.value : '';
  vespaFilter(e.target.value);
});
var wanted = decodeURIComponent((location.hash.match(/runbook=([^&]*)/) || [null, ''])[1]);
vespaFilter(wanted);
"""
INDEX_COLUMNS = ("Date and time", "Runbook", "Mode", "Academic year", "Target", "Status", "Checks",
                 "Rows written", "Evidence")


def read_manifests(outputs: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every run's (folder, manifest) under ``outputs``, newest first. Read-only; unreadable ones skipped."""
    runs = []
    for path in Path(outputs).glob(f"*/*/{MANIFEST_FILE}"):
        try:
            runs.append((path.parent, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
    return sorted(runs, key=lambda r: (str(r[1].get("started_at", "")), r[0].name), reverse=True)


def write_index(outputs: Path) -> Path:
    """Rebuild ``outputs/index.html`` from the manifests: one row per run, newest first, a filter by
    runbook, self-contained."""
    outputs = Path(outputs)
    runs = read_manifests(outputs)
    rows = [_index_row(outputs, folder, m) for folder, m in runs]
    body = "\n".join(rows) or f'<tr><td colspan="{len(INDEX_COLUMNS)}">No runs yet.</td></tr>'
    names = sorted({str(m.get("runbook", "")) for _, m in runs})
    options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in names)
    head = "".join(f"<th>{c}</th>" for c in INDEX_COLUMNS)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>VESPA evidence index</title>
<style>{INDEX_CSS}</style></head>
<body><h1>VESPA evidence index</h1>
<p>{len(rows)} run(s), newest first. Generated {html.escape(datetime.now().astimezone().isoformat(timespec="seconds"))}.</p>
<p><label for="runbook-filter">Runbook </label><select id="runbook-filter"><option value="">all runbooks</option>{options}</select></p>
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{INDEX_JS}</script></body></html>
"""
    path = outputs / INDEX_FILE
    outputs.mkdir(parents=True, exist_ok=True)
    # Atomic replace: two runs finishing together must never leave a half-written page.
    tmp = path.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _index_row(outputs: Path, folder: Path, m: dict[str, Any]) -> str:
    esc = html.escape
    status = report.run_state(m)
    rel = folder.relative_to(outputs).as_posix()
    links = [(label, m.get(key)) for label, key in (("report", "report"), ("notebook", "notebook"))]
    links.append(("manifest", MANIFEST_FILE))
    anchors = " · ".join(f'<a href="{esc(quote(f"{rel}/{name}"))}">{label}</a>' for label, name in links if name)
    checks = m.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    when = str(m.get("started_at", "")).replace("T", " ")
    facts = report.facts(m, folder)
    error = f'<br><small>{esc(report.failure_sentence(m) or "")}</small>' if status == "failed" else ""
    if status == "interrupted":
        error = "<br><small>the run stopped before its evidence was written (killed or timed out)</small>"
    if facts.committed and status == "failed":  # the write stands: say so before the failure
        error = "<br><small><b>applied: write committed</b>, then a post-check failed</small>" + error
    target = esc(facts.target)
    if facts.rehearsal:
        target = f'<span class="rehearsal">rehearsal</span> {target}'
    written = report.format_cell(facts.rows) if facts.committed else (
        f"none (plan: {report.format_cell(facts.rows)})" if facts.rows else report.DASH)
    return (f'<tr data-runbook="{esc(str(m.get("runbook", "")))}"><td>{esc(when)}</td>'
            f"<td>{esc(str(m.get('runbook', '')))}</td><td>{esc(facts.mode)}</td><td>{esc(facts.year)}</td>"
            f"<td>{target}</td>"
            f'<td><span class="{status}">{status}</span>{error}</td>'
            f'<td class="n">{passed}/{len(checks)}</td><td class="n">{esc(written)}</td><td>{anchors}</td></tr>')
