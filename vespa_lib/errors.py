"""The exception tree. Every error the workbook raises on purpose derives from ``VespaError``.

    VespaError
    ├── ParameterError      a runbook parameter is unknown, mistyped or out of range
    ├── DecodeError         a Knack value cannot be decoded (carries a reason code)
    ├── YearError           an academic-year label or rule input is invalid
    ├── SnapshotError       a snapshot file is missing, unreadable or structurally wrong
    ├── SchemaError         the target schema is missing something the workbook needs
    ├── TargetError         a target cannot be opened or read (credentials removed from messages)
    ├── GuardRefused        a guarded write was refused before anything was written
    ├── ValidationFailed    one or more checks failed (carries the failed check names)
    └── SecretLeak          a secret or raw personal data would have been written to evidence

Messages state the fact, the reason and the next step.
"""

from __future__ import annotations


class VespaError(Exception):
    """Root of every error the workbook raises on purpose."""


class ParameterError(VespaError):
    """A runbook parameter is unknown, has the wrong type or an invalid value."""


class DecodeError(VespaError):
    """A Knack value could not be decoded. ``reason`` is a stable reason code."""

    def __init__(self, reason: str, value: object = None, message: str | None = None):
        self.reason = reason
        self.value = value
        super().__init__(message or f"{reason}: {value!r}")


class YearError(VespaError):
    """An academic-year label or rule input is invalid."""


class SnapshotError(VespaError):
    """A snapshot file is missing, unreadable or structurally wrong."""


class SchemaError(VespaError):
    """The target schema lacks something the workbook needs."""


class TargetError(VespaError):
    """A target could not be opened or read."""


class GuardRefused(VespaError):
    """A guarded write was refused before anything was written."""


class ValidationFailed(VespaError):
    """One or more checks failed. ``failed`` lists the names of the failed checks."""

    def __init__(self, failed: list[str], message: str | None = None):
        self.failed = list(failed)
        super().__init__(message or "Checks failed: " + ", ".join(self.failed))


class SecretLeak(VespaError):
    """A secret or raw personal data would have been written to the evidence."""
