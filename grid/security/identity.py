"""Who a grid peer is, and whether its certificate is good: the checks schedulers and nodes run.

A grid has one CA. Every scheduler, node, data scientist (client), operator
(admin) and operators' dashboard (observer) holds a certificate issued by it;
mutual TLS between them proves both ends belong to the grid, and the
certificate says *who* the peer is.

This module is what a running grid needs: it reads the identity out of a
certificate or a TLS peer certificate, checks a certificate against the grid
CA and its revocation list, loads and watches revocation lists, and builds the
``Security`` of one certificate. It needs only ``ca.pem`` and ``crl.pem``,
never the CA key. It is kept apart from the operators' CA tooling
(:mod:`grid.security.authority`: creating the CA, issuing, revoking) and never
imports it, so schedulers and nodes load none of the code that makes keys or
writes private files.

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
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from grid import names
from grid.errors import GridError

logger = logging.getLogger(__name__)

#: The roles a grid certificate can carry. An ``observer`` (the operators' dashboard)
#: reads every job's metadata and the node view, and changes nothing (docs/security.md).
ROLES: tuple[str, ...] = ("scheduler", "node", "client", "admin", "observer")

# The files of a CA directory that peers are checked against; wherever a path is
# accepted, the CA directory itself is accepted too and these names are looked up in it.
CA_CERT = "ca.pem"
CRL_FILE = "crl.pem"

URI_SCHEME = "grid"


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


# --------------------------------------------------------------------------- helpers


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _utc(value: _dt.datetime | None) -> _dt.datetime:
    if value is None:
        return _now()
    return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)


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


def format_utc(when: _dt.datetime) -> str:
    """``2026-01-31 12:00 UTC``: how messages and ``grid certs`` print times."""
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _describe(cert: x509.Certificate) -> str:
    try:
        return str(identity_from_certificate(cert))
    except CertError:
        return f"certificate {cert.subject.rfc4514_string()!r}"


def _held_certificate(value: object) -> x509.Certificate | None:
    """The parsed certificate ``value`` carries in ``.cert``, else None.

    A loaded CA and an issued certificate (:mod:`grid.security.authority`) both
    carry one; asking for the attribute rather than the class lets the checks
    here take them without importing the CA tooling.
    """
    cert = getattr(value, "cert", None)
    return cert if isinstance(cert, x509.Certificate) else None


def _as_ca_cert(ca: Any) -> tuple[x509.Certificate, str]:
    """A CA certificate and a description of where it came from."""
    held = _held_certificate(ca)
    if held is not None:
        where = getattr(ca, "cert_path", None)  # a loaded CA knows its ca.pem
        return held, str(where) if where is not None else "the given CA certificate"
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
    held = _held_certificate(value)
    if held is not None:
        return held
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
