"""Reading a Dask message from an untrusted peer without unpickling anything.

distributed's ``loads`` unpickles every ``__Pickled__`` object in a message,
and every ``__Serialized__`` object whose serializer is ``pickle`` (or whose
``dask`` header names a class by pickle), whatever the reader intended. This
module checks a message's frames *before* distributed decodes them:

* ``__Pickled__`` objects are refused, always;
* ``__Serialized__`` objects are accepted only in forms that distributed
  turns into data without running code chosen by the sender: the ``msgpack``
  serializer; the ``pickle`` serializer for plain data (a pickle naming no
  global: None, numbers, strings, containers of them); the ``dask`` serializer for a numeric ``numpy.ndarray``, a
  ``scipy.sparse`` matrix or array built of them, ``bytes`` or ``bytearray``;
  tuples, lists and dicts of those. The class a ``dask`` header names is a
  pickle; it is read with :mod:`pickletools` (which executes nothing) and
  must be a single reference to one of those classes;
* where the reader keeps serialized payloads opaque (the scheduler reads with
  ``deserialize=False`` and hands them on unread), a caller may allow any
  serializer (:func:`check_frames` ``opaque_ok``);
* ``__Enum__`` objects (distributed imports a module and reads an attribute
  to decode them) are refused.

Only once a message passed these checks does distributed's own ``loads``
decode it. The checks walk the message's first frame and the small header
frames, never the data buffers, so they cost microseconds.
"""

from __future__ import annotations

import pickletools
from collections.abc import Sequence
from typing import Any

import msgpack

from distributed.protocol.utils import msgpack_opts

#: the classes a ``dask``-serialized payload from an untrusted peer may name
SAFE_CLASSES = frozenset(
    {
        ("numpy", "ndarray"),
        ("builtins", "bytes"),
        ("builtins", "bytearray"),
        *(
            ("scipy.sparse._" + kind, f"{kind}_{form}")
            for kind in ("csr", "csc", "coo")
            for form in ("matrix", "array")
        ),
    }
)
#: msgpack extension keys distributed decodes; only ``__Set__`` is plain data
_SPECIAL_KEYS = ("__Pickled__", "__Serialized__", "__Enum__")
#: pickle opcodes a reference to a class needs (and nothing that builds or calls)
_CLASS_REFERENCE_OPS = frozenset(
    {"PROTO", "FRAME", "SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "MEMOIZE", "BINPUT", "PUT", "STACK_GLOBAL", "GLOBAL", "STOP"}
)
#: pickle opcodes that build plain data only: no opcode that imports (GLOBAL, STACK_GLOBAL,
#: INST, EXT*), calls (REDUCE, OBJ, NEWOBJ*, BUILD) or asks the reader (PERSID) is among them
_DATA_ONLY_OPS = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
        "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE",
        "BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
        "NEXT_BUFFER", "READONLY_BUFFER", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "EMPTY_SET", "ADDITEMS", "FROZENSET", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT",
        "LONG_BINPUT", "MEMOIZE",
    }
)
#: dask serializer family names a collection header may carry (plain strings, not pickles)
_COLLECTIONS = frozenset({"tuple", "list", "set", "dict"})
#: depth of nested collections accepted
MAX_DEPTH = 32


class UntrustedPayload(ValueError):
    """A message from an untrusted peer carried something the grid never reads from one."""


def named_class(pickled: Any) -> tuple[str, str]:
    """The ``(module, qualname)`` a pickle refers to, read without unpickling.

    Raises :class:`UntrustedPayload` unless ``pickled`` is exactly one reference
    to a global (what ``pickle.dumps(SomeClass)`` writes) and nothing else.
    """
    if not isinstance(pickled, (bytes, bytearray, memoryview)):
        raise UntrustedPayload(f"a class reference must be bytes, got {type(pickled).__name__}")
    strings: list[str] = []
    found: tuple[str, str] | None = None
    try:
        for opcode, arg, _ in pickletools.genops(bytes(pickled)):
            if opcode.name not in _CLASS_REFERENCE_OPS:
                raise UntrustedPayload(f"a class reference uses pickle opcode {opcode.name}")
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif opcode.name == "STACK_GLOBAL":
                if found is not None or len(strings) != 2:
                    raise UntrustedPayload("a class reference must name exactly one class")
                found = (strings[0], strings[1])
            elif opcode.name == "GLOBAL":
                if found is not None or strings:
                    raise UntrustedPayload("a class reference must name exactly one class")
                module, _, name = str(arg).partition(" ")
                found = (module, name)
    except UntrustedPayload:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed pickle is refused, whatever broke
        raise UntrustedPayload(f"a class reference is not a valid pickle ({exc})") from None
    if found is None:
        raise UntrustedPayload("a class reference names no class")
    return found


