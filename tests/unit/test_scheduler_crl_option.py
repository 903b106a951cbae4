"""``grid scheduler --crl-file``: a list that is missing or not the grid CA's is refused before anything starts."""

from __future__ import annotations

from click.testing import CliRunner

from grid.cli import main
from grid.security.certs import init_ca, issue, write_crl


def _scheduler_args(ca, tmp_path, crl) -> list[str]:
    cert = issue(ca, "scheduler", "sched-eu", region="eu", out=tmp_path / "certs")
    return ["scheduler", "--region", "eu", "--host", "127.0.0.1", "--port", "0", "--crl-file", str(crl),
            "--tls-ca-file", str(ca.cert_path), "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)]


def test_a_missing_revocation_list_is_refused_with_the_fix(tmp_path) -> None:
    ca = init_ca(tmp_path / "ca")
    result = CliRunner().invoke(main, _scheduler_args(ca, tmp_path, tmp_path / "nowhere" / "crl.pem"))
    assert result.exit_code == 2, result.output
    assert "Invalid value for --crl-file: revocation list" in result.output
    assert "grid certs crl --dir CA_DIR" in result.output


def test_a_revocation_list_of_another_ca_is_refused(tmp_path) -> None:
    ca = init_ca(tmp_path / "ca")
    other = init_ca(tmp_path / "other-ca")
    result = CliRunner().invoke(main, _scheduler_args(ca, tmp_path, write_crl(other)))
    assert result.exit_code == 2, result.output
    assert "Invalid value for --crl-file" in result.output
