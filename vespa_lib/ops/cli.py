"""``vespa-ops``: the command line over the runbooks (docs/ARCHITECTURE.md, “Setting up and testing”). A thin layer over papermill.

    vespa-ops run RUNBOOK [-f params/x.yaml] [-p name=value ...] [--timeout SEC]
    vespa-ops list                      runbooks with their parameters, types, defaults and help
    vespa-ops index                     rebuild outputs/index.html from the manifests
    vespa-ops undo RUN_ID --target T [--approve FP]
                                        plan the reversal of an applied run; with --approve, apply it

Exit codes: 0 the run passed every check; 1 the run failed (evidence still written); 2 the command
was refused before anything ran (unknown runbook, bad parameters). ``run`` prints one line per runbook
section with its duration (``vespa_lib.ops.sections``), the verdict (a failed run: what failed, in which
section, and where the evidence is, on one line), and last the evidence folder; nothing on stderr when
all is well. Writes only under ``outputs/``.

Runs from any working folder: the runbooks are in ``--notebooks``, else ``$VESPA_ROOT/notebooks``,
else beside the installed package (an editable install knows its checkout), else in the nearest
folder above the working folder holding ``notebooks/``. The repository root is the folder above
``notebooks/``: the kernel works there, so relative paths in parameters are read from the root, and a
relative ``-f`` file not found in the working folder is read from the root too. The kernel runs on
the interpreter ``vespa-ops`` runs on (``vespa_lib.ops.kernel``), registered or not; ``--kernel NAME``
picks a registered kernel instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from vespa_lib.errors import ParameterError, VespaError
from vespa_lib.ops import evidence, privacy, runbook
from vespa_lib.ops.sections import SectionLog

# nbformat validates notebooks with jsonschema, which compiles some forty IRI grammars at import when
# the optional rfc3987-syntax package is present (JupyterLab's dependencies bring it): about 1.2 s
# of every run. vespa-ops never validates an IRI, so that optional format checker stays unloaded.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

KERNEL = "vespa"
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
Command = Callable[[argparse.Namespace], int]
CellHook = Callable[..., None]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vespa-ops``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except VespaError as exc:
        print(f"vespa-ops: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand registers its handler (add one function to extend)."""
    parser = argparse.ArgumentParser(prog="vespa-ops", description="Run and review the VESPA runbooks.")
    parser.add_argument("--notebooks", type=Path, default=None,
                        help="folder of runbooks (default: $VESPA_ROOT/notebooks, else the installed checkout's)")
    parser.add_argument("--outputs", type=Path, default=None, help="evidence folder (default: beside notebooks/)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a runbook with papermill and write its evidence")
    run.add_argument("runbook", help="runbook name, e.g. audit")
    run.add_argument("-f", "--file", type=Path, help="YAML parameters file")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override one parameter; VALUE is read as YAML (true, 3, [a, b])")
    run.add_argument("--timeout", type=int, default=1800, help="per-cell execution timeout in seconds")
    run.add_argument("--kernel", default=None,
                     help="a registered Jupyter kernel to run on (default: this interpreter, registered or not)")
    run.set_defaults(handler=cmd_run)
    sub.add_parser("list", help="list runbooks and their parameters").set_defaults(handler=cmd_list)
    sub.add_parser("index", help="rebuild outputs/index.html").set_defaults(handler=cmd_index)
    undo = sub.add_parser("undo", help="reverse an applied run from its pre-image backup")
    undo.add_argument("run_id")
    undo.add_argument("--target", required=True, help="duckdb:PATH or postgres:ENV_VAR_NAME")
    undo.add_argument("--approve", default="", help="fingerprint of the undo plan you reviewed")
    undo.set_defaults(handler=cmd_undo)
    return parser


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(notebooks folder, repo root = its parent, outputs folder)."""
    notebooks = args.notebooks
    if notebooks is None:
        root = runbook.repository_root()
        if root is None:
            raise ParameterError(f"No runbooks found: {Path.cwd()} is not inside the repository and the "
                                 f"installed package is not a checkout. Pass --notebooks or set {runbook.ROOT_ENV}.")
        notebooks = root / "notebooks"
    notebooks = notebooks.resolve()
    root = notebooks.parent
    return notebooks, root, (args.outputs or root / "outputs").resolve()


def notebook_for(notebooks: Path, name: str) -> Path:
    """The runbook's notebook; ParameterError naming the available ones if it does not exist."""
    path = notebooks / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    if not path.is_file():
        known = sorted(p.stem for p in notebooks.glob("*.ipynb"))
        raise ParameterError(f"No runbook {name!r} in {notebooks}; available: {known or 'none'}. "
                             "Check the name or pass --notebooks.")
    return path


def params_file(file: Path | None, root: Path) -> Path | None:
    """``-f`` as given if it exists, else (relative) the same path under the repository root."""
    if file is None or file.exists() or file.is_absolute() or not (root / file).exists():
        return file
    return root / file


