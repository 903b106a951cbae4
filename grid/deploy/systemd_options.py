"""The options of ``install-systemd`` and their checks.

What an operator may choose for the scheduler unit (:class:`SchedulerOptions`)
and the node unit (:class:`NodeOptions`), with the defaults of the
recommended install. Each ``check()`` refuses a value that could not be
written safely into a unit or an environment file, naming the option and
what is allowed; region, certificate and node names are checked by the
grid's one pattern per kind of name (:mod:`grid.names`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from grid import names

#: where ``install-systemd`` writes units unless told otherwise
DEFAULT_TARGET_DIR = "/etc/systemd/system"
#: environment files (one per unit)
DEFAULT_ENV_DIR = "/etc/dask-grid"
#: TLS material: ``scheduler-REGION/`` and ``node/`` below it hold ca.pem, cert.pem, key.pem
DEFAULT_CREDENTIALS_DIR = "/etc/dask-grid/tls"
#: the ``grid`` executable of the recommended install (``python3 -m venv /opt/dask-grid``)
DEFAULT_GRID_EXECUTABLE = "/opt/dask-grid/bin/grid"
#: the grid's revocation list (``crl.pem`` of the CA directory) on a scheduler's host
DEFAULT_CRL_FILE = "/etc/dask-grid/crl.pem"

_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/]+:\d{1,5}\Z")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_SAFE_VALUE = re.compile(r"^[^\s'\"\\$%;#]*\Z")
_CPU_QUOTA = re.compile(r"^\d{1,5}%\Z")


@dataclass(frozen=True)
class CommonOptions:
    """Options shared by the scheduler and node units.

    Parameters
    ----------
    grid_executable : str
        Absolute path of the ``grid`` command the unit runs.
    user : str or None
        Run as this existing system user; ``None`` uses ``DynamicUser=yes``.
    tls : bool
        Load ``ca.pem``, ``cert.pem``, ``key.pem`` with ``LoadCredential=`` and
        configure distributed for mutual TLS; ``False`` for a private test
        network only.
    credentials_dir : str
        Directory with one sub-directory of TLS files per unit, each as
        ``grid certs issue ROLE NAME --out DIR`` writes it: ``ca.pem``,
        ``NAME.pem``, ``NAME-key.pem``.
    cert_name : str or None
        ``NAME`` of the certificate files; ``None``: the node's name, else
        the host name (``%H``).
    env_dir : str
        Directory of the environment files.
    """

    grid_executable: str = DEFAULT_GRID_EXECUTABLE
    user: str | None = None
    tls: bool = True
    credentials_dir: str = DEFAULT_CREDENTIALS_DIR
    cert_name: str | None = None
    env_dir: str = DEFAULT_ENV_DIR

    def check(self) -> None:
        """Raise ``ValueError`` naming the option and what is allowed."""
        for opt in ("grid_executable", "credentials_dir", "env_dir"):
            value = getattr(self, opt)
            if not os.path.isabs(value) or not _SAFE_VALUE.match(value):
                raise ValueError(f"{opt}={value!r} must be an absolute path without spaces, quotes, '$', '%', ';' or '#'")
        if self.user is not None and not _USER.match(self.user):
            raise ValueError(f"user={self.user!r} is not a valid system user name (lowercase, digits, '_', '-')")
        if self.cert_name is not None and not names.is_identity(self.cert_name):
            raise ValueError(f"cert_name={self.cert_name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        if self.user in ("root", "nobody"):
            raise ValueError(f"user={self.user!r} is not allowed: use a dedicated system user, or none for a DynamicUser")


@dataclass(frozen=True)
class SchedulerOptions(CommonOptions):
    """Options of ``grid-scheduler@.service`` and a region's environment file.

    Parameters
    ----------
    region : str
        Region of the environment file (the unit is a template for every region).
    host : str
        Address to listen on.
    port : int
        Scheduler port.
    dashboard_address : str
        Dask dashboard (``/health``, ``/metrics``, the Bokeh pages).
    stop_timeout : int
        Seconds systemd waits after ``SIGTERM`` before killing.
    crl_file : str
        The grid's revocation list, passed as ``--crl-file`` when ``tls`` is on;
        the unit does not start while it is missing or empty. Readable by the
        service's user (mode 0644: a CRL is public).
    """

    region: str = "eu"
    host: str = "0.0.0.0"
    port: int = 8786
    dashboard_address: str = "127.0.0.1:8787"
    stop_timeout: int = 60
    crl_file: str = DEFAULT_CRL_FILE

    def check(self) -> None:
        """Raise ``ValueError`` naming the option and what is allowed."""
        super().check()
        _check_region(self.region)
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r} must be a port number 1..65535")
        for opt in ("host", "dashboard_address"):
            value = getattr(self, opt)
            if not value or not _SAFE_VALUE.match(value):
                raise ValueError(f"{opt}={value!r} must be a non-empty address without spaces or quotes")
        if self.stop_timeout < 1:
            raise ValueError(f"stop_timeout={self.stop_timeout!r} must be at least 1 second")
        if not os.path.isabs(self.crl_file) or not _SAFE_VALUE.match(self.crl_file):
            raise ValueError(f"crl_file={self.crl_file!r} must be an absolute path without spaces, quotes, '$', '%', ';' or '#'")
        if self.tls and protect_home(self.grid_executable) == "yes" and self.crl_file.startswith(("/home/", "/root/", "/run/user/")):
            raise ValueError(f"crl_file={self.crl_file!r}: the unit hides home directories (ProtectHome=yes); use e.g. {DEFAULT_CRL_FILE}")

    @property
    def env_file(self) -> str:
        """This region's environment file."""
        return os.path.join(self.env_dir, f"scheduler-{self.region}.env")


