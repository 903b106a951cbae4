"""One pattern per kind of name (grid/names.py), used by the spec, certificates and systemd units alike."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from grid import names
from grid.deploy.systemd_install import install_systemd_node
from grid.security.certs import init_ca, issue
from grid.spec import SpecError, load_spec


@pytest.mark.parametrize("region", ["eu", "us-east", "a" * 63])
def test_good_regions(region: str) -> None:
    assert names.is_region(region)


@pytest.mark.parametrize("region", ["EU", "eu\n", "-eu", "1eu", "eu_west", "a" * 64, "", None, 3])
def test_bad_regions_are_bad_everywhere(region, tmp_path) -> None:
    assert not names.is_region(region)
    if not isinstance(region, str) or not region:
        return
    with pytest.raises(SpecError, match="region name"):
        load_spec({"regions": {region: "tcp://h:8786"}})
    with pytest.raises(ValueError, match="region"):
        issue(init_ca(tmp_path / "ca"), "node", "n1", region=region, out=tmp_path / "n")
    result = CliRunner().invoke(install_systemd_node, ["--region", region, "--scheduler", "tls://h:8786",
                                                       "--target-dir", str(tmp_path / "units"), "--dry-run"])
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("name, identity, node", [
    ("node-7", True, True), ("alice", True, True), ("sched-eu.example", True, True),
    ("node1\n", False, False), ("a" * 64, True, True), ("a" * 65, False, True), ("a" * 129, False, False),
    ("-x", False, False), ("a b", False, False),
])
def test_identity_and_node_names(name: str, identity: bool, node: bool) -> None:
    assert names.is_identity(name) is identity
    assert names.is_node_name(name) is node


def test_a_name_with_a_trailing_newline_is_refused_by_every_entry_point(tmp_path) -> None:
    bad = "node1\n"  # '$' in a pattern would let it through; it would start a new line in a unit file
    ca = init_ca(tmp_path / "ca")
    with pytest.raises(ValueError, match="node name 'node1\\\\n' is not allowed"):
        issue(ca, "node", bad, region="eu", out=tmp_path / "n")
    with pytest.raises(ValueError, match="owner 'node1\\\\n' is not allowed"):
        issue(ca, "node", "node1", region="eu", owner=bad, out=tmp_path / "n")
    with pytest.raises(ValueError, match="grid name"):
        init_ca(tmp_path / "ca2", name=bad)
    for option, shown in (("--name", "name="), ("--cert-name", "cert_name=")):
        result = CliRunner().invoke(install_systemd_node, ["--region", "eu", "--scheduler", "tls://h:8786", option, bad,
                                                           "--target-dir", str(tmp_path / "units"), "--dry-run"])
        assert result.exit_code == 2 and f"{shown}'node1\\n'" in result.output, result.output
    # the same name without the newline is accepted everywhere
    assert issue(ca, "node", "node1", region="eu", owner="node1", out=tmp_path / "n").identity.name == "node1"
    result = CliRunner().invoke(install_systemd_node, ["--region", "eu", "--scheduler", "tls://h:8786", "--name", "node1",
                                                       "--cert-name", "node1", "--target-dir", str(tmp_path / "units"), "--dry-run"])
    assert result.exit_code == 0, result.output
