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

The checks of a certificate (:func:`check_certificate`) and the ``Security``
of one certificate (:func:`security_for`) are here; what they are made of
lives in modules of its own, and every public name of those is importable
from here too: the errors (:mod:`grid.security.cert_errors`), the identity
and its URI (:mod:`grid.security.peer_identity`), the forms a certificate or
CA arrives in (:mod:`grid.security.cert_input`) and revocation lists
(:mod:`grid.security.crl`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Collection
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from grid.security.cert_errors import (
    CAExpired,
    CANotFound,
    CertError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CRLError,
    ForeignCA,
    NotAGridCertificate,
    WrongRegion,
    WrongRole,
)
from grid.security.cert_input import CA_CERT, CRL_FILE, _as_ca_cert, _as_cert, _utc, format_utc
from grid.security.crl import RevocationList, load_crl_into_context, load_revoked
from grid.security.peer_identity import (
    ROLES,
    URI_SCHEME,
    Identity,
    identity_from_certificate,
    identity_from_der,
    identity_from_peercert,
    identity_uri,
)

# Private helpers that the CA tooling still reaches through this module
# (the redundant alias marks them as re-exported on purpose).
from grid.security.cert_input import _now as _now
from grid.security.crl import _load_crl_file as _load_crl_file

__all__ = [
    "CA_CERT",
    "CRL_FILE",
    "ROLES",
    "URI_SCHEME",
    "CAExpired",
    "CANotFound",
    "CertError",
    "CertificateExpired",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "CRLError",
    "ForeignCA",
    "Identity",
    "NotAGridCertificate",
    "RevocationList",
    "WrongRegion",
    "WrongRole",
    "check_certificate",
    "format_utc",
    "identity_from_certificate",
    "identity_from_der",
    "identity_from_peercert",
    "identity_uri",
    "load_crl_into_context",
    "load_revoked",
    "security_for",
]


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


def _describe(cert: x509.Certificate) -> str:
    try:
        return str(identity_from_certificate(cert))
    except CertError:
        return f"certificate {cert.subject.rfc4514_string()!r}"


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
