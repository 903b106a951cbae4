"""The grid CA: init, issue, revoke, CRL, identity parsing and checks, and real TLS."""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import Client, Scheduler, Worker
from distributed.comm.core import CommClosedError
from distributed.security import Security
from distributed.utils_test import gen_test, inc

from grid.security import certs
from grid.security.certs import (
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
from grid.security.cli import certs as certs_cli
from grid.security.throwaway import make_throwaway_grid

UTC = dt.timezone.utc


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> certs.CA:
    return init_ca(tmp_path / "ca", name="testgrid")


@pytest.fixture
def other_ca(tmp_path: Path) -> certs.CA:
    # Same grid name, hence the same CA subject: only the signature tells them apart.
    return init_ca(tmp_path / "other", name="testgrid")


# --------------------------------------------------------------------------- init


def test_init_writes_p256_ca_and_empty_crl_privately(ca: certs.CA) -> None:
    assert mode(ca.directory) == 0o700
    for path in (ca.cert_path, ca.key_path, ca.crl_path):
        assert mode(path) == 0o600, path
    assert isinstance(ca.cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.cert.public_key().curve.name == "secp256r1"
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.name == "testgrid"
    lifetime = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=1825)
    assert load_revoked(ca.crl_path, ca.cert_path) == set()


def test_init_refuses_to_replace_a_ca(ca: certs.CA) -> None:
    with pytest.raises(FileExistsError, match="already holds a grid CA"):
        init_ca(ca.directory)


def test_missing_ca_names_the_path_and_the_fix(tmp_path: Path) -> None:
    where = tmp_path / "nowhere"
    with pytest.raises(CANotFound) as info:
        issue(where, "client", "alice")
    assert str(where) in str(info.value)
    assert f"grid certs init --dir {where}" in str(info.value)
    with pytest.raises(CANotFound, match="ca.pem"):
        check_certificate(b"irrelevant", where)


def test_missing_ca_key_says_where_to_issue(ca: certs.CA) -> None:
    ca.key_path.unlink()
    with pytest.raises(CANotFound, match="ca-key.pem.*machine that holds the CA"):
        issue(ca.directory, "client", "alice")
    assert load_ca(ca.directory, need_key=False).key is None  # checking peers needs no key


def test_ca_key_readable_by_others_is_refused(ca: certs.CA) -> None:
    os.chmod(ca.key_path, 0o644)
    with pytest.raises(CertError, match=f"chmod 600 {ca.key_path}"):
        issue(ca.directory, "client", "alice")


def test_expired_ca_is_refused_everywhere(tmp_path: Path) -> None:
    old = init_ca(tmp_path / "old", days=1, not_before=dt.datetime.now(UTC) - dt.timedelta(days=3))
    with pytest.raises(CAExpired) as info:
        issue(old.directory, "client", "alice")
    assert str(old.cert_path) in str(info.value) and "grid certs init" in str(info.value)
    # a certificate issued while the CA was valid is refused once the CA has expired
    young = init_ca(tmp_path / "young", days=1)
    cert = issue(young, "client", "bob").cert
    assert check_certificate(cert, young.cert_path).name == "bob"
    with pytest.raises(CAExpired, match="expired on"):
        check_certificate(cert, young.cert_path, now=dt.datetime.now(UTC) + dt.timedelta(days=2))


# --------------------------------------------------------------------------- issue


@pytest.mark.parametrize(
    "role, region, eku",
    [
        ("scheduler", "eu", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("node", "eu", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("client", None, {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("admin", None, {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_issue_each_role_records_identity(ca: certs.CA, role: str, region: str | None, eku: set) -> None:
    issued = issue(ca, role, f"{role}-1", region=region)
    cert = issued.cert
    # files: cert, key and a copy of ca.pem, all 0600 in a 0700 directory
    assert issued.cert_path.parent == ca.directory / role / f"{role}-1"
    assert mode(issued.cert_path.parent) == 0o700 and mode(ca.directory / role) == 0o700
    for path in (issued.cert_path, issued.key_path, issued.ca_path):
        assert mode(path) == 0o600, path
    assert issued.ca_path.read_bytes() == ca.cert_path.read_bytes()
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    assert cert.public_key().curve.name == "secp256r1"
    # identity: subject and SAN URI, parsed back from DER, PEM and file
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{role}-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == role
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "testgrid"
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [f"grid://{role}/{role}-1" + (f"?region={region}" if region else "")]
    expected = Identity(f"{role}-1", role, region, cert.serial_number)
    assert identity_from_der(issued.der) == expected
    assert issued.identity == expected
    assert check_certificate(issued.cert_path.read_bytes(), ca.cert_path, ca.crl_path) == expected
    assert check_certificate(issued.cert_path, ca.directory, expected_role=role, expected_region=region) == expected
    assert check_certificate(issued.der, ca).is_admin is (role == "admin")
    # key usage
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # a copy is kept for `list` and `revoke NAME`
    assert (ca.directory / "issued" / f"{cert.serial_number:x}.pem").exists()


def test_scheduler_sans_hosts_and_localhost(ca: certs.CA) -> None:
    issued = issue(ca, "scheduler", "eu-1", region="eu", hosts=["eu.grid.example.org", "10.0.0.5", "*.eu.example.org"])
    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["eu.grid.example.org", "*.eu.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1", "::1"]
    bare = issue(ca, "scheduler", "eu-2", hosts=["eu.grid.example.org"], include_localhost=False)
    san = bare.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["eu.grid.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == []
    assert bare.identity.region is None
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
        issue(ca, "scheduler", "eu-3", hosts=["bad host!"])


def test_issue_validates_role_name_and_region(ca: certs.CA) -> None:
    with pytest.raises(ValueError, match="must name its region"):
        issue(ca, "node", "n1")
    with pytest.raises(ValueError, match="not bound to a region"):
        issue(ca, "client", "alice", region="eu")
    with pytest.raises(ValueError, match="carry no host names"):
        issue(ca, "admin", "root", hosts=["example.org"])
    with pytest.raises(ValueError, match="unknown role 'worker'"):
        issue(ca, "worker", "w1")
    with pytest.raises(ValueError, match="name 'a/b' is not allowed"):
        issue(ca, "client", "a/b")
    with pytest.raises(ValueError, match="region 'e u' is not allowed"):
        issue(ca, "node", "n1", region="e u")


def test_default_lifetimes_and_config_override(ca: certs.CA) -> None:
    def days(issued: certs.IssuedCert) -> float:
        c = issued.cert
        return (c.not_valid_after_utc - c.not_valid_before_utc) / dt.timedelta(days=1)

    assert days(issue(ca, "scheduler", "s", region="eu")) == 365
    assert days(issue(ca, "node", "n", region="eu")) == 90
    assert days(issue(ca, "client", "c")) == 365
    assert days(issue(ca, "admin", "a")) == 365
    assert days(issue(ca, "node", "n2", region="eu", days=7)) == 7
    with dask.config.set({"grid.security.days.node": 30}):
        assert days(issue(ca, "node", "n3", region="eu")) == 30


def test_certificates_never_outlive_the_ca(tmp_path: Path) -> None:
    short = init_ca(tmp_path / "short", days=10)
    issued = issue(short, "client", "alice", days=365)
    assert issued.cert.not_valid_after_utc == short.cert.not_valid_after_utc


def test_reissue_replaces_files_and_keeps_both_serials(ca: certs.CA) -> None:
    first = issue(ca, "node", "n1", region="eu")
    second = issue(ca, "node", "n1", region="eu")
    assert first.cert_path == second.cert_path
    assert first.identity.serial != second.identity.serial
    assert identity_from_der(x509.load_pem_x509_certificate(second.cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER)).serial == second.identity.serial
    serials = {r.identity.serial for r in list_certificates(ca.directory)}
    assert {first.identity.serial, second.identity.serial} <= serials


def test_issue_to_another_directory(ca: certs.CA, tmp_path: Path) -> None:
    out = tmp_path / "bundle" / "laptop"
    issued = issue(ca, "node", "laptop", region="us", out=out)
    assert issued.cert_path == out / "laptop.pem" and issued.key_path == out / "laptop-key.pem"
    assert (out / "ca.pem").exists() and mode(out) == 0o700


# --------------------------------------------------------------------------- checks


def test_expired_and_not_yet_valid_certificates_are_refused(ca: certs.CA) -> None:
    past = dt.datetime.now(UTC) - dt.timedelta(days=10)
    old = issue(ca, "node", "old", region="eu", not_before=past, days=1)
    with pytest.raises(CertificateExpired) as info:
        check_certificate(old.der, ca.cert_path, ca.crl_path, expected_role="node")
    assert "node 'old' (region eu) expired on" in str(info.value) and "grid certs issue" in str(info.value)
    fresh = issue(ca, "node", "fresh", region="eu")
    with pytest.raises(CertificateNotYetValid, match="check the clocks"):
        check_certificate(fresh.der, ca.cert_path, now=dt.datetime.now(UTC) - dt.timedelta(hours=1))


def test_foreign_ca_is_refused_even_with_the_same_name(ca: certs.CA, other_ca: certs.CA) -> None:
    assert other_ca.cert.subject == ca.cert.subject
    stranger = issue(other_ca, "node", "n1", region="eu")
    with pytest.raises(ForeignCA) as info:
        check_certificate(stranger.der, ca.cert_path, ca.crl_path)
    assert str(ca.cert_path) in str(info.value) and "not by this grid's CA" in str(info.value)
    # a CRL from another CA is refused too
    with pytest.raises(ForeignCA, match="copy crl.pem from this grid's CA directory"):
        load_revoked(other_ca.crl_path, ca.cert_path)
    with pytest.raises(ForeignCA):
        check_certificate(issue(ca, "node", "n2", region="eu").der, ca.cert_path, other_ca.crl_path)


def test_wrong_role_and_wrong_region(ca: certs.CA) -> None:
    node = issue(ca, "node", "n1", region="eu")
    client = issue(ca, "client", "alice")
    with pytest.raises(WrongRegion) as info:
        check_certificate(node.der, ca, expected_role="node", expected_region="us")
    assert "belongs to region 'eu'" in str(info.value) and "--region us" in str(info.value)
    with pytest.raises(WrongRole, match="needs a certificate of role node"):
        check_certificate(client.der, ca, expected_role="node")
    with pytest.raises(WrongRole, match="of role admin or client"):
        check_certificate(node.der, ca, expected_role={"client", "admin"})
    assert check_certificate(client.der, ca, expected_role={"client", "admin"}).name == "alice"
    with pytest.raises(WrongRegion, match="names no region"):
        check_certificate(client.der, ca, expected_region="eu")


def test_certificates_without_grid_identity_are_refused(ca: certs.CA) -> None:
    plain = Security.temporary()  # distributed's self-signed certificate: no grid:// URI
    der = x509.load_pem_x509_certificate(plain.tls_client_cert.encode()).public_bytes(serialization.Encoding.DER)
    with pytest.raises(NotAGridCertificate, match="grid identity URI"):
        identity_from_der(der)
    with pytest.raises(NotAGridCertificate, match="no certificate"):
        identity_from_der(b"")
    with pytest.raises(NotAGridCertificate):
        identity_from_peercert({})


# --------------------------------------------------------------------------- revocation


def test_revoke_by_name_and_serial_and_read_the_crl_back(ca: certs.CA) -> None:
    n1 = issue(ca, "node", "n1", region="eu")
    n1b = issue(ca, "node", "n1", region="eu")  # a second certificate of the same node
    n2 = issue(ca, "node", "n2", region="eu")
    n3 = issue(ca, "node", "n3", region="eu")
    crl = RevocationList(ca.crl_path, ca=ca.cert_path)
    assert n1.identity.serial not in crl

    done = revoke(ca.directory, "n1", reason="key-compromise")
    assert {i.serial for i in done} == {n1.identity.serial, n1b.identity.serial}
    assert load_revoked(ca.crl_path, ca.cert_path) == {n1.identity.serial, n1b.identity.serial}
    assert n1.identity.serial in crl  # reloaded after the change on disk

    # by serial, as `grid certs list` prints it (hex, with or without 0x)
    assert [i.name for i in revoke(ca, n2.identity.serial_hex)] == ["n2"]
    assert [i.name for i in revoke(ca, f"0x{n3.identity.serial_hex.upper()}", reason="superseded")] == ["n3"]
    assert revoke(ca, "n2") == []  # already revoked: nothing to do

    revoked = load_revoked(ca.crl_path, ca.cert_path)
    assert revoked == {n1.identity.serial, n1b.identity.serial, n2.identity.serial, n3.identity.serial}
    parsed = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert parsed.is_signature_valid(ca.cert.public_key()) and mode(ca.crl_path) == 0o600
    reasons = {e.serial_number: e.extensions.get_extension_for_class(x509.CRLReason).value.reason for e in parsed}
    assert reasons[n1.identity.serial] == x509.ReasonFlags.key_compromise
    assert reasons[n3.identity.serial] == x509.ReasonFlags.superseded

    with pytest.raises(CertificateRevoked) as info:
        check_certificate(n1.der, ca.cert_path, ca.crl_path, expected_role="node", expected_region="eu")
    assert "node 'n1' (region eu)" in str(info.value) and n1.identity.serial_hex in str(info.value)
    with pytest.raises(CertificateRevoked):
        check_certificate(n2.der, ca.cert_path, crl)
    with pytest.raises(CertificateRevoked):
        check_certificate(n2.der, ca.cert_path, revoked)

    statuses = {(r.identity.name, r.identity.serial): r.status for r in list_certificates(ca)}
    assert set(statuses.values()) == {"revoked"}


def test_revoke_needs_a_known_name_or_serial_and_a_role_when_ambiguous(ca: certs.CA) -> None:
    issue(ca, "client", "alice")
    admin = issue(ca, "admin", "alice")
    with pytest.raises(ValueError, match="several roles.*--role"):
        revoke(ca, "alice")
    assert [i.role for i in revoke(ca, "alice", role="client")] == ["client"]
    assert admin.identity.serial not in load_revoked(ca.crl_path)
    with pytest.raises(KeyError, match="no certificate named 'bob'"):
        revoke(ca, "bob")
    with pytest.raises(KeyError, match="no certificate with serial abc"):
        revoke(ca, "abc")


def test_crl_is_signed_again_keeping_entries(ca: certs.CA) -> None:
    n1 = issue(ca, "node", "n1", region="eu")
    revoke(ca, "n1")
    before = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    write_crl(ca, days=5)
    after = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert {e.serial_number for e in after} == {n1.identity.serial}
    number = lambda c: c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number  # noqa: E731
    assert number(after) == number(before) + 1
    assert after.next_update_utc - after.last_update_utc <= dt.timedelta(days=5, minutes=5)


def test_missing_crl_is_an_error_not_an_empty_list(ca: certs.CA) -> None:
    issue(ca, "node", "n1", region="eu")
    ca.crl_path.unlink()
    with pytest.raises(CRLError, match="--empty"):
        revoke(ca, "n1")
    with pytest.raises(CRLError, match="not found"):
        load_revoked(ca.crl_path)
    with pytest.raises(CRLError, match="not found"):
        RevocationList(ca.crl_path).serials()
    write_crl(ca, empty=True)
    assert load_revoked(ca.crl_path, ca) == set()


# --------------------------------------------------------------------------- CLI


def test_cli_init_issue_list_revoke_crl(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path / "ca")

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(certs_cli, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    assert "created grid CA 'mygrid'" in run("init", "--dir", d, "--name", "mygrid", "--days", "30")
    assert "already holds a grid CA" in run("init", "--dir", d, ok=False)
    out = run("issue", "scheduler", "eu-1", "--dir", d, "--region", "eu", "--host", "eu.example.org", "--host", "10.1.2.3")
    assert "scheduler 'eu-1' (region eu)" in out and "eu.example.org, 10.1.2.3, localhost" in out
    out = run("issue", "node", "laptop", "--dir", d, "--region", "eu", "--days", "3", "--out", str(tmp_path / "laptop"))
    assert str(tmp_path / "laptop" / "laptop-key.pem") in out
    run("issue", "client", "alice", "--dir", d)
    assert "must name its region" in run("issue", "node", "x", "--dir", d, ok=False)
    assert "'worker' is not one of" in run("issue", "worker", "x", "--dir", d, ok=False)

    listing = json.loads(run("list", "--dir", d, "--json"))
    rows = {r["name"]: r for r in listing["certificates"]}
    assert rows["laptop"]["region"] == "eu" and rows["laptop"]["status"] == "valid"
    assert rows["alice"]["role"] == "client"
    out = run("revoke", "laptop", "--dir", d, "--reason", "key-compromise")
    assert f"revoked node 'laptop' (region eu) serial {rows['laptop']['serial']}" in out
    assert "already revoked" in run("revoke", rows["laptop"]["serial"], "--dir", d)
    assert "laptop" in run("list", "--dir", d) and "revoked" in run("list", "--dir", d)
    assert "1 revoked certificate(s)" in run("crl", "--dir", d)
    assert load_revoked(Path(d) / "crl.pem", Path(d)) == {int(rows["laptop"]["serial"], 16)}
    missing = str(tmp_path / "missing")
    assert f"grid certs init --dir {missing}" in run("list", "--dir", missing, ok=False)


def test_cli_default_dir_comes_from_config(tmp_path: Path) -> None:
    runner = CliRunner()
    with dask.config.set({"grid.security.ca-dir": str(tmp_path / "cfg-ca")}):
        result = runner.invoke(certs_cli, ["init"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert runner.invoke(certs_cli, ["issue", "admin", "root"]).exit_code == 0
    assert (tmp_path / "cfg-ca" / "admin" / "root" / "root.pem").exists()


# --------------------------------------------------------------------------- throw-away grid


def test_make_throwaway_grid(tmp_path: Path) -> None:
    tg = make_throwaway_grid(tmp_path, {"eu": 2, "us": 1})
    assert [n.identity.name for n in tg.nodes["eu"]] == ["node-eu-0", "node-eu-1"]
    assert [n.identity.region for n in tg.nodes["us"]] == ["us"]
    assert tg.schedulers["us"].identity == Identity("scheduler-us", "scheduler", "us", tg.schedulers["us"].identity.serial)
    assert tg.client.identity.role == "client" and tg.admin.identity.role == "admin"
    for issued in [*tg.schedulers.values(), *tg.nodes["eu"], tg.client, tg.admin]:
        check_certificate(issued.der, tg.ca_file, tg.crl_file)
    sec = tg.security("eu", client="client")
    assert sec.tls_scheduler_cert == str(tg.schedulers["eu"].cert_path)
    assert sec.tls_worker_cert == str(tg.nodes["eu"][0].cert_path)
    assert sec.tls_client_cert == str(tg.client.cert_path)
    assert make_throwaway_grid(tmp_path / "list", ["a"]).nodes["a"][0].identity.name == "node-a-0"


# --------------------------------------------------------------------------- real TLS


class CRLSecurity(Security):
    """Security whose listening contexts also refuse revoked peers (handshake-level CRL)."""

    def __init__(self, crl_path: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._crl_path = crl_path

    def get_listen_args(self, role: str) -> dict:
        args = super().get_listen_args(role)
        load_crl_into_context(args["ssl_context"], self._crl_path)
        return args


@gen_test(timeout=60)
async def test_real_tls_scheduler_admits_grid_certs_and_refuses_foreign_ones(tmp_path: Path) -> None:
    tg = make_throwaway_grid(tmp_path / "grid", {"eu": 1})
    stranger = make_throwaway_grid(tmp_path / "stranger", {"eu": 1})
    sched_sec = tg.schedulers["eu"].security()
    async with Scheduler(security=sched_sec, protocol="tls", host="127.0.0.1", port=0, dashboard=False) as s:
        assert s.address.startswith("tls://")
        async with Worker(s.address, security=tg.nodes["eu"][0].security(), nthreads=1, host="127.0.0.1") as w:
            async with Client(s.address, security=tg.client.security(), asynchronous=True) as c:
                # a task runs: scheduler -> worker and client -> scheduler mutual TLS with grid certificates
                assert await c.submit(inc, 1) == 2
                # the scheduler sees who the client is, as distributed's comm gives the peer certificate
                (comm,) = [bs.comm for bs in s.client_comms.values() if bs.comm is not None and not bs.comm.closed()]
                der = comm.stream.socket.getpeercert(binary_form=True)
                assert identity_from_der(der) == tg.client.identity
                assert identity_from_peercert(comm.extra_info["peercert"]) == tg.client.identity
                assert check_certificate(der, tg.ca_file, tg.crl_file, expected_role="client").name == "client"
                # ... and who the node is, on the worker's stream to the scheduler
                node_comm = s.stream_comms[w.address].comm
                node_der = node_comm.stream.socket.getpeercert(binary_form=True)
                assert check_certificate(node_der, tg.ca_file, tg.crl_file, "node", "eu") == tg.nodes["eu"][0].identity

            # a client certificate from another CA is refused by the scheduler ...
            foreign_cert = Security(
                tls_ca_file=str(tg.ca_file),
                tls_client_cert=str(stranger.client.cert_path),
                tls_client_key=str(stranger.client.key_path),
                require_encryption=True,
            )
            with pytest.raises((OSError, CommClosedError)) as refused:
                async with Client(s.address, security=foreign_cert, asynchronous=True, timeout="10s"):
                    pass
            assert "unknown ca" in str(refused.value).lower()
            # ... and a client of another grid refuses this scheduler
            with pytest.raises((OSError, CommClosedError)) as refused:
                async with Client(s.address, security=stranger.client.security(), asynchronous=True, timeout="10s"):
                    pass
            assert "certificate" in str(refused.value).lower()
            # the scheduler keeps serving grid clients
            async with Client(s.address, security=tg.admin.security(), asynchronous=True) as c:
                assert await c.submit(inc, 2) == 3


@gen_test(timeout=60)
async def test_real_tls_handshake_refuses_a_revoked_client(tmp_path: Path) -> None:
    tg = make_throwaway_grid(tmp_path / "grid", {"eu": 1})
    revoked = issue(tg.ca, "client", "mallory", days=1)
    revoke(tg.ca, "mallory", reason="key-compromise")
    sched = tg.schedulers["eu"]
    sec = CRLSecurity(
        tg.crl_file,
        tls_ca_file=str(tg.ca_file),
        tls_scheduler_cert=str(sched.cert_path),
        tls_scheduler_key=str(sched.key_path),
        require_encryption=True,
    )
    async with Scheduler(security=sec, protocol="tls", host="127.0.0.1", port=0, dashboard=False) as s:
        with pytest.raises((OSError, CommClosedError)) as refused:
            async with Client(s.address, security=revoked.security(), asynchronous=True, timeout="10s"):
                pass
        assert "certificate revoked" in str(refused.value).lower()
        async with Client(s.address, security=tg.client.security(), asynchronous=True) as c:
            assert (await c.scheduler.identity())["type"] == "Scheduler"


def test_a_node_certificate_names_its_owner(tmp_path) -> None:
    from cryptography import x509

    from grid.security.certs import NotAGridCertificate, _parse_uri, identity_from_certificate, init_ca, issue

    ca = init_ca(tmp_path / "ca")
    issued = issue(ca, "node", "laptop-2", region="eu", owner="alice", out=tmp_path / "n")
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    identity = identity_from_certificate(cert)
    assert (identity.name, identity.owner, identity.region) == ("laptop-2", "alice", "eu")
    assert identity.uri == "grid://node/laptop-2?region=eu&owner=alice"
    assert identity_from_certificate(x509.load_pem_x509_certificate(
        issue(ca, "node", "laptop-3", region="eu", out=tmp_path / "m").cert_path.read_bytes())).owner is None
    with pytest.raises(ValueError, match="only node certificates name an owner"):
        issue(ca, "client", "bob", owner="alice", out=tmp_path / "c")
    with pytest.raises(ValueError, match="owner"):
        issue(ca, "node", "n9", region="eu", owner="alice\n", out=tmp_path / "x")
    with pytest.raises(NotAGridCertificate, match="an owner on node certificates only"):
        _parse_uri("grid://client/bob?owner=alice")


# --------------------------------------------------------------------------- module layout


def test_checking_peers_loads_no_ca_tooling() -> None:
    # A fresh interpreter: this test process has long imported everything.
    code = (
        "import sys\n"
        "import grid.security.identity\n"
        "import grid.security\n"
        "print(sorted(m for m in sys.modules if m.startswith('grid.security')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert "grid.security.identity" in loaded
    tooling = {"grid.security.authority", "grid.security.revocation", "grid.security.certs", "grid.security.throwaway"}
    assert not loaded & tooling, loaded


def test_certs_and_the_package_hand_out_the_objects_of_the_new_modules() -> None:
    from grid import security
    from grid.security import authority, identity, revocation

    for name in certs.__all__:
        home = identity if hasattr(identity, name) else authority if hasattr(authority, name) else revocation
        assert getattr(certs, name) is getattr(home, name), name
    # the package loads the CA tooling on first use of one of its names
    assert security.init_ca is authority.init_ca and security.CA is authority.CA
    assert security.revoke is revocation.revoke and security.CertRecord is revocation.CertRecord
    assert security.check_certificate is identity.check_certificate
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        getattr(security, "nonexistent")


def test_checks_take_a_loaded_ca_and_an_issued_certificate_as_they_are(ca: certs.CA, other_ca: certs.CA) -> None:
    issued = issue(ca, "node", "n1", region="eu")
    assert check_certificate(issued, ca, ca.crl_path, expected_role="node").name == "n1"
    assert load_revoked(ca.crl_path, ca) == set()
    with pytest.raises(ForeignCA) as info:
        check_certificate(issue(other_ca, "node", "n2", region="eu"), ca)
    assert str(ca.cert_path) in str(info.value)  # the loaded CA's ca.pem is named
