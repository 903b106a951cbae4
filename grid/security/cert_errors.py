"""The errors of certificate checks: one class per problem, each message names the fix.

Every class is a :class:`CertError` (a :class:`grid.errors.GridError`), so
callers catch one class or the one problem they handle.
"""

from __future__ import annotations

from grid.errors import GridError


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
