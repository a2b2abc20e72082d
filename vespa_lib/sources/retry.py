"""The one retry rule for the HTTP clients (Supabase REST, Knack REST). Reads nothing, writes nothing."""

from __future__ import annotations

import httpx


def retry_delay(attempt: int, response: httpx.Response | None, backoff: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the server's ``Retry-After`` (capped at
    60 s) when it gives one in seconds, else exponential backoff ``backoff * 2**attempt`` capped at 30 s."""
    retry_after = response.headers.get("Retry-After", "") if response is not None else ""
    if retry_after.isdigit():
        return min(float(retry_after), 60.0)
    return min(backoff * 2**attempt, 30.0)
