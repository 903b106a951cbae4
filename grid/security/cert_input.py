"""Certificates, CAs and times in the forms callers hand them, read into ``cryptography`` objects.

The checks take a certificate or a CA as a file, a directory, PEM or DER
bytes, PEM text, a parsed certificate, or an object of the CA tooling that
holds one (``.cert``), and times as aware or naive (UTC) datetimes. This
module turns each into one form, and names the CA files that peers are
checked against.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from cryptography import x509

from grid.security.cert_errors import CANotFound

# The files of a CA directory that peers are checked against; wherever a path is
# accepted, the CA directory itself is accepted too and these names are looked up in it.
CA_CERT = "ca.pem"
CRL_FILE = "crl.pem"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _utc(value: _dt.datetime | None) -> _dt.datetime:
    if value is None:
        return _now()
    return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)


def format_utc(when: _dt.datetime) -> str:
    """``2026-01-31 12:00 UTC``: how messages and ``grid certs`` print times."""
    return when.strftime("%Y-%m-%d %H:%M UTC")


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
