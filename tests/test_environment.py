"""environment.yml and pyproject.toml describe the same environment (docs/ARCHITECTURE.md, “Setting up and testing”)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    """Split a requirement into (canonical name with extras, normalised specifier)."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*(.*)$", req)
    assert m, f"unparseable requirement {req!r}"
    name = m.group(1).lower().replace("_", "-")
    spec = ",".join(sorted(s.strip() for s in m.group(2).split(",") if s.strip()))
    return name, spec


def _pyproject() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]
    return dict(_norm(r) for r in reqs)


def _environment() -> tuple[dict, dict[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    reqs = [r for r in pip_section if not r.startswith("-e")]
    return env, dict(_norm(r) for r in reqs)


def test_same_packages_and_ranges():
    py = _pyproject()
    _, conda = _environment()
    assert set(py) == set(conda), f"only in pyproject: {set(py) - set(conda)}; only in environment.yml: {set(conda) - set(py)}"
    for name, spec in py.items():
        assert conda[name] == spec, f"{name}: pyproject {spec!r} != environment.yml {conda[name]!r}"


def test_python_version_matches_requires_python():
    env, _ = _environment()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = re.search(r">=\s*(\d+\.\d+)", data["project"]["requires-python"]).group(1)
    pins = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pins == [f"python={floor}"]


@pytest.mark.parametrize("req", ["pandas>=2.2,<4", "psycopg[binary] >=3.2, <4"])
def test_normaliser_handles_extras_and_spaces(req):
    name, spec = _norm(req)
    assert "," in spec and not name.endswith(" ")


def test_every_dependency_has_an_upper_bound():
    # "Pin them sensibly": a major-version upgrade must be a deliberate change.
    for name, spec in _pyproject().items():
        assert "<" in spec, f"{name} has no upper bound"


def test_the_suite_runs_with_versions_the_ranges_admit():
    # Lower bounds are versions the suite has run with: the environment running it must be inside the ranges.
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet

    outside = {}
    for name, spec in _pyproject().items():
        dist = name.split("[")[0]
        try:
            installed = version(dist)
        except PackageNotFoundError:
            continue  # an optional test tool not installed here
        if installed not in SpecifierSet(spec):
            outside[dist] = (installed, spec)
    assert not outside, f"installed versions outside the declared ranges: {outside}"


@pytest.mark.parametrize(("name", "untested"), [("duckdb", "1.4.5"), ("pandas", "2.2.3")])
def test_versions_the_suite_never_ran_with_are_refused(name, untested):
    # duckdb 1.4.5 fails on import ('DuckDBPyConnection' object has no attribute 'complete').
    from packaging.specifiers import SpecifierSet

    assert untested not in SpecifierSet(_pyproject()[name])