@dataclass(frozen=True)
class NodeOptions(CommonOptions):
    """Options of ``grid-node.service`` and its environment file.

    Parameters
    ----------
    region : str
        Region to join.
    scheduler : str
        Scheduler address, ``tls://HOST:PORT`` (``tcp://`` only with ``tls=False``).
    nthreads : int
        Threads of the node.
    memory_limit : str
        Dask worker memory limit (``auto``, ``4GiB``, ...).
    name : str or None
        Node name (its identity); ``None`` uses the host name (``%H``).
    cpu_quota : str or None
        ``CPUQuota=`` (e.g. ``"50%"`` of one CPU; ``"200%"`` for two); ``None`` for no cap.
    cpu_weight : int
        ``CPUWeight=`` (systemd's default is 100; lower yields to other work).
    nice : int
        ``Nice=`` of the node's processes.
    retire_timeout : int
        Seconds the node waits for its data to be copied off when stopped
        (``grid.node.retire-timeout``); ``TimeoutStopSec`` is this plus 60.
    """

    region: str = "eu"
    scheduler: str = "tls://eu.grid.example.org:8786"
    nthreads: int = 1
    memory_limit: str = "auto"
    name: str | None = None
    cpu_quota: str | None = None
    cpu_weight: int = 20
    nice: int = 19
    retire_timeout: int = 60

    def check(self) -> None:
        """Raise ``ValueError`` naming the option and what is allowed."""
        super().check()
        _check_region(self.region)
        if not _ADDRESS.match(self.scheduler):
            raise ValueError(f"scheduler={self.scheduler!r} must look like tls://HOST:PORT (or tcp://HOST:PORT without TLS)")
        if self.tls and not self.scheduler.startswith("tls://"):
            raise ValueError(
                f"scheduler={self.scheduler!r}: with TLS the address must start with tls:// "
                "(pass --no-tls only on a private test network)"
            )
        if not self.tls and self.scheduler.startswith("tls://"):
            raise ValueError(f"scheduler={self.scheduler!r} is a TLS address but TLS is switched off")
        if not isinstance(self.nthreads, int) or self.nthreads < 1:
            raise ValueError(f"nthreads={self.nthreads!r} must be an integer >= 1")
        _check_memory_limit(self.memory_limit)
        if self.name is not None and not names.is_node_name(self.name):
            raise ValueError(f"name={self.name!r}: use letters, digits, '.', '_' and '-' (at most 128)")
        if self.cpu_quota is not None and not _CPU_QUOTA.match(self.cpu_quota):
            raise ValueError(f"cpu_quota={self.cpu_quota!r} must be a percentage such as '50%' or '200%'")
        if not 1 <= self.cpu_weight <= 10000:
            raise ValueError(f"cpu_weight={self.cpu_weight!r} must be in 1..10000")
        if not -20 <= self.nice <= 19:
            raise ValueError(f"nice={self.nice!r} must be in -20..19")
        if self.retire_timeout < 1:
            raise ValueError(f"retire_timeout={self.retire_timeout!r} must be at least 1 second")

    @property
    def env_file(self) -> str:
        """The node's environment file."""
        return os.path.join(self.env_dir, "node.env")

    @property
    def stop_timeout(self) -> int:
        """``TimeoutStopSec``: retirement plus a minute to close."""
        return self.retire_timeout + 60


def _check_region(region: str) -> None:
    if not names.is_region(region):
        raise ValueError(f"region={region!r} is not allowed; use lowercase letters, digits and '-', starting with a letter")


def _check_memory_limit(value: str) -> None:
    from dask.utils import parse_bytes

    if value == "auto":
        return
    try:
        ok = _SAFE_VALUE.match(value) is not None and float(parse_bytes(value)) > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"memory_limit={value!r} must be 'auto' or a size such as '4GiB'")


def protect_home(executable: str) -> str:
    """``ProtectHome=yes`` unless the executable itself lives under a home directory."""
    for home in ("/home/", "/root/", "/run/user/"):
        if executable.startswith(home):
            return "read-only"
    return "yes"


__all__ = [
    "DEFAULT_CREDENTIALS_DIR",
    "DEFAULT_CRL_FILE",
    "DEFAULT_ENV_DIR",
    "DEFAULT_GRID_EXECUTABLE",
    "DEFAULT_TARGET_DIR",
    "CommonOptions",
    "NodeOptions",
    "SchedulerOptions",
    "protect_home",
]
