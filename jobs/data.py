"""Cutting training data into partitions, decided by the data, never by the nodes.

The client calls :func:`partition` on what the user passed (numpy, pandas,
scipy.sparse, dask array / dataframe). Row counts per partition come from
``partition_rows`` (or the chunks of a dask collection); the number of nodes
that happen to be up plays no part, so a job's result does not depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

#: ``partition_rows="auto"``: aim for this many partitions ...
AUTO_TARGET_PARTITIONS = 8
#: ... but never fewer rows than this in one partition.
AUTO_MIN_ROWS = 256


class DataError(ValueError):
    """Training data that the grid cannot use, with the reason and the fix."""


@dataclass
class Partitions:
    """Training data cut into row blocks, in a fixed order.

    Attributes
    ----------
    parts : list of (X_block, y_block, w_block)
        ``y_block`` is None for unsupervised estimators, ``w_block`` (sample
        weights) None unless the job was given ``sample_weight``.
    n_features : int
    classes : ndarray or None
        Sorted labels over all partitions, for classifiers.
    """

    parts: list[tuple[Any, Any]]
    n_features: int
    classes: np.ndarray | None = None
    sizes: list[int] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        return int(sum(self.sizes))

    def __len__(self) -> int:
        return len(self.parts)


def _to_2d(X: Any, name: str = "X") -> Any:
    if hasattr(X, "to_numpy") and not sp.issparse(X):  # pandas DataFrame / Series
        X = X.to_numpy()
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        data = X.data
    else:
        X = np.asarray(X)
        data = X
    if X.ndim != 2:
        raise DataError(
            f"{name} must be 2-dimensional (n_samples, n_features), got shape {X.shape}; "
            "reshape a single feature with X.reshape(-1, 1)"
        )
    if data.dtype.kind not in "biuf":
        raise DataError(
            f"{name} has dtype {data.dtype}; the grid trains on numeric features. Encode "
            "categories first (e.g. sklearn.preprocessing.OrdinalEncoder)"
        )
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError(f"{name} contains NaN or infinity; impute or drop those rows first")
    return X


def _to_1d(y: Any, n: int, name: str = "y") -> np.ndarray:
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise DataError(f"{name} must be 1-dimensional, got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(
            f"X has {n} samples but y has {y.shape[0]}; pass one target per row of X"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{name} contains NaN or infinity; drop those rows first")
    if y.dtype.kind == "O":
        y = y.astype(str)
    return y


def _label_kind(y: np.ndarray) -> str:
    """Numbers and strings cannot be mixed as labels; ints and floats can."""
    return "text" if y.dtype.kind in "USO" else "number"


def _is_dask(obj: Any) -> bool:
    return hasattr(obj, "__dask_graph__") and hasattr(obj, "__dask_keys__")


def _dask_blocks(X: Any, y: Any) -> tuple[list[Any], list[Any] | None]:
    """Compute a dask collection block by block: its chunks become partitions."""
    import dask

    def blocks(obj: Any) -> list[Any]:
        if hasattr(obj, "to_delayed"):
            delayed = obj.to_delayed()
            delayed = list(np.asarray(delayed, dtype=object).ravel())
            # computed here with dask's threaded scheduler: a client-side collection must not
            # depend on which distributed Client happens to be the default (use Files for data
            # that should never pass through the client)
            return list(dask.compute(*delayed, scheduler="threads"))
        return [obj]

    xb = blocks(X)
    yb = blocks(y) if y is not None else None
    if yb is not None and len(yb) != len(xb):
        raise DataError(
            f"X has {len(xb)} chunks but y has {len(yb)}; chunk X and y along rows alike"
        )
    return xb, yb


def rows_per_partition(n_samples: int, partition_rows: int | str | None) -> int:
    """Rows in each partition for ``n_samples`` rows (the last may be shorter)."""
    if partition_rows in (None, "auto"):
        return max(AUTO_MIN_ROWS, math.ceil(n_samples / AUTO_TARGET_PARTITIONS))
    if isinstance(partition_rows, bool) or not isinstance(partition_rows, (int, np.integer)) or partition_rows < 1:
        raise DataError(f"partition_rows must be a positive int or 'auto', got {partition_rows!r}")
    return int(partition_rows)


def partition(
    X: Any,
    y: Any = None,
    *,
    partition_rows: int | str | None = "auto",
    classification: bool = False,
    sample_weight: Any = None,
) -> Partitions:
    """Validate ``X``/``y`` and cut them into row partitions.

    Parameters
    ----------
    X : array-like, sparse matrix, pandas or dask collection
    y : array-like, optional
    partition_rows : int or "auto"
        Rows per partition; ignored for dask collections, whose chunks are used.
    classification : bool
        Whether to collect the sorted class labels.
    sample_weight : array-like, optional
        One non-negative weight per row, cut like ``X``.

    Raises
    ------
    DataError
        Naming the problem and its fix.
    """
    if X is None:
        raise DataError("X is None; pass the training data")
    if _is_dask(X) or _is_dask(y):
        if sample_weight is not None:
            raise DataError("sample_weight is not supported with dask collections; add it as a column or pass numpy data")
        xb, yb = _dask_blocks(X, y)
        blocks = [(_to_2d(xp, f"X (chunk {i})"), yp) for i, (xp, yp) in enumerate(zip(xb, yb or [None] * len(xb)))]
        weights = [None] * len(blocks)
    else:
        Xa = _to_2d(X)
        n = Xa.shape[0]
        step = rows_per_partition(n, partition_rows) if n else 1
        blocks = [(Xa[i : i + step], None if y is None else slice(i, i + step)) for i in range(0, n, step)]
        slices = [s for _, s in blocks] if y is not None else [slice(i, i + step) for i in range(0, n, step)]
        weights = [None] * len(blocks)
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.ndim != 1 or w.shape[0] != n:
                raise DataError(f"sample_weight has shape {w.shape}; pass one weight per row of X ({n})")
            if not np.isfinite(w).all() or (w < 0).any():
                raise DataError("sample_weight must be finite and non-negative")
            weights = [w[s] for s in slices]
        if y is not None:
            ya = _to_1d(y, n)
            blocks = [(xp, ya[s]) for xp, s in blocks]
    parts = []
    n_features = None
    for i, ((xp, yp), wp) in enumerate(zip(blocks, weights)):
        xp = _to_2d(xp, f"X (partition {i})")
        if n_features is None:
            n_features = xp.shape[1]
        elif xp.shape[1] != n_features:
            raise DataError(
                f"partition {i} has {xp.shape[1]} features but partition 0 has {n_features}; "
                "every partition needs the same columns"
            )
        if yp is not None:
            yp = _to_1d(yp, xp.shape[0], f"y (partition {i})")
            if parts and parts[0][1] is not None and _label_kind(yp) != _label_kind(parts[0][1]):
                raise DataError(
                    f"y (partition {i}) has labels of dtype {yp.dtype} but partition 0 has {parts[0][1].dtype}; "
                    "use one label type (e.g. all int or all str) in every partition"
                )
        if xp.shape[0]:
            parts.append((xp, yp, wp))
    if not parts:
        raise DataError("X is empty (0 samples); a job needs at least one row of training data")
    if n_features == 0:
        raise DataError("X has 0 features; a job needs at least one column")
    classes = None
    if classification:
        if parts[0][1] is None:
            raise DataError("this estimator is a classifier and needs y")
        classes = np.unique(np.concatenate([p[1] for p in parts]))
    return Partitions(parts=parts, n_features=int(n_features), classes=classes, sizes=[p[0].shape[0] for p in parts])


def split_counts(n_parts: int, capacities: Sequence[int]) -> list[int]:
    """Split ``n_parts`` consecutive partitions across holders in proportion to capacity.

    Largest-remainder rounding; every holder with capacity gets at least one
    partition while there are enough partitions.
    """
    caps = [max(0, int(c)) for c in capacities]
    total = sum(caps)
    if total == 0:
        raise ValueError("no capacity to place partitions on")
    quotas = [n_parts * c / total for c in caps]
    counts = [int(math.floor(q)) for q in quotas]
    order = sorted(range(len(caps)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n_parts - sum(counts)]:
        counts[i] += 1
    # give an empty holder one partition from the largest when possible
    for i, c in enumerate(counts):
        if c == 0 and caps[i] > 0:
            j = max(range(len(counts)), key=lambda k: counts[k])
            if counts[j] > 1:
                counts[j] -= 1
                counts[i] += 1
    return counts


# --- partitioned file datasets: nodes read their partitions themselves -------------------
FILE_FORMATS = ("npz", "csv", "parquet")


@dataclass(frozen=True)
class Files:
    """A dataset of files, one partition per file, that the nodes read themselves.

    The data never passes through the client: the client only lists the
    files; each region's scheduler asks its nodes to read them (and to read
    them again if every node holding one leaves).

    Parameters
    ----------
    pattern : str or list of str
        A glob (``"data/part-*.parquet"``, ``"s3://bucket/train/*.csv"``) or
        explicit paths; local paths or fsspec URLs. Sorted, so the partition
        order is fixed.
    target : str, optional
        The target column (csv / parquet) or array name (npz, default ``"y"``);
        None for unsupervised estimators.
    features : list of str, optional
        Feature columns (csv / parquet; default: every column but the target)
        or the features array name of npz files (default ``"X"``).
    format : {"npz", "csv", "parquet"}, optional
        Default: from the file extension.
    """

    pattern: str | tuple
    target: str | None = None
    features: tuple | str | None = None
    format: str | None = None

    def paths(self) -> list[str]:
        """The files of the dataset, sorted (globs expanded through fsspec)."""
        import fsspec

        patterns = [self.pattern] if isinstance(self.pattern, str) else list(self.pattern)
        out: list[str] = []
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                fs, _, found = fsspec.get_fs_token_paths(pattern)
                protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
                prefix = "" if protocol in ("file", "local") else f"{protocol}://"
                out.extend(prefix + p for p in sorted(found))
            else:
                out.append(pattern)
        if not out:
            raise DataError(f"no file matches {self.pattern!r}; check the path or the glob")
        for path in out:
            file_format(path, self.format)
        return out

    def options(self) -> dict:
        """Plain reader options, as a job request carries them."""
        features = list(self.features) if isinstance(self.features, (list, tuple)) else self.features
        return {"target": self.target, "features": features, "format": self.format}


def file_format(path: str, fmt: str | None = None) -> str:
    fmt = fmt or path.rsplit(".", 1)[-1].lower()
    if fmt not in FILE_FORMATS:
        raise DataError(f"{path}: format {fmt!r} is not supported; use one of {list(FILE_FORMATS)} or pass format=")
    return fmt


#: compressed csv files, by extension (pandas infers this from a path, not from an open file)
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz", ".zst": "zstd", ".tar": "tar"}


def _compression(path: str) -> str | None:
    name = path.split("?", 1)[0].lower()
    return next((c for ext, c in _COMPRESSIONS.items() if name.endswith(ext)), None)


def _read_error(exc: BaseException) -> str:
    """What a failed read says about itself without quoting the file.

    Parser messages can carry bytes of the file (a decode error names the
    byte, a conversion error the value), and whoever named the file may not
    be allowed to see it: only the kind of error, and an OS error's reason.
    """
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}; the reader's message is withheld as it may quote the file"


def read_partition(
    path: str,
    target: str | None = None,
    features: Any = None,
    format: str | None = None,
    *,
    opener: Callable[[], Any] | None = None,
) -> tuple:
    """Read one file partition as ``(X, y, None)`` and validate it.

    Parameters
    ----------
    path : str
        The partition's path or URL, as the dataset names it (messages name it).
    target, features, format
        As in :class:`Files`.
    opener : callable, optional
        ``opener()`` returns the open binary file to read (a context manager);
        default ``fsspec.open(path, "rb")``. A node passes one that opens the
        location it checked (``jobs.data_roots``).

    Raises
    ------
    DataError
        Naming the file and the problem (missing target column, non-numeric
        features, NaN or infinity, no rows). Messages never quote the file's
        contents: not its column names, array names or bytes.
    """
    fmt = file_format(path, format)
    if opener is None:

        def opener() -> Any:
            import fsspec

            return fsspec.open(path, "rb")

    try:
        with opener() as f:
            if fmt == "npz":
                data = np.load(f, allow_pickle=False)
                xname = features if isinstance(features, str) else "X"
                yname = target or ("y" if "y" in data.files else None)
                if xname not in data.files:
                    raise DataError(f"{path}: no array {xname!r} in the file; name the features array with Files(features=...)")
                if target and target not in data.files:
                    raise DataError(f"{path}: the target array {target!r} is missing")
                X = data[xname]
                y = data[yname] if yname else None
            else:
                import pandas as pd

                frame = pd.read_csv(f, compression=_compression(path)) if fmt == "csv" else pd.read_parquet(f)
                # the column names are the csv's first line: never echo them
                if target is not None and target not in frame.columns:
                    raise DataError(f"{path}: the target column {target!r} is missing")
                cols = list(features) if features else [c for c in frame.columns if c != target]
                missing = [c for c in cols if c not in frame.columns]
                if missing:
                    raise DataError(f"{path}: feature columns {missing} are missing")
                X = frame[cols].to_numpy()
                y = frame[target].to_numpy() if target is not None else None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error, reported without its text
        raise DataError(f"{path}: cannot be read as {fmt} ({_read_error(exc)})") from None
    X = _to_2d(X, f"X of {path}")
    if X.shape[0] == 0:
        raise DataError(f"{path}: the partition has no rows")
    if y is not None:
        try:
            y = _to_1d(y, X.shape[0])
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
    return X, y, None
