"""The ``grid`` namespace of ``dask.config``: shipped defaults and typed accessors.

Loading this module registers ``grid/grid.yaml`` as defaults, exactly as
distributed does with ``distributed.yaml``; users override values in their
Dask config files or with ``DASK_GRID__...`` environment variables.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml
from dask.utils import parse_bytes, parse_timedelta

_HERE = os.path.dirname(__file__)
DEFAULTS_FILE = os.path.join(_HERE, "grid.yaml")
SCHEMA_FILE = os.path.join(_HERE, "grid-schema.yaml")

with open(DEFAULTS_FILE) as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


_MISSING = object()


def _shipped(key: str) -> Any:
    """The value of ``key`` in the shipped grid.yaml, or ``_MISSING``."""
    node: Any = _defaults["grid"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def get(key: str, default: Any = None) -> Any:
    """``dask.config.get("grid." + key)``, falling back to the shipped default.

    The fallback matters when something resets dask's config to a snapshot
    taken before this module registered its defaults (distributed's test
    utilities do).
    """
    shipped = _shipped(key)
    value = dask.config.get(f"grid.{key}", default=default if shipped is _MISSING else shipped)
    if isinstance(shipped, dict) and isinstance(value, dict) and value is not shipped:
        # a section set key by key after such a reset lacks the other keys: the shipped ones fill in
        return dask.config.merge(shipped, value)
    return value


def choice(key: str, allowed: tuple[str, ...]) -> str:
    """A setting that must be one of ``allowed``; the error names the key and the choices."""
    value = get(key)
    if value not in allowed:
        raise ValueError(
            f"grid.{key} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}; "
            f"fix it in your Dask config or the DASK_GRID__{key.upper().replace('.', '__').replace('-', '_')} variable"
        )
    return value


def seconds(key: str) -> float:
    """A duration setting in seconds; an unreadable value names the setting and the fix."""
    value = get(key)
    try:
        return float(parse_timedelta(value))
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"grid.{key} must be a duration such as 30s or 500ms, got {value!r}") from None


def nbytes(key: str) -> int:
    """A size setting in bytes."""
    value = get(key)
    return int(parse_bytes(value) if isinstance(value, str) else value)


def schema() -> dict:
    with open(SCHEMA_FILE) as f:
        return yaml.safe_load(f)


def scheduler_settings() -> Any:
    """``dask.config.set`` of the distributed settings grid schedulers are created with."""
    saturation = get("scheduler.worker-saturation")
    return dask.config.set({"distributed.scheduler.worker-saturation": float(saturation)})
