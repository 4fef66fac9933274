"""infra/ stays consistent with configs/: every manifest (and every kustomization, rendered) fits the Kubernetes
and KubeRay schemas, KubeRay CRDs have their required fields, every accelerator a config asks for is provided by a
GPU worker group, one image name is used everywhere, and the Airflow DAG's task runs."""

from __future__ import annotations

import copy
import functools
import gzip
import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from configs import load_config
from tests.helpers import REPO

INFRA = REPO / "infra"
MANIFESTS = sorted(INFRA.rglob("*.yaml"))
IMAGE = "ghcr.io/imagefleet/imagefleet"


def docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def test_manifests_parse() -> None:
    assert MANIFESTS and all(isinstance(d, dict) for _, d in docs())


# --- schemas: what `kubectl apply` (strict field validation, its default since Kubernetes 1.27) would refuse --------

K8S_VERSION = "1.34"  # a recent Kubernetes; kubernetes-validate bundles its OpenAPI schemas (no network)
KUBERAY_SCHEMAS = REPO / "tests" / "support" / "kuberay_schemas"  # KubeRay v1.5.2 CRDs, see the README there
KUSTOMIZATIONS = sorted(p.parent for p in INFRA.rglob("kustomization.yaml"))
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "namePrefix", "configMapGenerator", "images", "patches"}


def _where(path: Iterable[Any]) -> str:
    """A JSON path as `spec.workerGroupSpecs[1].rayStartParams`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as a JSON Schema that, like the API server under strict field validation, refuses
    keys an object does not list (plain JSON Schema, and the CRD's own pruning, would let a typo through)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = _strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    if out.get("nullable") and "type" in out:  # OpenAPI 3.0's spelling of "or null"
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _kuberay_validator(kind: str) -> jsonschema.Draft4Validator:
    path = KUBERAY_SCHEMAS / f"{kind.lower()}.json.gz"
    if not path.exists():
        raise ValueError(f"no KubeRay schema for kind {kind!r} in {KUBERAY_SCHEMAS} (see its README)")
    # Draft 4: the JSON Schema draft that OpenAPI 3.0's schema objects (and so CRDs) are a dialect of
    return jsonschema.Draft4Validator(_strict(json.loads(gzip.decompress(path.read_bytes()))))


@functools.cache
def _k8s_errors_of(doc_json: str) -> tuple[str, ...]:
    doc = json.loads(doc_json)
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:  # the best-matching error only: fix it and rerun
        return (f"{_where(e.absolute_path) or '(document)'}: {e.message}",)
    except kubernetes_validate.SchemaNotFoundError as e:
        return (f"(document): {e.message}",)
    return ()


def _k8s_errors(doc: dict[str, Any]) -> list[str]:
    """Errors of a built-in object against the Kubernetes K8S_VERSION schema (cached: overlays repeat the base)."""
    return list(_k8s_errors_of(json.dumps(doc, sort_keys=True)))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Why the schemas refuse `doc`, one readable line per error (`path: message`); [] when it fits.

    Built-in kinds are checked against Kubernetes K8S_VERSION (kubernetes-validate, strict). ray.io/v1 kinds are
    checked against the KubeRay CRD's own schema made strict (_strict), embedded pod templates included; the one
    part a CRD schema leaves open, the object's own metadata, is checked as Kubernetes' ObjectMeta (inside a
    stand-in ConfigMap)."""
    if doc.get("apiVersion") != "ray.io/v1":
        return _k8s_errors(doc)
    found = sorted(_kuberay_validator(doc["kind"]).iter_errors(doc), key=lambda e: _where(e.absolute_path))
    errors = [f"{_where(e.absolute_path) or '(document)'}: {e.message}" for e in found]
    return errors + _k8s_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata")})


def _json_patch(doc: dict[str, Any], op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove), as kustomize applies a `patches:` entry given as a list."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        if op["op"] == "add":
            node.insert(len(node) if last == "-" else int(last), op["value"])
        elif op["op"] == "replace":
            node[int(last)] = op["value"]
        else:
            del node[int(last)]
    elif op["op"] in ("replace", "remove") and last not in node:
        raise KeyError(last)
    elif op["op"] == "remove":
        del node[last]
    else:
        node[last] = op["value"]


