"""The scheduler's state directory: atomic writes, tolerant reads, what round-trips."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from grid import wire
from grid.scheduler.quarantine import Quarantine, QuarantineRecord
from grid.scheduler.registry import JobRecord, JobRegistry
from grid.scheduler.state import Checkpoint, StateDir


def _record(job_id: str = "eu-0123456789ab", status: str = "running") -> JobRecord:
    return JobRecord(
        id=job_id,
        owner="ana@host",
        home="eu",
        request={"kind": "partial_fit", "rounds": 5, "mode": "average", "estimator": {"class": "sklearn.linear_model:SGDClassifier", "params": {}}},
        placement={"eu": {"address": "tcp://127.0.0.1:8786", "dataset": "job-abc", "job_owned": True}},
        status=status,
        rounds_done=2,
        history=[{"round": 1, "loss": 0.5}, {"round": 2, "loss": float("nan")}],
    )


def test_atomic_write_leaves_the_old_file_intact_when_the_write_fails(tmp_path, monkeypatch):
    state = StateDir(tmp_path, "eu")
    state.save_json("reliability", {"n1": 3})

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        state.save_json("reliability", {"n1": 4})
    monkeypatch.undo()
    assert state.load_json("reliability") == {"n1": 3}
    assert [f for f in os.listdir(state.path) if f.endswith(".tmp")] == []  # no temporary file left behind


def test_unserialisable_json_writes_nothing(tmp_path):
    state = StateDir(tmp_path, "eu")
    with pytest.raises(TypeError):
        state.save_json("table", {"x": object()})
    assert state.load_json("table", default="missing") == "missing"
    assert "table.json" not in os.listdir(state.path)


def test_corrupt_and_missing_files_are_logged_and_ignored(tmp_path, caplog):
    state = StateDir(tmp_path, "eu")
    good = _record("eu-aaaaaaaaaaaa")
    state.save_job(good)
    (state.path / "jobs" / "eu-bbbbbbbbbbbb.json").write_bytes(b"{not json")
    (state.path / "jobs" / "eu-cccccccccccc.json").write_text('{"version": 1, "id": "eu-cccccccccccc"}')  # fields missing
    (state.path / "checkpoints" / "eu-aaaaaaaaaaaa.bin").write_bytes(b"DGRID1 truncated")
    (state.path / "results" / "eu-aaaaaaaaaaaa.bin").write_bytes(b"\x00" * 10)
    (state.path / "datasets" / "job-x.json").write_bytes(b"\xff\xfe")
    (state.path / "quarantine.json").write_bytes(b"[1, 2")
    with caplog.at_level(logging.WARNING, logger="grid.scheduler.state"):
        jobs = state.load_jobs()
        assert state.load_checkpoint("eu-aaaaaaaaaaaa") is None
        assert state.load_result("eu-aaaaaaaaaaaa") is None
        assert state.load_datasets() == []
        assert state.load_json("quarantine") is None
    assert [j.id for j in jobs] == ["eu-aaaaaaaaaaaa"]
    text = caplog.text
    for name in ("eu-bbbbbbbbbbbb", "eu-cccccccccccc", "checkpoints", "results", "job-x", "quarantine.json"):
        assert name in text, (name, text)
    # missing files: no warning, just nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="grid.scheduler.state"):
        assert state.load_checkpoint("eu-dddddddddddd") is None
        assert state.load_result("eu-dddddddddddd") is None
        assert state.load_json("reliability", default={}) == {}
    assert caplog.text == ""


def test_records_checkpoints_results_and_recipes_round_trip(tmp_path):
    state = StateDir(tmp_path, "eu")
    record = _record()
    state.save_job(record)
    (loaded,) = StateDir(tmp_path, "eu").load_jobs()
    assert loaded.request == record.request and loaded.placement == record.placement
    assert loaded.rounds_done == 2 and loaded.status == "running" and loaded.result is None
    assert loaded.history[0] == {"round": 1, "loss": 0.5} and np.isnan(loaded.history[1]["loss"])

    blob = wire.encode({"coef_": np.arange(6.0).reshape(2, 3), "t_": 7.0})
    history = [{"round": i + 1, "loss": 1.0 / (i + 1)} for i in range(3)]
    state.save_checkpoint(record.id, Checkpoint(state=blob, rounds_done=3, history=history))
    cp = state.load_checkpoint(record.id)
    assert cp is not None and cp.state == blob and cp.rounds_done == 3 and cp.history == history  # bit for bit

    state.save_result(record.id, blob)
    assert state.load_result(record.id) == blob

    recipe = {"name": "../../etc/passwd", "paths": ["/d/a.npz"], "indices": [0], "options": {"target": None}, "owner": "", "job_owned": False}
    state.save_dataset(recipe)
    assert state.load_datasets() == [recipe]
    assert not (tmp_path / "etc").exists()  # a client's dataset name never leaves the directory
    state.forget_dataset(recipe["name"])
    assert state.load_datasets() == []

    state.forget_job(record.id)
    assert state.load_jobs() == [] and state.load_checkpoint(record.id) is None and state.load_result(record.id) is None


def test_a_long_history_fits_in_a_checkpoint(tmp_path):
    """The wire header is limited to 1 MiB; the history travels as a buffer instead."""
    state = StateDir(tmp_path, "eu")
    history = [{"round": i + 1, "loss": 0.1, "score": 0.9, "samples": 1000.0, "seconds": 0.02} for i in range(20000)]
    blob = wire.encode({"w": np.zeros(3)})
    state.save_checkpoint("eu-0123456789ab", Checkpoint(state=blob, rounds_done=len(history), history=history))
    cp = state.load_checkpoint("eu-0123456789ab")
    assert cp is not None and cp.rounds_done == 20000 and cp.history[-1]["round"] == 20000


def test_registry_trim_deletes_the_files_of_forgotten_jobs(tmp_path):
    state = StateDir(tmp_path, "eu")
    registry = JobRegistry("eu", keep_finished=2)
    registry.on_forget = state.forget_job
    results = {}
    for i in range(4):
        record = _record(f"eu-{i:012d}", status="done")
        state.save_job(record)
        results[record.id] = wire.encode({"w": np.full(1, float(i))})
        state.save_result(record.id, results[record.id])
        registry.add(record)
    assert sorted(j.id for j in state.load_jobs()) == ["eu-000000000002", "eu-000000000003"]
    assert state.load_result("eu-000000000000") is None and state.load_result("eu-000000000001") is None
    for kept in ("eu-000000000002", "eu-000000000003"):
        assert state.load_result(kept) == results[kept]  # each kept job keeps its own result


class _Access:
    def node_name(self, address: str) -> None:
        return None


def test_quarantine_round_trips_and_skips_bad_records(tmp_path, caplog):
    state = StateDir(tmp_path, "eu")
    q = Quarantine(scheduler=None, access=_Access(), store=state)
    q.records["n1"] = QuarantineRecord("n1", "tcp://10.0.0.1:1234", "sent an invalid update", {"job": "eu-1", "round": 3})
    q.save()
    data = state.load_json(Quarantine.STATE_NAME)
    data["records"].append({"identity": "n2"})  # no reason: skipped
    again = Quarantine(scheduler=None, access=_Access())
    with caplog.at_level(logging.WARNING, logger="grid.quarantine"):
        assert again.load(data) == 1
    assert "n1" in again and "n2" not in again
    assert again.records["n1"].to_dict() == q.records["n1"].to_dict()
    assert "not valid" in caplog.text
    assert Quarantine(scheduler=None, access=_Access()).load(None) == 0


def test_an_unusable_state_dir_is_refused_with_the_fix(tmp_path):
    (tmp_path / "state").write_text("a file, not a directory")
    with pytest.raises(OSError, match="grid.scheduler.state-dir"):
        StateDir(tmp_path / "state", "eu")
