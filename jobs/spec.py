"""Declarative estimator specs: a class from an allowlist plus plain parameters.

A job travels to the scheduler as a spec, never as pickled code: the class is
named by ``module:qualname`` and must live under an allowed module prefix; the
parameters must be plain data (numbers, strings, booleans, None, lists and
dicts of those). :func:`build_estimator` turns a spec back into an estimator
on the scheduler or a node.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

#: Module prefixes whose classes a job may name. Operators can narrow or widen
#: this with ``grid.jobs.allowed-modules`` (passed in by the grid).
DEFAULT_ALLOWED_MODULES = ("sklearn.", "jobs.")


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
    return {
        "class": class_path(cls),
        "params": {k: plain(v, f"{cls.__name__}.{k}") for k, v in params.items()},
    }


def check_allowed(module: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if not module.startswith(allowed):
        raise SpecError(
            f"estimators from module {module!r} are not allowed on this grid; allowed "
            f"module prefixes are {list(allowed)} (grid.jobs.allowed-modules)"
        )


def resolve_class(path: str, allowed: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> type:
    """Import the class named by ``module:qualname`` after checking the allowlist."""
    if not isinstance(path, str) or ":" not in path:
        raise SpecError(f"estimator class must be 'module:qualname', got {path!r}")
    module_name, _, qualname = path.partition(":")
    check_allowed(module_name, allowed)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"estimator class {path!r} cannot be imported: {exc}") from None
    if not isinstance(obj, type):
        raise SpecError(f"{path!r} is not a class")
    return obj


def build_estimator(spec: dict, allowed: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> Any:
    """Instantiate the estimator a spec describes."""
    cls = resolve_class(spec["class"], allowed)
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise SpecError(f"estimator params must be a dict, got {type(params).__name__}")
    return cls(**params)
