"""Where a running runbook is: one line per section, as it starts and as it ends, with its duration.

A runbook's sections are its markdown cells opening with a level-2 heading (``## 3. The plan``); the
cells before the first one (parameters and validation) are the section ``Start``. ``vespa-ops run``
passes :meth:`SectionLog.hooks` to nbclient (``on_cell_start``, ``on_cell_executed``, ``on_cell_error``;
papermill hands engine keyword arguments on to the notebook client), so a person at a terminal, or reading ``cron.log``
while the run goes on, sees::

      [import] 3. Quarantine: every record set aside, with its reason and file line ... 12.4 s

The title is written when the section starts (flushed, so ``tail -f cron.log`` shows it) and the
duration when the next one starts (the last one's at its last cell's end). :meth:`SectionLog.finish` ends the last section, ``FAILED after``
when the run failed, and returns the section the run failed in. Writes only to its stream.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

HEADING_RE = re.compile(r"^##\s+(?P<title>[^#].*?)\s*$")
START = "Start"


def section_title(cell: Any) -> str | None:
    """The title of a markdown cell opening with ``## Title`` (backticks removed), else None."""
    if cell.get("cell_type") != "markdown":
        return None
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    first = next((line for line in source.splitlines() if line.strip()), "")
    match = HEADING_RE.match(first)
    return match.group("title").replace("`", "") if match else None


def duration(seconds: float) -> str:
    """``12.4 s`` under a minute, ``3 min 05 s`` above."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class SectionLog:
    """Prints the runbook's sections as nbclient reaches them (see the module docstring)."""

    def __init__(self, runbook: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.runbook, self.stream, self.clock = runbook, stream or sys.stdout, clock
        self.current: str | None = None
        self.started = self.last_done = 0.0

    def hooks(self) -> dict[str, Callable[..., None]]:
        """nbclient's hooks this log uses, as keyword arguments for ``papermill.execute_notebook``."""
        return {"on_cell_start": self.on_cell_start, "on_cell_executed": self.on_cell_done,
                "on_cell_error": self.on_cell_done}

    def on_cell_start(self, cell: Any, cell_index: int) -> None:
        """nbclient's hook, called before every cell (markdown too): a heading ends one section and
        starts the next; the first cell starts ``Start`` unless it is a heading itself."""
        title = section_title(cell)
        if title is not None:
            self._end(None)
            self._begin(title)
        elif self.current is None:
            self._begin(START)

    def on_cell_done(self, cell: Any, cell_index: int, execute_reply: Any = None) -> None:
        """nbclient's hook after a code cell ran (or failed): the last section ends here, not after the
        kernel has shut down."""
        self.last_done = self.clock()

    def finish(self, error: str | None) -> str | None:
        """End the last section (``FAILED after …`` if ``error``); the section the run was in, or None."""
        failed_in = self.current
        self._end(error, self.last_done if self.last_done >= self.started else None)
        return failed_in

    def _begin(self, title: str) -> None:
        self.current, self.started = title, self.clock()
        self._write(f"  [{self.runbook}] {title} ...")

    def _end(self, error: str | None, at: float | None = None) -> None:
        if self.current is None:
            return
        took = duration((self.clock() if at is None else at) - self.started)
        self._write(f" FAILED after {took}\n" if error else f" {took}\n")
        self.current = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
