import numpy as np
import pytest

from grid import wire


def test_round_trip_keeps_arrays_scalars_and_meta():
    arrays = {
        "coef_": np.arange(6, dtype=np.float64).reshape(2, 3),
        "classes_": np.array(["a", "bb"]),
        "t_": 3.5,
        "n_features_in_": 3,
        "flag": np.bool_(True),
    }
    blob = wire.encode(arrays, {"samples": 10.0})
    out, meta = wire.decode(blob)
    assert meta == {"samples": 10.0}
    np.testing.assert_array_equal(out["coef_"], arrays["coef_"])
    np.testing.assert_array_equal(out["classes_"], arrays["classes_"])
    assert out["t_"] == 3.5 and isinstance(out["t_"], float)
    assert out["n_features_in_"] == 3 and isinstance(out["n_features_in_"], int)
    assert np.asarray(out["coef_"]).flags.writeable


def test_zero_dim_array_stays_zero_dim():
    out, _ = wire.decode(wire.encode({"x": np.float64(2.0)}))
    assert np.ndim(out["x"]) == 0


def test_object_arrays_cannot_be_encoded():
    with pytest.raises(wire.WireError, match="dtype object"):
        wire.encode({"x": np.array([object()], dtype=object)})


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"nope", "bad magic"),
        (b"DGRID1", "truncated"),
        (wire.MAGIC + (10**9).to_bytes(4, "little"), "out of range"),
        (b"\x80\x04pickle", "bad magic"),
        ("text", "must be bytes"),
    ],
)
def test_malformed_blobs_are_refused(blob, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode(blob)


def test_trailing_bytes_and_size_limit():
    blob = wire.encode({"x": np.zeros(4)})
    with pytest.raises(wire.WireError, match="trailing"):
        wire.decode(blob + b"\x00")
    with pytest.raises(wire.WireError, match="exceeds the limit"):
        wire.decode(blob, max_bytes=10)


def test_header_cannot_smuggle_object_dtype():
    import json
    import struct

    header = json.dumps({"arrays": [{"name": "x", "dtype": "|O", "shape": [1], "nbytes": 8}], "meta": {}}).encode()
    blob = wire.MAGIC + struct.pack("<I", len(header)) + header + b"\x00" * 8
    with pytest.raises(wire.WireError, match="forbidden dtype"):
        wire.decode(blob)


@pytest.mark.parametrize("shape", [[2**62, 4], [2**32, 2**32, 1], [2**63 - 1, 2**63 - 1]])
def test_a_shape_whose_size_overflows_is_refused_as_a_bad_update(shape):
    """A node may claim a shape whose element count wraps around in 64 bits to the bytes it sent."""
    import json
    import struct

    header = json.dumps({"arrays": [{"name": "x", "dtype": "<f8", "shape": shape, "nbytes": 0}], "meta": {}}).encode()
    blob = wire.MAGIC + struct.pack("<I", len(header)) + header
    with pytest.raises(wire.WireError, match="disagree"):
        wire.decode(blob)


def test_expected_layout_is_enforced():
    good = {"coef_": np.zeros((1, 3)), "t_": 1.0}
    expected = wire.layout(good)
    wire.decode(wire.encode(good), expected=expected)
    with pytest.raises(wire.WireError, match="shape"):
        wire.decode(wire.encode({"coef_": np.zeros((1, 4)), "t_": 1.0}), expected=expected)
    with pytest.raises(wire.WireError, match="missing"):
        wire.decode(wire.encode({"coef_": np.zeros((1, 3))}), expected=expected)
