"""The grid certificate authority: create it, issue role certificates, revoke them.

A grid has one CA. Every scheduler, node, data scientist (client), operator
(admin) and operators' dashboard (observer) holds a certificate issued by it;
mutual TLS between them proves both ends belong to the grid, and the
certificate says *who* the peer is.

Key type
    ECDSA P-256 with SHA-256 signatures, for the CA and every certificate.
    Python's ``ssl`` (OpenSSL 1.1.1 and later) accepts it for TLS 1.2 and
    1.3, server and client authentication; Ed25519 works with OpenSSL 3 as
    well, but browsers refuse Ed25519 server certificates (the dashboard) and
    older OpenSSL / LibreSSL builds lack it, so P-256 is the safe choice.

Where the identity lives
    Subject ``CN=<name>, OU=<role>, O=<grid name>`` for humans and logs, and
    one subjectAltName URI that is authoritative::

        grid://<role>/<name>                  client, admin, observer (and a scheduler without region)
        grid://<role>/<name>?region=<region>  node (always), scheduler (when given)
        grid://node/<name>?region=<region>&owner=<owner>   a node whose certificate names its owner

    Python's ``ssl`` shows this URI in ``getpeercert()`` (``('URI', ...)``)
    and :func:`identity_from_der` parses it from the binary form. Parsing
    requires CN and OU to agree with the URI. Names and owners are
    ``[A-Za-z0-9][A-Za-z0-9._-]*`` (at most 64 characters), regions
    ``[a-z][a-z0-9-]*`` (:mod:`grid.names`), so they need no escaping in a URI.

Extensions
    CA: basicConstraints CA:TRUE pathlen 0 (critical), keyUsage
    keyCertSign + cRLSign (critical). Leaf: CA:FALSE (critical), keyUsage
    digitalSignature (critical), extendedKeyUsage serverAuth + clientAuth
    for schedulers and nodes (both listen and both dial out: a scheduler
    connects to its workers, workers to each other) and clientAuth only for
    clients, admins and observers, subject and authority key identifiers,
    and DNS / IP SANs for the ``--host`` names of schedulers and nodes.

Layout of a CA directory (mode 0700; every file mode 0600)::

    ca.pem             the CA certificate: give it to every scheduler, node and client
    ca-key.pem         the CA private key: never leaves this directory
    crl.pem            the revocation list signed by the CA: give it to every scheduler
    issued/<serial>.pem  a copy of every certificate issued (for ``list`` and ``revoke NAME``)
    <role>/<name>/     default output of ``issue``: <name>.pem, <name>-key.pem, ca.pem

Defaults (days): CA 1825, scheduler 365, node 90, client 365, admin 365,
observer 365, CRL 90; the ``grid.security`` section of the dask config
overrides them (see :func:`default_days`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grid import config, names
from grid.errors import GridError

logger = logging.getLogger(__name__)

#: The roles a grid certificate can carry. An ``observer`` (the operators' dashboard)
#: reads every job's metadata and the node view, and changes nothing (docs/security.md).
ROLES: tuple[str, ...] = ("scheduler", "node", "client", "admin", "observer")
#: Roles that belong to people or tools rather than machines: no region, no host names.
UNBOUND_ROLES = frozenset({"client", "admin", "observer"})

#: Built-in lifetimes in days; ``grid.security.days.<kind>`` overrides them.
BUILTIN_DAYS: dict[str, int] = {"ca": 1825, "scheduler": 365, "node": 90, "client": 365, "admin": 365, "observer": 365}
#: Built-in CRL lifetime in days (``grid.security.crl-days``).
BUILTIN_CRL_DAYS = 90
#: Default CA directory when ``grid.security.ca-dir`` is not set.
BUILTIN_CA_DIR = "~/.config/dask-grid/ca"

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CRL_FILE = "crl.pem"
ISSUED_DIR = "issued"

URI_SCHEME = "grid"
_DNS_RE = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")
#: the names a certificate for this machine carries (schedulers by default, --localhost)
LOCALHOST = ("localhost", "127.0.0.1", "::1")
_BACKDATE = _dt.timedelta(minutes=5)  # tolerate clock skew between the CA machine and the grid

REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}


# --------------------------------------------------------------------------- errors


class CertError(GridError):
    """A certificate, CA or revocation list problem; the message names the fix."""


class CANotFound(CertError, FileNotFoundError):
    """The CA directory, the CA certificate or the CA key is missing."""


class CAExpired(CertError):
    """The grid CA certificate has expired (or is not valid yet)."""


class ForeignCA(CertError):
    """A certificate or revocation list was not signed by this grid's CA."""


class CertificateExpired(CertError):
    """A certificate's validity period is over."""


class CertificateNotYetValid(CertError):
    """A certificate's validity period has not started (or the clocks disagree)."""


class CertificateRevoked(CertError):
    """A certificate's serial number is on the grid's revocation list."""


class WrongRole(CertError):
    """A certificate carries another role than the one this connection needs."""


class WrongRegion(CertError):
    """A certificate names another region than the one it is used for."""


class NotAGridCertificate(CertError):
    """A certificate lacks the grid identity (the ``grid://`` SAN URI)."""


