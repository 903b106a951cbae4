"""Security of the grid: the grid certificate authority and certificate checks.

:mod:`grid.security.identity` holds what every scheduler and node checks at
run time: the identity in a peer certificate, a certificate against the grid
CA, revocation lists (with the errors, the identity and its URI, and the
revocation lists in modules of their own that it re-exports). The operators' CA tooling is two modules:
:mod:`grid.security.authority` creates the grid CA and issues role
certificates (scheduler, node, client, admin, observer);
:mod:`grid.security.revocation` revokes them through a CRL and lists what
was issued. :mod:`grid.security.certs` re-exports all three. :mod:`grid.security.throwaway`
makes the throw-away CA of a local TLS grid. :mod:`grid.security.cli` is the
``grid certs`` command group. The threat model is in ``docs/security.md``.

The CA tooling and the throw-away grids are loaded on first use of one of
their names here, so that a process that only checks peers (``import
grid.security.identity`` runs this file first) never loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from grid.security.identity import (
    ROLES,
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
    identity_from_certificate,
    identity_from_der,
    identity_from_peercert,
    load_crl_into_context,
    load_revoked,
)

if TYPE_CHECKING:
    from grid.security.authority import CA, IssuedCert, init_ca, issue, load_ca
    from grid.security.revocation import CertRecord, list_certificates, revoke, write_crl
    from grid.security.throwaway import ThrowawayGrid, make_throwaway_grid

# name -> the module that defines it, imported when the name is first asked for
_LAZY = {
    **dict.fromkeys(("CA", "IssuedCert", "init_ca", "issue", "load_ca"), "grid.security.authority"),
    **dict.fromkeys(("CertRecord", "list_certificates", "revoke", "write_crl"), "grid.security.revocation"),
    **dict.fromkeys(("ThrowawayGrid", "make_throwaway_grid"), "grid.security.throwaway"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
