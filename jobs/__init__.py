"""Training jobs for dask-grid: estimators, merge rules, aggregation, data.

The training math in this package is pure numpy / scikit-learn: it imports
neither ``distributed`` nor ``grid``, so it runs unchanged on a node and is
unit-testable in microseconds. Importing the package registers every job
kind's local step (``"partial_fit"``, ``"sgd"``).
"""

from jobs.partial_fit import PartialFit
from jobs.sgd_estimators import SGDClassifier, SGDRegressor

__all__ = ["PartialFit", "SGDClassifier", "SGDRegressor"]
