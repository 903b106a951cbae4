"""The node's Files policy (jobs.data_roots): roots, symlinks, '..', URL hosts; readers never echo file contents."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from jobs.data import DataError, read_partition
from jobs.data_roots import DataAccessError, check_location, is_public_address, normalize_roots, roots_setting


def public(host, port):
    return ["93.184.216.34"]


def resolver(table):
    def resolve(host, port):
        if host not in table:
            raise OSError("unknown host")
        return table[host]

    return resolve


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.csv").write_text("x,y\n1,0\n")
    secret = tmp_path / "secret.csv"
    secret.write_text("token\n")
    (root / "link.csv").symlink_to(secret)
    (root / "linkdir").symlink_to(tmp_path)
    other = tmp_path / "rootother"
    other.mkdir()
    return root, secret, other


def check(path, roots, **kw):
    kw.setdefault("restricted", True)
    kw.setdefault("resolve", public)
    return check_location(str(path), [str(r) for r in roots], **kw)


def test_paths_under_a_root_are_read_at_their_resolved_place(tree):
    root, _, _ = tree
    loc = check(root / "sub" / "a.csv", [root])
    assert loc.local and loc.target == os.path.realpath(root / "sub" / "a.csv")
    assert check(f"{root}/sub/../sub/a.csv", [root]).target == loc.target
    assert check(f"file://{root}/sub/a.csv", [root]).target == loc.target
    assert check(root / "sub" / "a.csv", [f"{root}/"]).target == loc.target  # a trailing slash changes nothing


@pytest.mark.parametrize(
    "path",
    [
        "{secret}",
        "{root}/../secret.csv",
        "{root}/sub/../../secret.csv",
        "{root}/link.csv",  # a symlink inside the root to a file outside
        "{root}/linkdir/secret.csv",  # a symlinked directory inside the root
        "{root}other/x.csv",  # a sibling whose name starts with the root's
        "file://{secret}",
        "/etc/shadow",
        "missing-relative.csv",
    ],
)
def test_paths_outside_the_roots_are_refused_with_the_roots_named(tree, path):
    root, secret, _ = tree
    given = path.format(root=root, secret=secret)
    with pytest.raises(DataAccessError) as info:
        check(given, [root])
    message = str(info.value)
    assert given in message and str(root) in message and "--data-root" in message
    assert str(secret) not in message.replace(given, "")  # where a symlink points is not revealed


def test_refusal_is_the_same_whether_or_not_the_file_exists(tree):
    root, secret, _ = tree
    with pytest.raises(DataAccessError) as exists:
        check(secret, [root])
    with pytest.raises(DataAccessError) as missing:
        check(secret.with_name("nope.csv"), [root])
    assert str(exists.value).replace("secret", "X") == str(missing.value).replace("nope", "X")


def test_restricted_without_roots_refuses_everything_and_says_how_to_allow(tree):
    root, _, _ = tree
    with pytest.raises(DataAccessError, match=r"has none \(node 'n1' runs in community mode\).*--data-root"):
        check(root / "sub" / "a.csv", [], restricted_by="node 'n1' runs in community mode")


def test_unrestricted_nodes_read_any_path(tree):
    _, secret, _ = tree
    assert check(secret, [], restricted=False).target == os.path.realpath(secret)


def test_several_roots_and_url_roots(tree):
    root, _, other = tree
    roots = [root, other, "https://data.example.org/train/"]
    assert check(other / "x.csv", roots).local
    assert not check("https://data.example.org/train/p-1.csv", roots).local
    assert check("https://DATA.example.org:443/train/sub/p.csv?sig=1", roots).addresses == ("93.184.216.34",)
    for url in [
        "https://data.example.org/training/p.csv",  # not a whole segment
        "https://data.example.org/p.csv",
        "http://data.example.org/train/p.csv",  # another scheme
        "https://data.example.org:8443/train/p.csv",  # another port
        "https://data.example.org.evil.net/train/p.csv",
        "https://data.example.org@evil.net/train/p.csv",  # user info, the host is evil.net
        "https://evil.net/train/p.csv",
    ]:
        with pytest.raises(DataAccessError, match="outside this node's data roots"):
            check(url, roots)


@pytest.mark.parametrize(
    "url", ["https://data.example.org/train/../secret.csv", "https://data.example.org/train/%2e%2e/secret.csv", "https://data.example.org/train/./x.csv"]
)
def test_dot_segments_in_urls_are_refused(url):
    with pytest.raises(DataAccessError, match=r"'\.' or '\.\.' segments"):
        check(url, ["https://data.example.org/train/"])


def test_chained_urls_are_refused():
    with pytest.raises(DataAccessError, match="chained"):
        check("simplecache::http://127.0.0.1/x.csv", [], restricted=False)
    with pytest.raises(ValueError, match="chained"):
        normalize_roots(["zip://x::file:///"])


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
     "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "fe80::1%eth0",
     "224.0.0.1"],
)
def test_non_public_addresses(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert is_public_address(address)


@pytest.mark.parametrize(
    "url, table",
    [
        ("http://127.0.0.1:8000/x.csv", {"127.0.0.1": ["127.0.0.1"]}),
        ("http://[::1]:8000/x.csv", {"::1": ["::1"]}),
        ("http://[::ffff:127.0.0.1]/x.csv", {"::ffff:127.0.0.1": ["::ffff:127.0.0.1"]}),
        ("http://169.254.169.254/latest/meta-data", {"169.254.169.254": ["169.254.169.254"]}),
        ("http://internal.example/x.csv", {"internal.example": ["127.0.0.1"]}),  # a name resolving to loopback
        ("http://mixed.example/x.csv", {"mixed.example": ["93.184.216.34", "10.0.0.7"]}),  # every address counts
        ("ftp://files.example/x.csv", {"files.example": ["192.168.0.2"]}),
    ],
)
def test_urls_into_private_networks_are_refused_even_on_unrestricted_nodes(url, table):
    with pytest.raises(DataAccessError) as info:
        check(url, [], restricted=False, resolve=resolver(table))
    assert "allow-private-urls" in str(info.value) and url in str(info.value)
    loc = check(url, [], restricted=False, allow_private_urls=True, resolve=resolver(table))
    assert not loc.local


def test_localhost_resolves_to_loopback_with_the_real_resolver():
    with pytest.raises(DataAccessError, match="loopback"):
        check_location("http://localhost:9/x.csv", [], restricted=False)


def test_unresolvable_hosts_are_refused():
    with pytest.raises(DataAccessError, match="does not resolve"):
        check("https://nowhere.invalid/x.csv", [], restricted=False, resolve=resolver({}))


def test_bucket_urls_match_roots_without_a_host_lookup():
    def no_lookup(host, port):
        raise AssertionError("bucket names are not network hosts")

    loc = check("s3://bucket/train/p.parquet", ["s3://bucket/train"], resolve=no_lookup)
    assert loc.target == "s3://bucket/train/p.parquet"
    with pytest.raises(DataAccessError, match="outside"):
        check("s3://other/train/p.parquet", ["s3://bucket/train"], resolve=no_lookup)


def test_roots_are_validated():
    with pytest.raises(ValueError, match="empty"):
        normalize_roots([""])
    with pytest.raises(ValueError, match="no host"):
        normalize_roots(["https:///x"])


# --- the readers never echo what the file holds ------------------------------------------
TOKEN = "tok3n-5ecret-line"


def test_missing_target_column_does_not_list_the_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(f"{TOKEN},b\n1,2\n")
    with pytest.raises(DataError) as info:
        read_partition(str(path), target="label")
    assert "target column 'label' is missing" in str(info.value) and TOKEN not in str(info.value)


def test_missing_npz_arrays_are_not_listed(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, **{TOKEN: np.zeros((2, 2))})
    for kw in ({}, {"target": "y"}, {"features": "F"}):
        with pytest.raises(DataError) as info:
            read_partition(str(path), **kw)
        assert TOKEN not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "content, fmt",
    [
        (b"\xff\xfe" + TOKEN.encode() + b"\x00,\n", "csv"),  # a decode error would name bytes
        (f"a,b\n1,2\n{TOKEN},1,2,3\n".encode(), "csv"),  # a tokenizer error
        (TOKEN.encode() * 3, "parquet"),
        (TOKEN.encode() * 3, "npz"),
    ],
)
def test_read_errors_do_not_echo_file_bytes(tmp_path, content, fmt):
    path = tmp_path / f"p.{fmt}"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_partition(str(path), target="a")
    message = str(info.value)
    assert TOKEN not in message and "\\xff" not in message and "0xff" not in message, message
    assert str(path) in message and f"cannot be read as {fmt}" in message


def test_text_features_are_refused_without_quoting_them(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"a": [TOKEN, "x"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="dtype") as info:
        read_partition(str(path), target="label")
    assert TOKEN not in str(info.value)


def test_roots_setting_accepts_one_bare_root():
    assert roots_setting(None) == [] and roots_setting("/srv/data") == ["/srv/data"] and roots_setting(("/a", "/b")) == ["/a", "/b"]


def test_grid_node_refuses_a_root_that_is_not_a_directory(tmp_path):
    from click.testing import CliRunner

    from grid.cli import main

    result = CliRunner().invoke(
        main, ["node", "--region", "eu", "--scheduler", "tcp://127.0.0.1:9", "--data-root", str(tmp_path / "missing")]
    )
    assert result.exit_code == 2 and "is not a directory" in result.output and "--data-root" in result.output, result.output


def test_compressed_csv_is_read_through_an_open_file(tmp_path):
    path = tmp_path / "p.csv.gz"
    pd.DataFrame({"a": [1.0, 2.0], "label": [0, 1]}).to_csv(path, index=False)
    X, y, _ = read_partition(str(path), target="label", format="csv", opener=lambda: open(path, "rb"))
    assert X.tolist() == [[1.0], [2.0]] and y.tolist() == [0, 1]


def test_misconfigured_roots_refuse_with_a_clear_reason(tree):
    root, _, _ = tree
    with pytest.raises(DataAccessError, match="misconfigured"):
        check(root / "sub" / "a.csv", [""])
