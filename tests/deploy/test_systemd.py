"""systemd units: one copy of each, shipped in the package, accepted by systemd, hardened, installable.

``systemd-analyze`` (Debian's ``systemd`` package; ``.ci/run`` installs it)
must be on the machine: these tests fail, not skip, without it.
``systemd-analyze verify`` checks that the ``ExecStart=`` binary exists, so
the shipped units (which name ``/opt/dask-grid/bin/grid``) are verified as
copies that differ only in that path, pointed at this environment's ``grid``;
what ``install-systemd`` writes (the shipped unit verbatim plus a drop-in
naming this environment's ``grid``) is verified as written: ``verify`` reads
the drop-ins of ``UNIT.d/`` beside the unit, as systemd does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from grid.deploy.systemd_files import (
    DROPIN,
    ENV_EXAMPLE,
    NODE_UNIT,
    SCHEDULER_UNIT,
    TLS_FILES,
    render_env_example,
    render_node_dropin,
    render_node_env,
    render_scheduler_dropin,
    shipped_unit,
)
from grid.deploy.systemd_install import install_systemd_node, install_systemd_scheduler, node_plan, running_grid_executable
from grid.deploy.systemd_options import DEFAULT_CRL_FILE, DEFAULT_GRID_EXECUTABLE, NodeOptions

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "systemd"
GRID = str(Path(sys.executable).parent / "grid")
UNITS = (SCHEDULER_UNIT, NODE_UNIT)


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: `apt-get update && apt-get install -y systemd` (.ci/run does this)")
    return path


def verify(analyze: str, *units: Path) -> None:
    """``systemd-analyze verify``: exit 0 *and* no warning (it warns about bad lines but still exits 0)."""
    proc = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=120)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not output, f"systemd-analyze verify {[u.name for u in units]}:\n{output}"


def install(command: object, args: list[str]) -> str:
    result = CliRunner().invoke(command, args, catch_exceptions=False)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and line[0] not in "#;[" and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_deploy_systemd_holds_the_package_units_and_the_rendered_env_example() -> None:
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted([*UNITS, ENV_EXAMPLE])
    for name in UNITS:  # one copy of each unit: the repository's view is the package's file
        assert (SHIPPED / name).read_text() == shipped_unit(name), f"deploy/systemd/{name} differs from grid/deploy/systemd/{name}"
        assert (SHIPPED / name).resolve() == (ROOT / "grid" / "deploy" / "systemd" / name).resolve()
    assert (SHIPPED / ENV_EXAMPLE).read_text() == render_env_example(), (
        f"deploy/systemd/{ENV_EXAMPLE} is stale: run `python -m grid.deploy.systemd_files deploy/systemd`"
    )


def test_the_units_are_package_data_of_a_build(tmp_path: Path) -> None:
    """What a wheel holds: setuptools' build_py copies the package with its data, as `pip wheel .` does."""
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.fail("setuptools is missing: `pip install setuptools` (the build backend of pyproject.toml; `make env` installs it)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "grid", src / "grid", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=src, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in UNITS:
        built = tmp_path / "lib" / "grid" / "deploy" / "systemd" / name
        assert built.is_file() and built.read_text() == (SHIPPED / name).read_text(), f"{name} is not package data of the build"


def test_systemd_analyze_verifies_the_shipped_units(analyze: str, tmp_path: Path) -> None:
    units = []
    for unit in sorted(SHIPPED.glob("*.service")):
        text = unit.read_text()
        assert DEFAULT_GRID_EXECUTABLE in text
        copy = tmp_path / unit.name
        copy.write_text(text.replace(DEFAULT_GRID_EXECUTABLE, GRID))
        units.append(copy)
    assert {u.name for u in units} == {"grid-scheduler@.service", "grid-node.service"}
    verify(analyze, *units)


@pytest.mark.parametrize(
    "scheduler_args, node_args",
    [
        ([], []),
        (["--no-tls", "--port", "9786", "--dashboard-address", "127.0.0.1:9787"], ["--no-tls", "--scheduler", "tcp://10.0.0.1:9786"]),
        (["--user", "daemon", "--cert-name", "eu-1", "--crl-file", "CRL"], ["--user", "daemon", "--cpu-quota", "50%", "--name", "lab-pc-7", "--nthreads", "4", "--memory-limit", "6GiB"]),
    ],
    ids=["defaults", "no-tls", "dedicated-user-and-quota"],
)
def test_systemd_analyze_verifies_the_installed_units(
    analyze: str, tmp_path: Path, scheduler_args: list[str], node_args: list[str]
) -> None:
    target, env_dir, creds = tmp_path / "system", tmp_path / "etc", tmp_path / "tls"
    common = ["--target-dir", str(target), "--env-dir", str(env_dir), "--credentials-dir", str(creds), "--grid-executable", GRID]
    scheduler_args = [str(tmp_path / "crl.pem") if a == "CRL" else a for a in scheduler_args]
    install(install_systemd_scheduler, ["--region", "eu-west", *common, *scheduler_args])
    if "--scheduler" not in node_args:
        node_args = [*node_args, "--scheduler", "tls://eu-west.grid.example.org:8786"]
    install(install_systemd_node, ["--region", "eu-west", *common, *node_args])
    scheduler_unit, node_unit = target / SCHEDULER_UNIT, target / NODE_UNIT
    verify(analyze, scheduler_unit, node_unit)  # with their drop-ins
    for unit in (scheduler_unit, node_unit):  # the drop-ins keep the sandbox: still "OK" (below 2.5) in systemd's score
        proc = subprocess.run([analyze, "security", "--offline=true", "--threshold=25", str(unit)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "OK" in proc.stdout.splitlines()[-1], proc.stdout[-2000:] + proc.stderr
    for unit in (scheduler_unit, node_unit):  # the shipped units, verbatim; the options are in the drop-ins
        assert unit.read_text() == (SHIPPED / unit.name).read_text()
    scheduler_dropin = settings((target / f"{SCHEDULER_UNIT}.d" / DROPIN).read_text())
    node_dropin = settings((target / f"{NODE_UNIT}.d" / DROPIN).read_text())
    (exec_start,) = scheduler_dropin["ExecStart"][1:]
    assert scheduler_dropin["ExecStart"][0] == "" and exec_start.startswith(f"{GRID} scheduler --region %i ")
    assert node_dropin["ExecStart"][1].startswith(f"{GRID} node --region ${{GRID_REGION}} ")
    assert scheduler_dropin["EnvironmentFile"] == ["", f"{env_dir}/scheduler-%i.env"]
    assert (env_dir / "scheduler-eu-west.env").stat().st_mode & 0o777 == 0o640
    node_env = (env_dir / "node.env").read_text()
    assert "GRID_REGION=eu-west" in node_env
    tls = "--no-tls" not in node_args
    assert (creds / "node").is_dir() == tls
    if tls:
        name = "lab-pc-7" if "--name" in node_args else "%H"  # named after the node, as `grid certs issue node NAME` names them
        assert node_dropin["LoadCredential"] == ["", f"ca.pem:{creds}/node/ca.pem", f"cert.pem:{creds}/node/{name}.pem", f"key.pem:{creds}/node/{name}-key.pem"]
        cert = "eu-1" if "--cert-name" in scheduler_args else "%H"
        assert f"cert.pem:{creds}/scheduler-%i/{cert}.pem" in scheduler_dropin["LoadCredential"]
        assert "Environment" not in scheduler_dropin  # the unit's TLS configuration stands
    else:
        # no certificates: the credentials, distributed's TLS variables and the revocation list are reset
        assert node_dropin["LoadCredential"] == [""] and scheduler_dropin["LoadCredential"] == [""]
        for dropin in (node_dropin, scheduler_dropin):
            assert dropin["Environment"][0] == "" and not [v for v in dropin["Environment"] if "DASK_DISTRIBUTED__COMM__" in v]
        assert "GRID_PROTOCOL=tcp" in scheduler_dropin["Environment"][1]
    # a TLS scheduler checks the revocation list; a plaintext one has no certificates to check
    crl = str(tmp_path / "crl.pem") if "--crl-file" in scheduler_args else DEFAULT_CRL_FILE
    assert (f"--crl-file {crl} " in exec_start) == tls
    if not tls:
        assert scheduler_dropin["AssertFileNotEmpty"] == [""]  # reset: no list to wait for
    elif crl != DEFAULT_CRL_FILE:
        assert scheduler_dropin["AssertFileNotEmpty"] == ["", crl]
    else:
        assert "AssertFileNotEmpty" not in scheduler_dropin  # the unit's own stands
    assert "--crl-file" not in node_unit.read_text() + str(node_dropin)
    if "--cpu-quota" in node_args:
        assert node_dropin["CPUQuota"] == ["50%"]
        assert "GRID_NODE_NAME=lab-pc-7" in node_env and "GRID_MEMORY_LIMIT=6GiB" in node_env
        assert node_dropin["User"] == ["daemon"] and node_dropin["DynamicUser"] == ["no"]
        assert scheduler_dropin["User"] == ["daemon"]
    else:
        assert "User" not in node_dropin and "CPUQuota" not in node_dropin


def test_default_options_write_the_shipped_unit_and_no_drop_in(tmp_path: Path) -> None:
    assert render_scheduler_dropin() is None and render_node_dropin() is None
    target = tmp_path / "system"
    out = install(
        install_systemd_node,
        ["--region", "eu", "--scheduler", "tls://eu.example.org:8786", "--grid-executable", DEFAULT_GRID_EXECUTABLE, "--target-dir", str(target), "--dry-run"],
    )
    assert shipped_unit(NODE_UNIT).rstrip("\n") in out
    assert f"# rm -f {target / 'grid-node.service.d' / DROPIN}" in out and f"{DROPIN} (mode" not in out


def test_units_are_hardened_and_stop_gracefully(analyze: str, tmp_path: Path) -> None:
    for name in ("grid-scheduler@.service", "grid-node.service"):
        text = (SHIPPED / name).read_text()
        s = settings(text)
        for key, value in {
            "DynamicUser": "yes",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "Restart": "on-failure",
            "KillSignal": "SIGTERM",
            "KillMode": "mixed",  # SIGTERM to the nanny only, never to its worker process
            "CapabilityBoundingSet": "",
        }.items():
            assert s.get(key) == [value], (name, key, s.get(key))
        assert [v.split(":")[0] for v in s["LoadCredential"]] == list(TLS_FILES)
        assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE=%d/ca.pem" in s["Environment"]
        copy = tmp_path / name
        copy.write_text(text.replace(DEFAULT_GRID_EXECUTABLE, GRID))
        # systemd's own exposure score (0 safest .. 10): "OK" is below 2.5 here
        proc = subprocess.run(
            [analyze, "security", "--offline=true", "--threshold=25", str(copy)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
        assert "Overall exposure level" in proc.stdout and "OK" in proc.stdout.splitlines()[-1]

    scheduler = settings((SHIPPED / "grid-scheduler@.service").read_text())
    assert scheduler["StateDirectory"] == ["dask-grid/scheduler-%i"]
    # revocation: the list is passed to every TLS scheduler, and the unit fails to start without it
    assert "--protocol ${GRID_PROTOCOL} --crl-file /etc/dask-grid/crl.pem $GRID_EXTRA_ARGS" in scheduler["ExecStart"][0]
    assert scheduler["AssertFileNotEmpty"] == ["/etc/dask-grid/crl.pem"]
    # read in place (the scheduler rereads it when it changes), not copied once by LoadCredential=
    assert not [c for c in scheduler["LoadCredential"] if "crl" in c]
    assert "DASK_GRID__SCHEDULER__STATE_DIR=%S/dask-grid/scheduler-%i" in scheduler["Environment"]
    node = settings((SHIPPED / "grid-node.service").read_text())
    assert node["Nice"] == ["19"] and node["IOSchedulingClass"] == ["idle"] and int(node["CPUWeight"][0]) < 100
    retire = next(v for v in node["Environment"] if v.startswith("DASK_GRID__NODE__RETIRE_TIMEOUT="))
    assert int(node["TimeoutStopSec"][0].rstrip("s")) > int(retire.split("=")[1].rstrip("s"))


def test_dry_run_prints_every_file_and_writes_nothing(tmp_path: Path) -> None:
    target, env_dir = tmp_path / "system", tmp_path / "etc"
    out = install(
        install_systemd_node,
        ["--region", "eu", "--scheduler", "tls://eu.example.org:8786", "--target-dir", str(target), "--env-dir", str(env_dir), "--grid-executable", GRID, "--dry-run"],
    )
    assert not target.exists() and not env_dir.exists()
    opts = NodeOptions(scheduler="tls://eu.example.org:8786", grid_executable=GRID, env_dir=str(env_dir))
    assert shipped_unit(NODE_UNIT).rstrip("\n") in out
    dropin = render_node_dropin(opts)
    assert dropin is not None and dropin.rstrip("\n") in out and f"ExecStart={GRID} node " in dropin
    assert render_node_env(opts).rstrip("\n") in out
    assert f"# ---- {target / 'grid-node.service'} (mode 644) ----" in out
    assert f"# ---- {target / 'grid-node.service.d' / DROPIN} (mode 644) ----" in out
    assert "systemctl enable --now grid-node.service" in out
    out = install(install_systemd_scheduler, ["--region", "us", "--target-dir", str(target), "--env-dir", str(env_dir), "--dry-run"])
    assert "grid-scheduler@us.service" in out and "GRID_PORT=8786" in out
    assert "install -m 0644 CA_DIR/crl.pem /etc/dask-grid/crl.pem" in out  # the next step names the revocation list
    assert "mv /etc/dask-grid/crl.pem.new /etc/dask-grid/crl.pem" in out  # the env file says how to ship a new one
    assert not target.exists()


def test_reinstall_keeps_an_edited_environment_file_unless_forced(tmp_path: Path) -> None:
    args = ["--region", "eu", "--target-dir", str(tmp_path / "u"), "--env-dir", str(tmp_path / "e"), "--grid-executable", GRID]
    install(install_systemd_scheduler, args)
    env = tmp_path / "e" / "scheduler-eu.env"
    env.write_text(env.read_text().replace("GRID_PORT=8786", "GRID_PORT=9999"))
    out = install(install_systemd_scheduler, args)
    assert "kept" in out and "GRID_PORT=9999" in env.read_text()
    install(install_systemd_scheduler, [*args, "--force"])
    assert "GRID_PORT=8786" in env.read_text()


def test_reinstall_rewrites_its_drop_in_and_keeps_the_operators_override(tmp_path: Path) -> None:
    units = tmp_path / "u"
    ours, theirs = units / "grid-node.service.d" / DROPIN, units / "grid-node.service.d" / "override.conf"
    common = ["--region", "eu", "--scheduler", "tls://h:8786", "--target-dir", str(units), "--env-dir", str(tmp_path / "e"), "--grid-executable", GRID]
    install(install_systemd_node, [*common, "--nice", "10"])
    assert settings(ours.read_text())["Nice"] == ["10"]
    theirs.write_text("[Service]\nNice=5\n")  # what `systemctl edit grid-node` writes; systemd reads it last
    install(install_systemd_node, [*common, "--nice", "15"])
    assert settings(ours.read_text())["Nice"] == ["15"] and theirs.read_text() == "[Service]\nNice=5\n"
    assert (units / NODE_UNIT).read_text() == shipped_unit(NODE_UNIT)

    # options that change nothing in the unit: the earlier drop-in is removed, not left to apply
    plan = node_plan(NodeOptions(scheduler="tls://h:8786"), str(units))
    assert plan.removals == [str(ours)]
    del plan.files[NodeOptions().env_file]  # /etc/dask-grid/node.env of this machine: not the point here
    assert f"removed {ours} (no option changes the unit)" in plan.apply()
    assert not ours.exists() and theirs.exists()
    assert plan.apply() == [f"wrote {units / NODE_UNIT}"]  # nothing left to remove


@pytest.mark.parametrize(
    "args, message",
    [
        (["--region", "EU", "--scheduler", "tls://h:1"], "region='EU'"),
        (["--region", "eu", "--scheduler", "tcp://h:8786"], "must start with tls://"),
        (["--region", "eu", "--scheduler", "tls://h:8786", "--no-tls"], "TLS is switched off"),
        (["--region", "eu", "--scheduler", "tls://h:8786", "--memory-limit", "lots"], "memory_limit='lots'"),
        (["--region", "eu", "--scheduler", "tls://h:8786", "--cpu-quota", "half"], "cpu_quota='half'"),
        (["--region", "eu", "--scheduler", "tls://h:8786", "--name", "a b"], "name='a b'"),
        # a trailing newline would end the unit's line and start another one of the caller's choosing
        (["--region", "eu", "--scheduler", "tls://h:8786", "--name", "node1\n"], "name='node1\\n'"),
        (["--region", "eu\n", "--scheduler", "tls://h:8786"], "region='eu\\n'"),
        (["--region", "eu", "--scheduler", "tls://h:8786", "--user", "nobody"], "user='nobody' is not allowed"),
    ],
)
def test_bad_node_options_are_refused_with_the_reason(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(install_systemd_node, [*args, "--target-dir", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--crl-file", "/etc/dask grid/crl.pem"], "crl_file='/etc/dask grid/crl.pem'"),
        (["--crl-file", "/home/ann/crl.pem"], "ProtectHome=yes"),
        (["--port", "0"], "not in the range"),
    ],
)
def test_bad_scheduler_options_are_refused_with_the_reason(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        install_systemd_scheduler, ["--region", "eu", *args, "--grid-executable", "/opt/dask-grid/bin/grid", "--target-dir", str(tmp_path), "--dry-run"]
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert not any(tmp_path.iterdir())


def test_missing_user_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        install_systemd_scheduler, ["--region", "eu", "--user", "no-such-grid-user", "--target-dir", str(tmp_path), "--env-dir", str(tmp_path)]
    )
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not any(tmp_path.iterdir())


def test_home_install_keeps_home_readable_and_defaults_to_this_environment() -> None:
    dropin = render_node_dropin(NodeOptions(grid_executable="/home/ann/.venv/bin/grid"))
    assert dropin is not None and settings(dropin)["ProtectHome"] == ["read-only"]
    assert running_grid_executable() == GRID and os.access(GRID, os.X_OK)