def check_plain_pickle(pickled: Any) -> None:
    """Raise :class:`UntrustedPayload` unless ``pickled`` builds plain data only.

    Plain data (None, numbers, strings, bytes, tuples, lists, dicts, sets)
    pickles without naming any global; nothing else can run code when
    unpickled. Read with :mod:`pickletools`, which executes nothing.
    """
    try:
        for opcode, _, _ in pickletools.genops(bytes(pickled)):
            if opcode.name not in _DATA_ONLY_OPS:
                raise UntrustedPayload(f"a pickle that is not plain data (opcode {opcode.name})")
    except UntrustedPayload:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed pickle is refused, whatever broke
        raise UntrustedPayload(f"a malformed pickle ({exc})") from None


def _no_special(obj: dict) -> dict:
    """msgpack object hook for headers: plain data (and sets) only."""
    for key in _SPECIAL_KEYS:
        if key in obj:
            raise UntrustedPayload(f"a {key.strip('_')} object inside a serialization header")
    return obj


def _check_numpy_header(header: Any) -> None:
    if not isinstance(header, dict):
        raise UntrustedPayload("a numpy header is not a mapping")
    if header.get("pickle"):
        raise UntrustedPayload("a pickled numpy array (object dtype)")
    dtype = header.get("dtype")
    if not (isinstance(dtype, (list, tuple)) and len(dtype) == 2) or dtype[0]:
        raise UntrustedPayload("a numpy array with a custom (pickled) dtype")
    if "O" in str(dtype[1]):
        raise UntrustedPayload("a numpy array of Python objects")


class _Frames:
    """The frames of one serialized object as its deserializer sees them: distributed
    compresses and splits large frames on the wire (``serialize_and_split``), and a
    header's frame counts refer to the merged frames. Bytes are materialised only for
    the small frames a check reads (a pickle)."""

    def __init__(self, wire: Sequence[Any], compression: Sequence[Any], spans: Sequence[tuple[int, int]]) -> None:
        self.wire, self.compression, self.spans = wire, compression, list(spans)

    @classmethod
    def of(cls, header: dict, wire: Sequence[Any]) -> "_Frames":
        compression = header.get("compression") or (None,) * len(wire)
        if "split-num-sub-frames" in header:
            counts, offsets = header["split-num-sub-frames"], header.get("split-offsets")
            if not isinstance(counts, (list, tuple)) or not isinstance(offsets, (list, tuple)) or len(counts) != len(offsets):
                raise UntrustedPayload("a serialized object with a bad frame split")
            spans = [(int(o), int(n)) for n, o in zip(counts, offsets)]
        else:
            spans = [(i, 1) for i in range(len(wire))]
        if any(o < 0 or n < 0 or o + n > len(wire) for o, n in spans) or len(compression) != len(wire):
            raise UntrustedPayload("a serialized object whose frames do not add up")
        return cls(wire, compression, spans)

    def __len__(self) -> int:
        return len(self.spans)

    def sub(self, start: int, stop: int) -> "_Frames":
        return _Frames(self.wire, self.compression, self.spans[start:stop])

    def bytes(self, i: int) -> bytes:
        from distributed.protocol.compression import decompress

        offset, n = self.spans[i]
        pieces = decompress({"compression": tuple(self.compression[offset : offset + n])}, list(self.wire[offset : offset + n]))
        return b"".join(bytes(p) for p in pieces)