class CRLError(CertError):
    """The revocation list is missing, unreadable, or from another CA."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Identity:
    """Who a grid certificate belongs to.

    Attributes
    ----------
    name : str
        The certificate's name (the node name, the user name, ...).
    role : str
        One of :data:`ROLES`.
    region : str or None
        The region a node (or scheduler) belongs to; None for clients, admins and observers.
    serial : int
        The certificate's serial number (what the CRL lists).
    not_after : datetime or None
        End of validity (UTC), when known.
    owner : str or None
        Who runs a node (``grid certs issue node NAME --owner VOLUNTEER``):
        nodes of one owner count once in a verification quorum. None when
        the certificate names none (the node is then its own owner).
    """

    name: str
    role: str
    region: str | None
    serial: int
    not_after: _dt.datetime | None = field(default=None, compare=False)
    owner: str | None = None

    @property
    def is_admin(self) -> bool:
        """Whether this identity may use the full Dask API."""
        return self.role == "admin"

    @property
    def uri(self) -> str:
        """The ``grid://`` SAN URI that encodes this identity."""
        return identity_uri(self.role, self.name, self.region, self.owner)

    @property
    def serial_hex(self) -> str:
        """The serial number as lowercase hex (how ``grid certs list`` shows it)."""
        return f"{self.serial:x}"

    def __str__(self) -> str:
        where = f" (region {self.region})" if self.region else ""
        return f"{self.role} {self.name!r}{where}"


@dataclass(frozen=True)
class CA:
    """A loaded grid CA.

    Attributes
    ----------
    directory : Path
        The CA directory.
    cert : cryptography.x509.Certificate
        The CA certificate.
    key : EllipticCurvePrivateKey or None
        The CA key; None when loaded with ``need_key=False``.
    """

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False)

    @property
    def cert_path(self) -> Path:
        """Path of ``ca.pem``."""
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        """Path of ``ca-key.pem``."""
        return self.directory / CA_KEY

    @property
    def crl_path(self) -> Path:
        """Path of ``crl.pem``."""
        return self.directory / CRL_FILE

    @property
    def name(self) -> str:
        """The grid name the CA was created with (its subject O)."""
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(attrs[0].value) if attrs else "dask-grid"

    @property
    def not_after(self) -> _dt.datetime:
        """End of the CA's validity (UTC)."""
        return self.cert.not_valid_after_utc


@dataclass(frozen=True)
class IssuedCert:
    """A certificate written by :func:`issue`.

    Attributes
    ----------
    identity : Identity
        Name, role, region and serial.
    cert_path, key_path, ca_path : Path
        The certificate, its private key, and a copy of the CA certificate.
    cert : cryptography.x509.Certificate
        The certificate itself.
    hosts : tuple of str
        DNS names and IP addresses in its subjectAltName.
    """

    identity: Identity
    cert_path: Path
    key_path: Path
    ca_path: Path
    cert: x509.Certificate = field(repr=False)
    hosts: tuple[str, ...] = ()

    @property
    def der(self) -> bytes:
        """The certificate in DER form (what ``getpeercert(binary_form=True)`` returns)."""
        return self.cert.public_bytes(serialization.Encoding.DER)

    def security(self, **kwargs: Any) -> Any:
        """A ``distributed.security.Security`` that presents this certificate.

        A scheduler certificate fills the scheduler and client slots (the
        grid plugin's own client dials its scheduler), a node certificate the
        worker and client slots (the node agent dials its scheduler as a
        client), a client, admin or observer certificate the client slot.

        Parameters
        ----------
        **kwargs
            More ``Security`` arguments (``tls_min_version``, ...).

        Returns
        -------
        distributed.security.Security
        """
        return security_for(self.identity.role, self.ca_path, self.cert_path, self.key_path, **kwargs)


def security_for(role: str, ca_file: Any, cert: Any, key: Any, **kwargs: Any) -> Any:
    """A ``distributed.security.Security`` presenting one certificate in the slots ``role`` needs.

    Schedulers fill the scheduler and client slots (their driver dials its own
    scheduler and other regions), nodes the worker and client slots (the node
    agent dials its scheduler as a client), clients, admins and observers the
    client slot (they only ever dial out).
    """
    from distributed.security import Security

    slots = {"scheduler": ("scheduler", "client"), "node": ("worker", "client")}.get(role, ("client",))
    args: dict[str, Any] = {"tls_ca_file": str(ca_file), "require_encryption": True}
    for slot in slots:
        args[f"tls_{slot}_cert"] = str(cert)
        args[f"tls_{slot}_key"] = str(key)
    args.update(kwargs)
    return Security(**args)


@dataclass(frozen=True)
class CertRecord:
    """One row of :func:`list_certificates`.

    Attributes
    ----------
    identity : Identity
    not_before : datetime
    status : str
        ``"valid"``, ``"expired"``, ``"not-yet-valid"`` or ``"revoked"``.
    revoked_at : datetime or None
    path : Path
        The copy in ``issued/``.
    """

    identity: Identity
    not_before: _dt.datetime
    status: str
    revoked_at: _dt.datetime | None
    path: Path

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        i = self.identity
        return {
            "serial": i.serial_hex,
            "role": i.role,
            "name": i.name,
            "region": i.region,
            "not_before": self.not_before.isoformat(),
            "not_after": i.not_after.isoformat() if i.not_after else None,
            "status": self.status,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


# --------------------------------------------------------------------------- settings


def default_days(kind: str) -> int:
    """Lifetime in days of a certificate kind (``"ca"`` or a role).

    Read from ``grid.security.days.<kind>`` when that key exists, else
    :data:`BUILTIN_DAYS`.
    """
    if kind not in BUILTIN_DAYS:
        raise ValueError(f"unknown certificate kind {kind!r}; choose one of {', '.join(BUILTIN_DAYS)}")
    return int(config.get(f"security.days.{kind}", None) or BUILTIN_DAYS[kind])


def default_crl_days() -> int:
    """Lifetime of a freshly signed CRL (``grid.security.crl-days``, default 90)."""
    return int(config.get("security.crl-days", None) or BUILTIN_CRL_DAYS)


def default_ca_dir() -> Path:
    """The CA directory: ``grid.security.ca-dir``, else ``~/.config/dask-grid/ca``."""
    return Path(os.path.expanduser(str(config.get("security.ca-dir", None) or BUILTIN_CA_DIR)))


# --------------------------------------------------------------------------- helpers


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _utc(value: _dt.datetime | None) -> _dt.datetime:
    if value is None:
        return _now()
    return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)


