"""The Jupyter kernel ``vespa-ops`` runs the runbooks on: the interpreter ``vespa-ops`` itself runs on.

A runbook must run with the same ``vespa_lib`` and dependencies as the command that validated its
parameters, whether or not a kernel was ever registered (a cron server made with ``pip install -e .``
has none) and whatever a registered kernel of the same name points at. papermill hands
``kernel_manager_class`` on to nbclient; this manager's kernel spec launches ``sys.executable``.
JupyterLab keeps using the registered ``vespa`` kernel (``make install`` / ``make lab``).

The manager provisions CurveZMQ keys for each kernel it starts (``transport_encryption="required"``,
jupyter_client 8.10): the kernel's TCP sockets are encrypted, so ipykernel 7 has no reason to warn
"Kernel is running over TCP without encryption" on every run (a cron log stays quiet). Each kernel
gets its own key pair and its own random ports, so concurrent runs do not collide.

``RunbookEngine`` (papermill engine ``ENGINE``) is papermill's nbclient engine saving the executed
notebook sparsely (see :class:`_SparseSaves`). At the end of a run the manager sends the kernel its
shutdown request and lets it exit while vespa-ops writes the evidence; :func:`reap_kernels` then waits
for it (terminating, then killing, a kernel that does not exit), so no kernel outlives its run.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import zmq
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from traitlets import default

DISPLAY_NAME = "VESPA workbook"
ENCRYPTION = "curve"  # the kernel spec declares it; the manager then provisions the keys


def interpreter_spec() -> KernelSpec:
    """A Python kernel spec on ``sys.executable`` (the interpreter of this process)."""
    return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                      display_name=DISPLAY_NAME, language="python", resource_dir="",
                      metadata={"debugger": True, "supported_encryption": [ENCRYPTION]})


class InterpreterKernelSpecs(KernelSpecManager):
    """Answers every kernel name with :func:`interpreter_spec`; reads no kernel registration."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return interpreter_spec()


class InterpreterKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, starting the kernel on this interpreter (see the module docstring)."""

    @default("transport_encryption")
    def _default_transport_encryption(self) -> str:
        return "required" if zmq.has("curve") else "disabled"  # pyzmq's wheels bundle CurveZMQ

    async def _async_interrupt_kernel(self) -> None:
        """jupyter_client interrupts (SIGINT) every kernel before asking it to shut down. A finished
        runbook has nothing to interrupt, and a SIGINT landing while the kernel answers its last message
        made it log "KeyboardInterrupt caught in kernel." to the cron log now and then. At shutdown the
        shutdown request alone is sent (then SIGTERM and SIGKILL if the kernel does not stop); a timed-out
        cell is still interrupted (nbclient calls ``interrupt_kernel``, which this does not change)."""
        if not self.shutting_down:
            await super()._async_interrupt_kernel()

    @default("kernel_spec_manager")
    def _default_kernel_specs(self) -> KernelSpecManager:
        return InterpreterKernelSpecs(parent=self)

    async def _async_finish_shutdown(self, waittime: float | None = None, pollinterval: float = 0.1,
                                     restart: bool = False) -> None:
        """The shutdown request is sent; the kernel's own exit (interpreter teardown, a few tenths of a
        second) is waited for later, by :func:`reap_kernels`, while vespa-ops writes the evidence. A
        restart still waits here (jupyter_client's own path)."""
        process = getattr(self.provisioner, "process", None)
        if restart or process is None:
            await super()._async_finish_shutdown(waittime, pollinterval, restart)
            return
        _EXITING.append((process, max(self.shutdown_wait_time, 1.0)))


_EXITING: list[tuple[Any, float]] = []  # (Popen of a kernel asked to shut down, seconds it may take)


def reap_kernels() -> None:
    """Wait for the kernels asked to shut down to exit; terminate, then kill, one that does not (the
    waits jupyter_client would have done at shutdown, done after the evidence is written)."""
    while _EXITING:
        process, wait = _EXITING.pop()
        for stop in (None, process.terminate, process.kill):
            if stop is not None:
                stop()
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


class _SparseSaves(NotebookExecutionManager):
    """papermill's execution manager, saving the executed notebook when the run starts, at most every
    ``EVERY`` seconds while cells run, and when the run ends (finished, failed, timed out or its
    kernel dead). papermill's own saves it twice per cell, some sixty writes of the whole notebook per
    run, to a scratch file nobody reads before the run ends: about half a second of every run."""

    EVERY = 10.0
    _always = False

    def save(self, **kwargs: Any) -> None:
        if self._always or (self.now() - self.last_save_time).total_seconds() >= self.EVERY:
            super().save(**kwargs)

    def notebook_start(self, **kwargs: Any) -> None:
        self._always = True
        try:
            super().notebook_start(**kwargs)
        finally:
            self._always = False

    def notebook_complete(self, **kwargs: Any) -> None:
        self._always = True
        super().notebook_complete(**kwargs)


class RunbookEngine(NBClientEngine):
    """papermill's nbclient engine with :class:`_SparseSaves`; registered as ``ENGINE``."""

    @classmethod
    def execute_notebook(cls, nb: Any, kernel_name: str, output_path: str | None = None, progress_bar: bool = True,
                         log_output: bool = False, autosave_cell_every: int = 30, **kwargs: Any) -> Any:
        manager = _SparseSaves(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                               autosave_cell_every=autosave_cell_every)
        manager.notebook_start()
        try:
            cls.execute_managed_notebook(manager, kernel_name, log_output=log_output, **kwargs)
        finally:
            manager.cleanup_pbar()
            manager.notebook_complete()
        return manager.nb


ENGINE = "vespa"
papermill_engines.register(ENGINE, RunbookEngine)