def load_parameters(file: Path | None, overrides: list[str]) -> dict[str, Any]:
    """Parameters from the YAML file, then ``name=value`` overrides (each value read as YAML)."""
    values: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ParameterError(f"{file} must be a YAML mapping of name: value, not {type(loaded).__name__}.")
        values.update(loaded)
    for item in overrides:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"Override {item!r} is not NAME=VALUE; write e.g. -p apply=true.")
        values[name.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return values


def _empty_text(values: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """An empty value (``-p approve=``, YAML ``approve:``) of a text parameter that cannot be None is the
    empty text, e.g. "no approval"; elsewhere it stays None (and is refused where None is not allowed)."""
    return {k: ("" if v is None and types.get(k) == "str" else v) for k, v in values.items()}


def cmd_run(args: argparse.Namespace) -> int:
    """Validate, execute through papermill, finalise the evidence (always), print the folder last."""
    notebooks, root, outputs = _paths(args)
    args.file = params_file(args.file, root)
    name = Path(args.runbook).stem
    path = notebook_for(notebooks, name)
    declared = runbook.parse_parameters(path)
    values = _empty_text(load_parameters(args.file, args.param), {p.name: p.type for p in declared})
    secrets = privacy.collect_secrets(dotenv_path=root / ".env")
    runbook.validate({p.name: p.type for p in declared}, values, secrets)
    parameters = {p.name: p.default for p in declared} | values
    run_id, run_dir = evidence.new_run_dir(outputs, name)
    started = datetime.now().astimezone()
    evidence.start_manifest(run_dir, runbook=name, run_id=run_id, parameters=parameters, started_at=started,
                            scrubber=privacy.Scrubber(secrets), repo=root)  # a killed run stays visible
    print(f"Running {name} (run {run_id}) ...", flush=True)
    log = SectionLog(name)
    with tempfile.TemporaryDirectory(prefix="vespa-run-") as tmp:
        executed = Path(tmp) / f"{name}.ipynb"
        try:
            error = execute(path, executed, values, root=root, run_dir=run_dir, run_id=run_id,
                            timeout=args.timeout, kernel=args.kernel, hooks=log.hooks())
            failed_in = log.finish(error)
            manifest = evidence.finalise(run_dir, executed, runbook=name, run_id=run_id, parameters=parameters,
                                         started_at=started, error=error, scrubber=privacy.Scrubber(secrets),
                                         repo=root)
        finally:
            from vespa_lib.ops.kernel import reap_kernels

            reap_kernels()  # the kernel exits while the evidence is written; wait for it before returning
    _print_summary(manifest, section=failed_in if error else None, run_dir=run_dir)
    print(run_dir)
    return 0 if manifest["status"] == "passed" else 1


def execute(path: Path, executed: Path, values: dict[str, Any], *, root: Path, run_dir: Path, run_id: str,
            timeout: int, kernel: str | None, hooks: dict[str, CellHook] | None = None) -> str | None:
    """Run the notebook with papermill in ``root``; return None on success, else ``"ExceptionName: message"``.

    ``kernel`` None runs it on this interpreter (``vespa_lib.ops.kernel``); a name, on that registered kernel.
    ``hooks`` are nbclient's cell hooks (``on_cell_start`` …), handed on through papermill's engine keyword
    arguments: :class:`vespa_lib.ops.sections.SectionLog` prints the sections with them."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from vespa_lib.ops.kernel import ENGINE, InterpreterKernelManager

    env = {"VESPA_RUN_DIR": str(run_dir), "VESPA_RUN_ID": run_id, "VESPA_UNATTENDED": "1",
           runbook.ROOT_ENV: str(root)}
    engine: dict[str, Any] = {} if kernel else {"kernel_manager_class": InterpreterKernelManager}
    engine |= hooks or {}
    try:
        with _environment(env), _validated_parameters():
            papermill.execute_notebook(str(path), str(executed), parameters=values, kernel_name=kernel or KERNEL,
                                       engine_name=ENGINE, cwd=str(root), execution_timeout=timeout, progress_bar=False,
                                       log_output=False, **engine)
    except PapermillExecutionError as exc:
        return ANSI_RE.sub("", f"{exc.ename}: {exc.evalue}")
    except Exception as exc:  # a kernel that dies or times out is a failed run, still with evidence
        return ANSI_RE.sub("", f"{type(exc).__name__}: {exc}")
    return None


class _KnownParameters(logging.Filter):
    """Drops papermill's "Passed unknown parameter" and "Unable to parse line" warnings, nothing else.

    ``cmd_run`` has already checked every name and type against the runbook's own reading of its
    parameters cell (``runbook.validate`` refuses unknown names), which reads annotations such as
    ``str | None`` that papermill's simpler pattern does not; papermill's guess would only repeat a
    false alarm in every night's log."""

    PREFIXES = ("Passed unknown parameter:", "Unable to parse line")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.PREFIXES)


@contextlib.contextmanager
def _validated_parameters() -> Iterator[None]:
    """:class:`_KnownParameters` on papermill's logger while it runs a validated runbook."""
    logger, known = logging.getLogger("papermill"), _KnownParameters()
    logger.addFilter(known)
    try:
        yield
    finally:
        logger.removeFilter(known)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set env vars for the kernel (it inherits this process's environment), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _print_summary(manifest: dict[str, Any], section: str | None = None, run_dir: Path | None = None) -> None:
    """One verdict line, then each failed check and the error. A run whose write committed says so
    first ("APPLIED (write committed), then post-check failed: X"): the write stands, nobody should
    undo or repeat it because a check after the commit failed. A failed run without a committed write
    says in its one line what failed, in which section, and where the evidence is:
    ``sync_check: FAILED at "6. Apply": GuardRefused: … (2/5 checks passed) — evidence outputs/…``."""
    checks = manifest.get("checks") or []
    passed = sum(1 for c in checks if c["passed"])
    failed = [c["name"] for c in checks if not c["passed"]]
    if manifest.get("write_committed") and manifest["status"] != "passed":
        after = f"post-check failed: {', '.join(failed)}" if failed else f"the run failed: {manifest.get('error')}"
        print(f"{manifest['runbook']}: APPLIED (write committed), then {after} ({passed}/{len(checks)} checks passed)")
        written = manifest.get("written") or {}
        if written.get("run_id"):
            print(f"  the write of run {written['run_id']} stands: do not repeat it; undo only on purpose "
                  f"(vespa-ops undo {written['run_id']})")
    elif manifest.get("write_committed"):
        print(f"{manifest['runbook']}: PASSED ({passed}/{len(checks)} checks passed; write committed)")
    elif manifest["status"] != "passed" and manifest.get("error"):
        print(_failure_line(manifest, section or manifest.get("failed_step"), run_dir,
                            f"{passed}/{len(checks)} checks passed"))
    else:
        print(f"{manifest['runbook']}: {manifest['status'].upper()} ({passed}/{len(checks)} checks passed)")
    for check in checks:
        if not check["passed"]:
            print(f"  FAILED {check['name']}: {check.get('detail', '')}")
    if manifest.get("error") and manifest.get("write_committed"):
        print(f"  error: {manifest['error']}")


def _failure_line(manifest: dict[str, Any], section: str | None, run_dir: Path | None, tally: str) -> str:
    """``RUNBOOK: FAILED at "SECTION": Error: message (tally) — evidence FOLDER`` on one line."""
    error = " ".join(str(manifest["error"]).split())
    where = f' at "{section}"' if section else ""
    evidence_at = f" — evidence {run_dir}" if run_dir else ""
    return f"{manifest['runbook']}: {manifest['status'].upper()}{where}: {error} ({tally}){evidence_at}"


def cmd_list(args: argparse.Namespace) -> int:
    """Print every runbook with its parameters (from each notebook's parameters cell). Read-only."""
    notebooks, _, _ = _paths(args)
    paths = sorted(notebooks.glob("*.ipynb"))
    if not paths:
        print(f"No runbooks in {notebooks}.")
    for path in paths:
        print(path.stem)
        try:
            params = runbook.parse_parameters(path)
        except VespaError as exc:
            print(f"  (parameters unreadable: {exc})")
            continue
        for p in params:
            print(f"  {p.name}: {p.type} = {p.default!r}" + (f"  # {p.help}" if p.help else ""))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Rebuild ``outputs/index.html`` and print its path."""
    _, _, outputs = _paths(args)
    print(evidence.write_index(outputs))
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    """Plan the undo of ``run_id`` (read-only); with ``--approve FP`` apply it as a guarded run (docs/ARCHITECTURE.md, “Guarded writes”)."""
    from vespa_lib import importer
    from vespa_lib.sources import targets
    from vespa_lib.write import guard

    target = importer.open_import(args.target)
    try:
        plan = guard.plan_undo(target.con, args.run_id)
        print(plan.summary_frame().to_string(index=False))
        print(f"Undo plan fingerprint: {plan.fingerprint}")
        if not args.approve:
            print(f"Nothing written. To apply: vespa-ops undo {args.run_id} --target {args.target} "
                  f"--approve {plan.fingerprint}")
            return 0
        undo_id = evidence.new_run_id()
        guard.apply_undo(target.con, args.run_id, approve=args.approve, undo_run_id=undo_id,
                         actor=importer.actor(), target_kind=targets.parse_target(args.target).kind)
        print(f"Run {args.run_id} undone by guarded run {undo_id}.")
        return 0
    finally:
        target.close()


def entry() -> None:
    """The ``vespa-ops`` command: :func:`main`, then leave at once. By then every file of the run is
    written and closed and its kernel reaped; what is left is tearing down the interpreter's modules
    (pandas, pyarrow, zmq), a fifth of a second of every cron run that nothing reads."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