def _check_name(value: str, what: str) -> str:
    if not names.is_identity(value):
        raise ValueError(
            f"{what} {value!r} is not allowed: use 1-64 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (e.g. 'eu', 'node-7', 'alice')"
        )
    return value


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


def identity_uri(role: str, name: str, region: str | None = None, owner: str | None = None) -> str:
    """The SAN URI recording a grid identity.

    Parameters
    ----------
    role, name : str
    region : str, optional
    owner : str, optional
        A node's owner.

    Returns
    -------
    str
        ``grid://<role>/<name>``, with ``?region=<region>`` and
        ``&owner=<owner>`` when given.
    """
    uri = f"{URI_SCHEME}://{role}/{name}"
    query = "&".join(f"{k}={v}" for k, v in (("region", region), ("owner", owner)) if v)
    return f"{uri}?{query}" if query else uri


def _parse_uri(uri: str) -> tuple[str, str, str | None, str | None]:
    parts = urlsplit(uri)
    name = parts.path.lstrip("/")
    query = parse_qs(parts.query, keep_blank_values=True)
    if set(query) - {"region", "owner"} or any(len(v) != 1 for v in query.values()) or parts.fragment:
        raise NotAGridCertificate(
            f"grid identity URI {uri!r} has unexpected parts; expected grid://ROLE/NAME[?region=REGION][&owner=OWNER]"
        )
    region = query["region"][0] if "region" in query else None
    owner = query["owner"][0] if "owner" in query else None
    if (
        parts.netloc not in ROLES
        or not names.is_identity(name)
        or (region is not None and not names.is_region(region))
        or (owner is not None and (parts.netloc != "node" or not names.is_identity(owner)))
    ):
        raise NotAGridCertificate(
            f"grid identity URI {uri!r} is malformed; expected grid://ROLE/NAME[?region=REGION][&owner=OWNER] "
            f"with ROLE one of {', '.join(ROLES)} (an owner on node certificates only)"
        )
    return parts.netloc, name, region, owner


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (existing directories keep their mode)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory; choose another directory")
    return path


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise changes to a CA directory between processes (POSIX advisory lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def format_utc(when: _dt.datetime) -> str:
    """``2026-01-31 12:00 UTC``: how messages and ``grid certs`` print times."""
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _describe(cert: x509.Certificate) -> str:
    try:
        return str(identity_from_certificate(cert))
    except CertError:
        return f"certificate {cert.subject.rfc4514_string()!r}"


# --------------------------------------------------------------------------- CA


def init_ca(
    directory: str | os.PathLike[str] | None = None,
    name: str = "dask-grid",
    days: int | None = None,
    *,
    not_before: _dt.datetime | None = None,
) -> CA:
    """Create a grid CA (ECDSA P-256) and an empty revocation list.

    Parameters
    ----------
    directory : path, optional
        Where to create it (mode 0700); default :func:`default_ca_dir`. Must
        not already hold a CA.
    name : str
        The grid's name; it becomes the CA's subject (``CN=<name> CA,
        O=<name>``) and the O of every certificate issued.
    days : int, optional
        CA lifetime; default ``grid.security.days.ca`` (1825, five years).
    not_before : datetime, optional
        Start of validity (UTC); default now minus five minutes. For tests.

    Returns
    -------
    CA

    Raises
    ------
    FileExistsError
        The directory already holds a CA.
    """
    directory = Path(directory) if directory is not None else default_ca_dir()
    _check_name(name, "grid name")
    days = default_days("ca") if days is None else int(days)
    if days < 1:
        raise ValueError(f"days={days}: a CA must be valid for at least one day")
    if (directory / CA_CERT).exists() or (directory / CA_KEY).exists():
        raise FileExistsError(
            f"{directory} already holds a grid CA ({CA_CERT}); replacing it would invalidate every certificate "
            "it issued. Use it as it is, or choose another --dir"
        )
    _private_dir(directory)
    os.chmod(directory, 0o700)
    start = _utc(not_before) if not_before is not None else _now() - _BACKDATE
    key = _new_key()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, name), x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    with _locked(directory):
        _write_private(directory / CA_KEY, _key_pem(key))
        _write_private(directory / CA_CERT, _pem(cert))
        _private_dir(directory / ISSUED_DIR)
        ca = CA(directory, cert, key)
        _sign_crl(ca, [], days=default_crl_days(), number=1)
    return ca


