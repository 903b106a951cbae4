"""Declarative estimator specs: a class from an allowlist plus plain parameters.

A job travels to the scheduler as a spec, never as pickled code: the class is
named by ``module:qualname`` and must live under an allowed module prefix; the
parameters must be plain data (numbers, strings, booleans, None, lists and
dicts of those). :func:`build_estimator` turns a spec back into an estimator
on the scheduler or a node.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import re
import types
from collections.abc import Iterable
from typing import Any

import numpy as np

from jobs.plain import check_plain

#: Module prefixes whose classes a job may name. Operators can narrow or widen
#: this with ``grid.jobs.allowed-modules`` (passed in by the grid).
DEFAULT_ALLOWED_MODULES = ("sklearn.", "jobs.")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SpecError(ValueError):
    """An estimator cannot be described as a declarative job spec."""


def class_path(cls: type) -> str:
    """``module:qualname`` of a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def plain(value: Any, where: str) -> Any:
    """Convert a parameter value to plain data or raise :class:`SpecError`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):  # tuples stay tuples (e.g. feature_range=(0, 1))
        return type(value)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.tolist()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and not isinstance(k, np.generic):
                raise SpecError(f"{where} has a key of type {type(k).__name__}; use str or int keys")
            out[k.item() if isinstance(k, np.generic) else k] = plain(v, f"{where}[{k!r}]")
        return out
    raise SpecError(
        f"{where} is a {type(value).__name__} ({value!r:.60}); a grid job carries only plain "
        "parameters (numbers, strings, booleans, None, lists and dicts of those), because "
        "schedulers do not unpickle code. Pass a plain value, e.g. an int random_state instead "
        "of a RandomState, or fit this estimator locally."
    )


def estimator_spec(estimator: Any, allowed: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> dict:
    """Describe an estimator as ``{"class": "module:qualname", "params": {...}}``.

    Raises
    ------
    SpecError
        If the class is not allowlisted or a parameter is not plain data.
    """
    cls = type(estimator)
    check_allowed(cls.__module__, allowed)
    try:
        params = estimator.get_params(deep=False)
    except AttributeError:
        raise SpecError(
            f"{cls.__name__} has no get_params(); a grid job needs a scikit-learn estimator"
        ) from None
    plain_params = {k: plain(v, f"{cls.__name__}.{k}") for k, v in params.items()}
    check_plain(plain_params, f"{cls.__name__} parameters")  # the bounds the scheduler checks, checked here first
    return {"class": class_path(cls), "params": plain_params}


def _in_allowed(module: str, allowed: tuple[str, ...]) -> bool:
    # a prefix names a package: "sklearn." and "sklearn" both allow sklearn and its
    # submodules, never a sibling such as "sklearn_evil"
    for prefix in allowed:
        package = prefix.rstrip(".")
        if package and (module == package or module.startswith(package + ".")):
            return True
    return False


def check_allowed(module: str, allowed: Iterable[str]) -> None:
    """Raise :class:`SpecError` unless ``module`` is under an allowed module prefix."""
    allowed = tuple(allowed)
    if not isinstance(module, str) or not _in_allowed(module, allowed):
        raise SpecError(
            f"estimators from module {module!r} are not allowed on this grid; allowed "
            f"module prefixes are {list(allowed)} (grid.jobs.allowed-modules)"
        )


def _kind(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"the module {obj.__name__!r}"
    return f"a {type(obj).__name__}"


def resolve_class(path: str, allowed: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> type:
    """Import the estimator class named by ``module:qualname`` after checking the allowlist.

    The name only says where to look; what is checked is the object found.
    ``qualname`` may walk through classes only (``Outer.Inner``), never
    through modules, functions or other objects, and no part of it may be
    private or dunder, so an allowed module cannot be used as a path to
    anything it happens to import. The object found must be a class defined
    in an allowed module (its ``__module__``), found under its own name, with
    ``get_params`` (a scikit-learn-style estimator).

    Raises
    ------
    SpecError
        Naming the path and what is wrong with it.
    """
    allowed = tuple(allowed)
    if not isinstance(path, str) or path.count(":") != 1:
        raise SpecError(f"estimator class must be 'module:qualname', got {path!r:.120}")
    module_name, qualname = path.split(":")
    module_parts, name_parts = module_name.split("."), qualname.split(".")
    if not all(map(_IDENTIFIER.match, module_parts + name_parts)):
        raise SpecError(
            f"estimator class must be 'module:qualname' of Python identifiers, e.g. "
            f"'sklearn.linear_model:SGDClassifier', got {path!r:.120}"
        )
    if any(part.startswith("__") for part in module_parts) or any(part.startswith("_") for part in name_parts):
        raise SpecError(
            f"estimator class {path!r:.120} names a private or dunder attribute; name a public "
            "estimator class, e.g. 'sklearn.linear_model:SGDClassifier'"
        )
    check_allowed(module_name, allowed)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"estimator class {path!r} cannot be imported: {exc}") from None
    for i, part in enumerate(name_parts):
        # getattr_static: looking a name up never runs a descriptor or a module __getattr__
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError:
            raise SpecError(f"estimator class {path!r} cannot be imported: no attribute {part!r}") from None
        if not isinstance(obj, type):
            reached = ".".join(name_parts[: i + 1])
            raise SpecError(
                f"{path!r} is not an estimator class: {module_name}:{reached} is {_kind(obj)}; name the "
                "class itself, as 'module:Class'"
            )
    if not _in_allowed(getattr(obj, "__module__", None) or "", allowed):
        raise SpecError(
            f"{path!r} is the class {obj.__module__}.{obj.__qualname__}, from a module that is not allowed "
            f"on this grid; allowed module prefixes are {list(allowed)} (grid.jobs.allowed-modules)"
        )
    if obj.__qualname__ != qualname:
        raise SpecError(
            f"{path!r} is the class {obj.__module__}:{obj.__qualname__}; name it by its own name"
        )
    if not callable(getattr(obj, "get_params", None)):
        raise SpecError(f"{path!r} is not a scikit-learn estimator (it has no get_params)")
    return obj


def build_estimator(spec: dict, allowed: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> Any:
    """Instantiate the estimator a spec describes."""
    cls = resolve_class(spec["class"], allowed)
    params = spec.get("params") or {}
    if not isinstance(params, dict) or not all(type(k) is str for k in params):
        raise SpecError(f"estimator params must be a dict with str keys, got {params!r:.80}")
    check_plain(params, "estimator params")  # nothing but plain data reaches a constructor
    return cls(**params)
