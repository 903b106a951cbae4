"""Security of the grid: the grid certificate authority and certificate checks.

:mod:`grid.security.certs` creates the grid CA, issues role certificates
(scheduler, node, client, admin), revokes them through a CRL, and parses and
checks peer certificates. :mod:`grid.security.throwaway` makes the
throw-away CA of a local TLS grid. :mod:`grid.security.cli` is the ``grid certs``
command group. The threat model is in ``docs/security.md``.
"""

from __future__ import annotations

from grid.security.certs import (
    CA,
    ROLES,
    CAExpired,
    CANotFound,
    CertError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CertRecord,
    CRLError,
    ForeignCA,
    Identity,
    IssuedCert,
    NotAGridCertificate,
    RevocationList,
    WrongRegion,
    WrongRole,
    check_certificate,
    identity_from_certificate,
    identity_from_der,
    identity_from_peercert,
    init_ca,
    issue,
    list_certificates,
    load_ca,
    load_crl_into_context,
    load_revoked,
    revoke,
    write_crl,
)
from grid.security.throwaway import ThrowawayGrid, make_throwaway_grid

__all__ = [
    "CA",
    "ROLES",
    "CAExpired",
    "CANotFound",
    "CRLError",
    "CertError",
    "CertRecord",
    "CertificateExpired",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "ForeignCA",
    "Identity",
    "IssuedCert",
    "NotAGridCertificate",
    "RevocationList",
    "ThrowawayGrid",
    "WrongRegion",
    "WrongRole",
    "check_certificate",
    "identity_from_certificate",
    "identity_from_der",
    "identity_from_peercert",
    "init_ca",
    "issue",
    "list_certificates",
    "load_ca",
    "load_crl_into_context",
    "load_revoked",
    "make_throwaway_grid",
    "revoke",
    "write_crl",
]