def load_ca(
    directory: str | os.PathLike[str] | CA | None = None,
    *,
    need_key: bool = True,
    now: _dt.datetime | None = None,
) -> CA:
    """Load a grid CA and check it is usable.

    Parameters
    ----------
    directory : path or CA, optional
        The CA directory; default :func:`default_ca_dir`. A :class:`CA` is
        returned as it is (after the same checks).
    need_key : bool
        Whether the CA key is needed (issuing, revoking); checking peers
        needs only ``ca.pem``.
    now : datetime, optional
        The time to check validity against (UTC); default now.

    Returns
    -------
    CA

    Raises
    ------
    CANotFound
        No CA (or no CA key) in the directory; the message says how to create one.
    CAExpired
        The CA is outside its validity period.
    CertError
        The CA key does not match the CA certificate, or is readable by others.
    """
    if isinstance(directory, CA):
        ca = directory
        if need_key and ca.key is None:
            ca = load_ca(ca.directory, need_key=True, now=now)
    else:
        path = Path(directory) if directory is not None else default_ca_dir()
        if path.is_file() and path.name.endswith(".pem") and not need_key:
            path = path.parent
        cert_path = path / CA_CERT
        if not cert_path.exists():
            raise CANotFound(
                f"no grid CA in {path} ({CA_CERT} not found). Create one with `grid certs init --dir {path}`, "
                "or point --dir (or the grid.security.ca-dir setting) at an existing CA directory"
            )
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise CertError(f"{cert_path} is not a PEM certificate ({exc}); restore it from the CA's backup") from None
        key = None
        if need_key:
            key_path = path / CA_KEY
            if not key_path.exists():
                raise CANotFound(
                    f"{path} has the CA certificate but not its key ({CA_KEY}); issuing and revoking need the key: "
                    "run this command on the machine that holds the CA directory"
                )
            if os.name == "posix" and key_path.stat().st_mode & 0o077:
                mode = oct(key_path.stat().st_mode & 0o777)
                raise CertError(f"the CA key {key_path} is readable by other users (mode {mode}); fix: chmod 600 {key_path}")
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.public_key() != cert.public_key():
                raise CertError(f"{key_path} is not the key of {cert_path}; restore the matching pair from the CA's backup")
            key = loaded
        ca = CA(path, cert, key)
    moment = _utc(now)
    if moment > ca.cert.not_valid_after_utc:
        raise CAExpired(
            f"the grid CA {ca.cert_path} expired on {format_utc(ca.cert.not_valid_after_utc)}. Create a new CA "
            "(`grid certs init --dir NEW_DIR`), issue every certificate again from it and give the new ca.pem "
            "to all schedulers, nodes and clients"
        )
    if moment < ca.cert.not_valid_before_utc:
        raise CAExpired(
            f"the grid CA {ca.cert_path} is valid only from {format_utc(ca.cert.not_valid_before_utc)}; "
            "check this machine's clock"
        )
    return ca


def _as_ca_cert(ca: Any) -> tuple[x509.Certificate, str]:
    """A CA certificate and a description of where it came from."""
    if isinstance(ca, CA):
        return ca.cert, str(ca.cert_path)
    if isinstance(ca, x509.Certificate):
        return ca, "the given CA certificate"
    if isinstance(ca, bytes) and not ca.lstrip().startswith(b"-----"):
        return x509.load_der_x509_certificate(ca), "the given CA certificate"
    if isinstance(ca, (bytes, str)) and ("-----BEGIN" in (ca.decode("ascii", "replace") if isinstance(ca, bytes) else ca)):
        data = ca.encode() if isinstance(ca, str) else ca
        return x509.load_pem_x509_certificate(data), "the given CA certificate"
    path = Path(ca)
    if path.is_dir():
        path = path / CA_CERT
    if not path.exists():
        raise CANotFound(
            f"grid CA certificate {path} not found; give the ca.pem of the grid (created by `grid certs init`) "
            "or the CA directory"
        )
    return x509.load_pem_x509_certificate(path.read_bytes()), str(path)


# --------------------------------------------------------------------------- issue


def _sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _DNS_RE.match(host) or len(host) > 253:
            raise ValueError(
                f"host {host!r} is neither an IP address nor a DNS name; give names like 'eu.grid.example.org', "
                "'*.grid.example.org' or '10.0.0.5' (internationalised names in their xn-- form)"
            )
        out.append(x509.DNSName(host.rstrip(".").lower()))
    return out


def issue(
    ca: str | os.PathLike[str] | CA | None,
    role: str,
    name: str,
    *,
    region: str | None = None,
    hosts: Iterable[str] = (),
    include_localhost: bool | None = None,
    days: int | None = None,
    out: str | os.PathLike[str] | None = None,
    not_before: _dt.datetime | None = None,
    owner: str | None = None,
) -> IssuedCert:
    """Issue a certificate for one role and write it with its key (mode 0600).

    Parameters
    ----------
    ca : path or CA or None
        The CA directory (default :func:`default_ca_dir`) or a loaded CA.
    role : {"scheduler", "node", "client", "admin", "observer"}
    name : str
        The identity: node name, user name, scheduler name, dashboard name.
    region : str, optional
        Required for nodes (the only region whose scheduler admits them),
        optional for schedulers, refused for clients, admins and observers.
    hosts : iterable of str
        DNS names and IP addresses for the subjectAltName of schedulers and
        nodes (Dask does not check host names, but other TLS clients do).
    include_localhost : bool, optional
        Add ``localhost``, ``127.0.0.1`` and ``::1``; default True for
        schedulers, False otherwise.
    days : int, optional
        Lifetime; default ``grid.security.days.<role>`` (scheduler 365,
        node 90, client 365, admin 365, observer 365). Never extends past
        the CA's end.
    out : path, optional
        Output directory; default ``<ca dir>/<role>/<name>``. Receives
        ``<name>.pem``, ``<name>-key.pem`` and ``ca.pem``; existing files of
        the same name are replaced (rotation).
    not_before : datetime, optional
        Start of validity (UTC); default now minus five minutes. Tests use
        a start in the past to make expired certificates.
    owner : str, optional
        Nodes only: who runs the node (e.g. the volunteer's account name).
        Nodes of one owner count as one in a ``verify`` quorum on TLS grids;
        give a volunteer's nodes the same owner.

    Returns
    -------
    IssuedCert
    """
    _check_role(role)
    _check_name(name, f"{role} name")
    hosts = [hosts] if isinstance(hosts, str) else list(hosts)
    if role == "node" and not region:
        raise ValueError(f"a node certificate must name its region (e.g. --region eu); node {name!r} has none")
    if owner is not None:
        if role != "node":
            raise ValueError(f"only node certificates name an owner (got --owner {owner!r} for a {role}); drop --owner")
        _check_name(owner, "owner")
    if role in UNBOUND_ROLES:
        if region:
            raise ValueError(f"{role} certificates are not bound to a region (got region {region!r}); drop --region")
        if hosts or include_localhost:
            raise ValueError(f"{role} certificates carry no host names (got {hosts!r}); drop --host")
    if region is not None and not names.is_region(region):
        raise ValueError(
            f"region {region!r} is not allowed: use lowercase letters, digits and '-', starting with a letter "
            "(e.g. 'eu', 'us-east'), as in the grid spec"
        )
    if include_localhost is None:
        include_localhost = role == "scheduler"
    if include_localhost:
        hosts = [*hosts, *LOCALHOST]
    ca = load_ca(ca, need_key=True)
    assert ca.key is not None
    days = default_days(role) if days is None else int(days)
    if days < 1:
        raise ValueError(f"days={days}: a certificate must be valid for at least one day")
    start = _utc(not_before) if not_before is not None else _now() - _BACKDATE
    end = min(start + _dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    if end < start + _dt.timedelta(days=days) - _BACKDATE:
        logger.warning(
            "%s certificate %r ends with the CA on %s, before the %d days asked for; create a new CA in time",
            role, name, format_utc(end), days,
        )

    key = _new_key()
    uri = identity_uri(role, name, region, owner)
    general_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), *_sans(hosts)]
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role in ("scheduler", "node"):
        eku.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    serial = x509.random_serial_number()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )

    out_dir = Path(out) if out is not None else ca.directory / role / name
    _private_dir(out_dir)
    cert_path, key_path, ca_path = out_dir / f"{name}.pem", out_dir / f"{name}-key.pem", out_dir / CA_CERT
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, _pem(cert))
    if ca_path.resolve() != ca.cert_path.resolve():
        _write_private(ca_path, _pem(ca.cert))
    _private_dir(ca.directory / ISSUED_DIR)
    _write_private(ca.directory / ISSUED_DIR / f"{serial:x}.pem", _pem(cert))
    identity = Identity(name, role, region, serial, end)
    shown = tuple(str(n.value) for n in general_names[1:])
    return IssuedCert(identity, cert_path, key_path, ca_path, cert, shown)


