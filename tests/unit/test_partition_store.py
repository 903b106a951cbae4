"""The region's partition store: files, grants, chunked reads, and which dial-out node fetches what."""

from __future__ import annotations

import numpy as np
import pytest
from distributed.protocol.serialize import merge_and_deserialize

from grid.protocol.nodes import split_partition
from grid.scheduler.store import PartitionStore, StoreError, plan_copies


@pytest.fixture
def store(tmp_path):
    s = PartitionStore(tmp_path / "store", chunk_bytes=100)
    yield s
    s.close()


def _read_all(store: PartitionStore, key: str, token: str) -> bytes:
    out = b""
    while True:
        reply = store.read(key, token, len(out))
        out += reply["data"]
        assert len(reply["data"]) <= 100
        if len(out) == reply["total"]:
            return out


def test_a_granted_node_reads_the_partition_back_in_chunks(store) -> None:
    X, y = np.arange(120.0).reshape(40, 3), np.arange(40) % 2
    store.put("grid-part-d-0", (X, y, None))
    token = store.grant("tcp://n1:1", "grid-part-d-0")
    header, frames = split_partition(_read_all(store, "grid-part-d-0", token))
    X2, y2, w2 = merge_and_deserialize(header, frames, deserializers=("dask", "pickle", "msgpack"))
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert w2 is None
    assert store.grant("tcp://n1:1", "grid-part-d-0") == token  # one token per node and partition
    assert store.held_by("grid-part-d-0") == {"tcp://n1:1"}


def test_a_token_reads_only_its_own_partition(store) -> None:
    store.put("grid-part-d-0", np.zeros(3))
    store.put("grid-part-d-1", np.ones(3))
    token = store.grant("tcp://n1:1", "grid-part-d-0")
    with pytest.raises(StoreError, match="a node reads only the partitions its scheduler gave it"):
        store.read("grid-part-d-1", token, 0)
    with pytest.raises(StoreError):
        store.read("grid-part-d-0", "f" * 32, 0)
    with pytest.raises(ValueError, match="outside the partition"):
        store.read("grid-part-d-0", token, 10**9)


def test_tokens_die_with_their_node_and_with_the_dataset(store) -> None:
    store.put("grid-part-d-0", np.zeros(3))
    token = store.grant("tcp://n1:1", "grid-part-d-0")
    assert store.remove_node("tcp://n1:1") == ["grid-part-d-0"]
    with pytest.raises(StoreError):
        store.read("grid-part-d-0", token, 0)
    token = store.grant("tcp://n2:1", "grid-part-d-0")
    assert store.drop(["grid-part-d-0"]) == {"grid-part-d-0": {"tcp://n2:1"}}
    assert not store.has("grid-part-d-0") and not list(store.directory.glob("*.part"))
    with pytest.raises(StoreError):
        store.read("grid-part-d-0", token, 0)


def test_a_new_store_removes_what_a_previous_run_left(tmp_path) -> None:
    first = PartitionStore(tmp_path / "s", chunk_bytes=10)
    first.put("grid-part-d-0", np.zeros(3))
    second = PartitionStore(tmp_path / "s", chunk_bytes=10)
    assert not list(second.directory.glob("*.part")) and not second.has("grid-part-d-0")


def test_a_temporary_store_is_removed_when_closed() -> None:
    s = PartitionStore(None, chunk_bytes=10)
    s.put("grid-part-d-0", np.zeros(3))
    directory = s.directory
    s.close()
    assert not directory.exists()


def test_bad_store_settings_and_bytes_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="store-chunk must be at least 1 byte"):
        PartitionStore(tmp_path, chunk_bytes=0)
    with pytest.raises(ValueError, match="no valid head|does not match its head"):
        split_partition(b"\x05\x00\x00\x00\x00\x00\x00\x00abc")


def test_missing_copies_go_to_the_emptiest_dial_out_nodes() -> None:
    keys = ["k0", "k1"]
    holders = {"k0": {"open-1"}, "k1": set()}
    load = {"a": 0, "b": 1}
    plan = plan_copies(keys, holders, ["a", "b"], replicas=2, load=load)
    assert sorted(plan) == [("a", "k0"), ("a", "k1"), ("b", "k1")]


def test_a_node_that_joins_takes_partitions_from_the_fullest() -> None:
    keys = [f"k{i}" for i in range(6)]
    holders = {k: {"a", "b"} for k in keys}
    load = {"a": 6, "b": 6, "c": 0}
    plan = plan_copies(keys, holders, ["a", "b", "c"], replicas=2, load=load)
    assert plan and all(node == "c" for node, _ in plan)
    assert load == {"a": 4, "b": 4, "c": 4}  # it stops once moving another would not lower the fullest


def test_nothing_to_do_on_a_balanced_region() -> None:
    holders = {"k0": {"a", "b"}, "k1": {"a", "b"}}
    assert plan_copies(["k0", "k1"], holders, ["a", "b"], replicas=2, load={"a": 2, "b": 2}) == []
    assert plan_copies(["k0"], {"k0": set()}, [], replicas=2, load={}) == []

