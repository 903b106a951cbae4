"""joblib on the grid: scikit-learn's ``n_jobs`` parallelism on a region's nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import joblib
from distributed import Client


@contextlib.contextmanager
def parallel_config(client: Client, **kwargs: Any) -> Iterator[None]:
    """joblib's dask backend bound to ``client``.

    ``n_jobs=-1`` means every thread of the region. Arguments joblib sees
    again and again (the training arrays) are scattered once and reused.
    """
    kwargs.setdefault("wait_for_workers_timeout", 30)
    with joblib.parallel_config(backend="dask", client=client, **kwargs):
        yield
