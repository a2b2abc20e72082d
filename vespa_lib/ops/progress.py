"""Progress bars for the library's long steps: shown to a person, never in an unattended run.

The long steps (reading the snapshot, building the rows, planning, COPY into PostgreSQL, the Knack
pages) wrap their loops in :func:`bar` (or :class:`Stages` for a sequence of steps):

* in an interactive JupyterLab session, ``tqdm.auto`` draws a notebook widget bar (ipywidgets is a
  dependency: without it tqdm falls back to text and warns "IProgress not found");
* at a terminal (stderr a TTY), a text bar on stderr;
* in a run by ``vespa-ops`` (``VESPA_UNATTENDED=1``) or with no one watching (stderr not a TTY outside
  a kernel), nothing: no bar, and ``tqdm.auto`` is not even imported, so no tqdm warning can reach a
  report or a cron log.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

UNATTENDED_ENV = "VESPA_UNATTENDED"


def in_jupyter_kernel() -> bool:
    """Whether this process is a Jupyter kernel (JupyterLab, or papermill's)."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


def shown() -> bool:
    """Whether bars are drawn: not unattended, and someone can see them (a kernel, or a TTY)."""
    if os.environ.get(UNATTENDED_ENV) == "1":
        return False
    return in_jupyter_kernel() or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
        show: bool | None = None) -> Any:
    """A tqdm bar over ``iterable`` (or updated by hand), drawn when :func:`shown` (or ``show``) says so.

    Not drawn, it is tqdm's disabled bar: the same interface (``update``, ``set_postfix_str``, context
    manager, iteration), no output."""
    if not (shown() if show is None else show):
        from tqdm.std import tqdm as silent

        return silent(iterable, total=total, disable=True)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)


class Stages:
    """A bar over a fixed number of steps: ``done(name)`` after each one moves it on and names it;
    ``close()`` (in a ``finally``) ends the bar whether or not every step ran."""

    def __init__(self, desc: str, count: int, show: bool | None = None):
        self.bar = bar(total=count, desc=desc, unit="step", show=show)

    def done(self, name: str) -> None:
        self.bar.set_postfix_str(name, refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()