# --------------------------------------------------------------------------- list / revoke / CRL


def _issued(ca: CA) -> list[tuple[x509.Certificate, Path]]:
    folder = ca.directory / ISSUED_DIR
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.pem")):
        out.append((x509.load_pem_x509_certificate(path.read_bytes()), path))
    return out


def _read_crl(ca: CA) -> x509.CertificateRevocationList:
    if not ca.crl_path.exists():
        raise CRLError(
            f"the revocation list {ca.crl_path} is missing, so the revocations it held would be lost. Restore it "
            f"from a backup; if no certificate of this CA was ever revoked, start an empty one with "
            f"`grid certs crl --dir {ca.directory} --empty`"
        )
    crl = _load_crl_file(ca.crl_path)
    if not crl.is_signature_valid(ca.cert.public_key()):
        raise ForeignCA(f"{ca.crl_path} was not signed by the CA in {ca.cert_path}; restore this CA's crl.pem from a backup")
    return crl


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _sign_crl(ca: CA, revoked: list[x509.RevokedCertificate], *, days: int, number: int) -> Path:
    assert ca.key is not None
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + _dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    _write_private(ca.crl_path, crl.public_bytes(serialization.Encoding.PEM))
    return ca.crl_path


def write_crl(
    ca: str | os.PathLike[str] | CA | None = None,
    *,
    days: int | None = None,
    empty: bool = False,
) -> Path:
    """Sign the revocation list again with fresh dates (keeps its entries).

    Run it before the CRL's next-update date (``grid certs list`` shows it),
    e.g. from cron, and copy ``crl.pem`` to the schedulers.

    Parameters
    ----------
    ca : path or CA or None
        The CA directory (default :func:`default_ca_dir`).
    days : int, optional
        Until the next update; default ``grid.security.crl-days`` (90).
    empty : bool
        Start an empty list when ``crl.pem`` is missing (never needed after
        ``init``, which writes one).

    Returns
    -------
    Path
        The CRL file.
    """
    ca = load_ca(ca, need_key=True)
    days = default_crl_days() if days is None else int(days)
    if days < 1:
        raise ValueError(f"days={days}: a revocation list must be valid for at least one day")
    with _locked(ca.directory):
        if empty and not ca.crl_path.exists():
            return _sign_crl(ca, [], days=days, number=1)
        crl = _read_crl(ca)
        return _sign_crl(ca, list(crl), days=days, number=_crl_number(crl) + 1)


def _parse_serial(text: str) -> int | None:
    """A serial in hex, as ``grid certs list`` prints it (``0x`` prefix and colons allowed)."""
    t = text.strip().lower().replace(":", "")
    t = t[2:] if t.startswith("0x") else t
    return int(t, 16) if re.fullmatch(r"[0-9a-f]{1,40}", t) else None


