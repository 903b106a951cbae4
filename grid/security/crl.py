"""Revocation lists as schedulers and nodes read them: revoked serials, watched files, TLS contexts.

A CRL is checked against the grid CA that signed it, and a stale one is still
used, with a warning. Revoking certificates and signing the list is the CA
tooling's (:mod:`grid.security.revocation`); this module only reads.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from grid.security.cert_errors import CRLError, ForeignCA
from grid.security.cert_input import CRL_FILE, _as_ca_cert, _utc, format_utc

logger = logging.getLogger(__name__)


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
