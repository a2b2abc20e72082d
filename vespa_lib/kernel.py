"""The Jupyter kernel ``vespa-ops`` runs the runbooks on: the interpreter ``vespa-ops`` itself runs on.

A runbook must run with the same ``vespa_lib`` and dependencies as the command that validated its
parameters, whether or not a kernel was ever registered (a cron server made with ``pip install -e .``
has none) and whatever a registered kernel of the same name points at. papermill hands
``kernel_manager_class`` on to nbclient; this manager's kernel spec launches ``sys.executable``.
JupyterLab keeps using the registered ``vespa`` kernel (``make install`` / ``make lab``).
"""

from __future__ import annotations

import sys

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

DISPLAY_NAME = "VESPA workbook"


def interpreter_spec() -> KernelSpec:
    """A Python kernel spec on ``sys.executable`` (the interpreter of this process)."""
    return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                      display_name=DISPLAY_NAME, language="python", resource_dir="",
                      metadata={"debugger": True})


class InterpreterKernelSpecs(KernelSpecManager):
    """Answers every kernel name with :func:`interpreter_spec`; reads no kernel registration."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return interpreter_spec()


class InterpreterKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, starting the kernel on this interpreter (see the module docstring)."""

    @default("kernel_spec_manager")
    def _default_kernel_specs(self) -> KernelSpecManager:
        return InterpreterKernelSpecs(parent=self)
