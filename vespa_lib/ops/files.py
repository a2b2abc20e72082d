"""File helpers shared by the runbooks. Read-only."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_of"]

_CHUNK = 1 << 20


def sha256_of(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks. Read-only."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