def revoke(
    ca: str | os.PathLike[str] | CA | None,
    name_or_serial: str | int,
    *,
    role: str | None = None,
    reason: str = "unspecified",
    crl_days: int | None = None,
) -> list[Identity]:
    """Put certificates on the revocation list and sign it again.

    Parameters
    ----------
    ca : path or CA or None
        The CA directory (default :func:`default_ca_dir`).
    name_or_serial : str or int
        A name revokes every certificate of that name that is not revoked
        yet (a compromised identity); a serial (an int, hex as ``grid certs
        list`` prints it, optionally ``0x``-prefixed) revokes exactly one (e.g.
        the old certificate after a rotation). Names win over serials when
        both could match.
    role : str, optional
        Only certificates of this role (when a name is used by several roles).
    reason : str
        One of :data:`REVOCATION_REASONS` (``superseded`` after a rotation,
        ``key-compromise`` after a leak, ...).
    crl_days : int, optional
        Validity of the new CRL; default ``grid.security.crl-days``.

    Returns
    -------
    list of Identity
        What was revoked now (empty when everything was already revoked).

    Raises
    ------
    KeyError
        Neither a name nor a serial issued by this CA.
    """
    if reason not in REVOCATION_REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}; choose one of {', '.join(REVOCATION_REASONS)}")
    if role is not None:
        _check_role(role)
    ca = load_ca(ca, need_key=True)
    with _locked(ca.directory):
        crl = _read_crl(ca)
        already = {entry.serial_number for entry in crl}
        issued = _issued(ca)
        known = [(c, _safe_identity(c)) for c, _ in issued]
        targets: list[tuple[int, Identity | None]] = []
        if isinstance(name_or_serial, int):
            by_name: list[tuple[x509.Certificate, Identity | None]] = []
            serial: int | None = name_or_serial
        else:
            by_name = [(c, i) for c, i in known if i is not None and i.name == name_or_serial and role in (None, i.role)]
            serial = None if by_name else _parse_serial(name_or_serial)
        if by_name:
            roles = {i.role for _, i in by_name if i is not None}
            if len(roles) > 1:
                raise ValueError(
                    f"{name_or_serial!r} names certificates of several roles ({', '.join(sorted(roles))}); "
                    "say which with --role, or revoke by serial"
                )
            targets = [(c.serial_number, i) for c, i in by_name]
        elif serial is not None:
            match = [(c, i) for c, i in known if c.serial_number == serial]
            if not match:
                raise KeyError(
                    f"no certificate with serial {serial:x} was issued from {ca.directory}; "
                    "`grid certs list` shows names and serials"
                )
            targets = [(serial, match[0][1])]
        else:
            raise KeyError(
                f"no certificate named {name_or_serial!r}"
                + (f" with role {role}" if role else "")
                + f" was issued from {ca.directory}; `grid certs list` shows names and serials"
            )
        now = _now()
        entries = list(crl)
        done: list[Identity] = []
        for s, ident in targets:
            if s in already:
                continue
            entries.append(
                x509.RevokedCertificateBuilder()
                .serial_number(s)
                .revocation_date(now)
                .add_extension(x509.CRLReason(REVOCATION_REASONS[reason]), critical=False)
                .build()
            )
            done.append(ident or Identity("?", "?", None, s))
        if done:
            days = default_crl_days() if crl_days is None else int(crl_days)
            _sign_crl(ca, entries, days=days, number=_crl_number(crl) + 1)
    return done


def _safe_identity(cert: x509.Certificate) -> Identity | None:
    try:
        return identity_from_certificate(cert)
    except CertError:
        return None


def list_certificates(ca: str | os.PathLike[str] | CA | None = None, *, now: _dt.datetime | None = None) -> list[CertRecord]:
    """Every certificate issued from a CA directory, with its status.

    Parameters
    ----------
    ca : path or CA or None
        The CA directory (default :func:`default_ca_dir`). The CA key is not needed.
    now : datetime, optional
        When to evaluate validity (UTC).

    Returns
    -------
    list of CertRecord
        Sorted by role, name and start of validity.
    """
    ca = load_ca(ca, need_key=False, now=now)
    moment = _utc(now)
    revoked: dict[int, _dt.datetime] = {}
    if ca.crl_path.exists():
        revoked = {e.serial_number: e.revocation_date_utc for e in _read_crl(ca)}
    rows = []
    for cert, path in _issued(ca):
        ident = _safe_identity(cert) or Identity("?", "?", None, cert.serial_number, cert.not_valid_after_utc)
        if cert.serial_number in revoked:
            status = "revoked"
        elif moment > cert.not_valid_after_utc:
            status = "expired"
        elif moment < cert.not_valid_before_utc:
            status = "not-yet-valid"
        else:
            status = "valid"
        rows.append(CertRecord(ident, cert.not_valid_before_utc, status, revoked.get(cert.serial_number), path))
    rows.sort(key=lambda r: (ROLES.index(r.identity.role) if r.identity.role in ROLES else 9, r.identity.name, r.not_before))
    return rows


def crl_next_update(ca: str | os.PathLike[str] | CA | None = None) -> _dt.datetime | None:
    """When the CA's revocation list must be signed again (``grid certs crl``)."""
    ca = load_ca(ca, need_key=False)
    if not ca.crl_path.exists():
        return None
    return _load_crl_file(ca.crl_path).next_update_utc


# --------------------------------------------------------------------------- reading CRLs


