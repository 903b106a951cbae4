"""The grid's certificate code under one name: run-time checks and CA tooling together.

The code lives in three modules, by who needs it:

- :mod:`grid.security.identity`: what every scheduler and node checks at run
  time: the identity in a certificate or peer certificate, a certificate
  against the grid CA, revocation lists loaded and watched, the errors (it
  re-exports the modules these live in: ``peer_identity``, ``crl``,
  ``cert_input``, ``cert_errors``).
- :mod:`grid.security.authority`: the operators' CA tooling behind ``grid
  certs``: creating and loading the CA, issuing certificates.
- :mod:`grid.security.revocation`: the rest of that tooling: revoking,
  listing what was issued, signing the revocation list again.

This module re-exports all three, so ``from grid.security.certs import ...`` keeps
working. Code that only checks peers should import
:mod:`grid.security.identity`: importing this module loads the CA tooling
as well.
"""

from __future__ import annotations

from grid.security.authority import (
    BUILTIN_CA_DIR,
    BUILTIN_CRL_DAYS,
    BUILTIN_DAYS,
    CA,
    CA_KEY,
    ISSUED_DIR,
    LOCALHOST,
    UNBOUND_ROLES,
    IssuedCert,
    default_ca_dir,
    default_crl_days,
    default_days,
    init_ca,
    issue,
    load_ca,
)
from grid.security.identity import (
    CA_CERT,
    CRL_FILE,
    ROLES,
    URI_SCHEME,
    CAExpired,
    CANotFound,
    CertError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CRLError,
    ForeignCA,
    Identity,
    NotAGridCertificate,
    RevocationList,
    WrongRegion,
    WrongRole,
    check_certificate,
    format_utc,
    identity_from_certificate,
    identity_from_der,
    identity_from_peercert,
    identity_uri,
    load_crl_into_context,
    load_revoked,
    security_for,
)
from grid.security.revocation import (
    REVOCATION_REASONS,
    CertRecord,
    crl_next_update,
    list_certificates,
    revoke,
    write_crl,
)

# Private helpers that code outside this package still reaches through this module
# (the redundant alias marks them as re-exported on purpose).
from grid.security.cert_input import _as_cert as _as_cert
from grid.security.peer_identity import _parse_uri as _parse_uri

__all__ = [
    "BUILTIN_CA_DIR",
    "BUILTIN_CRL_DAYS",
    "BUILTIN_DAYS",
    "CA",
    "CAExpired",
    "CANotFound",
    "CA_CERT",
    "CA_KEY",
    "CRLError",
    "CRL_FILE",
    "CertError",
    "CertRecord",
    "CertificateExpired",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "ForeignCA",
    "ISSUED_DIR",
    "Identity",
    "IssuedCert",
    "LOCALHOST",
    "NotAGridCertificate",
    "REVOCATION_REASONS",
    "ROLES",
    "RevocationList",
    "UNBOUND_ROLES",
    "URI_SCHEME",
    "WrongRegion",
    "WrongRole",
    "check_certificate",
    "crl_next_update",
    "default_ca_dir",
    "default_crl_days",
    "default_days",
    "format_utc",
    "identity_from_certificate",
    "identity_from_der",
    "identity_from_peercert",
    "identity_uri",
    "init_ca",
    "issue",
    "list_certificates",
    "load_ca",
    "load_crl_into_context",
    "load_revoked",
    "revoke",
    "security_for",
    "write_crl",
]
