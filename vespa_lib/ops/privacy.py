"""Masking personal data and keeping secrets out of evidence (docs/ARCHITECTURE.md, “Targets”; docs/ARCHITECTURE.md, “Evidence and privacy”).

Everything here is read-only: functions take values or frames and return masked copies; the
``Scrubber`` returns cleaned text and reports findings, it never writes files itself (the evidence
finaliser does, inside ``outputs/``).

    mask_email("anna.smith@school.ac.uk")  -> "a***@school.ac.uk"
    mask_name("Anna Smith")                -> "A.S."
    keyed_hash("anna@x.org", key)          -> "h:3f9c0a1b2c4d5e6f" (stable per key, not reversible)
    mask_frame(df)                         -> email and people's-name columns masked, stray emails masked
    suppress_small(df, ["n"])              -> counts 1..4 shown as "<5"
    neutralise_formula("=HYPERLINK(...)")  -> "'=HYPERLINK(...)" (CSV formula injection)
    collect_secrets()                      -> secret values from the environment and .env
    Scrubber(secrets).scrub(text) / .scan(paths) / .redact(text)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: the CLI scrubs and scans without needing pandas
    import pandas as pd

# Local part must not follow "/" or ":" so DSNs like postgresql://user@db.host.org are not emails.
MAILTO_RE = re.compile(r"(?i)(mailto:)(?=[^\s])")
EMAIL_RE = re.compile(r"(?<![\w.%+/:-])([A-Za-z0-9._%+-]{1,64})@([A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24})")
# scheme://user:password@host, the password being anything but our own mask.
# Patterns start only at a token boundary and bound their repeats: scanning runs over base64 images,
# where unanchored patterns would backtrack quadratically.
DSN_PASSWORD_RE = re.compile(
    r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{0,20}://[^\s:/@\"'<>]{0,100}:)(?!\*\*\*@)([^\s@/\"'<>]{1,200})@"
)
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
SUPABASE_KEY_RE = re.compile(r"sb_(?:secret|publishable)_[A-Za-z0-9_-]{8,}")
ASSIGNED_TOKEN_RE = re.compile(
    r"(\b[A-Za-z0-9_]{0,40}?(?:KEY|TOKEN|SECRET|PASSWORD)[A-Za-z0-9_]{0,40}[\"']?\s{0,3}[:=]\s{0,3}[\"']?)"
    r"([A-Za-z0-9+/_=-]{24,})",
    re.IGNORECASE,
)
# docs/ARCHITECTURE.md, “Targets”: env vars holding credentials; values shorter than this are too common to scrub safely.
SECRET_NAME_PARTS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "DSN", "DATABASE_URL")
MIN_SECRET_LENGTH = 6
REDACTED = "[secret removed]"
TEXT_SUFFIXES = {".ipynb", ".html", ".json", ".csv", ".txt", ".md", ".log", ".yaml", ".yml", ".sql", ".tsv"}


def mask_email(value: object) -> object:
    """``anna.smith@school.ac.uk`` → ``a***@school.ac.uk``; non-emails are returned unchanged."""
    if not isinstance(value, str):
        return value
    # docs/DOMAIN.md, “Knack fields”: Knack emails arrive as HTML anchors; the lookbehind of EMAIL_RE (which keeps URL
    # credentials out) would otherwise skip the address right after "mailto:".
    value = MAILTO_RE.sub(lambda m: m.group(1) + " ", value)
    value = EMAIL_RE.sub(lambda m: f"{m.group(1)[0]}***@{m.group(2)}", value)
    return value.replace("mailto: ", "mailto:")


def mask_email_field(value: object) -> object:
    """Mask a value from an email column, valid or NOT: an invalid address (``x@school``, a stray
    anchor) is still personal data. Valid emails as ``mask_email``; anything else with an ``@`` keeps
    only its first character and what follows the last ``@``; other non-blank text becomes ``***``."""
    if not isinstance(value, str) or not value.strip():
        return value
    masked = mask_email(value)
    if masked != value and "@" in masked:
        return masked
    text = value.strip()
    if "@" in text:
        local, _, domain = text.rpartition("@")
        domain = domain.strip("<>\"' ")
        return f"{local[:1] or '?'}***@{domain}"
    return "***"


def mask_name(value: object) -> object:
    """``Anna Smith`` → ``A.S.``; blanks and non-strings are returned unchanged."""
    if not isinstance(value, str) or not value.strip():
        return value
    parts = re.split(r"[\s\-]+", value.strip())
    return "".join(f"{p[0].upper()}." for p in parts if p)


def keyed_hash(value: str, key: str | bytes) -> str:
    """A stable pseudonym for ``value`` under ``key`` (HMAC-SHA256, 16 hex digits, ``h:`` prefix)."""
    key_bytes = key.encode() if isinstance(key, str) else key
    digest = hmac.new(key_bytes, value.strip().lower().encode(), hashlib.sha256).hexdigest()
    return "h:" + digest[:16]


def _is_text_column(series: pd.Series) -> bool:
    import pandas as pd

    return pd.api.types.is_string_dtype(series) or series.dtype == object


# Tokens that make a "...name" column a person's name; "establishment_name", "column_name" or a
# migration's "name" are not personal and stay readable (docs/ARCHITECTURE.md, "Evidence and privacy").
PERSON_TOKENS = {"student", "staff", "tutor", "teacher", "parent", "contact", "person", "pupil", "user",
                 "respondent", "first", "last", "full", "given", "family", "middle", "display", "preferred"}
PERSON_LABELS = {"surname", "forename", "forenames", "firstname", "lastname", "fullname", "studentname"}
CHANGE_COLUMNS = ("column", "changed_column")  # a sample of updates: which column the before/after hold
CHANGE_VALUES = ("before", "after")


def _tokens(label: object) -> list[str]:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", str(label))  # firstName -> first_Name
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def column_meaning(label: object, labels: Iterable[object] = ()) -> str | None:
    """``"email"``, ``"person_name"`` or None (not personal) for a column called ``label`` in a frame
    whose columns are ``labels``. A bare ``name`` is a person's only beside an email column: the
    students table has both, while a school's or a migration's ``name`` stands alone. Pure."""
    tokens = _tokens(label)
    if any("email" in t for t in tokens):
        return "email"
    compact = "".join(tokens)
    if compact in PERSON_LABELS or any(t in ("surname", "forename") for t in tokens):
        return "person_name"
    if "name" in tokens and PERSON_TOKENS.intersection(tokens):
        return "person_name"
    if tokens == ["name"] and any(column_meaning(other) == "email" for other in labels):
        return "person_name"
    return None


def mask_value(value: object, meaning: str | None) -> object:
    """``value`` masked as its column's meaning says (emails found in any text are masked too)."""
    if meaning == "email":
        return mask_email_field(value)
    if meaning == "person_name":
        return mask_name(value)
    return mask_email(value)


