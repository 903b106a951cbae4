"""What a community node refuses to run (grid/node/community.py): the walk over a task, without a cluster.

A community node refusing such tasks sent through a real scheduler, and still
serving honest grid work, is tests/integration/test_community_nested.py.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from dask._task_spec import Alias, DataNode, Dict, List, Set, Task, TaskRef, Tuple
from sklearn.linear_model import SGDClassifier

from grid.node import tasks
from grid.node.community import refusal
from jobs import PartialFit


def touch(path: str) -> None:
    """A function passed as data: the walk refuses it by name and never calls it."""
    raise AssertionError("the walk only inspects what it is given: it never calls it")


def test_the_walk_accepts_what_the_grid_sends():
    request = PartialFit(SGDClassifier(random_state=0), rounds=1)._job_request()
    request["init_state"] = {"coef": [[0.0] * 1000], "intercept": [0.0]}
    assert refusal(Task("k", tasks.partition_update, request, b"\x00" * 64, Alias("part"), 3, 1)) is None
    assert refusal(Task("k", tasks.sequential_step, request, TaskRef("prev"), Alias("part"), 0, 0)) is None
    assert refusal(Task("k", tasks.read_file_partition, "/data/p0.npz", {"target": "y", "features": None, "format": None})) is None
    assert refusal(Task("k", tasks.describe_partition, List(Alias("X"), Tuple(1, 2), Set(1), Dict(a=np.zeros(3))))) is None
    assert refusal(Task("k", tasks.describe_partition, DataNode(None, (np.zeros((2, 2)), np.int64(1), None)))) is None


@pytest.mark.parametrize(
    "arg, named",
    [
        (DataNode(None, os.system), "system (passed as data in args[0]"),
        ({"a": [1, {"b": print}]}, "builtins.print (passed as data in args[0]['a'][1]['b']"),
        ({touch: 1}, "touch (passed as data in a key of args[0]"),
        (np.array([os.system], dtype=object), "numpy.ndarray object"),
        ([np.float64, 1], "numpy.float64 (passed as data"),
        (Task("t", tasks.describe_partition, Task("u", eval, "1")), "builtins.eval (a task nested in args[0].args[0])"),
        (Task("t", tasks._state, None), "grid.node.tasks._state (a task nested in args[0])"),
        (Dict(a=Task("u", exec, "1")), "builtins.exec (a task nested in args[0][1])"),
        (Set(Task("u", exec, "1")), "builtins.exec"),
        (Tuple(Tuple(Task("u", exec, "1"))), "builtins.exec (a task nested in args[0][0][0])"),
        (type("Anything", (), {})(), "Anything object (in args[0]; grid job functions take plain data only)"),
    ],
)
def test_the_walk_refuses_everything_else(arg, named):
    assert named in (refusal(Task("k", tasks.describe_partition, arg)) or "")


def test_the_task_itself_must_be_a_plain_task_of_a_grid_function():
    class Sneaky(Task):
        pass

    assert refusal(Task("k", os.system, "true")) == f"{os.system.__module__}.system"
    assert "Sneaky task" in refusal(Sneaky("k", tasks.describe_partition, None))
    assert refusal(DataNode("k", 1)) == "a DataNode task"
    assert refusal(Task("k", tasks.describe_partition, None, extra=functools.partial(print))).startswith("a functools.partial object")
