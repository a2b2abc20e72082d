"""The runbook contract: parameters, validation and the ``Run`` a notebook reports through.

Conventions every runbook in ``notebooks/`` follows (docs/ARCHITECTURE.md, “Runbooks”, docs/ARCHITECTURE.md papermill notes):

1. **Parameters cell**, tagged ``parameters``, one parameter per line with a type and a help comment::

       target: str = "data/demo/production.duckdb"  # DuckDB path, or env var name holding a DSN
       academic_year: str = "2024/2025"             # year to check
       apply: bool = False                           # write only when True (read-only by default)
       sample: int | None = None                     # None = all rows

   Types: ``str``, ``int``, ``float``, ``bool``, ``dict``, ``list`` and ``X | None``. Defaults are
   safe (read-only). Values never hold secrets: a parameter names the env var that holds one.
   ``unmask_pii: bool = False`` is the one way to see personal data, and only interactively.
2. **First cell after it** validates, and nothing else happens before it::

       from vespa_lib.ops import runbook
       run = runbook.start("audit", globals())

   Unknown names (papermill only warns) and wrong types (papermill turns ``-p apply false`` into the
   string ``'false'``) raise ``ParameterError``. ``run.run_id``, ``run.dir`` and ``run.params`` follow.
3. **Body**: a markdown cell saying what is checked and why, then a short code cell calling the library
   and showing the result with ``run.show(df, title)`` (personal data masked). Findings that decide
   the verdict are ``run.check(name, passed, figures={...}, detail="...")``. Files for the evidence go
   through ``run.save_table(df, name)`` (masked, formula-safe CSV) and ``run.save_json(obj, name)``;
   inputs through ``run.add_input(path)`` (SHA-256); manifest extras through ``run.record(key, value)``
   — in particular ``run.record("target", describe_string)`` with credentials removed, counts, and
   ``plan_fingerprint``. No ``def`` or ``class`` in notebooks; logic lives in ``vespa_lib``.
4. **Verdict cell**, the last one: ``run.verdict()``. It writes ``checks.json`` and raises
   ``ValidationFailed`` naming every failed check, so papermill (and cron) exit non-zero.
   ``sys.exit(0)`` earlier is a clean early stop.

Run by ``vespa-ops run NAME -f params/x.yaml`` (unattended: the CLI sets ``VESPA_RUN_DIR``,
``VESPA_RUN_ID`` and ``VESPA_UNATTENDED=1`` and writes the evidence) or interactively in JupyterLab
(``start`` makes its own folder under ``outputs/`` and ``verdict`` writes a manifest there).
This module writes only inside the run folder.
"""

from __future__ import annotations

import ast
import json
import os
import types
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from vespa_lib.errors import ParameterError, ValidationFailed, VespaError
from vespa_lib.ops import evidence, privacy
from vespa_lib.ops.files import sha256_of

if TYPE_CHECKING:  # pandas is imported by the kernel anyway; the CLI does not need it
    import pandas as pd

IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "None"}


@dataclass(frozen=True)
class Param:
    """One declared runbook parameter."""

    name: str
    type: str
    default: Any
    help: str


def parameters_cell(notebook_path: Path) -> str:
    """Source of the cell tagged ``parameters``. Read-only; ParameterError if there is not exactly one."""
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(
            f"{notebook_path} has {len(cells)} cells tagged 'parameters'; a runbook needs exactly one "
            "(docs/ARCHITECTURE.md, “Runbooks”). Tag the cell that declares the parameters."
        )
    return cells[0].source


def parse_parameters(notebook_path: Path | str) -> list[Param]:
    """The parameters a runbook declares, from its ``name: type = default  # help`` lines. Read-only."""
    source = parameters_cell(Path(notebook_path))
    lines = source.splitlines()
    params = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            raise ParameterError(
                f"{notebook_path}: line {node.lineno} of the parameters cell is not `name: type = default`; "
                "declare one typed parameter per line."
            )
        type_str = ast.unparse(node.annotation)
        _type_parts(type_str)  # rejects types outside the convention
        default = ast.literal_eval(node.value) if node.value is not None else None
        line = lines[node.end_lineno - 1][node.end_col_offset :]
        help_text = line.split("#", 1)[1].strip() if "#" in line else ""
        params.append(Param(node.target.id, type_str, default, help_text))
    return params


