"""Training jobs for dask-grid: estimators, merge rules, aggregation, data.

The training math in this package is pure numpy / scikit-learn: it imports
neither ``distributed`` nor ``grid``, so it runs unchanged on a node and is
unit-testable in microseconds.
"""

from jobs.partial_fit import PartialFit

__all__ = ["PartialFit"]
