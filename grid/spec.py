"""Grid specs: which regions a grid has, where their schedulers are, and TLS.

A spec is a YAML file or the same as a dict::

    regions:
      eu: tls://eu.grid.example.org:8786
      us: {address: "tls://us.grid.example.org:8786", connect-timeout: 20s}
    tls: {ca-file: ca.pem, cert: client.pem, key: client-key.pem}

:func:`load_spec` validates it and names the key, the value and what is
allowed in every error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from dask.utils import parse_timedelta

from grid import names

ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+\Z")
REGION_OPTIONS = {"address", "connect-timeout"}
TLS_KEYS = {"ca-file", "cert", "key"}


class SpecError(ValueError):
    """An invalid grid spec: names the key, shows the value, says what is allowed."""


@dataclass(frozen=True)
class RegionSpec:
    """One region: its scheduler address and per-region options."""

    name: str
    address: str
    connect_timeout: float | None = None


@dataclass(frozen=True)
class TLSSpec:
    """Client TLS material (paths) for every region of the grid."""

    ca_file: str
    cert: str
    key: str

    def security(self) -> Any:
        from distributed.security import Security

        return Security(
            tls_ca_file=self.ca_file,
            tls_client_cert=self.cert,
            tls_client_key=self.key,
            require_encryption=True,
        )


@dataclass(frozen=True)
class GridSpec:
    """A validated grid spec."""

    regions: dict[str, RegionSpec]
    tls: TLSSpec | None = None
    source: str = "<dict>"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "regions": {
                name: (
                    r.address
                    if r.connect_timeout is None
                    else {"address": r.address, "connect-timeout": f"{r.connect_timeout}s"}
                )
                for name, r in self.regions.items()
            }
        }
        if self.tls:
            out["tls"] = {"ca-file": self.tls.ca_file, "cert": self.tls.cert, "key": self.tls.key}
        return out

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def load_spec(spec: str | os.PathLike | Mapping | GridSpec) -> GridSpec:
    """Load and validate a grid spec from a YAML path or a mapping.

    Raises
    ------
    SpecError
        For every problem, naming the key and the allowed values.
    FileNotFoundError
        If a path is given that does not exist.
    """
    if isinstance(spec, GridSpec):
        return spec
    source = "<dict>"
    if isinstance(spec, (str, os.PathLike)):
        source = os.fspath(spec)
        if not os.path.exists(source):
            raise FileNotFoundError(
                f"grid spec file {source!r} does not exist; `grid up` writes one, or pass a dict"
            )
        if os.path.isdir(source):
            raise SpecError(f"{source}: is a directory; pass the grid spec YAML file (`grid up` writes grid.yaml)")
        with open(source, "rb") as f:
            raw = f.read()
        try:
            spec = yaml.safe_load(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SpecError(f"{source}: not valid YAML: the file is not UTF-8 text ({exc})") from None
        except RecursionError:
            raise SpecError(f"{source}: not valid YAML: nested too deeply") from None
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: not valid YAML: {exc}") from None
        base = os.path.dirname(os.path.abspath(source))
    else:
        base = os.getcwd()
    if not isinstance(spec, Mapping):
        raise SpecError(f"{source}: a grid spec must be a mapping with 'regions', got {type(spec).__name__}")
    unknown = set(spec) - {"regions", "tls"}
    if unknown:
        raise SpecError(f"{source}: unknown top-level key(s) {sorted(unknown, key=repr)}; allowed are 'regions' and 'tls'")
    regions_raw = spec.get("regions")
    if not isinstance(regions_raw, Mapping) or not regions_raw:
        raise SpecError(
            f"{source}: 'regions' must map region names to scheduler addresses, got {regions_raw!r}; "
            "e.g. regions: {eu: 'tcp://10.0.0.1:8786'}"
        )
    regions = {}
    for name, value in regions_raw.items():
        regions[str(name)] = _region(source, name, value)
    tls = _tls(source, spec.get("tls"), base) if spec.get("tls") is not None else None
    if tls is None:
        for r in regions.values():
            if r.address.startswith("tls://"):
                raise SpecError(
                    f"{source}: regions.{r.name}.address is {r.address!r} but the spec has no 'tls' "
                    "section; add tls: {ca-file, cert, key}"
                )
    return GridSpec(regions=regions, tls=tls, source=source)


def _region(source: str, name: Any, value: Any) -> RegionSpec:
    key = f"regions.{name}"
    if not names.is_region(name):
        raise SpecError(
            f"{source}: region name {name!r} is not allowed; use lowercase letters, digits and '-', "
            "starting with a letter (e.g. 'eu', 'us-east')"
        )
    if isinstance(value, str):
        value = {"address": value}
    if not isinstance(value, Mapping):
        raise SpecError(f"{source}: {key} must be an address string or a mapping with 'address', got {value!r}")
    unknown = set(value) - REGION_OPTIONS
    if unknown:
        raise SpecError(f"{source}: {key} has unknown option(s) {sorted(unknown, key=repr)}; allowed are {sorted(REGION_OPTIONS)}")
    address = value.get("address")
    if not isinstance(address, str) or not ADDRESS.match(address):
        raise SpecError(
            f"{source}: {key}.address is {address!r}; it must be a scheduler address like "
            "'tcp://host:8786' or 'tls://host:8786'"
        )
    timeout = value.get("connect-timeout")
    if timeout is not None:
        try:
            if isinstance(timeout, bool):
                raise TypeError(timeout)
            timeout = float(parse_timedelta(timeout))
        except Exception:  # noqa: BLE001 - parse_timedelta raises many types for junk
            raise SpecError(f"{source}: {key}.connect-timeout is {timeout!r}; use a duration like '10s'") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise SpecError(f"{source}: {key}.connect-timeout must be positive, got {timeout!r}")
    return RegionSpec(name=name, address=address, connect_timeout=timeout)


def _tls(source: str, value: Any, base: str) -> TLSSpec:
    if not isinstance(value, Mapping):
        raise SpecError(f"{source}: 'tls' must be a mapping with {sorted(TLS_KEYS)}, got {value!r}")
    if set(value) != TLS_KEYS:
        raise SpecError(
            f"{source}: 'tls' has keys {sorted(value, key=repr)}; it needs exactly {sorted(TLS_KEYS)}"
        )
    paths = {}
    for k in sorted(TLS_KEYS):
        v = value[k]
        if not isinstance(v, str) or not v:
            raise SpecError(f"{source}: tls.{k} must be a file path, got {v!r}")
        p = v if os.path.isabs(v) else os.path.join(base, v)
        if not os.path.exists(p):
            raise SpecError(f"{source}: tls.{k} file {p!r} does not exist; `grid certs issue client NAME` makes one")
        paths[k] = p
    return TLSSpec(ca_file=paths["ca-file"], cert=paths["cert"], key=paths["key"])