def kustomize_build(folder: Path) -> list[dict[str, Any]]:
    """`kustomize build folder` the simple way, for the kustomization fields infra/ uses (KUSTOMIZE_FIELDS).

    Enough to validate what gets deployed: resources (files and folders), configMapGenerator (`files:`), patches as
    RFC 6902 lists targeted by kind and name, then namePrefix. Not done, as none changes whether an object fits
    its schema: name references are not rewritten, generated ConfigMaps get no hash suffix, `images:` retags
    nothing. A field beyond these fails here instead of being skipped (teach this function, or use kustomize)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: kustomize_build does not know {sorted(unknown)}"
    out: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        out += kustomize_build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, f"{folder}: kustomize_build does not know {generator}"
        data = {Path(f).name: (folder / f).read_text() for f in generator["files"]}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for patch in kustomization.get("patches", []):
        target, operations = patch["target"], yaml.safe_load(patch["patch"])
        assert set(target) <= {"kind", "name"} and isinstance(operations, list), f"{folder}: unsupported {patch}"
        assert all(o["op"] in ("add", "replace", "remove") for o in operations), f"{folder}: unsupported {patch}"
        matched = [d for d in out if target.get("kind", d["kind"]) == d["kind"]
                   and target.get("name", d["metadata"]["name"]) == d["metadata"]["name"]]
        assert matched, f"{folder}: patch target {target} matches no resource"
        for doc in matched:
            for op in operations:
                try:
                    _json_patch(doc, op)
                except (KeyError, IndexError, ValueError) as e:
                    raise AssertionError(f"{folder}: patch {op} does not apply to {target}: {e!r}") from None
    for doc in out:
        doc["metadata"]["name"] = kustomization.get("namePrefix", "") + doc["metadata"]["name"]
    return out


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name != "kustomization.yaml"],
                         ids=lambda p: str(p.relative_to(INFRA)))
def test_manifest_fits_the_kubernetes_and_kuberay_schemas(path: Path) -> None:
    """Every document of every manifest file, rayjob.yaml included (it is deployed from inside a ConfigMap)."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    errors = [f"{d['kind']}/{d['metadata']['name']} {e}" for d in documents for e in schema_errors(d)]
    assert documents and not errors, "\n".join(errors)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(INFRA)))
def test_kustomization_renders_objects_that_fit_the_schemas(folder: Path) -> None:
    rendered = kustomize_build(folder)
    names = [(d["kind"], d["metadata"]["name"]) for d in rendered]
    assert len(names) == len(set(names)), f"kustomize refuses duplicate resources: {names}"
    assert {"RayCluster", "RayService", "CronJob", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"} <= {
        kind for kind, _ in names}
    errors = [f"{kind}/{name} {e}" for d, (kind, name) in zip(rendered, names, strict=True) for e in schema_errors(d)]
    assert not errors, "\n".join(errors)


def test_a_broken_overlay_patch_is_refused(tmp_path: Path) -> None:
    """Overlays are validated after patching: a patch that writes a wrong type, or misses its path, fails."""
    def overlay(op: dict[str, Any]) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        patch = {"target": {"kind": "RayCluster", "name": "imagefleet"}, "patch": yaml.safe_dump([op])}
        (folder / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [str(INFRA / "base")],
                                                                   "patches": [patch]}))
        return folder

    wrong_type = {"op": "replace", "path": "/spec/workerGroupSpecs/1/maxReplicas", "value": "2"}
    cluster = next(d for d in kustomize_build(overlay(wrong_type)) if d["kind"] == "RayCluster")
    assert schema_errors(cluster) == ["spec.workerGroupSpecs[1].maxReplicas: '2' is not of type 'integer'"]
    with pytest.raises(AssertionError, match="does not apply"):
        kustomize_build(overlay({"op": "replace", "path": "/spec/workerGroupSpecs/9/maxReplicas", "value": 2}))


KUSTOMIZE = ["kustomize", "build"] if shutil.which("kustomize") else ["kubectl", "kustomize"]