def _type_parts(type_str: str) -> list[str]:
    parts = [p.strip() for p in type_str.split("|")]
    bad = [p for p in parts if p not in TYPE_NAMES]
    if bad:
        raise ParameterError(f"Parameter type {type_str!r} uses {bad}; allowed: {sorted(TYPE_NAMES)} and unions.")
    return parts


def type_matches(value: Any, type_str: str) -> bool:
    """Whether ``value`` fits the declared type. bool is strict; int excludes bool; float accepts int."""
    for part in _type_parts(type_str):
        if part == "None" and value is None:
            return True
        if part == "bool" and isinstance(value, bool):
            return True
        if part == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if part in ("str", "dict", "list") and isinstance(value, {"str": str, "dict": dict, "list": list}[part]):
            return True
    return False


def annotation_str(annotation: Any) -> str:
    """``str | None`` for the annotation object IPython stored (or the string, if it was one)."""
    if isinstance(annotation, str):
        return annotation
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, types.UnionType):
        return " | ".join(annotation_str(a) for a in annotation.__args__)
    return getattr(annotation, "__name__", repr(annotation))


def validate(declared: dict[str, str], values: dict[str, Any], secrets: list[str] | None = None) -> None:
    """Raise one ParameterError listing every unknown name, wrong type and secret-looking value."""
    problems = [f"unknown parameter {name!r}" for name in values if name not in declared]
    for name, value in values.items():
        if name in declared and not type_matches(value, declared[name]):
            problems.append(f"{name!r} must be {declared[name]}, got {type(value).__name__} {value!r}")
    problems += secret_problems(values, secrets)
    if problems:
        raise ParameterError(
            "Refusing to run: " + "; ".join(problems) + f". Declared parameters: {sorted(declared)}. "
            "Fix the params file or -p overrides (bools are true/false, not quoted)."
        )


def secret_problems(values: dict[str, Any], secrets: list[str] | None = None) -> list[str]:
    """Names of parameters whose value is, or looks like, a secret (docs/ARCHITECTURE.md, “Targets”: params name env vars)."""
    secrets = privacy.collect_secrets() if secrets is None else secrets
    scrubber = privacy.Scrubber(secrets)
    problems = []
    for name, value in values.items():
        text = json.dumps(value, default=str)
        kinds = {kind for kind, _ in scrubber.find(text) if kind != "email"}
        if kinds:
            problems.append(
                f"{name!r} holds a secret ({', '.join(sorted(kinds))}); put it in .env and pass the env var name"
            )
    return problems


def start(runbook: str, namespace: dict[str, Any]) -> Run:
    """Validate the notebook's parameters (its globals) and open the run. Writes only the run folder.

    The kernel first moves to the repository root (:func:`kernel_root`), so relative paths in the
    parameters mean the same in JupyterLab (kernel started in ``notebooks/``) as under ``vespa-ops``.
    """
    enter_repository()
    declared = {k: annotation_str(v) for k, v in namespace.get("__annotations__", {}).items()}
    values = {}
    for name, value in namespace.items():
        skip = isinstance(value, types.ModuleType | types.FunctionType | types.BuiltinFunctionType | type)
        if name.startswith("_") or name in IPYTHON_NAMES or skip or callable(value):
            continue
        values[name] = value
    missing = [name for name in declared if name not in values]
    if missing:
        raise ParameterError(f"Declared parameters {missing} have no value; give each a default in the parameters cell.")
    validate(declared, values, privacy.collect_secrets(dotenv_path=find_outputs().parent / ".env"))
    unattended = os.environ.get("VESPA_UNATTENDED") == "1"
    run_dir, run_id = os.environ.get("VESPA_RUN_DIR"), os.environ.get("VESPA_RUN_ID")
    if run_dir and run_id:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
    else:
        run_id, path = evidence.new_run_dir(find_outputs(), runbook)
    run = Run(runbook, run_id, path, {k: values[k] for k in declared}, unattended)
    if not (run_dir and run_id):  # an interactive run: vespa-ops writes the unattended run's own
        evidence.start_manifest(run.dir, runbook=runbook, run_id=run.run_id, parameters=run.params,
                                started_at=run.started_at, scrubber=privacy.Scrubber(privacy.collect_secrets()),
                                unattended=unattended)
    return run


