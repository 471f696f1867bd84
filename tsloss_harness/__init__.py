"""tsloss-harness: soft prompt tuning with the Topological Soft Prompt Loss.

The package reads as the pipeline:
data -> prompt -> losses -> tune -> topology -> evaluation -> report.
Submodules are imported lazily; importing the package itself is cheap.
"""

__version__ = "0.1.0"