def check_serialized_header(header: Any, frames: "_Frames | None" = None, depth: int = 0) -> None:
    """Raise :class:`UntrustedPayload` unless deserializing ``header`` (with its
    ``frames``) runs no code chosen by the sender."""
    if depth > MAX_DEPTH:
        raise UntrustedPayload("serialized collections nested too deeply")
    if not isinstance(header, dict):
        raise UntrustedPayload("a serialization header is not a mapping")
    if "is-collection" in header:
        if header.get("type-serialized") not in _COLLECTIONS:
            raise UntrustedPayload(f"a serialized collection of type {header.get('type-serialized')!r}")
        subs, lengths = header.get("sub-headers"), header.get("frame-lengths")
        if not isinstance(subs, (list, tuple)) or not isinstance(lengths, (list, tuple)) or len(subs) != len(lengths):
            raise UntrustedPayload("a serialized collection without its item headers")
        start = 0
        for sub, length in zip(subs, lengths):
            if type(length) is not int or length < 0:
                raise UntrustedPayload("a serialized collection with a bad frame count")
            check_serialized_header(sub, frames.sub(start, start + length) if frames is not None else None, depth + 1)
            start += length
        return
    serializer = header.get("serializer")
    if serializer == "msgpack":
        return
    if serializer == "pickle":
        if not frames:
            raise UntrustedPayload("a pickled payload without its frame")
        check_plain_pickle(frames.bytes(0))  # the pickle itself; the other frames are its buffers
        return
    if serializer != "dask":
        raise UntrustedPayload(f"a payload serialized with {serializer!r}")
    cls = named_class(header.get("type-serialized"))
    if cls not in SAFE_CLASSES:
        raise UntrustedPayload(f"a payload of class {cls[0]}.{cls[1]}")
    sub = header.get("sub-header")
    if cls == ("numpy", "ndarray"):
        _check_numpy_header(sub)
    elif cls[0].startswith("scipy.sparse"):
        # register_generic: plain attributes, and arrays serialized the same way
        if not isinstance(sub, dict) or named_class(sub.get("type-serialized")) != cls:
            raise UntrustedPayload("a sparse matrix header that names another class")
        for item in (sub.get("complex") or {}).values():
            if not isinstance(item, dict) or "nested-dict" in (item.get("header") or {}):
                raise UntrustedPayload("a sparse matrix with nested attributes")
            start, stop = item.get("start", 0), item.get("stop", 0)
            if type(start) is not int or type(stop) is not int:
                raise UntrustedPayload("a sparse matrix attribute with bad frame bounds")
            check_serialized_header(item.get("header"), frames.sub(start, stop) if frames is not None else None, depth + 1)


def check_payload(header: Any, frames: Sequence[Any]) -> None:
    """Raise :class:`UntrustedPayload` unless deserializing ``header`` with ``frames`` (one
    serialized object, e.g. a stored partition) runs no code chosen by whoever serialized it."""
    if not isinstance(header, dict):
        raise UntrustedPayload("a serialization header is not a mapping")
    check_serialized_header(header, _Frames.of(header, frames))


def check_frames(frames: Sequence[Any], *, opaque_ok: bool = False) -> None:
    """Check a message's frames before distributed's ``loads`` reads them.

    Parameters
    ----------
    frames : sequence of bytes-like
        The frames of one message, as the comm read them.
    opaque_ok : bool
        Accept ``__Serialized__`` payloads of any serializer: for readers that
        keep them serialized and never deserialize them themselves.

    Raises
    ------
    UntrustedPayload
        Naming what was found.
    """
    if not frames:
        raise UntrustedPayload("an empty message")

    def hook(obj: dict) -> dict:
        if "__Pickled__" in obj:
            raise UntrustedPayload("a pickled object")
        if "__Enum__" in obj:
            raise UntrustedPayload("an Enum object (distributed imports its module to read it)")
        if "__Serialized__" in obj:
            offset = obj["__Serialized__"]
            if type(offset) is not int or not 0 < offset < len(frames):
                raise UntrustedPayload("a serialized object outside the message's frames")
            sub_header = msgpack.loads(frames[offset], object_hook=_no_special, use_list=False, **msgpack_opts)
            if not isinstance(sub_header, dict):
                raise UntrustedPayload("a serialized object without a header")
            if not opaque_ok:
                count = sub_header.get("num-sub-frames", 0)
                if type(count) is not int or count < 0:
                    raise UntrustedPayload("a serialized object with a bad frame count")
                check_serialized_header(sub_header, _Frames.of(sub_header, frames[offset + 1 : offset + 1 + count]))
        return obj

    try:
        msgpack.loads(frames[0], object_hook=hook, use_list=False, **msgpack_opts)
    except UntrustedPayload:
        raise
    except Exception as exc:  # noqa: BLE001 - a message msgpack cannot read is refused too
        raise UntrustedPayload(f"a message that is not valid msgpack ({type(exc).__name__}: {exc})") from None
