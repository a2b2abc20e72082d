"""Build notebooks/csv_profile.ipynb (no outputs)."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda t: cells.append(new_markdown_cell(t.strip()))  # noqa: E731
code = lambda t, **kw: cells.append(new_code_cell(t.strip(), **kw))  # noqa: E731

md("""
# csv_profile — what the year-end snapshot holds (read-only)

Profiles the three Knack exports (object_6 accounts, object_10 results, object_29 answers) *before*
anything is imported (docs/ARCHITECTURE.md, “Runbooks”). Nothing is written except this run's evidence folder: the CSV
files are read with DuckDB under a pinned read specification and never modified, and the production
database is opened read-only (only for establishment names, the Australian calendar rule and the
email-domain fallback).

The verdict fails only when the snapshot cannot be trusted as input: a required column is missing
(the file would not even open), records do not account for the file's lines (F5), a blocker has no
fallback, or a count does not reconcile. Data problems the import will quarantine (bad dates,
invalid emails, records without an establishment) are **reported, not failures**.
""")
code("""
snapshot_dir: str = "data/demo/snapshot"  # folder holding FullObject_6/10/29_*.csv
target: str = "duckdb:data/demo/production.duckdb"  # production database used for establishment fallbacks (read-only)
unmask_pii: bool = False  # show raw emails (interactive sessions only)
""", metadata={"tags": ["parameters"]})
code("""
from vespa_lib.ops import runbook
run = runbook.start("csv_profile", globals())
""")
md("""
## 1. Open the snapshot under the pinned read specification

Every column is read as text with an explicit delimiter, quote, escape and header, UTF-8 with or
without a byte-order mark, and line breaks allowed inside quoted cells; DuckDB sniffs no types
(docs/DOMAIN.md, “Reading the files”). Parsing dates, emails and scores is the library's job. The settings are recorded in
the manifest, and each input file's SHA-256 too. Malformed input (wrong encoding, ragged rows, a
truncated file) stops here with an error naming the file and line — never a silent skip.
""")
code("""
import matplotlib.pyplot as plt
import pandas as pd
from vespa_lib import profile
from vespa_lib.sources import snapshot, targets

snap = snapshot.open_snapshot(snapshot_dir)
for path in snap.files.values():
    run.add_input(path)
run.record("read_spec", snap.read_spec)
db = targets.open_target(target)
run.record("target", db.describe())
prof = profile.profile_snapshot(snap, db=db)
run.record("snapshot_year", prof.snapshot_year)
pd.DataFrame([{"setting": k, "value": str(v)} for k, v in snap.read_spec.items()])
""")
md("""
## 2. Records, not lines (F5)

Comment and goal cells hold line breaks, so a file has far more physical lines than records
(`wc -l` over-counted object_10 about a hundredfold). Every count in the workbook is of records.
The check reconciles the two: physical lines = header line + records + line breaks inside cells, so
no line is unexplained and no record was dropped. BOM and encoding are shown per file.
""")
code("""
files = prof.files
run.show(files, "Files: records vs physical lines")
run.record("records", dict(zip(files["object"], files["records"].astype(int))))
run.check("records_counted_not_lines",
          bool((files["physical_lines"] == 1 + files["records"] + files["line_breaks_in_cells"]).all()),
          figures=files.set_index("object")[["records", "physical_lines", "line_breaks_in_cells"]].to_dict("index"),
          detail="physical lines = header + records + line breaks inside cells, for every file")
""")
md("""
## 3. Columns found and missing per the field map (F4)

Each logical column is looked up under the header spellings the field map declares
(`vespa_lib/rules/fieldmap.yaml`); a differently-headed export is handled by adding a spelling there. A
missing *required* column stops the run at step 1. A missing *blocker* column (the establishment
connection `field_133`, absent from the 2025 snapshot) blocks a naive import: it is reported with the
fallback the import will use. The mapping actually used is saved as `FIELD_MAPPING.json`.
""")
code("""
columns = prof.columns
run.show(columns[columns["status"] != "found"], "Columns missing from the files")
run.save_json(prof.field_mapping(), "FIELD_MAPPING")
missing_required = columns[columns["status"] == "missing (required)"]
run.check("required_columns_present", missing_required.empty,
          figures={"columns_found": int((columns["status"] == "found").sum()), "missing_required": len(missing_required)})
""")
md("""
## 4. Blockers and establishment coverage (F4)

Without `field_133` a student's school comes from the fallback chain of the import
(docs/ARCHITECTURE.md): the object_6 account of the same email (`field_179`), then an email domain
owned by exactly one establishment among existing students, else the record is set aside
(`no_establishment`). The table counts how many object_10 records each rule decides, first rule
wins; the counts sum to the record count. `in_database` is how many of those name an establishment
the database knows. Records left without an establishment are reported here, not failed: the import
quarantines them with a reason. The run fails only if a blocker has no fallback at all.
""")
code("""
coverage = prof.establishment
run.record("blockers", prof.blockers)
for blocker in prof.blockers:
    print("BLOCKER:", blocker)
