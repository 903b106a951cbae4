"""The Helm chart: values and schema agree, templates use only real values, Helm renders
it, and the output is valid Kubernetes with the properties the grid relies on.

Rendering uses Helm itself: a ``helm`` binary when one is on ``PATH``, else Helm's
Go SDK (v4) through the ``helm-python-sdk`` wheel from PyPI, which bundles it as a
shared library (no Debian or npm package ships Helm). One of the two must be
there: these tests fail, not skip, without them. The Kubernetes schema check uses
``kubernetes-validate`` (the API's OpenAPI schemas, strict: unknown fields are
errors) for the oldest Kubernetes the chart supports and the newest known; the
one custom resource, the Prometheus Operator's ServiceMonitor, is not in those
schemas and is checked against the Services it selects instead.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "dask-grid"
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
K8S_VERSIONS = ("1.25.0", "latest")
#: Kubernetes objects passed through as they are; README documents the key, not its insides
PASSTHROUGH = {
    "startupProbe", "livenessProbe", "readinessProbe", "podSecurityContext", "securityContext",
    "podAnnotations", "resources",
}  # fmt: skip

#: custom resources kubernetes-validate has no schema for
CUSTOM_API_VERSIONS = {"monitoring.coreos.com/v1"}

#: every switch on: TLS with a revocation list, ingresses, persistence, the grid dashboard,
#: a ServiceMonitor, image overrides, extra packages and mounts, region overrides
EVERYTHING: dict[str, Any] = {
    "tls": {"enabled": True, "crl": {"secret": "grid-crl"}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "scrapeTimeout": "10s"},
    "extraPipPackages": "dask-ml==2024.4.4",
    "scheduler": {"persistence": {"enabled": True, "storageClass": "fast"}, "serviceType": "LoadBalancer",
                  "loadBalancerSourceRanges": ["10.0.0.0/8"], "extraArgs": ["--scheduler-file", "/tmp/s.json"],
                  "env": [{"name": "DASK_GRID__SCHEDULER__FINISHED_JOBS_KEPT", "value": "50"}],
                  "nodeSelector": {"pool": "system"}, "tolerations": [{"key": "grid", "operator": "Exists"}],
                  "serviceAccountName": "grid", "image": {"tag": "0.1.0-debug", "pullPolicy": "Always"}},
    "worker": {"scratchSizeLimit": "10Gi", "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
               "affinity": {"podAntiAffinity": {}}, "podLabels": {"team": "ml"}, "extraArgs": ["--data-root", "/data"],
               "mounts": {"volumes": [{"name": "data", "hostPath": {"path": "/srv/grid-data", "type": "Directory"}}],
                          "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]}},
    "webUI": {"ingress": {"enabled": True, "tls": True, "className": "nginx", "annotations": {"a": "b"}}},
    "regions": [
        {"name": "eu", "worker": {"replicas": 5, "podDisruptionBudget": {"maxUnavailable": "20%"},
                                  "image": {"repository": "registry.example.org/gpu/dask-grid"}}},
        {"name": "us", "scheduler": {"persistence": {"enabled": False}, "serviceType": "ClusterIP"},
         "webUI": {"ingress": {"enabled": False}}},
    ],
    "dashboard": {"enabled": True, "ingress": {"enabled": True, "tls": True}, "podAnnotations": {"x": "y"},
                  "mounts": {"volumes": [{"name": "extra", "emptyDir": {}}], "volumeMounts": [{"name": "extra", "mountPath": "/extra"}]}},
    "image": {"pullSecrets": [{"name": "regcred"}]},
}  # fmt: skip


# --- rendering with Helm --------------------------------------------------------------------
def _render_with_binary(helm: str, values: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    values_file = tmp / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    proc = subprocess.run(
        [helm, "template", "grid", str(CHART), "--namespace", "science", "-f", str(values_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def helm_sdk() -> Any:
    """Helm's Go SDK (``helm_python``); without it the test fails saying how to install Helm."""
    try:
        import helm_python
    except ImportError:
        helm_python = None  # failed below, outside the except: the message alone, not the import's traceback
    if helm_python is None:
        pytest.fail(
            "no Helm here: install a `helm` binary, or `pip install helm-python-sdk` "
            "(Helm's Go SDK; in the `test` extra: `pip install -e .[test]`)"
        )
    return helm_python


