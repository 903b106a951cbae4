"""Plain data: the only values a job request may carry.

A job request travels from an untrusted client to a scheduler, from there to
other regions' schedulers and to the nodes. Every hop may turn an object that
is not plain data into code: a ``Serialized`` or ``Pickled`` value that the
scheduler kept opaque is unpickled by the node that reads the next message,
and an arbitrary class runs its own methods wherever it is used. So every
place that accepts a job request checks it with :func:`check_plain` first and
refuses anything else, naming the field.

Plain data is ``None``, ``bool``, ``int`` (64 bits), ``float``, ``str`` and
``bytes`` (bounded length), and ``list``, ``tuple`` and ``dict`` of those,
with ``str``, ``int``, ``float`` or ``bool`` keys, nested to a bounded depth
and holding a bounded number of values. Types are matched exactly: a
subclass (``numpy.float64``, a ``str`` subclass) can carry its own behaviour,
so it is refused too. Pure Python: this module imports nothing else.
"""

from __future__ import annotations

from typing import Any

#: containers nested deeper than this are refused (requests nest 3-4 levels)
MAX_DEPTH = 32
#: values (containers, keys and leaves) one checked value may hold at most; a
#: warm-started model's coefficients count one value each
MAX_ITEMS = 10_000_000
#: longest ``str`` / ``bytes`` value, in characters or bytes
MAX_LENGTH = 1 << 20
#: the integers msgpack carries, i.e. what a request can hold after a round trip
MIN_INT, MAX_INT = -(2**63), 2**64 - 1

_NUMBERS = frozenset({type(None), bool, int, float})
_KEYS = frozenset({str, int, float, bool})
_WHAT = (
    "job parameters must be plain data (numbers, strings, lists, dicts): None, bool, int, float, "
    "str, bytes, and lists, tuples and dicts of those; schedulers and nodes never unpickle what a "
    "job carries. Pass the plain value instead (e.g. 0.1 instead of numpy.float64(0.1), an int "
    "random_state instead of a RandomState, a list instead of an array)"
)


class PlainDataError(ValueError):
    """A value that must be plain data is not (the message names the field)."""


def describe(value: Any) -> str:
    """``value``'s type in words, for messages: ``"a numpy.float64"``, ``"a set"``, ``"a Serialized object"``."""
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    if module == "builtins":
        return f"a {name}"
    if module.split(".")[0] == "numpy":
        return f"a numpy.{name}"
    return f"a {name} object ({module}.{name})"


def _key_text(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def check_plain(
    value: Any,
    where: str = "value",
    *,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    max_length: int = MAX_LENGTH,
) -> None:
    """Raise :class:`PlainDataError` unless ``value`` is plain data.

    Parameters
    ----------
    value : object
        What to check, e.g. a job request as a handler received it.
    where : str, default "value"
        The name of ``value`` in messages; fields are appended to it, so an
        error reads ``request['estimator']['params']['alpha'] is a ...``.
    max_depth, max_items, max_length : int
        Bounds on nesting, on the number of values and on the length of one
        ``str`` or ``bytes`` (defaults :data:`MAX_DEPTH`, :data:`MAX_ITEMS`,
        :data:`MAX_LENGTH`).

    Raises
    ------
    PlainDataError
        Naming the first field that is not plain data or breaks a bound.
    """
    items = 0
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        items += 1
        kind = type(item)
        if kind in _NUMBERS:
            if kind is int and not MIN_INT <= item <= MAX_INT:
                raise PlainDataError(f"{path} is an integer outside 64 bits; {_WHAT}")
            continue
        if kind is str or kind is bytes:
            if len(item) > max_length:
                raise PlainDataError(
                    f"{path} is a {kind.__name__} of length {len(item)}, longer than {max_length}; "
                    "a job request carries names and numbers, not payloads"
                )
            continue
        if kind is list or kind is tuple or kind is dict:
            if depth >= max_depth:
                raise PlainDataError(f"{path} nests containers deeper than {max_depth} levels; {_WHAT}")
            if kind is dict:
                for key, child in item.items():
                    if type(key) not in _KEYS:
                        raise PlainDataError(
                            f"{path} has a key that is {describe(key)}; dict keys must be str, int, float or bool"
                        )
                    if type(key) is str and len(key) > max_length:
                        raise PlainDataError(f"{path} has a key longer than {max_length} characters")
                    stack.append((child, f"{path}[{_key_text(key)}]", depth + 1))
                items += len(item)
            elif (types := set(map(type, item))) <= _NUMBERS:
                # a vector of numbers (coefficients, labels): checked without a path per element
                if int in types:
                    ints = [n for n in item if type(n) is int]
                    if min(ints) < MIN_INT or max(ints) > MAX_INT:
                        raise PlainDataError(f"{path} holds an integer outside 64 bits; {_WHAT}")
                items += len(item)
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
            if items > max_items:
                raise PlainDataError(f"{path} holds more than {max_items} values; a job request must stay small")
            continue
        raise PlainDataError(f"{path} is {describe(item)}; {_WHAT}")