ROOT_ENV = "VESPA_ROOT"


def _walk_up(start_dir: Path) -> Path | None:
    """The nearest folder at or above ``start_dir`` that holds ``notebooks/``."""
    here = start_dir.resolve()
    return next((folder for folder in (here, *here.parents) if (folder / "notebooks").is_dir()), None)


def installed_root() -> Path | None:
    """The checkout this package is imported from (editable install, PYTHONPATH), if it holds ``notebooks/``."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "notebooks").is_dir() and (root / "vespa_lib").is_dir() else None


def repository_root() -> Path | None:
    """Where ``vespa-ops`` finds the runbooks: ``VESPA_ROOT``, else the checkout of the installed
    package, else the nearest folder above the working folder holding ``notebooks/`` (None if none)."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).resolve() if env else installed_root() or _walk_up(Path.cwd())


def kernel_root() -> Path | None:
    """The repository a notebook kernel works in: ``VESPA_ROOT`` (set by ``vespa-ops``), else the
    folder above the working folder's ``notebooks/`` (JupyterLab starts kernels beside the notebook),
    else the installed checkout."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).resolve() if env else _walk_up(Path.cwd()) or installed_root()


def enter_repository() -> Path:
    """Make the repository root the kernel's working folder; relative parameters are read from there."""
    root = kernel_root()
    if root is not None and Path.cwd().resolve() != root:
        os.chdir(root)
    return Path.cwd()