def mask_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with personal data masked. Read-only.

    Masking decides by what a column means (``column_meaning``): email columns as emails, people's
    name columns as initials (docs/ARCHITECTURE.md, “Evidence and privacy”); emails found in any other text column are masked too. In a
    sample of updates (``column``, ``before``, ``after``) the before/after of a personal column are
    masked by that column's meaning. Schools, migrations, column and check names stay readable.
    """
    out = df.copy()
    labels = list(out.columns)
    for col in labels:
        if _is_text_column(out[col]):
            meaning = column_meaning(col, labels)
            out[col] = out[col].map(lambda v, m=meaning: mask_value(v, m))
    names = [c for c in CHANGE_COLUMNS if c in out.columns]
    if names:
        meanings = out[names[0]].map(lambda c: column_meaning(c, ["email"]) if isinstance(c, str) else None)
        for col in (c for c in CHANGE_VALUES if c in out.columns):
            out[col] = [mask_value(v, m) for v, m in zip(out[col], meanings, strict=True)]
    return out


def suppress_small(df: pd.DataFrame, count_cols: Iterable[str], threshold: int = 5) -> pd.DataFrame:
    """A copy with counts 1..threshold-1 shown as ``<threshold`` (docs/ARCHITECTURE.md, “Evidence and privacy”: cross-tabs for sharing)."""
    out = df.copy()
    for col in count_cols:
        values = out[col]
        small = values.notna() & (values > 0) & (values < threshold)
        out[col] = values.astype(object).where(~small, f"<{threshold}")
    return out


def neutralise_formula(value: object) -> object:
    """Prefix an apostrophe to text a spreadsheet would run as a formula (docs/ARCHITECTURE.md, “Quality bars”)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _dotenv_values(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v}


