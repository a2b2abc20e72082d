"""The field map: which CSV header carries each logical column (docs/DOMAIN.md, “Reading the files”).

The map itself is data (``fieldmap.yaml``); this module loads it and resolves a file's headers
against it. Resolution is a read-only operation on header names: it never opens data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from vespa_lib.errors import SnapshotError

OBJECTS = ("object_6", "object_10", "object_29")
CYCLES = (1, 2, 3)
ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")


@dataclass(frozen=True)
class Column:
    name: str
    headers: tuple[str, ...]
    kind: str
    required: bool = False
    blocker: bool = False
    fallback: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Question:
    question_id: str
    element: str  # vision/effort/systems/practice/attitude/outcome
    current_field: str
    cycle_fields: tuple[str, str, str]


@dataclass
class Resolution:
    """How one file's headers map onto the logical columns of one object."""

    object_name: str
    found: dict[str, str] = field(default_factory=dict)  # logical name -> header used
    missing: list[str] = field(default_factory=list)
    missing_required: list[str] = field(default_factory=list)
    blockers: list[Column] = field(default_factory=list)
    unmapped_headers: list[str] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return self.found.get(name)

    def to_dict(self) -> dict:
        return {
            "object": self.object_name,
            "found": dict(self.found),
            "missing": list(self.missing),
            "missing_required": list(self.missing_required),
            "blockers": [{"column": c.name, "headers": list(c.headers), "fallback": c.fallback} for c in self.blockers],
            "unmapped_headers": list(self.unmapped_headers),
        }


@dataclass(frozen=True)
class FieldMap:
    version: int
    objects: dict[str, dict[str, Column]]
    file_globs: dict[str, str]
    questions: tuple[Question, ...]

    def columns(self, object_name: str) -> dict[str, Column]:
        return self.objects[object_name]

    def resolve(self, object_name: str, headers: list[str]) -> Resolution:
        """Match a file's header row against the map (first listed spelling wins; case-sensitive,
        then case-insensitive). Raises SnapshotError if a required column is missing."""
        res = Resolution(object_name)
        exact = {h: h for h in headers}
        folded = {h.strip().lower(): h for h in headers}
        used: set[str] = set()
        for name, col in self.objects[object_name].items():
            hit = next((exact[h] for h in col.headers if h in exact), None)
            if hit is None:
                hit = next((folded[h.lower()] for h in col.headers if h.lower() in folded), None)
            if hit is None:
                res.missing.append(name)
                if col.required:
                    res.missing_required.append(name)
                if col.blocker:
                    res.blockers.append(col)
            else:
                res.found[name] = hit
                used.add(hit)
        res.unmapped_headers = [h for h in headers if h not in used]
        return res

    def require(self, object_name: str, headers: list[str], path: str | Path = "") -> Resolution:
        res = self.resolve(object_name, headers)
        if res.missing_required:
            cols = self.objects[object_name]
            wanted = "; ".join(f"{n} (one of {', '.join(cols[n].headers)})" for n in res.missing_required)
            raise SnapshotError(
                f"{path or object_name}: required column(s) missing: {wanted}. "
                f"Check the file is a {object_name} export, or add its header spelling to fieldmap.yaml."
            )
        return res


def _load(data: dict) -> FieldMap:
    objects: dict[str, dict[str, Column]] = {}
    globs: dict[str, str] = {}
    for obj, spec in data["objects"].items():
        globs[obj] = spec["file_glob"]
        objects[obj] = {
            name: Column(name=name, headers=tuple(c["headers"]), kind=c["kind"],
                         required=bool(c.get("required", False)), blocker=bool(c.get("blocker", False)),
                         fallback=c.get("fallback"), note=c.get("note"))
            for name, c in spec["columns"].items()
        }
    questions = tuple(
        Question(qid, v[0], v[1], (v[2], v[3], v[4])) for qid, v in data["questions"].items()
    )
    return FieldMap(version=int(data["version"]), objects=objects, file_globs=globs, questions=questions)


@lru_cache(maxsize=4)
def load(path: str | None = None) -> FieldMap:
    """Load the field map (the packaged ``fieldmap.yaml`` unless a path is given)."""
    if path is None:
        text = resources.files(__package__).joinpath("fieldmap.yaml").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return _load(yaml.safe_load(text))


def question_ids() -> list[str]:
    return [q.question_id for q in load().questions]
