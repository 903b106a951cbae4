"""Property tests of the grid spec loader with random and malformed input.

:func:`grid.spec.load_spec` must either return a valid :class:`GridSpec` or
raise :class:`grid.spec.SpecError` (``FileNotFoundError`` for a path that does
not exist) whose message is non-empty and names the offending key. No other
exception type may escape, whatever the payload: random nested data, random
region names and addresses, TLS sections, YAML text or raw bytes in a file.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grid.spec import GridSpec, SpecError, load_spec

#: what a *valid* spec may contain (stricter than a regex `match`, which lets "eu\n" through)
REGION_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
ADDRESS = re.compile(r"(tcp|tls|inproc|ucx|ws|wss)://\S+")
#: an error must name at least one of these (a key of the spec, or the YAML/mapping it failed to be)
KEY_WORDS = ("regions", "tls", "address", "connect-timeout", "ca-file", "cert", "key", "top-level", "region name", "YAML", "mapping")

SETTINGS = settings(
    max_examples=250, deadline=None, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow]
)
FILE_SETTINGS = settings(SETTINGS, max_examples=120)
STATS: Counter = Counter()

# --- strategies ---------------------------------------------------------------------------
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.binary(max_size=10)
)
keys = st.text(max_size=12) | st.integers(-5, 5) | st.none() | st.booleans() | st.floats(allow_nan=False)
junk = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)

tricky_names = st.sampled_from(
    ["eu", "us-east", "a" * 63, "a" * 64, "EU", "-eu", "1eu", "eu\n", "eu ", " eu", "é", "eu_1", "", "eu\x00", "regions"]
)
valid_names = st.builds(lambda a, b: a + b, st.sampled_from("aeuz"), st.text(alphabet="abcxyz019-", max_size=10))
valid_addresses = st.builds(
    "{}://{}:{}".format,
    st.sampled_from(["tcp", "tls", "ws", "inproc"]),
    st.text(alphabet="abcxyz019.", min_size=1, max_size=12),
    st.integers(0, 70000),
)
region_names = valid_names | tricky_names | st.text(max_size=10) | keys
tricky_addresses = st.sampled_from(
    [
        "tcp://10.0.0.1:8786",
        "tls://h:1",
        "inproc://x",
        "tcp://",
        "tcp://h:1\n",
        "tcp://h 1",
        "http://h:1",
        "TCP://h:1",
        "tcp:/h:1",
        "",
        "tcp://h:1\x00",
        "ws://[::1]:8786",
    ]
)
addresses = tricky_addresses | valid_addresses | st.text(max_size=20) | junk
timeouts = (
    st.sampled_from(["10s", "500ms", "soon", "-5s", "0s", "1e400s", "inf", "nan", "", "10", "10 s", "1h"])
    | st.integers(min_value=-10, max_value=10**6)
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | junk
)
region_options = st.fixed_dictionaries(
    {"address": addresses},
    optional={"connect-timeout": timeouts, "adress": junk, 7: junk, None: junk},
)
region_values = addresses | region_options
regions = st.dictionaries(region_names, region_values, min_size=0, max_size=4) | junk


@st.composite
def tls_sections(draw: st.DrawFn, files: dict[str, str]) -> object:
    """Valid, partial, relative, missing and junk TLS sections."""
    paths = st.sampled_from(list(files.values()) + ["missing.pem", "", "/nonexistent/ca.pem", "ca.pem"]) | junk
    section = draw(
        st.fixed_dictionaries(
            {},
            optional={"ca-file": paths, "cert": paths, "key": paths, "extra": junk, 3: junk},
        )
    )
    return draw(st.sampled_from([section, dict(zip(("ca-file", "cert", "key"), files.values()))]) | junk)


@st.composite
def specs(draw: st.DrawFn, files: dict[str, str]) -> object:
    """A spec-shaped mapping with random, often malformed, parts."""
    spec: dict = {}
    if draw(st.booleans()):
        spec["regions"] = draw(regions)
    if draw(st.booleans()):
        spec["tls"] = draw(tls_sections(files))
    if draw(st.integers(0, 4)) == 0:
        spec[draw(keys)] = draw(junk)
    return spec


@st.composite
def near_valid_specs(draw: st.DrawFn, files: dict[str, str]) -> object:
    """A valid spec with at most one part replaced by something malformed."""
    names = draw(st.lists(valid_names, min_size=1, max_size=3, unique=True))
    spec: dict = {"regions": {}}
    for name in names:
        address = draw(valid_addresses)
        if draw(st.booleans()):
            spec["regions"][name] = address
        else:
            spec["regions"][name] = {"address": address, "connect-timeout": draw(st.sampled_from(["10s", 5, 0.5, "1m"]))}
    if any(str(v).startswith("tls") or (isinstance(v, dict) and v["address"].startswith("tls")) for v in spec["regions"].values()) or draw(st.booleans()):
        spec["tls"] = dict(files)
    mutation = draw(st.integers(0, 5))
    if mutation == 1:
        spec["regions"][draw(region_names)] = draw(region_values)
    elif mutation == 2:
        spec["tls"] = draw(tls_sections(files))
    elif mutation == 3:
        name = draw(st.sampled_from(names))
        spec["regions"][name] = {"address": "tcp://h:1", "connect-timeout": draw(timeouts)}
    elif mutation == 4:
        spec[draw(keys)] = draw(junk)
    return spec


# --- the property ---------------------------------------------------------------------------
def check(payload: object) -> str:
    """Load ``payload`` and check the loader's contract; return the outcome."""
    try:
        spec = load_spec(payload)  # type: ignore[arg-type]
    except SpecError as exc:
        message = str(exc)
        assert message.strip(), f"empty SpecError for {payload!r}"
        assert any(w in message for w in KEY_WORDS), f"SpecError names no key: {message!r} (payload {payload!r})"
        STATS["rejected"] += 1
        return "rejected"
    except FileNotFoundError as exc:
        assert isinstance(payload, (str, os.PathLike)) and not os.path.exists(payload), (
            f"FileNotFoundError for an existing path or a non-path payload: {payload!r}: {exc}"
        )
        assert str(exc).strip()
        STATS["not-found"] += 1
        return "not-found"
    except Exception as exc:  # noqa: BLE001 - this *is* the finding
        STATS["crashed"] += 1
        shown = repr(payload)
        if isinstance(payload, str) and os.path.isfile(payload):
            with open(payload, "rb") as f:
                shown += f" containing {f.read(300)!r}"
        raise AssertionError(
            f"load_spec raised {type(exc).__name__}: {exc} for payload {shown}; "
            "it must raise SpecError naming the key (or FileNotFoundError for a missing path)"
        ) from exc
    assert isinstance(spec, GridSpec)
    assert spec.regions, "a valid spec has at least one region"
    for name, region in spec.regions.items():
        assert REGION_NAME.fullmatch(name), f"accepted region name {name!r} from {payload!r}"
        assert ADDRESS.fullmatch(region.address), f"accepted address {region.address!r} from {payload!r}"
        if region.connect_timeout is not None:
            assert math.isfinite(region.connect_timeout) and region.connect_timeout > 0, (
                f"accepted connect-timeout {region.connect_timeout!r} from {payload!r}"
            )
        if region.address.startswith("tls://"):
            assert spec.tls is not None
    if spec.tls is not None:
        for path in (spec.tls.ca_file, spec.tls.cert, spec.tls.key):
            assert os.path.isfile(path), f"accepted TLS path {path!r} that is not a file"
    STATS["accepted"] += 1
    return "accepted"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tls")
    out = {}
    for k in ("ca-file", "cert", "key"):
        p = d / f"{k}.pem"
        p.write_text("-----BEGIN CERTIFICATE-----\n")
        out[k] = str(p)
    return out


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("specs"))