run.show(coverage, "object_10 records by establishment rule")
run.record("establishment_coverage", dict(zip(coverage["method"], coverage["records"].astype(int))))
run.check("blockers_have_fallback", not prof.blockers_without_fallback,
          figures={"blockers": len(prof.blockers), "without_fallback": prof.blockers_without_fallback},
          detail="every missing blocker column has a fallback whose coverage is reported")
run.check("establishment_coverage_complete", int(coverage["records"].sum()) == snap.records("object_10"),
          figures={"covered": int(coverage["records"].sum()), "records": snap.records("object_10"),
                   "without_establishment": int(coverage.set_index("method").loc["none", "records"])})
""")
md("""
## 5. Fill rates

Share of records with a non-blank value, per logical column. Expect low rates where docs/DOMAIN.md says
so (`completion_date` ~5 % in the 2025 snapshot, object_29 `email` ~45 %); a column at 0 % that
should hold data points at a renamed header.
""")
code("""
fill = columns[(columns["object"] == "object_10") & (columns["status"] == "found")]
fig, ax = plt.subplots(figsize=(10, 3.5))
ax.bar(fill["column"], fill["fill_rate"] * 100)
ax.set_ylabel("% of records filled")
ax.set_title("object_10 fill rate per column")
ax.tick_params(axis="x", labelrotation=90, labelsize=7)
plt.show()
run.show(columns[columns["status"] == "found"], "Fill rate per column")
""")
md("""
## 6. Date formats and ranges (F6)

Knack dates are UK day-first (`DD/MM/YYYY`, with or without `HH:MM`); ISO also occurs. Every
distinct date string is decoded once by `vespa_lib.rules.knack` (never month-first, never the CSV
sniffer). Each format's range is shown; anything that does not decode appears in section 8 with a
reason code. The check reconciles the two tables, so no unparseable date goes unreported.
""")
code("""
dates = prof.dates
run.show(dates, "Date formats per column")
unparsed = int((dates["records"] - dates["parsed"]).sum()) if not dates.empty else 0
reported = int(prof.problems.loc[prof.problems["kind"] == "date", "records"].sum())
run.check("no_unparseable_dates_unreported", unparsed == reported,
          figures={"unparsed_date_cells": unparsed, "reported_with_reason": reported})
months = prof.completions_by_month
fig, ax = plt.subplots(figsize=(10, 3))
ax.bar(months["month"], months["completions"])
ax.set_title("object_10 completions per month (field_855)")
ax.tick_params(axis="x", labelrotation=90, labelsize=7)
plt.show()
""")
md("""
## 7. Academic years each rule would give (docs/DOMAIN.md, “Academic years”)

Dated records under the UK rule (1 August boundary, UK local time) for every school, and under each
school's own rule (Australian schools with `use_standard_year = false` use the calendar year `Y/Y`).
A completion date in an earlier year marks a stale record (year-end snapshot semantics); most
records have no date and take the snapshot's year at import.
""")
code("""
years = prof.years
run.show(years, f"Academic years of dated records (snapshot year {prof.snapshot_year})")
if not years.empty:
    years.pivot_table(index="academic_year", columns=["object", "rule"], values="records", aggfunc="sum").plot.bar(
        figsize=(10, 3.5), title="Dated records per academic year and rule")
    plt.show()
""")
md("""
## 8. Unparseable emails and dates, with reason codes

Reason codes are `vespa_lib.rules.knack.REASONS` (e.g. `invalid_email`, `multiple_emails`,
`impossible_date`, `excel_serial_date`); `first_line` points into the file. Blank emails are listed
because the import sets those records aside (`no_email`); blank dates are normal and not listed.
""")
code("""
run.show(prof.problems, "Values that do not decode")
run.save_table(prof.problems, "problems")
""")
md("""
## 9. Duplicates

Duplicate record ids, and duplicate emails after decoding (HTML anchors unwrapped, lower-cased,
trimmed). In object_10 a duplicate email is either a duplicate record (collapsed at import) or a
re-enrolment (section 11).
""")
code("""
run.show(prof.duplicates, "Duplicate ids and emails")
""")
md("""
## 10. Score ranges per cycle field (F7)

Scores are 0..10. `"7.0"` is a valid 7 (`decimal_text` counts them); non-numeric, non-integer and
out-of-range values are counted by reason and quarantined at import (`bad_score`).
""")
code("""
run.show(prof.scores, "object_10 score fields")
""")
md("""
## 11. Re-enrolled students

At year end some schools delete and re-upload students: the same email comes back under a new
record id, and the student may already be in the database under another academic year. Each year
keeps its own `students` row (`unique(email, academic_year)`, F2); these counts show how many
students the F2 key would otherwise have overwritten.
""")
code("""
run.show(prof.reenrolled, "Re-enrolments")
run.record("reenrolled", dict(zip(prof.reenrolled["finding"], prof.reenrolled["students"].astype(int))))
""")
md("""
## Verdict

Raises if any check failed, so papermill (and cron) exit non-zero.
""")
code("""
run.verdict()
""")

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "vespa", "display_name": "VESPA workbook", "language": "python"},
    "language_info": {"name": "python"},
})
nbformat.write(nb, str(Path(__file__).resolve().parents[1] / "notebooks" / "csv_profile.ipynb"))
