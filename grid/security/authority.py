"""The grid certificate authority: create it, load it, issue role certificates.

This is the operators' tooling behind ``grid certs``; it runs where the CA
directory and its key live. One idea, the CA and what it signs, hence the
length: its directory and files, its key, and the certificates and
revocation lists it signs. Which certificates are revoked (``revoke``, the
list of issued certificates, re-signing the list before it runs out) is
:mod:`grid.security.revocation`, which uses this module. What a running
scheduler or node checks (the identity in a certificate, its signature by
the CA, the revocation list) is in :mod:`grid.security.identity`, which
this module uses for identities, their URIs and the errors, and which does
not need this module: a grid process never loads the code that makes keys
or writes the CA's files.

Key type
    ECDSA P-256 with SHA-256 signatures, for the CA and every certificate.
    Python's ``ssl`` (OpenSSL 1.1.1 and later) accepts it for TLS 1.2 and
    1.3, server and client authentication; Ed25519 works with OpenSSL 3 as
    well, but browsers refuse Ed25519 server certificates (the dashboard) and
    older OpenSSL / LibreSSL builds lack it, so P-256 is the safe choice.

Identity
    Subject ``CN=<name>, OU=<role>, O=<grid name>`` and one ``grid://``
    subjectAltName URI (:func:`grid.security.identity.identity_uri`) that is
    authoritative; :mod:`grid.security.identity` describes the URI.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grid import config, names
from grid.security.identity import (
    CA_CERT,
    CRL_FILE,
    ROLES,
    CAExpired,
    CANotFound,
    CertError,
    Identity,
    _now,
    _utc,
    format_utc,
    identity_uri,
    security_for,
)

logger = logging.getLogger(__name__)

#: Roles that belong to people or tools rather than machines: no region, no host names.
UNBOUND_ROLES = frozenset({"client", "admin", "observer"})

#: Built-in lifetimes in days; ``grid.security.days.<kind>`` overrides them.
BUILTIN_DAYS: dict[str, int] = {"ca": 1825, "scheduler": 365, "node": 90, "client": 365, "admin": 365, "observer": 365}
#: Built-in CRL lifetime in days (``grid.security.crl-days``).
BUILTIN_CRL_DAYS = 90
#: Default CA directory when ``grid.security.ca-dir`` is not set.
BUILTIN_CA_DIR = "~/.config/dask-grid/ca"

CA_KEY = "ca-key.pem"
ISSUED_DIR = "issued"

_DNS_RE = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")
#: the names a certificate for this machine carries (schedulers by default, --localhost)
LOCALHOST = ("localhost", "127.0.0.1", "::1")
_BACKDATE = _dt.timedelta(minutes=5)  # tolerate clock skew between the CA machine and the grid


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- revocation list


def _sign_crl(ca: CA, revoked: list[x509.RevokedCertificate], *, days: int, number: int) -> Path:
    """Sign ``revoked`` as the CA's revocation list number ``number`` and write ``crl.pem``.

    Here rather than in :mod:`grid.security.revocation`: a new CA signs its
    first, empty, list (:func:`init_ca`), and revocation builds on this module.
    """
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