@SETTINGS
@given(payload=junk)
def test_random_payloads(payload: object) -> None:
    check(payload)


@SETTINGS
@given(data=st.data())
def test_spec_shaped_payloads(tls_files: dict[str, str], data: st.DataObject) -> None:
    check(data.draw(specs(tls_files)))


@SETTINGS
@given(data=st.data())
def test_nearly_valid_payloads(tls_files: dict[str, str], data: st.DataObject) -> None:
    check(data.draw(near_valid_specs(tls_files)))


@FILE_SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200))
@example(text="regions:\n\teu: x")
def test_yaml_files(spec_dir: str, text: str | bytes) -> None:
    path = os.path.join(spec_dir, "fuzz.yaml")
    with open(path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    check(path)


@FILE_SETTINGS
@given(data=st.data())
def test_spec_files_with_relative_tls_paths(tls_files: dict[str, str], spec_dir: str, data: st.DataObject) -> None:
    relative = {k: os.path.basename(v) for k, v in tls_files.items()}
    spec = data.draw(specs(relative) | near_valid_specs(relative))
    # the TLS files live next to the spec: relative paths resolve against its directory
    folder = os.path.dirname(next(iter(tls_files.values())))
    path = os.path.join(folder, "grid.yaml")
    try:
        text = yaml.safe_dump(spec)
    except yaml.YAMLError:
        return  # not representable in YAML; the dict itself is covered above
    with open(path, "w") as f:
        f.write(text)
    check(path)


@SETTINGS
@given(path=st.text(max_size=40))
def test_paths_that_may_not_exist(spec_dir: str, path: str) -> None:
    check(os.path.join(spec_dir, "nope", path))


def test_directory_instead_of_a_file(spec_dir: str) -> None:
    check(spec_dir)


# --- findings, one per line: each must raise SpecError naming the key ---------------------------
KNOWN = {
    "mixed-type top-level keys (sorted() TypeError)": {1: "x", "a": 2},
    "mixed-type region options (sorted() TypeError)": {"regions": {"eu": {"address": "tcp://a:1", 1: 2, "b": 3}}},
    "mixed-type tls keys (sorted() TypeError)": {"regions": {"eu": "tcp://a:1"}, "tls": {1: "a", "cert": "b"}},
    "connect-timeout beyond float range (OverflowError)": {"regions": {"eu": {"address": "tcp://a:1", "connect-timeout": 10**400}}},
    "connect-timeout a mapping (AttributeError)": {"regions": {"eu": {"address": "tcp://a:1", "connect-timeout": {}}}},
    "connect-timeout an empty string (IndexError)": {"regions": {"eu": {"address": "tcp://a:1", "connect-timeout": ""}}},
    "connect-timeout '1e400s' (OverflowError)": {"regions": {"eu": {"address": "tcp://a:1", "connect-timeout": "1e400s"}}},
    "region name with a trailing newline (accepted)": {"regions": {"eu\n": "tcp://a:1"}},
    "address with a trailing newline (accepted)": {"regions": {"eu": "tcp://a:1\n"}},
}


@pytest.mark.parametrize("payload", list(KNOWN.values()), ids=list(KNOWN))
def test_known_malformed_specs_are_rejected_with_spec_error(payload: object) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(payload)  # type: ignore[arg-type]
    assert any(w in str(info.value) for w in KEY_WORDS), str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"regions: {eu: \xff\xfe}", ("[" * 5000 + "]" * 5000).encode()],
    ids=["not UTF-8 (UnicodeDecodeError)", "nested 5000 deep (RecursionError)"],
)
def test_known_malformed_files_are_rejected_with_spec_error(spec_dir: str, content: bytes) -> None:
    path = os.path.join(spec_dir, "known.yaml")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(SpecError, match="YAML|UTF-8|nested"):
        load_spec(path)


def test_report_counts() -> None:
    """Runs last in this module: prints how many payloads each outcome had (for docs/reliability.md)."""
    print(f"\nload_spec fuzz outcomes: {dict(STATS)}")
