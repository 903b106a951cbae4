"""The scheduler's state directory: what a region remembers across restarts.

``grid.scheduler.state-dir`` (or ``grid scheduler --state-dir PATH``) names a
directory; each region keeps its files under ``<state-dir>/<region>/``::

    jobs/<job id>.json          job records (no blobs): request, placement, status, history
    checkpoints/<job id>.bin    the last completed round of a running job
    results/<job id>.bin        the final state of a finished job (grid wire format)
    datasets/<name>.json        recipes of jobs.data.Files datasets (paths and reader options)
    quarantine.json             quarantined nodes
    <name>.json                 anything else saved with :meth:`StateDir.save_json`

Every file is written atomically: a temporary file in the same directory is
written and fsynced, renamed over the old one with ``os.replace``, and the
directory is fsynced, so a reader (or a scheduler restarted after a crash or
a power cut) sees the old file or the new one, never half of one. Reading
never crashes the scheduler: a missing file is ``None``, a corrupt one is
logged and ignored.

Nothing here is pickled. Records are JSON; checkpoints and results use the
grid wire format (:mod:`grid.wire`), raw numeric buffers behind a JSON header.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from grid import wire
from grid.scheduler.registry import STATUSES, JobRecord

logger = logging.getLogger("grid.scheduler.state")

#: format version written into every record and checkpoint
VERSION = 1

#: JobRecord fields stored in ``jobs/<id>.json`` (the result blob lives in ``results/``)
_RECORD_FIELDS = (
    "id", "owner", "home", "request", "placement", "status", "submitted",
    "started", "finished", "rounds_done", "error", "history",
)


@dataclass
class Checkpoint:
    """The last completed round of a job.

    Attributes
    ----------
    state : bytes
        The global state after that round, exactly as the driver sent it to
        the nodes (grid wire format).
    rounds_done : int
        Rounds completed; the next round to run is ``rounds_done``.
    history : list of dict
        One entry per completed round, as ``JobRecord.history``.
    """

    state: bytes
    rounds_done: int
    history: list[dict]


def _filename(name: str, suffix: str) -> str:
    """A file name for ``name`` that stays inside its directory.

    Dataset names come from clients: quoting turns ``/`` (and anything but
    letters, digits and ``_.-~``) into ``%XX``, and the suffix makes ``..``
    a plain file name.
    """
    return quote(str(name), safe="") + suffix


class StateDir:
    """One region's files in the scheduler's state directory.

    Parameters
    ----------
    root : str or path
        ``grid.scheduler.state-dir``; created if missing.
    region : str
        The region whose files live in ``root/region``.

    Raises
    ------
    OSError
        If the directory cannot be created or written, with the path and the
        config key in the message (a scheduler told to be durable must not
        start silently without it).
    """

    def __init__(self, root: str | os.PathLike, region: str) -> None:
        self.root = Path(root)
        self.region = region
        self.path = self.root / _filename(region, "")
        try:
            for sub in ("jobs", "checkpoints", "results", "datasets"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OSError(
                f"state directory {self.path} is not writable ({exc.strerror or exc}); fix its permissions "
                "or point grid.scheduler.state-dir (grid scheduler --state-dir) elsewhere"
            ) from exc

    def __repr__(self) -> str:
        return f"<StateDir {self.path}>"

    # --- files -------------------------------------------------------------------------
    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Replace the file ``relpath`` (relative to the region's directory) atomically.

        On any failure the old file is left as it was and the temporary file
        is removed; the error propagates.
        """
        target = self.path / relpath
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(target.parent)  # ... and the rename itself survives a power cut

    def read_bytes(self, relpath: str) -> bytes | None:
        """The file's bytes, or None if it is missing or unreadable (logged)."""
        target = self.path / relpath
        try:
            return target.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("state file %s cannot be read (%s); ignoring it", target, exc)
            return None

    def remove(self, relpath: str) -> None:
        """Delete a file if it exists."""
        try:
            (self.path / relpath).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("state file %s cannot be removed (%s)", self.path / relpath, exc)

    def save_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as ``<region dir>/<name>.json``, atomically.

        For small tables other parts of the scheduler keep across restarts
        (the quarantine, a node reliability table ``save_json("reliability",
        ...)``). ``obj`` must be JSON-serialisable (dicts with string keys,
        lists, numbers, strings, booleans, None).

        Raises
        ------
        TypeError
            If ``obj`` is not JSON-serialisable (nothing is written).
        """
        self.write_bytes(_filename(name, ".json"), json.dumps(obj).encode())

    def load_json(self, name: str, default: Any = None) -> Any:
        """What :meth:`save_json` wrote under ``name``; ``default`` if missing or corrupt (logged)."""
        return self._load_json(_filename(name, ".json"), default)

    def _load_json(self, relpath: str, default: Any = None) -> Any:
        data = self.read_bytes(relpath)
        if data is None:
            return default
        try:
            return json.loads(data)
        except ValueError as exc:
            logger.warning("state file %s is corrupt (%s); ignoring it", self.path / relpath, exc)
            return default

    def _listing(self, sub: str, suffix: str) -> list[str]:
        """Names (unquoted) of the ``suffix`` files in ``sub`` (temporary files end in ``.tmp``)."""
        try:
            files = os.listdir(self.path / sub)
        except OSError as exc:
            logger.warning("state directory %s cannot be listed (%s)", self.path / sub, exc)
            return []
        return sorted(unquote(f[: -len(suffix)]) for f in files if f.endswith(suffix))

    # --- jobs --------------------------------------------------------------------------
    def save_job(self, record: JobRecord) -> None:
        """Write a job's record (everything but its result blob).

        Raises
        ------
        TypeError
            If the job's request holds something JSON cannot carry.
        """
        data = {"version": VERSION, **{f: getattr(record, f) for f in _RECORD_FIELDS}}
        self.write_bytes(f"jobs/{_filename(record.id, '.json')}", json.dumps(data).encode())

    def load_jobs(self) -> list[JobRecord]:
        """Every readable job record, oldest submission first; bad ones are logged and skipped."""
        out = []
        for job_id in self._listing("jobs", ".json"):
            data = self._load_json(f"jobs/{_filename(job_id, '.json')}")
            if data is None:
                continue
            try:
                if data.get("version") != VERSION:
                    raise ValueError(f"format version {data.get('version')!r}, this scheduler reads {VERSION}")
                record = JobRecord(**{f: data[f] for f in _RECORD_FIELDS})
                if record.status not in STATUSES or record.id != job_id:
                    raise ValueError(f"status {record.status!r} / id {record.id!r} do not fit")
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                logger.warning("job record %s is not valid (%s); ignoring it", job_id, exc)
                continue
            out.append(record)
        return sorted(out, key=lambda r: r.submitted)

    def forget_job(self, job_id: str) -> None:
        """Delete a job's record, checkpoint and result."""
        self.remove(f"jobs/{_filename(job_id, '.json')}")
        self.remove(f"checkpoints/{_filename(job_id, '.bin')}")
        self.remove(f"results/{_filename(job_id, '.bin')}")

    def save_checkpoint(self, job_id: str, checkpoint: Checkpoint) -> None:
        """Write the job's last completed round (replacing the one before).

        The state blob and the history travel as byte arrays of one wire
        blob, so the state is kept bit for bit and a long history is not
        bound by the wire header's size limit.
        """
        blob = wire.encode(
            {
                "state": np.frombuffer(checkpoint.state, dtype=np.uint8),
                "history": np.frombuffer(json.dumps(checkpoint.history).encode(), dtype=np.uint8),
            },
            meta={"version": VERSION, "job": job_id, "rounds_done": int(checkpoint.rounds_done)},
        )
        self.write_bytes(f"checkpoints/{_filename(job_id, '.bin')}", blob)

    def load_checkpoint(self, job_id: str) -> Checkpoint | None:
        """The job's last checkpoint, or None if missing or corrupt (logged)."""
        relpath = f"checkpoints/{_filename(job_id, '.bin')}"
        blob = self.read_bytes(relpath)
        if blob is None:
            return None
        try:
            arrays, meta = wire.decode(blob)
            if meta.get("version") != VERSION or meta.get("job") != job_id:
                raise ValueError(f"version {meta.get('version')!r} / job {meta.get('job')!r} do not fit")
            state = np.asarray(arrays["state"]).tobytes()
            wire.decode(state)  # the state itself must be a well-formed blob
            history = json.loads(np.asarray(arrays["history"]).tobytes())
            rounds_done = int(meta["rounds_done"])
            if not isinstance(history, list) or len(history) != rounds_done:
                raise ValueError(f"{len(history)} history entries for {rounds_done} rounds")
        except (KeyError, TypeError, ValueError) as exc:  # WireError is a ValueError
            logger.warning("checkpoint %s is corrupt (%s); ignoring it", self.path / relpath, exc)
            return None
        return Checkpoint(state=state, rounds_done=rounds_done, history=history)

    def save_result(self, job_id: str, blob: bytes) -> None:
        """Keep a finished job's final state (the wire blob ``grid_result`` sends)."""
        self.write_bytes(f"results/{_filename(job_id, '.bin')}", bytes(blob))

    def load_result(self, job_id: str) -> bytes | None:
        """A finished job's final state, or None if missing or corrupt (logged)."""
        relpath = f"results/{_filename(job_id, '.bin')}"
        blob = self.read_bytes(relpath)
        if blob is None:
            return None
        try:
            wire.decode(blob)
        except ValueError as exc:
            logger.warning("result %s is corrupt (%s); ignoring it", self.path / relpath, exc)
            return None
        return blob

    def remove_checkpoint(self, job_id: str) -> None:
        self.remove(f"checkpoints/{_filename(job_id, '.bin')}")

    # --- Files datasets ----------------------------------------------------------------
    def save_dataset(self, recipe: dict) -> None:
        """Write how a Files dataset is read (``name``, ``paths``, ``indices``, ``options``, ...)."""
        self.write_bytes(f"datasets/{_filename(recipe['name'], '.json')}", json.dumps({"version": VERSION, **recipe}).encode())

    def load_datasets(self) -> list[dict]:
        """Every readable Files recipe; bad ones are logged and skipped."""
        out = []
        for name in self._listing("datasets", ".json"):
            data = self._load_json(f"datasets/{_filename(name, '.json')}")
            if not isinstance(data, dict) or data.get("version") != VERSION or data.get("name") != name:
                if data is not None:
                    logger.warning("dataset recipe %s is not valid; ignoring it", name)
                continue
            if not (isinstance(data.get("paths"), list) and isinstance(data.get("indices"), list)):
                logger.warning("dataset recipe %s lacks paths or indices; ignoring it", name)
                continue
            out.append({k: v for k, v in data.items() if k != "version"})
        return out

    def forget_dataset(self, name: str) -> None:
        self.remove(f"datasets/{_filename(name, '.json')}")


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename in it is durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. some network file systems refuse fsync on directories
    finally:
        os.close(fd)