def collect_secrets(env: Mapping[str, str] | None = None, dotenv_path: Path | None = None) -> list[str]:
    """Secret values to scrub: credential-named env vars, every ``.env`` value, ``VESPA_SECRET_NAMES``.

    ``VESPA_SECRET_NAMES`` is a comma-separated list of further env var names to treat as secrets.
    A DSN also contributes its password on its own. Read-only.
    """
    env = dict(os.environ if env is None else env)
    extra = {n.strip() for n in env.get("VESPA_SECRET_NAMES", "").split(",") if n.strip()}
    values = [v for k, v in env.items() if k in extra or any(p in k.upper() for p in SECRET_NAME_PARTS)]
    values += list(_dotenv_values(dotenv_path or Path.cwd() / ".env").values())
    for value in list(values):
        match = DSN_PASSWORD_RE.search(value)
        if match:
            values.append(match.group(2))
    unique = {v for v in values if len(v) >= MIN_SECRET_LENGTH}
    return sorted(unique, key=len, reverse=True)  # longest first so a DSN goes before its password


@dataclass(frozen=True)
class Finding:
    """One secret or raw email found in a file: where, what kind, and a masked hint."""

    path: str
    kind: str
    hint: str


class Scrubber:
    """Removes known secrets from text and finds secret-shaped strings and raw emails. Read-only."""

    PATTERNS = (
        ("dsn_password", DSN_PASSWORD_RE),
        ("jwt", JWT_RE),
        ("supabase_key", SUPABASE_KEY_RE),
        ("assigned_token", ASSIGNED_TOKEN_RE),
    )

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced and DSN passwords shown as ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return DSN_PASSWORD_RE.sub(r"\1***@", text)

    def find(self, text: str) -> list[tuple[str, str]]:
        """(kind, masked hint) for every secret or raw email still in ``text``."""
        found = [("known_secret", s[:3] + "…") for s in self.secrets if s in text]
        for kind, pattern in self.PATTERNS:
            found += [(kind, m.group(0)[:6] + "…") for m in pattern.finditer(text)]
        found += [("email", mask_email(m.group(0))) for m in EMAIL_RE.finditer(text)]
        return found

    def redact(self, text: str) -> str:
        """``text`` with known secrets, secret-shaped strings and raw emails all replaced."""
        text = self.scrub(text)
        text = JWT_RE.sub(REDACTED, text)
        text = SUPABASE_KEY_RE.sub(REDACTED, text)
        text = ASSIGNED_TOKEN_RE.sub(lambda m: m.group(1) + REDACTED, text)
        return mask_email(text)

    def scan(self, paths: Iterable[Path]) -> list[Finding]:
        """Findings in every readable text file among ``paths`` (folders are walked)."""
        findings: list[Finding] = []
        for path in _text_files(paths):
            text = path.read_text(encoding="utf-8", errors="replace")
            findings += [Finding(str(path), kind, hint) for kind, hint in self.find(text)]
        return findings


def _text_files(paths: Iterable[Path]) -> list[Path]:
    """Text files under ``paths``: known text suffixes, or anything that decodes as UTF-8."""
    files: list[Path] = []
    for path in map(Path, paths):
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in candidates:
            if p.suffix.lower() in TEXT_SUFFIXES or _decodes(p):
                files.append(p)
    return files


def _decodes(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    return True
