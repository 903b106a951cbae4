"""The layers of the code, checked on its import graph (built from the source with ``ast``).

* ``jobs/`` is training math: it imports neither ``grid`` nor ``distributed``,
  except the scikit-learn facade (``jobs/base.py``), which looks up the default
  grid inside ``fit``;
* the node side (``grid/node/``) never imports the scheduler side;
* the client (``grid/client.py``, ``job.py``, ``placement.py``, ``parallel.py``,
  ``progress.py``) never imports the scheduler side; what both need (job
  requests, job states, the protocol table) lives in ``grid/protocol/``;
* ``grid/protocol/`` imports neither side;
* no import cycles, function-level imports included (imports under
  ``if TYPE_CHECKING:`` are type hints, not imports);
* ``jobs/`` imports its own modules at module level only, so its import graph
  is the whole story (a function-level import is how a cycle hides);
* importing ``jobs.sgd`` and ``jobs.merge`` loads neither ``grid`` nor
  ``distributed`` (checked in a fresh interpreter), and every name they had
  as single modules is still importable from them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import GenericAlias

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("grid", "jobs")
#: the scikit-learn facades of jobs/, the one place that may look up a grid (inside functions)
FACADES = {"jobs.base": {"grid.client"}}
CLIENT = {"grid.client", "grid.job", "grid.placement", "grid.parallel", "grid.progress"}
#: the names ``jobs.sgd`` and ``jobs.merge`` had as single modules: specs, pickles and user code may name them
SPLIT_MODULE_NAMES = {
    "jobs.sgd": (
        "AGGREGATES", "AUTO_BATCH_RANGE", "AVERAGE_KEYS", "CLASSIFICATION_LOSSES", "EpochStats", "LEARNING_RATES",
        "MAX_SEED", "PENALTIES", "REGRESSION_LOSSES", "SGDConfig", "SGDParameterError", "SHUFFLE_BLOCK",
        "STATE_KEYS", "State", "Targets", "_neg_grad", "adaptive_update", "as_features", "average_update",
        "batch_rows", "check_average", "check_class_weight", "check_random_state_param", "check_state",
        "config_from_params", "data_geometry", "decision_scores", "encode_targets", "evaluate", "init_state",
        "job_seed", "merge_counters", "run_epochs", "sample_weights", "server_update", "sgd_step",
        "shuffled_rows", "step_size", "validation_split",
    ),
    "jobs.merge": (
        "CategoricalNBRule", "DiscreteNBRule", "GaussianNBRule", "IncrementalPCARule", "LinearRule", "MLPRule",
        "MaxAbsScalerRule", "MergeRule", "MiniBatchKMeansRule", "MinMaxScalerRule", "NoMergeRule", "SGDJobRule",
        "StandardScalerRule", "State", "register_merge", "rule_for", "state_rule", "supported_families",
    ),
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """(imported name, at module level) for every import of ``module`` outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, top: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (item for n in child.orelse for item in visit(n, top))
                continue
            if isinstance(child, ast.Import):
                yield from ((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module if is_package else module.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                for alias in child.names:  # `from grid import names` imports the module grid.names
                    yield (f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base), top
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from visit(child, inner)

    yield from visit(tree, True)


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` is (or is in), or its top package if it is someone else's."""
    while name:
        if name in MODULES:
            return name
        if "." not in name:
            return name
        name = name.rpartition(".")[0]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _ in _imports(module, path):
            target = _resolve(name)
            if target and target != module:
                graph[module].add(target)
    return graph


GRAPH = _graph()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read() -> None:
    # a broken reader would pass every rule below
    assert "jobs.local" in GRAPH["grid.node.tasks"] or "jobs" in GRAPH["grid.node.tasks"]
    assert "grid.scheduler.attempts" in GRAPH["grid.scheduler.driver"]
    assert "distributed" in GRAPH["grid.scheduler.plugin"]


def test_jobs_imports_neither_grid_nor_distributed_outside_the_facades() -> None:
    bad = {}
    for module, path in MODULES.items():
        if not _within(module, "jobs"):
            continue
        allowed = FACADES.get(module, set())
        for name, top in _imports(module, path):
            target = _resolve(name) or ""
            if _within(target, "grid") or _within(target, "distributed"):
                if top or target not in allowed:
                    bad.setdefault(module, []).append(name)
    assert not bad, f"jobs/ reaches for the runtime: {bad}"


def test_jobs_imports_its_own_modules_at_module_level() -> None:
    late = {
        module: sorted(name for name, top in _imports(module, path) if not top and _within(_resolve(name) or "", "jobs"))
        for module, path in MODULES.items()
        if _within(module, "jobs")
    }
    assert not {m: names for m, names in late.items() if names}, "import these at the top of the module"


def test_jobs_math_loads_neither_grid_nor_distributed() -> None:
    # a fresh interpreter: this test process has imported grid and distributed long ago
    code = (
        "import json, sys; import jobs.sgd, jobs.merge; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jobs', 'grid', 'distributed'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert {"jobs.sgd.step", "jobs.sgd.server", "jobs.merge.base", "jobs.merge.sgd_job"} <= set(loaded)
    assert [m for m in loaded if not _within(m, "jobs")] == []


@pytest.mark.parametrize("package", sorted(SPLIT_MODULE_NAMES))
def test_split_modules_keep_their_names(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in SPLIT_MODULE_NAMES[package] if not hasattr(module, name)]
    assert not missing, f"{package} no longer exports {missing}; re-export them from {package}/__init__.py"
    # functions and classes are the very objects of the submodules that define them
    defined = [getattr(module, name) for name in SPLIT_MODULE_NAMES[package]]
    defined = [v for v in defined if inspect.isfunction(v) or (inspect.isclass(v) and not isinstance(v, GenericAlias))]
    assert defined
    for value in defined:
        assert _within(value.__module__, package) and value.__module__ != package, value
        assert getattr(sys.modules[value.__module__], value.__name__) is value


@pytest.mark.parametrize(
    "side, forbidden",
    [
        ("grid.node", "grid.scheduler"), ("grid.protocol", "grid.scheduler"), ("grid.protocol", "grid.node"),
        # the /grid page is a scheduler plugin of its own (grid.dashboard.page), installed where Bokeh is
        ("grid.scheduler", "grid.dashboard"),
    ],
)
def test_one_side_never_imports_the_other(side: str, forbidden: str) -> None:
    bad = {m: sorted(t for t in targets if _within(t, forbidden)) for m, targets in GRAPH.items() if _within(m, side)}
    assert not {m: t for m, t in bad.items() if t}


def test_the_client_never_imports_the_scheduler_side() -> None:
    bad = {m: sorted(t for t in GRAPH[m] if _within(t, "grid.scheduler")) for m in CLIENT}
    assert not {m: t for m, t in bad.items() if t}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(component)
    return out


def test_cycles_are_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    # the facade's lookup of the default grid is the sanctioned way up from jobs/ (see above)
    graph = {m: {t for t in targets if t not in FACADES.get(m, set())} for m, targets in GRAPH.items()}
    cycles = _cycles(graph)
    assert not cycles, [sorted(c) for c in cycles]