def _load_crl_file(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CRLError(
            f"revocation list {path} not found; copy crl.pem from the grid's CA directory "
            "(`grid certs crl --dir CA_DIR` writes a fresh one)"
        ) from None
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CRLError(f"{path} is not a certificate revocation list ({exc}); copy crl.pem from the grid's CA directory again") from None


def load_revoked(crl_path: str | os.PathLike[str], ca: Any = None, *, now: _dt.datetime | None = None) -> set[int]:
    """The revoked serial numbers of a CRL file.

    Parameters
    ----------
    crl_path : path
        A CRL in PEM or DER form (``crl.pem`` of the CA directory), or the CA
        directory itself.
    ca : path, CA or certificate, optional
        When given, the CRL's signature is checked against this CA.
    now : datetime, optional
        For the staleness warning (UTC).

    Returns
    -------
    set of int

    Raises
    ------
    CRLError
        Missing or unreadable file.
    ForeignCA
        The CRL was signed by another CA.

    Notes
    -----
    A CRL past its next-update date is still used (its entries stay
    revoked), with a logged warning: refresh it with ``grid certs crl``.
    """
    path = Path(crl_path)
    if path.is_dir():
        path = path / CRL_FILE
    crl = _load_crl_file(path)
    if ca is not None:
        ca_cert, where = _as_ca_cert(ca)
        if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
            raise ForeignCA(
                f"revocation list {path} was signed by {crl.issuer.rfc4514_string()!r}, not by the grid CA {where}; "
                "copy crl.pem from this grid's CA directory"
            )
    next_update = crl.next_update_utc
    if next_update is not None and _utc(now) > next_update:
        logger.warning(
            "revocation list %s was due for renewal on %s; run `grid certs crl` on the CA machine and copy it again",
            path, format_utc(next_update),
        )
    return {entry.serial_number for entry in crl}


class RevocationList:
    """A CRL file that reloads itself when it changes on disk.

    Schedulers keep one and test serials against it; replacing the file
    (``grid certs revoke`` then copying ``crl.pem``) takes effect at the next
    check, without a restart.

    Parameters
    ----------
    path : path
        The CRL file (or a CA directory).
    ca : path, CA or certificate, optional
        When given, every (re)load checks the CRL's signature against it.

    Examples
    --------
    >>> crl = RevocationList("/etc/dask-grid/crl.pem", ca="/etc/dask-grid/ca.pem")  # doctest: +SKIP
    >>> identity.serial in crl  # doctest: +SKIP
    False
    """

    def __init__(self, path: str | os.PathLike[str], ca: Any = None) -> None:
        p = Path(path)
        self.path = p / CRL_FILE if p.is_dir() else p
        self.ca = ca
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()

    def serials(self) -> frozenset[int]:
        """The revoked serials, reloading the file if it changed.

        Raises
        ------
        CRLError
            The file is missing or unreadable (fail closed: a scheduler
            configured with a CRL does not silently run without it).
        """
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise CRLError(
                f"revocation list {self.path} not found; copy crl.pem from the grid's CA directory "
                "(`grid certs crl --dir CA_DIR` writes a fresh one)"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._serials = frozenset(load_revoked(self.path, self.ca))
            self._stamp = stamp
        return self._serials

    def __contains__(self, serial: object) -> bool:
        return serial in self.serials()

    def __repr__(self) -> str:
        return f"RevocationList({str(self.path)!r})"


def load_crl_into_context(ctx: ssl.SSLContext, crl_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """Make an ``SSLContext`` refuse revoked peers during the TLS handshake.

    Loads the CRL into the context's trust store and sets
    ``ssl.VERIFY_CRL_CHECK_LEAF``. Use it on the listening context of a
    scheduler (``Security.get_listen_args(...)["ssl_context"]``).

    Parameters
    ----------
    ctx : ssl.SSLContext
        A context that already trusts the grid CA.
    crl_path : path
        The CRL (PEM) or the CA directory.

    Returns
    -------
    ssl.SSLContext
        ``ctx`` itself.

    Notes
    -----
    OpenSSL fails closed here: once the CRL is past its next-update date
    every peer is refused ("CRL has expired") until a fresh ``crl.pem`` is
    loaded, and a context does not reread the file. Sign the CRL again well
    before its next-update date, and build a new context (or check serials
    with :class:`RevocationList`) when the file changes.
    """
    path = Path(crl_path)
    if path.is_dir():
        path = path / CRL_FILE
    _load_crl_file(path)  # a clear error for a missing or malformed file
    ctx.load_verify_locations(cafile=str(path))
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


# --------------------------------------------------------------------------- identities


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """The grid identity recorded in a certificate (no signature or time check).

    Parameters
    ----------
    cert : cryptography.x509.Certificate

    Returns
    -------
    Identity

    Raises
    ------
    NotAGridCertificate
        No (or a malformed, or a contradictory) ``grid://`` identity.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(f"{URI_SCHEME}://")]
    except x509.ExtensionNotFound:
        uris = []
    subject = cert.subject.rfc4514_string()
    if len(uris) != 1:
        raise NotAGridCertificate(
            f"certificate {subject!r} carries {'no' if not uris else 'several'} grid identity URI "
            "(grid://ROLE/NAME); issue grid certificates with `grid certs issue`"
        )
    role, name, region, owner = _parse_uri(uris[0])
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not cn or cn[0].value != name or not ou or ou[0].value != role:
        raise NotAGridCertificate(
            f"certificate {subject!r} contradicts its identity URI {uris[0]!r} (CN must be the name, OU the role); "
            "issue it again with `grid certs issue`"
        )
    return Identity(name, role, region, cert.serial_number, cert.not_valid_after_utc, owner)


def identity_from_der(der: bytes) -> Identity:
    """The grid identity of a peer certificate in DER form.

    This parses only; the TLS handshake (or :func:`check_certificate`) is
    what proves the certificate was issued by the grid CA.

    Parameters
    ----------
    der : bytes
        ``ssl.SSLObject.getpeercert(binary_form=True)`` (or
        ``SSLSocket.getpeercert(binary_form=True)``).

    Returns
    -------
    Identity
    """
    if not der:
        raise NotAGridCertificate(
            "the peer presented no certificate; the connection must use mutual TLS with a certificate from "
            "`grid certs issue`"
        )
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except ValueError as exc:
        raise NotAGridCertificate(f"the peer certificate is not valid DER ({exc})") from None
    return identity_from_certificate(cert)


def identity_from_peercert(peercert: Mapping[str, Any]) -> Identity:
    """The grid identity from ``ssl``'s dict form of a verified peer certificate.

    Distributed's TLS comms keep this dict in ``comm.extra_info["peercert"]``.

    Parameters
    ----------
    peercert : mapping
        ``SSLSocket.getpeercert()`` (only filled in when the certificate was
        verified, as it is with ``CERT_REQUIRED``).

    Returns
    -------
    Identity
    """
    if not peercert:
        raise NotAGridCertificate(
            "no verified peer certificate; the connection must use mutual TLS with a certificate from `grid certs issue`"
        )
    uris = [v for k, v in peercert.get("subjectAltName", ()) if k == "URI" and str(v).startswith(f"{URI_SCHEME}://")]
    if len(uris) != 1:
        raise NotAGridCertificate(
            f"peer certificate {peercert.get('subject')!r} carries {'no' if not uris else 'several'} grid identity URI"
        )
    role, name, region, owner = _parse_uri(uris[0])
    subject = {k: v for rdn in peercert.get("subject", ()) for k, v in rdn}
    if subject.get("commonName") != name or subject.get("organizationalUnitName") != role:
        raise NotAGridCertificate(f"peer certificate subject {subject!r} contradicts its identity URI {uris[0]!r}")
    not_after = None
    if peercert.get("notAfter"):
        not_after = _dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(peercert["notAfter"]), _dt.timezone.utc)
    return Identity(name, role, region, int(peercert["serialNumber"], 16), not_after, owner)


def _as_cert(value: Any) -> x509.Certificate:
    if isinstance(value, x509.Certificate):
        return value
    if isinstance(value, IssuedCert):
        return value.cert
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    if isinstance(value, str) and "-----BEGIN" in value:
        return x509.load_pem_x509_certificate(value.encode())
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"certificate file {path} not found")
    return _as_cert(path.read_bytes())


def check_certificate(
    cert: Any,
    ca: Any,
    crl: Any = None,
    expected_role: str | Collection[str] | None = None,
    expected_region: str | None = None,
    *,
    now: _dt.datetime | None = None,
) -> Identity:
    """Verify a grid certificate and return its identity.

    Parameters
    ----------
    cert : bytes, str, path, Certificate or IssuedCert
        PEM or DER bytes (e.g. ``getpeercert(binary_form=True)``), PEM text,
        a file, or a parsed certificate.
    ca : path, CA, bytes or Certificate
        The grid CA: ``ca.pem``, the CA directory, or the certificate.
    crl : path, set of int, RevocationList, CertificateRevocationList or None
        Revoked serials; a path or CRL is checked to be signed by ``ca``.
        None skips the revocation check.
    expected_role : str or collection of str, optional
        The role(s) this peer must have, e.g. ``"node"`` or ``{"client", "admin"}``.
    expected_region : str, optional
        The region the certificate must name (nodes joining a region).
    now : datetime, optional
        The time to check validity against (UTC); default now.

    Returns
    -------
    Identity

    Raises
    ------
    CAExpired, ForeignCA, CertificateExpired, CertificateNotYetValid,
    CertificateRevoked, WrongRole, WrongRegion, NotAGridCertificate, CRLError
        Each with a message that names the certificate and the fix.
    """
    ca_cert, where = _as_ca_cert(ca)
    leaf = _as_cert(cert)
    moment = _utc(now)
    what = _describe(leaf)
    if moment > ca_cert.not_valid_after_utc:
        raise CAExpired(
            f"the grid CA {where} expired on {format_utc(ca_cert.not_valid_after_utc)}; create a new CA "
            "(`grid certs init`), issue every certificate again and distribute the new ca.pem"
        )
    try:
        if leaf.issuer != ca_cert.subject:
            raise InvalidSignature
        leaf.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        raise ForeignCA(
            f"{what} was issued by {leaf.issuer.rfc4514_string()!r}, not by this grid's CA "
            f"({ca_cert.subject.rfc4514_string()!r}, {where}); get a certificate from this grid's operators "
            "(`grid certs issue` on its CA)"
        ) from None
    if moment > leaf.not_valid_after_utc:
        raise CertificateExpired(
            f"{what} expired on {format_utc(leaf.not_valid_after_utc)}; issue a new one with `grid certs issue`"
        )
    if moment < leaf.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"{what} is valid only from {format_utc(leaf.not_valid_before_utc)}; check the clocks of both machines"
        )
    identity = identity_from_certificate(leaf)
    if crl is not None:
        if isinstance(crl, RevocationList):
            revoked: Collection[int] = crl.serials()
        elif isinstance(crl, x509.CertificateRevocationList):
            if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
                raise ForeignCA(f"the revocation list was not signed by the grid CA {where}; use this grid's crl.pem")
            revoked = {e.serial_number for e in crl}
        elif isinstance(crl, (set, frozenset, list, tuple)):
            revoked = crl
        else:
            revoked = load_revoked(crl, ca_cert, now=moment)
        if identity.serial in revoked:
            raise CertificateRevoked(
                f"{identity} (serial {identity.serial_hex}) has been revoked; its owner needs a new certificate "
                "(`grid certs issue`)"
            )
    if expected_role is not None:
        roles = {expected_role} if isinstance(expected_role, str) else set(expected_role)
        if identity.role not in roles:
            raise WrongRole(
                f"{identity} cannot be used here: this needs a certificate of role {' or '.join(sorted(roles))} "
                f"(`grid certs issue {sorted(roles)[0]} NAME`)"
            )
    if expected_region is not None and identity.region != expected_region:
        have = f"belongs to region {identity.region!r}" if identity.region else "names no region"
        raise WrongRegion(
            f"{identity} {have}, so it cannot join region {expected_region!r}; connect it to the scheduler of "
            f"its own region, or issue it a certificate for {expected_region!r} "
            f"(`grid certs issue {identity.role} {identity.name} --region {expected_region}`)"
        )
    return identity
