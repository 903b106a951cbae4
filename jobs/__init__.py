"""Training jobs for dask-grid: estimators, merge rules, aggregation, data.

The training math in this package is pure numpy / scikit-learn: it imports
neither ``distributed`` nor ``grid``, so it runs unchanged on a node and is
unit-testable in microseconds. The one exception is the scikit-learn facade
(``jobs/base.py``), whose ``fit`` looks up the default grid when it runs
(``tests/unit/test_layering.py`` checks both). The local step of each job
kind is listed in :data:`jobs.local.LOCAL_STEPS`.
"""

from jobs.partial_fit import PartialFit
from jobs.sgd_estimators import SGDClassifier, SGDRegressor

__all__ = ["PartialFit", "SGDClassifier", "SGDRegressor"]
