"""vespa_lib: the rules and guarded writes behind the VESPA archive workbook.

One module per concept (see docs/ARCHITECTURE.md "Library map"). Notebooks in ``notebooks/`` call into this
package; they hold narrative and calls, never logic.
"""

__version__ = "0.1.0"
