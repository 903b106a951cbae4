import os

import pytest

from grid.spec import GridSpec, SpecError, load_spec


def test_addresses_and_mappings():
    spec = load_spec({"regions": {"eu": "tcp://10.0.0.1:8786", "us": {"address": "tcp://h:1", "connect-timeout": "20s"}}})
    assert isinstance(spec, GridSpec)
    assert spec.regions["eu"].address == "tcp://10.0.0.1:8786"
    assert spec.regions["us"].connect_timeout == 20.0


def test_file_round_trip(tmp_path):
    path = tmp_path / "grid.yaml"
    load_spec({"regions": {"eu": "tcp://127.0.0.1:8786"}}).write(str(path))
    assert load_spec(str(path)).regions["eu"].address == "tcp://127.0.0.1:8786"


@pytest.mark.parametrize(
    "spec, words",
    [
        ({}, ["'regions'"]),
        ({"regions": {}}, ["'regions'"]),
        ({"regions": {"EU!": "tcp://h:1"}}, ["'EU!'", "lowercase"]),
        ({"regions": {"eu": "http://h:1"}}, ["regions.eu.address", "'http://h:1'", "tcp://"]),
        ({"regions": {"eu": {"adress": "tcp://h:1"}}}, ["regions.eu", "adress", "allowed"]),
        ({"regions": {"eu": {"address": "tcp://h:1", "connect-timeout": "soon"}}}, ["connect-timeout", "'soon'"]),
        ({"regions": {"eu": "tls://h:1"}}, ["tls", "regions.eu.address"]),
        ({"regions": {"eu": "tcp://h:1"}, "tls": {"ca-file": "x"}}, ["tls", "ca-file", "cert", "key"]),
        ({"regions": {"eu": "tcp://h:1"}, "extra": 1}, ["'extra'", "allowed"]),
        (["eu"], ["mapping"]),
    ],
)
def test_errors_name_key_value_and_allowed(spec, words):
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    for w in words:
        assert w in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="grid up"):
        load_spec(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: [unclosed")
    with pytest.raises(SpecError, match="YAML"):
        load_spec(str(bad))


def test_tls_paths_are_resolved_relative_to_the_file(tmp_path):
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "grid.yaml"
    path.write_text("regions: {eu: 'tls://h:1'}\ntls: {ca-file: ca.pem, cert: c.pem, key: k.pem}\n")
    spec = load_spec(str(path))
    assert spec.tls.ca_file == os.path.join(str(tmp_path), "ca.pem")
