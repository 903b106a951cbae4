"""Pickle-free checks of messages from untrusted peers (grid/protocol/payload.py, messages.py).

The oracle of every refusal: a payload whose unpickling would create a marker
file; the check must refuse it and the marker must not exist afterwards.
"""

from __future__ import annotations

import enum
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from distributed.protocol import Serialize, ToPickle, dumps, loads, serialize
from distributed.protocol.serialize import Serialized

from grid.protocol.messages import ProtocolViolation, check_fields, not_screen_topics, screen_topics_only
from grid.protocol.payload import UntrustedPayload, check_frames, check_plain_pickle, named_class


class Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Colour(enum.Enum):
    RED = 1


PLAIN = [None, 1, 2.5, "text", b"bytes", (1, "a"), [1, [2, 3]], {"k": {"n": 1}}, {1, 2}, True]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_data_passes_also_when_pickled(value):
    check_frames(dumps({"op": "x", "v": value}))
    check_frames(dumps({"op": "x", "v": Serialized(*serialize(value, serializers=["pickle"]))}))
    check_plain_pickle(pickle.dumps(value, protocol=5))


@pytest.mark.parametrize(
    "value",
    [np.arange(10.0), np.ones((3, 4), dtype=np.float32), np.arange(5, dtype=np.int64)[::2], b"x" * 100,
     (np.ones(3), np.zeros(3), None), [np.ones(2), b"a"], sp.csr_matrix(np.eye(4)), sp.csc_matrix(np.eye(3))],
    ids=["f8", "f4-2d", "strided", "bytes", "partition-tuple", "list", "csr", "csc"],
)
def test_numeric_data_passes_and_decodes_the_same(value):
    frames = dumps({"op": "x", "v": Serialize(value)})
    check_frames(frames)
    out = loads(frames)["v"]
    if sp.issparse(value):
        assert (out != value).nnz == 0
    elif isinstance(value, (tuple, list)):
        assert len(out) == len(value)
    else:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(value))


def _refused(frames, tmp_path, what: str, **kwargs) -> None:
    with pytest.raises(UntrustedPayload, match=what):
        check_frames(frames, **kwargs)
    assert not os.listdir(tmp_path), "the check unpickled something"


def test_pickled_objects_are_refused_everywhere(tmp_path):
    marker = str(tmp_path / "MARKER")
    _refused(dumps({"op": "x", "v": ToPickle(Marker(marker))}), tmp_path, "pickled object")
    _refused(dumps([{"op": "keep-alive", "deep": [{"x": ToPickle(Marker(marker))}]}]), tmp_path, "pickled object")
    # ... also where a reader would keep serialized payloads opaque
    _refused(dumps({"v": ToPickle(Marker(marker))}), tmp_path, "pickled object", opaque_ok=True)


def test_serialized_code_is_refused_unless_the_reader_keeps_it_opaque(tmp_path):
    marker = str(tmp_path / "MARKER")
    evil = Serialized(*serialize(Marker(marker)))
    _refused(dumps({"v": evil}), tmp_path, "not plain data")
    _refused(dumps({"v": Serialize((np.ones(2), Marker(marker)))}), tmp_path, "not plain data")
    _refused(dumps({"v": Serialize(np.array(["a", None], dtype=object))}), tmp_path, "object dtype")
    check_frames(dumps({"v": evil}), opaque_ok=True)  # kept serialized and handed on, never read here
    assert not os.listdir(tmp_path)


def test_a_dask_header_naming_another_class_is_refused(tmp_path):
    header, frames = serialize(np.arange(3.0))
    header["type-serialized"] = pickle.dumps(os.system)
    _refused(dumps({"v": Serialized(header, frames)}), tmp_path, "class posix.system|class os.system")
    header, frames = serialize(np.arange(3.0))
    header["sub-header"]["dtype"] = (True, pickle.dumps(Marker(str(tmp_path / "M"))))
    _refused(dumps({"v": Serialized(header, frames)}), tmp_path, "custom")


def test_enums_and_garbage_are_refused(tmp_path):
    _refused(dumps({"v": Colour.RED}), tmp_path, "Enum")
    _refused([b"\xc1\xff not msgpack"], tmp_path, "not valid msgpack")
    _refused([], tmp_path, "empty")


def test_named_class_reads_a_class_reference_without_unpickling(tmp_path):
    assert named_class(pickle.dumps(np.ndarray)) == ("numpy", "ndarray")
    assert named_class(pickle.dumps(bytes, protocol=4)) == ("builtins", "bytes")
    with pytest.raises(UntrustedPayload):
        named_class(pickle.dumps(Marker(str(tmp_path / "M"))))
    with pytest.raises(UntrustedPayload):
        named_class(b"not a pickle")
    assert not os.listdir(tmp_path)


def test_message_fields_are_checked_by_type_and_by_rule():
    check_fields("grid_job", {"job_id": "eu-1"}, {"job_id": (str,)})
    with pytest.raises(ProtocolViolation, match="field 'job_id' is a int"):
        check_fields("grid_job", {"job_id": 1}, {"job_id": (str,)})
    screen_topics_only("subscribe-topic", "print")
    with pytest.raises(ProtocolViolation, match="admin"):
        screen_topics_only("subscribe-topic", "all")
    not_screen_topics("log-event", ["grid", "node"])
    with pytest.raises(ProtocolViolation, match="clients print"):
        not_screen_topics("log-event", ["print"])


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_split_and_compressed_frames_are_checked_as_the_reader_merges_them(compression, tmp_path):
    """distributed splits large frames (``distributed.comm.shard``) and may compress them: a
    header's frame counts then refer to the merged frames."""
    rng = np.random.default_rng(0)
    partition = (rng.standard_normal((40_000, 8)), rng.integers(0, 2, 40_000), None)  # 2.5 MB of X
    context = {"compression": compression} if compression else None
    frames = dumps({"op": "scatter", "data": {"k": Serialize(partition)}}, frame_split_size=2**18, context=context)
    assert len(frames) > 6  # X was split into several frames
    check_frames(frames)
    out = loads(frames)["data"]["k"]
    np.testing.assert_array_equal(out[0], partition[0])
    evil = (rng.standard_normal((40_000, 8)), Marker(str(tmp_path / "MARKER")))
    frames = dumps({"op": "scatter", "data": {"k": Serialize(evil)}}, frame_split_size=2**18, context=context)
    _refused(frames, tmp_path, "not plain data")
