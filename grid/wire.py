"""The wire format of node results: raw numeric buffers behind a JSON header.

A node's answer to a partition task is one ``bytes`` object::

    b"DGRID1" | uint32 header length | JSON header | buffer 0 | buffer 1 | ...

The header lists, for each named array, its dtype, shape and byte length, and
carries a small dict of plain metadata (sample count, loss, ...). Nothing in
this format can carry code: decoding is ``json.loads`` plus ``np.frombuffer``
over an allowlist of dtypes, and the caller can check every array against the
shapes it expects before the values are used. Both the node side and the
scheduler side of the grid use this module; it imports neither.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"DGRID1"
_LEN = struct.Struct("<I")
#: dtype kinds a node may send: bool, signed/unsigned int, float, complex,
#: fixed-width unicode and bytes (class labels). Never object arrays.
ALLOWED_KINDS = frozenset("biufcUS")
MAX_HEADER_BYTES = 1 << 20


class WireError(ValueError):
    """A blob is not a well-formed grid update."""


def encode(arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> bytes:
    """Encode named arrays and plain metadata as one bytes object.

    Parameters
    ----------
    arrays : mapping of str to array-like or scalar
        Numeric state. Python and numpy scalars are sent as 0-d arrays and
        marked so that :func:`decode` gives back Python scalars.
    meta : mapping, optional
        JSON-serialisable metadata (numbers, strings, lists, dicts).

    Returns
    -------
    bytes
    """
    entries = []
    buffers = []
    for name, value in arrays.items():
        scalar = np.isscalar(value) or isinstance(value, (bool, int, float))
        arr = np.asarray(value)
        arr = np.ascontiguousarray(arr) if arr.ndim else arr  # keeps 0-d arrays 0-d
        if arr.dtype.kind not in ALLOWED_KINDS:
            raise WireError(
                f"array {name!r} has dtype {arr.dtype}, which the grid wire format "
                f"does not carry; allowed kinds are {''.join(sorted(ALLOWED_KINDS))}"
            )
        data = arr.tobytes()
        entries.append(
            {
                "name": str(name),
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "nbytes": len(data),
                "scalar": bool(scalar),
            }
        )
        buffers.append(data)
    header = json.dumps({"arrays": entries, "meta": dict(meta or {})}).encode()
    return b"".join([MAGIC, _LEN.pack(len(header)), header, *buffers])


def decode(
    blob: bytes,
    *,
    expected: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
    max_bytes: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode a blob made by :func:`encode`, checking it on the way.

    Parameters
    ----------
    blob : bytes
        What the node sent.
    expected : mapping of name to (shape, dtype kind), optional
        When given, the blob must hold exactly these arrays with these shapes
        and dtype kinds (``"f"`` for floats, ...); anything else is refused.
    max_bytes : int, optional
        Refuse blobs larger than this.

    Returns
    -------
    arrays, meta : dict, dict

    Raises
    ------
    WireError
        If the blob is malformed, too large, or does not match ``expected``.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise WireError(f"a grid update must be bytes, got {type(blob).__name__}")
    view = memoryview(blob).cast("B")
    if max_bytes is not None and view.nbytes > max_bytes:
        raise WireError(f"update of {view.nbytes} bytes exceeds the limit of {max_bytes}")
    if view[: len(MAGIC)].tobytes() != MAGIC:
        raise WireError("not a grid update (bad magic bytes)")
    pos = len(MAGIC)
    if view.nbytes < pos + _LEN.size:
        raise WireError("truncated grid update header")
    (hlen,) = _LEN.unpack(view[pos : pos + _LEN.size])
    pos += _LEN.size
    if hlen > MAX_HEADER_BYTES or pos + hlen > view.nbytes:
        raise WireError("grid update header length is out of range")
    try:
        header = json.loads(view[pos : pos + hlen].tobytes())
        entries = header["arrays"]
        meta = header["meta"]
        if not isinstance(entries, list) or not isinstance(meta, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"grid update header is not valid: {exc!r}") from None
    pos += hlen
    arrays: dict[str, Any] = {}
    for entry in entries:
        try:
            name = str(entry["name"])
            dtype = np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            nbytes = int(entry["nbytes"])
            scalar = bool(entry.get("scalar", False))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"grid update array entry is not valid: {exc!r}") from None
        if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
            raise WireError(f"array {name!r} has forbidden dtype {dtype}")
        if any(s < 0 for s in shape) or math.prod(shape) * dtype.itemsize != nbytes:
            raise WireError(f"array {name!r}: shape {shape} and {nbytes} bytes disagree")
        if pos + nbytes > view.nbytes:
            raise WireError(f"array {name!r} runs past the end of the update")
        arr = np.frombuffer(view[pos : pos + nbytes], dtype=dtype).reshape(shape).copy()
        pos += nbytes
        arrays[name] = arr.item() if scalar and arr.ndim == 0 else arr
    if pos != view.nbytes:
        raise WireError("grid update has trailing bytes")
    if expected is not None:
        check_shapes(arrays, expected)
    return arrays, meta


def check_shapes(
    arrays: Mapping[str, Any],
    expected: Mapping[str, tuple[tuple[int, ...], str]],
    variable: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Raise :class:`WireError` unless ``arrays`` match ``expected`` exactly.

    Arrays named in ``variable`` may change their shape (not their number of
    dimensions or dtype kind), e.g. per-partition category counts.
    """
    if set(arrays) != set(expected):
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        raise WireError(f"update arrays differ from the model: missing {missing}, unexpected {extra}")
    for name, (shape, kind) in expected.items():
        arr = np.asarray(arrays[name])
        same_shape = arr.ndim == len(shape) if name in variable else tuple(arr.shape) == tuple(shape)
        if not same_shape or arr.dtype.kind != kind:
            raise WireError(
                f"array {name!r} has shape {arr.shape} and dtype kind {arr.dtype.kind!r}; "
                f"the model expects {tuple(shape)} and {kind!r}"
            )


def layout(arrays: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The (shape, dtype kind) of each array, as :func:`decode` expects it."""
    return {name: (tuple(np.shape(v)), np.asarray(v).dtype.kind) for name, v in arrays.items()}