def _render_with_sdk(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm_sdk().Chart.load(str(CHART)) as chart:
        files = chart.render(values, name="grid", namespace="science")
    docs = []
    for name in sorted(files):
        if name.endswith((".yaml", ".yml")):
            docs += [d for d in yaml.safe_load_all(files[name]) if d]
    return docs


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``render(values) -> [manifest, ...]`` with Helm (binary, else its Go SDK)."""
    helm = shutil.which("helm")
    if helm is not None:
        tmp = tmp_path_factory.mktemp("helm")
        return lambda values: _render_with_binary(helm, values, tmp)
    helm_sdk()  # no Helm at all: every test that renders fails at its set-up, saying how to install it
    return _render_with_sdk


def render_error(render: Any, values: dict[str, Any]) -> str:
    with pytest.raises(Exception) as info:  # noqa: PT011 - Helm's error types differ by front end
        render(values)
    return str(info.value)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def coalesce(base: Any, override: Any) -> Any:
    """Helm's merge of a values file over the chart's values (maps deep, everything else replaced)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = coalesce(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


# --- values and schema ------------------------------------------------------------------------
def test_schema_is_valid_and_accepts_values_and_every_example() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA)
    assert [p.name for p in EXAMPLES] == ["multi-region-tls.yaml", "private-registry.yaml", "single-region.yaml"]
    for example in EXAMPLES:
        values = yaml.safe_load(example.read_text())
        jsonschema.validate(values, SCHEMA)  # the file itself
        jsonschema.validate(coalesce(VALUES, values), SCHEMA)  # what Helm validates: merged over values.yaml
    jsonschema.validate(coalesce(VALUES, EVERYTHING), SCHEMA)


@pytest.mark.parametrize(
    "values, where",
    [
        ({"worker": {"replica": 3}}, "replica"),
        ({"regions": [{"name": "EU"}]}, "EU"),
        ({"regions": []}, "regions"),
        ({"regions": [{"name": "eu", "worker": {"replicas": -1}}]}, "-1"),
        ({"scheduler": {"serviceType": "Public"}}, "Public"),
        ({"worker": {"memoryLimit": "lots"}}, "lots"),
        ({"tls": {"enabled": "yes"}}, "yes"),
        ({"tls": {"crl": {"secrets": "grid-crl"}}}, "secrets"),
        ({"worker": {"nthreads": 0}}, "0"),
        ({"scheduler": {"image": {"pullPolicy": "Sometimes"}}}, "Sometimes"),
        ({"worker": {"mounts": {"volumeMounts": [{"name": "data"}]}}}, "mountPath"),
        ({"serviceMonitor": {"interval": "soon"}}, "soon"),
    ],
)
def test_schema_refuses_mistakes(values: dict[str, Any], where: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(coalesce(VALUES, values), SCHEMA)
    assert where in str(info.value.message) or where in "/".join(map(str, info.value.absolute_path))


def _value_paths(tree: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            if key not in PASSTHROUGH:
                paths |= _value_paths(value, path)
    return paths


def test_every_values_path_in_templates_exists_in_values_yaml() -> None:
    used = set()
    for template in sorted((CHART / "templates").iterdir()):
        for match in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()):
            used.add(match.group(1).lstrip("."))
    assert len(used) > 15
    missing = sorted(p for p in used if p not in _value_paths(VALUES))
    assert not missing, f"templates use values that values.yaml does not define: {missing}"


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    expected = {
        p for p in _value_paths(VALUES)
        if not isinstance(_get(VALUES, p), dict) or not _get(VALUES, p) or p.rsplit(".", 1)[-1] in PASSTHROUGH
    }  # fmt: skip
    expected |= {"regions[].name", "regions[].scheduler", "regions[].worker", "regions[].webUI"}
    expected -= {"regions"}
    assert not sorted(expected - documented), f"README.md does not list: {sorted(expected - documented)}"
    assert not sorted(documented - expected - {"regions"}), f"README.md lists unknown values: {sorted(documented - expected)}"
    # and with the default values.yaml has
    defaults = dict(re.findall(r"^\| `([^`\[]+)` \| `([^|]*)` \|", readme, flags=re.MULTILINE))
    stale = {p: d for p, d in defaults.items() if d != json.dumps(_get(VALUES, p))}
    assert not stale, f"README.md gives other defaults than values.yaml: {stale}"
    assert "helm-python-sdk" in readme  # says how the chart is rendered where no helm binary exists


def _get(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


# --- rendering --------------------------------------------------------------------------------
def _all_value_sets() -> list[tuple[str, dict[str, Any]]]:
    sets = [("defaults", {}), ("everything", EVERYTHING)]
    sets += [(p.stem, yaml.safe_load(p.read_text())) for p in EXAMPLES]
    return sets


@pytest.mark.parametrize("name, values", _all_value_sets(), ids=[n for n, _ in _all_value_sets()])
def test_chart_renders_to_valid_kubernetes_objects(render: Any, name: str, values: dict[str, Any]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
    if kubernetes_validate is None:
        pytest.fail("kubernetes-validate is missing: `pip install kubernetes-validate` (in the `test` extra: `pip install -e .[test]`)")
    docs = render(values)
    assert docs, name
    for doc in docs:
        if doc["apiVersion"] in CUSTOM_API_VERSIONS:
            continue  # checked in test_service_monitor_scrapes_every_scheduler
        for version in K8S_VERSIONS:
            v = kubernetes_validate.latest_version() if version == "latest" else version
            kubernetes_validate.validate(doc, v, strict=True)
    for kind in ("Deployment",):
        for deployment in by_kind(docs, kind).values():
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False
            for c in containers(deployment):
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                mounted = {m["mountPath"] for m in c["volumeMounts"]}
                assert {"/tmp", "/home/grid"} <= mounted  # writable places on a read-only root
    merged = coalesce(VALUES, values)
    regions = [r["name"] for r in merged["regions"]]
    assert sorted(n for n, d in by_kind(docs, "Deployment").items() if d["metadata"]["labels"]["app.kubernetes.io/component"] == "scheduler") == sorted(
        f"grid-dask-grid-{r}-scheduler" for r in regions
    )


def test_default_render_is_a_region_with_probes_pdb_and_a_graceful_node(render: Any) -> None:
    docs = render({})
    deployments = by_kind(docs, "Deployment")
    scheduler = deployments["grid-dask-grid-eu-scheduler"]
    assert scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"]["type"] == "Recreate"
    (s,) = scheduler["spec"]["template"]["spec"]["containers"]
    assert s["image"] == "dask-grid:0.1.0"  # what deploy/docker/Dockerfile builds, tagged with the chart's appVersion
    assert s["command"] == ["tini", "--"]
    assert s["args"] == ["python", "-m", "grid.cli", "scheduler", "--region", "eu", "--port", "8786", "--dashboard-address", ":8787", "--protocol", "tcp"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert s[probe]["httpGet"] == {"path": "/health", "port": "dashboard"}
    assert {p["name"]: p["containerPort"] for p in s["ports"]} == {"comm": 8786, "dashboard": 8787}
    assert env_of(s)["DASK_GRID__SCHEDULER__STATE_DIR"] == "/var/lib/grid"
    # the image has dask-grid: nothing is installed at pod start
    assert not [d for d in deployments.values() if d["spec"]["template"]["spec"].get("initContainers")]

    node_deploy = deployments["grid-dask-grid-eu-node"]
    (n,) = node_deploy["spec"]["template"]["spec"]["containers"]
    assert n["command"] == ["tini", "--"]  # no -g: SIGTERM reaches the nanny only, which retires the node
    assert n["args"][:8] == ["python", "-m", "grid.cli", "node", "--region", "eu", "--scheduler", "tcp://grid-dask-grid-eu-scheduler.science.svc:8786"]
    assert n["args"][-2:] == ["--name", "$(POD_NAME)"]
    assert "--nthreads" not in n["args"]  # no CPU resources, no nthreads: the node picks its own
    retire = env_of(n)["DASK_GRID__NODE__RETIRE_TIMEOUT"]
    assert node_deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(retire.rstrip("s"))
    assert node_deploy["spec"]["replicas"] == 2

    (pdb,) = by_kind(docs, "PodDisruptionBudget").values()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == node_deploy["spec"]["selector"]["matchLabels"]
    service = by_kind(docs, "Service")["grid-dask-grid-eu-scheduler"]
    assert service["spec"]["selector"] == scheduler["spec"]["selector"]["matchLabels"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"comm": 8786, "dashboard": 80}
    assert not by_kind(docs, "Ingress") and not by_kind(docs, "PersistentVolumeClaim")
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]


def test_tls_ingress_dashboard_and_region_overrides(render: Any, tmp_path: Path) -> None:
    docs = render(EVERYTHING)
    deployments = by_kind(docs, "Deployment")
    for region, roles in (("eu-scheduler", ("SCHEDULER", "CLIENT")), ("eu-node", ("WORKER", "CLIENT"))):
        d = deployments[f"grid-dask-grid-{region}"]
        main = d["spec"]["template"]["spec"]["containers"][0]
        env = env_of(main)
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == "/etc/grid/tls/ca.crt"
        for role in roles:
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] == "/etc/grid/tls/tls.crt"
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == f"grid-dask-grid-{region}-tls"
        # only schedulers check revocations
        assert ("crl" in volumes) == region.endswith("scheduler")
    scheduler = deployments["grid-dask-grid-eu-scheduler"]["spec"]["template"]["spec"]["containers"][0]
    assert scheduler["args"][scheduler["args"].index("--protocol") + 1] == "tls"
    assert scheduler["args"][-2:] == ["--scheduler-file", "/tmp/s.json"]
    node = deployments["grid-dask-grid-eu-node"]["spec"]["template"]["spec"]["containers"][0]
    assert node["args"][7] == "tls://grid-dask-grid-eu-scheduler.science.svc:8786"

    # region overrides: a false / an explicit value in a region wins over the defaults
    assert deployments["grid-dask-grid-eu-node"]["spec"]["replicas"] == 5
    assert deployments["grid-dask-grid-us-node"]["spec"]["replicas"] == 2
    assert set(by_kind(docs, "PersistentVolumeClaim")) == {"grid-dask-grid-eu-scheduler-state"}
    assert set(by_kind(docs, "Ingress")) == {"grid-dask-grid-eu-webui", "grid-dask-grid-dashboard"}
    services = by_kind(docs, "Service")
    assert services["grid-dask-grid-eu-scheduler"]["spec"]["type"] == "LoadBalancer"
    assert services["grid-dask-grid-us-scheduler"]["spec"]["type"] == "ClusterIP"
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert pdbs["grid-dask-grid-eu-node"]["spec"]["maxUnavailable"] == "20%"
    ingress = by_kind(docs, "Ingress")["grid-dask-grid-eu-webui"]
    assert ingress["spec"]["rules"][0]["host"] == "eu.grid-ui.example.com"

    # the grid dashboard connects with a grid spec naming every region, over TLS
    (cm,) = by_kind(docs, "ConfigMap").values()
    spec = yaml.safe_load(cm["data"]["grid.yaml"])
    assert spec["regions"] == {
        "eu": "tls://grid-dask-grid-eu-scheduler.science.svc:8786",
        "us": "tls://grid-dask-grid-us-scheduler.science.svc:8786",
    }
    assert spec["tls"] == {"ca-file": "/etc/grid/tls/ca.crt", "cert": "/etc/grid/tls/tls.crt", "key": "/etc/grid/tls/tls.key"}
    from grid.spec import load_spec

    # the grid's own spec loader accepts it (TLS files stood in by empty ones under tmp_path)
    for key in ("ca-file", "cert", "key"):
        (tmp_path / Path(spec["tls"][key]).name).write_text("")
    local = {"regions": spec["regions"], "tls": {k: str(tmp_path / Path(v).name) for k, v in spec["tls"].items()}}
    assert sorted(load_spec(local).regions) == ["eu", "us"]
    dash = deployments["grid-dask-grid-dashboard"]["spec"]["template"]["spec"]["containers"][0]
    assert dash["args"][3:] == ["dashboard", "--grid", "/etc/grid/grid.yaml", "--host", "0.0.0.0", "--port", "8790"]


def test_dashboard_connects_with_its_observer_certificate(render: Any) -> None:
    docs = render(EVERYTHING)
    dashboard = by_kind(docs, "Deployment")["grid-dask-grid-dashboard"]["spec"]["template"]["spec"]
    (c,) = dashboard["containers"]
    env = env_of(c)
    # the same variables as every other grid client, pointing at the observer certificate's Secret
    assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == "/etc/grid/tls/ca.crt"
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] == "/etc/grid/tls/tls.crt"
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] == "/etc/grid/tls/tls.key"
    assert not [k for k in env if "__SCHEDULER__" in k or "__WORKER__" in k]
    volumes = {v["name"]: v for v in dashboard["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "grid-dask-grid-dashboard-tls"
    assert "crl" not in volumes
    other = render(coalesce(EVERYTHING, {"dashboard": {"tlsSecret": "dashboard-observer"}}))
    spec = by_kind(other, "Deployment")["grid-dask-grid-dashboard"]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in spec["volumes"]}["tls"]["secret"]["secretName"] == "dashboard-observer"
    assert "grid certs issue observer dashboard" in VALUES_TEXT
    readme = (CHART / "README.md").read_text()
    assert "| grid dashboard | `<fullname>-dashboard-tls` | `grid certs issue observer dashboard` |" in readme


# --- revocation list ------------------------------------------------------------------------
def _scheduler(docs: list[dict[str, Any]], region: str = "eu") -> tuple[dict[str, Any], dict[str, Any]]:
    pod = by_kind(docs, "Deployment")[f"grid-dask-grid-{region}-scheduler"]["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


@pytest.mark.parametrize("source", ["secret", "configMap"])
def test_tls_schedulers_check_the_revocation_list(render: Any, source: str) -> None:
    values = coalesce(EVERYTHING, {"tls": {"crl": {"secret": "", "configMap": "", source: "grid-crl"}}})
    docs = render(values)
    for region in ("eu", "us"):
        pod, c = _scheduler(docs, region)
        args = c["args"]
        assert args[args.index("--crl-file") + 1] == "/etc/grid/crl/crl.pem"
        assert args.index("--crl-file") < args.index("--scheduler-file")  # extraArgs stay last
        volume = {v["name"]: v for v in pod["volumes"]}["crl"]
        ref = volume[source]
        assert ref.get("secretName", ref.get("name")) == "grid-crl"
        assert ref["items"] == [{"key": "crl.pem", "path": "crl.pem"}]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "crl"]
        # a directory mount (no subPath): the kubelet swaps in a changed Secret, the scheduler rereads it
        assert mount == {"name": "crl", "mountPath": "/etc/grid/crl", "readOnly": True}


def test_tls_without_a_revocation_list_fails_unless_opted_out(render: Any) -> None:
    values = coalesce(EVERYTHING, {"tls": {"crl": {"secret": ""}}})
    message = render_error(render, values)
    assert "no revocation list" in message and "tls.crl.secret" in message and "tls.crl.required=false" in message
    both = render_error(render, coalesce(EVERYTHING, {"tls": {"crl": {"configMap": "grid-crl"}}}))
    assert "not both" in both
    docs = render(coalesce(values, {"tls": {"crl": {"required": False}}}))
    pod, c = _scheduler(docs)
    assert "--crl-file" not in c["args"] and "crl" not in {v["name"] for v in pod["volumes"]}
    # plaintext grids have no certificates to revoke: no list, no failure
    pod, c = _scheduler(render({"tls": {"enabled": False, "crl": {"secret": "grid-crl"}}}))
    assert "--crl-file" not in c["args"] and "crl" not in {v["name"] for v in pod["volumes"]}


# --- images, threads, packages, mounts -----------------------------------------------------
def test_component_images_override_the_global_one(render: Any) -> None:
    docs = render(EVERYTHING)
    deployments = by_kind(docs, "Deployment")
    image = {name: containers(d)[-1]["image"] for name, d in deployments.items()}
    policy = {name: containers(d)[-1]["imagePullPolicy"] for name, d in deployments.items()}
    assert image["grid-dask-grid-eu-scheduler"] == image["grid-dask-grid-us-scheduler"] == "dask-grid:0.1.0-debug"
    assert policy["grid-dask-grid-eu-scheduler"] == "Always"
    assert image["grid-dask-grid-eu-node"] == "registry.example.org/gpu/dask-grid:0.1.0"  # a region's own repository
    assert image["grid-dask-grid-us-node"] == image["grid-dask-grid-dashboard"] == "dask-grid:0.1.0"
    assert policy["grid-dask-grid-us-node"] == "IfNotPresent"
    # an init container installs extra packages with the image of its pod
    for name, d in deployments.items():
        install, main = containers(d)
        assert install["image"] == main["image"], name
    docs = render({"image": {"repository": "registry.example.org/science/dask-grid", "tag": "7"}})
    assert {containers(d)[-1]["image"] for d in by_kind(docs, "Deployment").values()} == {"registry.example.org/science/dask-grid:7"}


def test_extra_pip_packages_are_installed_into_the_pods_home(render: Any) -> None:
    docs = render({"extraPipPackages": " dask-ml==2024.4.4  xgboost ", "dashboard": {"enabled": True}})
    for d in by_kind(docs, "Deployment").values():
        install, main = containers(d)
        assert install["command"] == ["python", "-m", "pip", "install", "dask-ml==2024.4.4", "xgboost"]
        assert env_of(install)["PIP_USER"] == "1" and env_of(install)["PYTHONUSERBASE"] == "/home/grid/.local"
        assert env_of(main)["PYTHONUSERBASE"] == "/home/grid/.local"  # the grid process imports what pip put there
        assert {m["mountPath"] for m in install["volumeMounts"]} >= {"/home/grid"}


@pytest.mark.parametrize(
    "worker, nthreads",
    [
        ({"resources": {"limits": {"cpu": "1500m"}}}, "2"),
        ({"resources": {"limits": {"cpu": 2}}}, "2"),
        ({"resources": {"limits": {"cpu": "0.1"}}}, "1"),
        ({"resources": {"requests": {"cpu": 3}}}, "3"),
        ({"resources": {"limits": {"cpu": "250m"}, "requests": {"cpu": 4}}}, "1"),  # the limit first
        ({"resources": {"limits": {"memory": "4Gi"}, "requests": {"cpu": "2.5"}}}, "3"),
        ({"nthreads": 4, "resources": {"limits": {"cpu": 2}}}, "4"),  # an explicit nthreads wins
        ({"resources": {"limits": {"memory": "4Gi"}}}, None),
    ],
)
def test_node_threads_follow_its_cpu(render: Any, worker: dict[str, Any], nthreads: str | None) -> None:
    docs = render({"regions": [{"name": "eu", "worker": worker}]})
    (n,) = by_kind(docs, "Deployment")["grid-dask-grid-eu-node"]["spec"]["template"]["spec"]["containers"]
    if nthreads is None:
        assert "--nthreads" not in n["args"]
    else:
        assert n["args"][n["args"].index("--nthreads") + 1] == nthreads


def test_mounts_reach_the_pod_and_the_grid_container(render: Any) -> None:
    docs = render(EVERYTHING)
    deployments = by_kind(docs, "Deployment")
    for name, volume, path in (("grid-dask-grid-eu-node", "data", "/data"), ("grid-dask-grid-dashboard", "extra", "/extra")):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert volume in {v["name"] for v in pod["volumes"]}
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts[volume]["mountPath"] == path
    data = {m["name"]: m for m in deployments["grid-dask-grid-eu-node"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}["data"]
    assert data["readOnly"] is True
    node = deployments["grid-dask-grid-eu-node"]["spec"]["template"]["spec"]["containers"][0]
    assert node["args"][-2:] == ["--data-root", "/data"]  # worker.extraArgs name the mount to the node
    # a region's own mounts replace the defaults (lists are replaced, not merged)
    docs = render(coalesce(EVERYTHING, {"regions": [{"name": "eu", "worker": {"mounts": {"volumes": [], "volumeMounts": []}}}]}))
    pod = by_kind(docs, "Deployment")["grid-dask-grid-eu-node"]["spec"]["template"]["spec"]
    assert "data" not in {v["name"] for v in pod["volumes"]}


# --- monitoring -----------------------------------------------------------------------------
def test_service_monitor_scrapes_every_scheduler(render: Any) -> None:
    docs = render(EVERYTHING)
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "science" and monitor["metadata"]["labels"]["release"] == "prom"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "targetLabels", "endpoints", "jobLabel"}
    selected = [
        s for s in by_kind(docs, "Service").values()
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]  # fmt: skip
    assert sorted(s["metadata"]["name"] for s in selected) == ["grid-dask-grid-eu-scheduler", "grid-dask-grid-us-scheduler"]
    assert spec["namespaceSelector"] == {"matchNames": ["science"]}
    (endpoint,) = spec["endpoints"]
    assert endpoint == {"port": "dashboard", "path": "/metrics", "scheme": "http", "interval": "30s", "scrapeTimeout": "10s"}
    deployments = by_kind(docs, "Deployment")
    for service in selected:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        for label in spec["targetLabels"]:
            assert label in service["metadata"]["labels"]
        # the Service port leads to the container port the scheduler serves /metrics on
        scheduler = deployments[service["metadata"]["name"]]["spec"]["template"]["spec"]["containers"][0]
        (target,) = [p for p in scheduler["ports"] if p["name"] == port["targetPort"]]
        assert scheduler["args"][scheduler["args"].index("--dashboard-address") + 1] == f":{target['containerPort']}"


def test_helm_refuses_bad_values(render: Any) -> None:
    assert "EU" in render_error(render, {"regions": [{"name": "EU"}]})
    assert "appears twice" in render_error(render, {"regions": [{"name": "eu"}, {"name": "eu"}]})


def test_helm_lint_finds_no_problem() -> None:
    helm = shutil.which("helm")
    if helm is not None:
        proc = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    report = helm_sdk().lint(str(CHART))
    assert report["errors"] == [] and report["messages"] == [], report
