"""Knack's state during the rehearsed school year: records that appear, change and vanish day by day.

``KnackWorld.load(world_dir, schools)`` starts from the generated fresh export (``fresh_export/`` and
``fresh_truth.csv`` of :func:`vespa_lib.sandbox.synth.generate_fresh_export`) and the archive snapshot
(``snapshot/``). Each object_10 record the truth says syncs is given a timeline: cycle ``k`` of a
record whose latest completion is ``D`` is completed ``(n - k) * 35`` days before ``D``, so on a
night before ``D`` Knack shows the record with fewer cycles (and before its first cycle, not at all).
Records the truth sets aside (blank or unparseable dates, stale 2024/2025 records, no email, no
school) are in Knack from the first night. ``evolve(day)`` applies one day of the changes the real
system saw (:mod:`vespa_lib.sandbox.rehearsal.changes`); ``write_export(folder, night)`` writes Knack's state
of that night in the snapshot format; ``expected(night)`` is what each open year must hold: per
label, per email, per cycle the six scores. Writes only the export folder it is given.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

__all__ = ["ELEMENTS", "KnackWorld", "Rec", "parse_day", "year_label"]

ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")
FILES = {"object_6": ("6", "\r\n", False), "object_10": ("10", "\n", True), "object_29": ("29", "\n", True)}
O10 = {"email": "field_197_email", "date": "field_855_date", "current": "field_146",
       "current_six": ("field_147", "field_148", "field_149", "field_150", "field_151", "field_152"),
       "cycles": {1: ("field_155", "field_156", "field_157", "field_158", "field_159", "field_160"),
                  2: ("field_161", "field_162", "field_163", "field_164", "field_165", "field_166"),
                  3: ("field_167", "field_168", "field_169", "field_170", "field_171", "field_172")}}
O6 = {"email": "field_91_email", "school": "field_179"}
CYCLE_GAP = timedelta(days=35)


def parse_day(cell: str) -> date | None:
    """The day of a Knack date cell (``dd/mm/yyyy[ HH:MM]`` or ISO); None when blank or not a date."""
    text = (cell or "").strip()
    for fmt, width in (("%d/%m/%Y", 10), ("%Y-%m-%d", 10)):
        try:
            return datetime.strptime(text[:width], fmt).date()
        except ValueError:
            continue
    return None


def year_label(day: date, calendar: bool) -> str:
    """``Y/Y`` for a calendar-year school, else the UK year starting 1 August (my own rule, not the library's)."""
    if calendar:
        return f"{day.year}/{day.year}"
    start = day.year if day.month >= 8 else day.year - 1
    return f"{start}/{start + 1}"


def _six(cells: dict, cycle: int) -> tuple[int, ...] | None:
    raw = [cells.get(h, "").strip() for h in O10["cycles"][cycle]]
    if not all(raw):
        return None
    return tuple(int(float(v)) for v in raw)


@dataclass
class Event:
    """Cycle ``cycle`` completed on ``day`` with ``six`` scores."""

    day: date
    cycle: int
    six: tuple[int, ...]


@dataclass
class Rec:
    """One object_10 record: its base cells, timeline and what the sync must make of it."""

    rid: str
    cells: dict[str, str]
    email: str
    calendar: bool
    events: list[Event] = field(default_factory=list)
    always: bool = False  # in Knack from the first night with its base cells (set aside by the sync)
    syncs: bool = True
    f10: bool = False  # later cycles copy cycle 1 (F10): only cycle 1 is a completion
    deleted: date | None = None
    o29: dict | None = None
    kind: str = "base"

    def visible(self, night: date) -> list[Event]:
        if self.deleted and night >= self.deleted:
            return []
        return [e for e in self.events if e.day <= night]

    def shown(self, night: date) -> bool:
        return (self.always and not (self.deleted and night >= self.deleted)) or bool(self.visible(night))

    def render(self, night: date) -> dict[str, str]:
        """The record's cells on ``night``: cycles completed by then, current cycle and date."""
        cells = dict(self.cells)
        if self.always:
            return cells
        seen = self.visible(night)
        if self.f10:
            cells[O10["date"]] = seen[-1].day.strftime("%d/%m/%Y 10:00")
            return cells
        for k, headers in O10["cycles"].items():
            six = next((e.six for e in seen if e.cycle == k), None)
            for h, v in zip(headers, six or ("",) * 6, strict=True):
                cells[h] = str(v)
        last = seen[-1]
        cells[O10["current"]] = str(last.cycle)
        for h, v in zip(O10["current_six"], last.six, strict=True):
            cells[h] = str(v)
        cells[O10["date"]] = last.day.strftime("%d/%m/%Y 10:00")
        return cells

    def expected(self, night: date) -> tuple[str, dict[int, tuple]] | None:
        """(label, cycle -> six) this record syncs to on ``night``; None when it syncs nothing."""
        seen = self.visible(night)
        if not self.syncs or self.always or not seen:
            return None
        label = year_label(seen[0].day, self.calendar)  # the cohort rule: cycle 1 decides the year
        if self.f10:
            return label, {1: seen[0].six}
        return label, {e.cycle: e.six for e in seen}


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _truth(path: Path) -> dict[str, dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return {r["record_id"]: r for r in csv.DictReader(fh) if r["object"] == "object_10"}


def _timeline(cells: dict, calendar: bool) -> tuple[list[Event], bool]:
    """Cycle events ending on the record's date; (events, f10). Earlier cycles 35 days apart."""
    last = parse_day(cells.get(O10["date"], ""))
    sixes = {k: _six(cells, k) for k in (1, 2, 3)}
    n = int(float(cells.get(O10["current"]) or 1))
    if last is None or sixes[1] is None:
        return [], False
    if any(sixes[k] == sixes[1] for k in (2, 3)):  # F10 copies: one completion, dated as the record
        return [Event(last, 1, sixes[1])], True
    floor = date(last.year, 1, 10) if calendar else date(last.year if last.month >= 8 else last.year - 1, 8, 20)
    events = []
    for k in range(1, n + 1):
        if sixes.get(k) is None:
            continue
        day = max(last - (n - k) * CYCLE_GAP, floor + timedelta(days=k))
        events.append(Event(min(day, last), k, sixes[k]))
    return events, False


class KnackWorld:
    """Knack's three objects as the rehearsal evolves them (see the module docstring)."""

    def __init__(self, headers: dict[str, list[str]], o6: list[dict], records: dict[str, Rec],
                 snapshot: dict[str, tuple[dict, dict | None]], schools: dict[str, dict], seed: int = 2025):
        self.headers, self.o6, self.records, self.snapshot = headers, o6, records, snapshot
        self.schools = schools  # name -> {knack_id, calendar}
        self.rng = random.Random(seed)
        self.log: list[tuple[date, str, str]] = []  # (day, change kind, detail without personal data)

    @classmethod
    def load(cls, world: Path, schools: dict[str, dict], seed: int = 2025) -> KnackWorld:
        """From ``world/fresh_export``, ``world/fresh_truth.csv`` and ``world/snapshot`` (read-only)."""
        export, headers, rows = Path(world) / "fresh_export", {}, {}
        for obj, (num, _, _) in FILES.items():
            (path,) = export.glob(f"FullObject_{num}_*.csv")
            headers[obj], rows[obj] = _read(path)
        truth = _truth(Path(world) / "fresh_truth.csv")
        by_knack = {s["knack_id"]: s for s in schools.values()}
        for t in truth.values():  # each school's email domain, for the students the rehearsal adds
            if t.get("expected") == "sync" and t.get("establishment_knack_id") in by_knack and "@" in t["email"]:
                by_knack[t["establishment_knack_id"]].setdefault("domain", t["email"].rsplit("@", 1)[1].lower())
        o29 = {r["field_792"]: r for r in rows["object_29"] if r.get("field_792")}
        records = {}
        for cells in rows["object_10"]:
            t = truth.get(cells["id"], {})
            calendar = by_knack.get(t.get("establishment_knack_id"), {}).get("calendar", False)
            syncs = t.get("expected") == "sync"
            events, f10 = _timeline(cells, calendar) if syncs else ([], False)
            records[cells["id"]] = Rec(cells["id"], cells, (t.get("email") or "").strip().lower(), calendar,
                                       events, always=not syncs or not events, syncs=syncs and bool(events),
                                       f10=f10, o29=o29.get(cells["id"]))
        return cls(headers, rows["object_6"], records, _snapshot(Path(world) / "snapshot"), schools, seed)

    # --- what Knack shows -------------------------------------------------------------------

    def write_export(self, folder: Path, night: date, drop: set[str] = frozenset()) -> Path:
        """Knack's state on ``night`` as a fresh export in ``folder`` (replaced); ``drop``: record ids
        left out of this export only (a partial export)."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("FullObject_*.csv"):
            old.unlink()
        shown = [r for r in self.records.values() if r.shown(night) and r.rid not in drop]
        tables = {"object_6": self.o6, "object_10": [r.render(night) for r in shown],
                  "object_29": [r.o29 for r in shown if r.o29 is not None and _complete(r, night)]}
        for obj, rows in tables.items():
            num, term, bom = FILES[obj]
            with (folder / f"FullObject_{num}_{night.isoformat()}.csv").open(
                    "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, self.headers[obj], lineterminator=term, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        return folder

    def expected(self, night: date) -> dict[str, dict[str, dict[int, tuple]]]:
        """label -> email -> cycle -> six scores: what the open years must hold on ``night``."""
        out: dict[str, dict[str, dict[int, tuple]]] = {}
        for rec in self.records.values():
            if rec.shown(night) and (exp := rec.expected(night)):
                label, cycles = exp
                out.setdefault(label, {}).setdefault(rec.email, {}).update(cycles)
        return out

    def note(self, day: date, kind: str, detail: str = "") -> None:
        self.log.append((day, kind, detail))


def _complete(rec: Rec, night: date) -> bool:
    """Answers (object_29) are shown once every cycle of the record's base timeline is visible."""
    return rec.always or len(rec.visible(night)) == len(rec.events)


def _snapshot(folder: Path) -> dict[str, tuple[dict, dict | None]]:
    """email -> (object_10 cells, object_6 cells or None) of the 2024/2025 snapshot (archived students)."""
    _, o10 = _read(next(folder.glob("FullObject_10_*.csv")))
    _, o6 = _read(next(folder.glob("FullObject_6_*.csv")))
    accounts = {r.get(O6["email"], "").strip().lower(): r for r in o6}
    out = {}
    for cells in o10:
        email = cells.get(O10["email"], "").strip().lower()
        if email and "@" in email and "<" not in email and " " not in email:
            out[email] = (cells, accounts.get(email))
    return out
