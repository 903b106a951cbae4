"""Who a grid certificate belongs to: the :class:`Identity` and the ``grid://`` URI that records it.

Reads the identity out of a certificate (:func:`identity_from_certificate`),
its DER form (:func:`identity_from_der`) or ``ssl``'s dict of a verified peer
certificate (:func:`identity_from_peercert`). Parsing only: whether the
certificate was issued by the grid CA is :func:`grid.security.identity.check_certificate`
(or the TLS handshake). The URI's form is told in :mod:`grid.security.identity`.
"""

from __future__ import annotations

import datetime as _dt
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from grid import names
from grid.security.cert_errors import NotAGridCertificate

#: The roles a grid certificate can carry. An ``observer`` (the operators' dashboard)
#: reads every job's metadata and the node view, and changes nothing (docs/security.md).
ROLES: tuple[str, ...] = ("scheduler", "node", "client", "admin", "observer")

URI_SCHEME = "grid"


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