@pytest.mark.skipif(shutil.which(KUSTOMIZE[0]) is None, reason="neither kustomize nor kubectl is installed")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(INFRA)))
def test_real_kustomize_agrees_and_its_output_fits_the_schemas(folder: Path) -> None:
    """Where kustomize is at hand, its own rendering validates too, and matches kustomize_build on the CRDs."""
    done = subprocess.run([*KUSTOMIZE, str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    errors = [f"{d['kind']}/{d['metadata']['name']} {e}" for d in rendered for e in schema_errors(d)]
    assert not errors, "\n".join(errors)

    def crds(documents: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
        return {(d["kind"], d["metadata"]["name"]): d["spec"] for d in documents if d["apiVersion"] == "ray.io/v1"}

    assert crds(kustomize_build(folder)) == crds(rendered)


def _by_kind(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for _, d in docs() if d.get("kind") == kind))


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for part in parents:
        node = node[part]
    node[last] = value
    return doc


def _rename(doc: dict[str, Any], path: str, new: str) -> dict[str, Any]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for part in parents:
        node = node[part]
    node[new] = node.pop(last)
    return doc


BROKEN: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "misspelt KubeRay field": (
        lambda: _rename(_by_kind("RayCluster"), "spec.workerGroupSpecs.1.rayStartParams", "rayStartParam"),
        "spec.workerGroupSpecs[1]: Additional properties are not allowed ('rayStartParam' was unexpected)"),
    "KubeRay count as a string": (
        lambda: _set(_by_kind("RayJob"), "spec.rayClusterSpec.workerGroupSpecs.0.maxReplicas", "8"),
        "spec.rayClusterSpec.workerGroupSpecs[0].maxReplicas: '8' is not of type 'integer'"),
    "KubeRay required field missing": (
        lambda: _rename(_by_kind("RayService"), "spec.rayClusterConfig.headGroupSpec", "headGroup"),
        "spec.rayClusterConfig: 'headGroupSpec' is a required property"),
    "misspelt container field in a Ray pod": (
        lambda: _rename(_by_kind("RayCluster"), "spec.headGroupSpec.template.spec.containers.0.envFrom", "envfrom"),
        "spec.headGroupSpec.template.spec.containers[0]: Additional properties are not allowed ('envfrom' was"),
    "label value not a string in a Ray pod's metadata": (
        lambda: _set(_by_kind("RayCluster"), "spec.workerGroupSpecs.0.template.metadata", {"labels": {"tier": 1}}),
        "spec.workerGroupSpecs[0].template.metadata.labels.tier: 1 is not of type 'string'"),
    "misspelt metadata field of a KubeRay object": (
        lambda: _rename(_by_kind("RayService"), "metadata.name", "nmae"),
        "metadata: Additional properties are not allowed ('nmae' was unexpected)"),
    "misspelt CronJob field": (
        lambda: _rename(_by_kind("CronJob"), "spec.jobTemplate.spec.template.spec.restartPolicy", "restartpolicy"),
        "spec.jobTemplate.spec.template.spec: Additional properties are not allowed ('restartpolicy' was"),
    "RBAC verbs not a list": (
        lambda: _set(_by_kind("Role"), "rules.0.verbs", "create"),
        "rules[0].verbs: 'create' is not of type 'array'"),
    "API version Kubernetes removed": (
        lambda: _set(_by_kind("CronJob"), "apiVersion", "batch/v1beta1"),
        "Couldn't find schema for kind CronJob with api version batch/v1beta1"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_manifest_is_refused_with_a_readable_message(case: str) -> None:
    """The schema checks bite: each broken copy of a real manifest is refused, and the message says where."""
    make, expected = BROKEN[case]
    errors = schema_errors(make())
    assert any(expected in e for e in errors), errors


def _cluster_specs() -> list[dict[str, Any]]:
    specs = []
    for _, d in docs():
        if d.get("kind") == "RayCluster":
            specs.append(d["spec"])
        if d.get("kind") == "RayJob":
            specs.append(d["spec"]["rayClusterSpec"])
        if d.get("kind") == "RayService":
            specs.append(d["spec"]["rayClusterConfig"])
    return specs


def test_kuberay_required_fields() -> None:
    specs = _cluster_specs()
    assert len(specs) >= 2
    for spec in specs:
        assert "headGroupSpec" in spec and spec["headGroupSpec"]["template"]["spec"]["containers"]
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"  # no work on the head
        groups = spec["workerGroupSpecs"]
        assert any(not g["groupName"].startswith("gpu") for g in groups)
        for g in groups:
            for field in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
                assert field in g, (g.get("groupName"), field)
            assert g["minReplicas"] <= g["maxReplicas"]
            res = g["template"]["spec"]["containers"][0]["resources"]
            if g["groupName"].startswith("gpu"):
                assert res["requests"]["nvidia.com/gpu"] >= 1 and g["template"]["spec"].get("nodeSelector")
    rayjobs = [d for _, d in docs() if d.get("kind") == "RayJob"]
    assert rayjobs and rayjobs[0]["spec"]["entrypoint"].startswith("imagefleet run ")


def _accelerators(spec: dict[str, Any]) -> set[str]:
    found = set()
    for g in spec["workerGroupSpecs"]:
        raw = g["rayStartParams"].get("resources")
        if raw:
            found |= {k.split(":", 1)[1] for k in json.loads(json.loads(raw)) if k.startswith("accelerator_type:")}
    return found


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_config_accelerators_exist_in_infra(path: Path) -> None:
    provided = set().union(*(_accelerators(s) for s in _cluster_specs() if s.get("enableInTreeAutoscaling")))
    for name, gen in load_config(path).generators.items():
        if gen.pool.accelerator_type:
            assert gen.pool.accelerator_type in provided, f"{path.name}: {name} needs {gen.pool.accelerator_type}"


def test_one_image_everywhere() -> None:
    images = set()
    for p in MANIFESTS:
        images |= set(re.findall(r"image:\s*(\S+)", p.read_text()))
    ours = {i for i in images if i.startswith(IMAGE)}
    assert len(ours) == 1, ours
    kustomize = yaml.safe_load((INFRA / "base" / "kustomization.yaml").read_text())
    assert kustomize["images"][0]["name"] == IMAGE and ours == {f"{IMAGE}:{kustomize['images'][0]['newTag']}"}
    rayjob_cm = yaml.safe_load((INFRA / "base" / "kustomization.yaml").read_text())["configMapGenerator"][0]
    assert (INFRA / "base" / rayjob_cm["files"][0]).exists()


def test_rayservice_serves_an_app_builder_and_config_that_exist() -> None:
    services = [d for _, d in docs() if d.get("kind") == "RayService"]
    assert services
    for svc in services:
        serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
        for application in serve_cfg["applications"]:
            module, attr = application["import_path"].split(":")
            assert callable(getattr(importlib.import_module(module), attr))
            config = application["args"]["config"].replace("/opt/imagefleet/", "")
            load_config(REPO / config)


def test_app_builder_returns_a_lazy_serve_application(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve import Application

    from jobs.serve import app

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)  # serving touches no prompt table or output: no S3 keys needed
    built = app({"config": str(REPO / "configs" / "local_tiny.yaml"), "set": ["serve.port=8123"]})
    assert isinstance(built, Application)  # nothing started: binding deployments is lazy
    with pytest.raises(ValueError, match="needs args"):
        app({})


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    pods = []
    for spec in _cluster_specs():
        pods.append(("head", spec["headGroupSpec"]["template"]["spec"]))
        pods.extend((g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"])
    return pods


def test_every_ray_pod_gets_the_secrets() -> None:
    """Jobs `imagefleet submit` sends to the RayCluster read S3 and API keys from the nodes' environment."""
    for group, pod in _pod_specs():
        for container in pod["containers"]:
            refs = [e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])]
            assert "imagefleet-secrets" in refs, f"{group}/{container['name']} gets no imagefleet-secrets"


def test_cronjob_service_account_may_replace_the_rayjob() -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _, d in docs():
        by_kind.setdefault(d["kind"], []).append(d)
    cron = by_kind["CronJob"][0]
    account = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert account in {sa["metadata"]["name"] for sa in by_kind["ServiceAccount"]}
    binding = next(b for b in by_kind["RoleBinding"] if any(s["name"] == account for s in b["subjects"]))
    role = next(r for r in by_kind["Role"] if r["metadata"]["name"] == binding["roleRef"]["name"])
    allowed = {v for rule in role["rules"] if "rayjobs" in rule["resources"] for v in rule["verbs"]}
    assert {"create", "delete"} <= allowed  # what `kubectl delete rayjob … && kubectl create -f …` needs
    listed = yaml.safe_load((INFRA / "base" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (INFRA / "base").glob("*.yaml")
                                    if p.name not in ("kustomization.yaml", "rayjob.yaml"))


def test_airflow_task_runs_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG's task, run the way Airflow's BashOperator runs it: the DAG file parsed (against stand-in `airflow`
    modules: Airflow is not a dependency and the DAG file imports it unconditionally), the command's Jinja template
    rendered for a logical date with undefined names as errors (Airflow's default), then `bash -c` in a fresh
    temporary folder with the installed `imagefleet` script on PATH, and the exit status decides the task.
    Stand-ins appended to the command (a later --set wins) swap the cluster, the prompt table and the output for
    local ones, and --dry-run stops before any model or GPU is asked for."""
    import os
    import shlex
    import sys
    import sysconfig
    import types

    import jinja2

    captured: dict[str, Any] = {}

    class Dag:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __enter__(self) -> Dag:
            return self

        def __exit__(self, *args: Any) -> None:
            pass

    def bash_operator(**kwargs: Any) -> None:
        captured.update(kwargs)

    airflow = types.ModuleType("airflow")
    airflow.DAG = Dag  # type: ignore[attr-defined]
    bash = types.ModuleType("airflow.operators.bash")
    bash.BashOperator = bash_operator  # type: ignore[attr-defined]
    for name, module in (("airflow", airflow), ("airflow.operators", types.ModuleType("airflow.operators")),
                         ("airflow.operators.bash", bash)):
        monkeypatch.setitem(sys.modules, name, module)
    exec(compile((INFRA / "airflow" / "imagefleet_dag.py").read_text(), "imagefleet_dag.py", "exec"), {})
    assert captured["task_id"] == "generate_images"
    context = {"ds": "2026-11-24", "ds_nodash": "20261124", "ts": "2026-11-24T02:00:00+00:00"}
    command = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(captured["bash_command"]).render(
        context)
    argv = shlex.split(command)
    assert argv[:2] == ["imagefleet", "run"] and Path(argv[2]).is_absolute() and Path(argv[2]).exists()
    assert "output.uri=s3://imagefleet-prod/outputs/2026-11-24" in argv  # one output folder per logical date

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "p.parquet")
    work = tmp_path / "airflowtmp"  # BashOperator's default working directory: a new temporary folder
    work.mkdir()
    scripts = sysconfig.get_path("scripts")
    assert (Path(scripts) / "imagefleet").exists(), f"no `imagefleet` script in {scripts}: install the package"
    # a local stand-in for the cluster, with fake GPUs of no particular type: a dry run checks the pools fit the
    # Ray it would start
    stand_ins = shlex.join(["--set", "cluster.address=local", "--set", "cluster.num_gpus=4",
                            "--set", "cluster.num_cpus=128",
                            "--set", "generators.turbo.pool.accelerator_type=",
                            "--set", f"output.uri={tmp_path / 'out'}",
                            "--set", f"source.uri={tmp_path / 'p.parquet'}", "--dry-run"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as on an Airflow worker: the installed package
    env["PATH"] = f"{scripts}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", f"{command} {stand_ins}"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dry run:" in done.stdout, done.stdout[-2000:]


def test_the_image_ships_every_package_the_wheel_has() -> None:
    """`import imagefleet` (the Python API) must work inside the image, not only the CLI's packages."""
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (INFRA / "Dockerfile").read_text()
    for package in (p.rstrip("*") for p in include):
        assert f"COPY {package} ./{package}" in dockerfile, f"infra/Dockerfile does not copy {package}/"


def test_the_dag_connects_to_the_head_service_kuberay_creates() -> None:
    """KubeRay names the head service `<RayCluster name>-head-svc`; the DAG's default address must be it."""
    cluster = _by_kind("RayCluster")["metadata"]["name"]
    source = (INFRA / "airflow" / "imagefleet_dag.py").read_text()
    default = re.search(r'"IMAGEFLEET_RAY_ADDRESS", "([^"]+)"', source)
    assert default and default.group(1) == f"ray://{cluster}-head-svc:10001"
