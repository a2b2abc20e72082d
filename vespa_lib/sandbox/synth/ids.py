"""Deterministic identifiers: Knack ObjectIds (creation time in the first 8 hex digits, docs/DOMAIN.md, “Knack fields”)
and UUIDs drawn from the generator's seeded random source. Read-only helpers."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime


def object_id(rng: random.Random, created: datetime) -> str:
    """A 24-hex ObjectId whose timestamp is ``created`` (naive = UTC for this purpose)."""
    seconds = int(created.replace(tzinfo=UTC).timestamp())
    return f"{seconds:08x}{rng.getrandbits(64):016x}"


def uuid_from(rng: random.Random) -> str:
    """A version-4 UUID from the seeded source (never uuid4(): output must be reproducible)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
