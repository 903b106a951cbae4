"""Revoking grid certificates: the revocation list, who is on it, and what a CA issued.

The operators' side of revocation behind ``grid certs revoke``, ``grid
certs list`` and ``grid certs crl``: put certificates on the CA's
revocation list (``crl.pem``) and sign it again, re-sign it with fresh
dates before it runs out, and list every certificate the CA issued with its
status. It works on a CA directory through :mod:`grid.security.authority`
(loading the CA, its lock, signing a list with its key). What a running
scheduler checks against the list is :mod:`grid.security.identity`.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from grid.security.authority import (
    CA,
    ISSUED_DIR,
    _check_role,
    _locked,
    _sign_crl,
    default_crl_days,
    load_ca,
)
from grid.security.identity import (
    ROLES,
    CertError,
    CRLError,
    ForeignCA,
    Identity,
    _load_crl_file,
    _now,
    _utc,
    identity_from_certificate,
)

REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}


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
