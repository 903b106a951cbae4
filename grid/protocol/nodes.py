"""What a region's scheduler and its nodes say to each other about grid work.

Two transports carry the same round request and the same answer:

* **open nodes** (private workers the scheduler can reach) serve the RPC
  handler :data:`UPDATE_OP`, which the scheduler calls by dialing the node;
* **dial-out nodes** (community machines behind NAT or a firewall) are never
  dialed. Once such a node has registered, the scheduler offers it a *grid
  channel* on the node's worker stream (:data:`CHANNEL_OFFER_OP`, with a
  token made for this registration); the node opens a connection of its own
  to the scheduler and presents it (:data:`CHANNEL_OP`, the connection's
  first message). The scheduler then sends :data:`CALL_OP` and
  :data:`DROP_OP` on that channel, and the node answers each call with
  :data:`REPLY_OP` on it. For each partition the node does not hold yet, a
  call says how to get it (a *fetch spec*): ``{"token": T}``, read it from
  the region's partition store with :data:`STORE_READ_OP` over a connection
  the node opens, presenting the token the scheduler gave this node for this
  partition; or ``{"read": [path, options]}``, read a ``Files`` partition
  itself, under the node's own data roots.

A node says which kind it is at registration, in the ``extra`` information
of its ``register-worker`` message under :data:`PROFILE_KEY` (see
:func:`node_profile`); the scheduler also checks whether it can reach a node
that claims to be open (``grid/scheduler/reach.py``). Everything a node sends
here passes the trust boundary's checks (:mod:`grid.protocol.messages`).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

#: worker RPC handler of an open node: one round request per node per round
UPDATE_OP = "grid_update"
#: scheduler -> dial-out node, on the node's worker stream: open your grid channel with this token
CHANNEL_OFFER_OP = "grid-channel"
#: dial-out node -> scheduler RPC: the first message of the node's grid channel (its worker address
#: and the token of the offer); the scheduler answers "OK" and keeps the connection
CHANNEL_OP = "grid_channel"
#: scheduler -> dial-out node, on its grid channel: a round request (or a prefetch, or a describe)
CALL_OP = "grid-call"
#: dial-out node -> scheduler, on its grid channel: the answer to a call
REPLY_OP = "grid-reply"
#: scheduler -> dial-out node, on its grid channel: forget these stored partitions (their dataset was dropped)
DROP_OP = "grid-drop"
#: dial-out node -> scheduler RPC: one chunk of a stored partition
STORE_READ_OP = "grid_store_read"
#: key of a node's grid profile in its registration's ``extra``
PROFILE_KEY = "grid"
#: what the node of a call does: update partitions, only fetch them (placement, replicas),
#: or describe a Files partition it read (rows, features, labels)
CALL_KINDS = ("update", "fetch", "describe")


def node_profile(dial_out: bool) -> dict[str, Any]:
    """The profile a grid node registers with (``ws.extra[PROFILE_KEY]`` on the scheduler)."""
    return {"dial-out": bool(dial_out), "calls": 1}


def profile_of(extra: Any) -> dict[str, Any]:
    """A node's profile from its registration ``extra``, checked; ``{}`` for a stock worker.

    A node's registration is untrusted: anything but the expected shape
    counts as no profile (the node is then treated as a stock worker)."""
    profile = extra.get(PROFILE_KEY) if isinstance(extra, dict) else None
    if not isinstance(profile, dict) or not isinstance(profile.get("dial-out"), bool):
        return {}
    return {"dial-out": profile["dial-out"], "calls": profile.get("calls") == 1}


#: the length prefix of a stored partition's head
_PREFIX = struct.Struct("<Q")


def partition_head(header: dict, frames: list) -> bytes:
    """What precedes a stored partition's frames: its Dask serialisation header and frame lengths."""
    head = msgpack.packb({"header": header, "lengths": [len(f) for f in frames]}, use_bin_type=True)
    return _PREFIX.pack(len(head)) + head


def split_partition(blob: bytes) -> tuple[dict, list[memoryview]]:
    """A stored partition as a node reassembled it: its header and frames (nothing deserialised).

    Raises
    ------
    ValueError
        The bytes do not have the store's layout.
    """
    try:
        (head_len,) = _PREFIX.unpack_from(blob, 0)
        head = msgpack.unpackb(blob[_PREFIX.size : _PREFIX.size + head_len], raw=False, use_list=False)
        header, lengths = head["header"], [int(n) for n in head["lengths"]]
    except Exception as exc:  # noqa: BLE001 - any malformed head is the same error
        raise ValueError(f"a stored partition of {len(blob)} bytes has no valid head ({exc})") from None
    view = memoryview(blob)[_PREFIX.size + head_len :]
    if not isinstance(header, dict) or sum(lengths) != len(view) or min(lengths, default=0) < 0:
        raise ValueError(f"a stored partition of {len(blob)} bytes does not match its head")
    frames, start = [], 0
    for length in lengths:
        frames.append(view[start : start + length])
        start += length
    return header, frames