def find_outputs(start_dir: Path | None = None) -> Path:
    """``outputs/`` of the project: ``VESPA_OUTPUTS``, else beside the nearest ``notebooks/`` folder."""
    if os.environ.get("VESPA_OUTPUTS"):
        return Path(os.environ["VESPA_OUTPUTS"])
    here = (start_dir or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir():
            return folder / "outputs"
    return here / "outputs"


class Run:
    """One execution of a runbook: checks, records and evidence files, all inside ``dir``."""

    def __init__(self, runbook: str, run_id: str, path: Path, params: dict[str, Any], unattended: bool):
        self.runbook, self.run_id, self.dir, self.params = runbook, run_id, Path(path), params
        self.unattended = unattended
        self.started_at = datetime.now().astimezone()
        self.checks: list[dict[str, Any]] = []
        self.records: dict[str, Any] = {}
        self.inputs: list[dict[str, Any]] = []
        _install_display(self)

    @property
    def masked(self) -> bool:
        """Personal data is masked unless ``unmask_pii`` is True in an interactive session (docs/ARCHITECTURE.md, “Evidence and privacy”)."""
        return not (self.params.get("unmask_pii") is True and not self.unattended)

    def show(self, df: pd.DataFrame, title: str | None = None) -> None:
        """Display ``df`` under an optional title: masked unless unmasked interactively, without the
        index, counts with thousands separators, dashes for missing values, yes/no for booleans
        (report.styled). An empty frame is shown as "None."."""
        from IPython.display import Markdown, display

        if title:
            display(Markdown(f"**{_md_escape(title)}**"))
        display(self._styled(df))

    def chart(self, fig: Any) -> None:
        """Display a matplotlib Figure (from ``vespa_lib.ops.charts``) as a PNG embedded in the report;
        None (nothing to draw) shows nothing."""
        import io

        from IPython.display import Image, display

        if fig is None:
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        display(Image(data=buffer.getvalue(), format="png"))

    def _styled(self, df: pd.DataFrame) -> Any:
        from IPython.display import Markdown

        from vespa_lib.ops import report

        frame = privacy.mask_frame(df) if self.masked else df
        return Markdown("*None.*") if frame.empty else report.Table(frame)

    def check(self, name: str, passed: bool, figures: dict | None = None, detail: str = "") -> bool:
        """Record a check for the verdict, print it, and return ``passed``."""
        entry = {"name": name, "passed": bool(passed), "figures": evidence.jsonable(figures or {}), "detail": detail}
        self.checks = [c for c in self.checks if c["name"] != name] + [entry]
        print(f"{'PASS' if passed else 'FAIL'}  {name}" + (f": {detail}" if detail else ""))
        self._save_state()
        return bool(passed)

    def save_table(self, df: pd.DataFrame, name: str) -> Path:
        """Write ``df`` as a masked, formula-safe CSV ``<name>.csv`` into the run folder."""
        safe = privacy.mask_frame(df)
        for col in safe.columns:
            if privacy._is_text_column(safe[col]):
                safe[col] = safe[col].map(privacy.neutralise_formula)
        path = self.dir / _file_name(name, ".csv")
        safe.to_csv(path, index=False)
        return path

    def save_json(self, obj: Any, name: str) -> Path:
        """Write ``obj`` as ``<name>.json`` into the run folder."""
        path = self.dir / _file_name(name, ".json")
        path.write_text(json.dumps(evidence.jsonable(obj), indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    def record(self, key: str, value: Any) -> None:
        """Add ``key`` to the manifest (e.g. ``target``, counts, ``plan_fingerprint``)."""
        if key in evidence.CORE_KEYS and key not in evidence.RECORDABLE_KEYS:
            raise VespaError(f"Manifest key {key!r} is set by the workbook itself; record it under another name.")
        self.records[key] = evidence.jsonable(value)
        self._save_state()

    def add_input(self, path: Path | str) -> str:
        """Record an input file with its SHA-256 and size; returns the digest. Read-only on the input."""
        path = Path(path)
        digest = sha256_of(path)
        self.inputs = [i for i in self.inputs if i["path"] != str(path)]
        self.inputs.append({"path": str(path), "sha256": digest, "bytes": path.stat().st_size})
        self._save_state()
        return digest

    def verdict(self) -> None:
        """Write ``checks.json``; raise ValidationFailed naming failed checks (or if none were made)."""
        self._save_state()
        failed = [c["name"] for c in self.checks if not c["passed"]]
        if not self.unattended:
            status = "passed" if self.checks and not failed else "failed"
            evidence.write_interactive_manifest(self, status)
        if not self.checks:
            raise ValidationFailed(["no checks"], "The verdict has no checks to judge; a runbook must call run.check().")
        if failed:
            raise ValidationFailed(failed, f"{len(failed)} of {len(self.checks)} checks failed: " + ", ".join(failed))
        print(f"All {len(self.checks)} checks passed. Evidence: {self.dir}")

    def _save_state(self) -> None:
        """Persist checks, records and inputs so the CLI finds them even if a later cell raises."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / evidence.CHECKS_FILE).write_text(json.dumps(self.checks, indent=2, ensure_ascii=False))
        state = {"records": self.records, "inputs": self.inputs}
        (self.dir / evidence.STATE_FILE).write_text(json.dumps(state, indent=2, ensure_ascii=False))


def _install_display(run: Run) -> None:
    """In a kernel, show every DataFrame a cell leaves as its result the way ``Run.show`` does, and
    keep the values ``check``, ``record`` and ``save_*`` return (True, [True, False], a Path) out of
    the report: a runbook shows what it means to show. Outside IPython this does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - the kernel always has IPython
        return
    shell = get_ipython()
    if shell is None:
        return
    import pandas as pd

    formatters = shell.display_formatter
    formatters.formatters["text/html"].for_type(pd.DataFrame, lambda df: _html_of(run._styled(df)))
    quiet = formatters.ipython_display_formatter
    quiet.for_type(bool, lambda value: None)
    quiet.for_type(PurePath, lambda value: None)
    for kind in (list, tuple):
        quiet.for_type(kind, _show_unless_flags)


def _html_of(shown: Any) -> str:
    return shown._repr_html_() if hasattr(shown, "frame") else f"<p><em>{shown.data.strip('*')}</em></p>"


def _show_unless_flags(value: list | tuple) -> None:
    """A list of check outcomes (booleans, None) is not shown; any other list is, as plain text."""
    if all(v is None or isinstance(v, bool) for v in value):
        return
    from IPython.display import display

    display({"text/plain": repr(value)}, raw=True)


def _file_name(name: str, suffix: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return stem if stem.endswith(suffix) else stem + suffix


def _md_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\`*_[]<>#|" else ch for ch in text)
