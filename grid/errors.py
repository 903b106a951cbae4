"""Exceptions a grid user may catch."""


class GridError(RuntimeError):
    """Base class of grid errors."""


class GridConnectionError(GridError, OSError):
    """A regional scheduler could not be reached."""


class UnknownRegion(GridError, KeyError):
    """A region name the grid does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


class JobFailed(GridError):
    """The job ended with an error; the message is the job's recorded reason."""


class JobCancelled(GridError):
    """The job was cancelled before it finished."""


class NodeTaskError(GridError):
    """A task failed on a node; the message is the node's own text (never its pickle)."""


class NodeRefusedTask(NodeTaskError, PermissionError):
    """A node refused to run a task (community mode); ``except PermissionError`` catches it."""


class RemoteError(GridError):
    """A scheduler refused a request; the message is the scheduler's reason."""


def check_reply(reply: dict, what: str) -> dict:
    """Raise a clear error if a grid handler replied with an error."""
    if not isinstance(reply, dict) or reply.get("status") != "OK":
        message = reply.get("message") if isinstance(reply, dict) else repr(reply)
        kind = reply.get("type", "") if isinstance(reply, dict) else ""
        if kind in ("UnknownJob", "KeyError"):
            raise KeyError(message)
        if kind == "PermissionError":
            raise PermissionError(f"{what}: {message}")
        if kind in ("ValueError", "SpecError", "DataError", "TypeError", "NoMergeRule", "PlainDataError", "DataAccessError"):
            raise ValueError(f"{what}: {message}")
        raise RemoteError(f"{what}: {message}")
    return reply


class GridWarning(UserWarning):
    """Something the grid did on the user's behalf that they may not expect."""
