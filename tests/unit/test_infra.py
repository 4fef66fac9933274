"""infra/ stays consistent with configs/ and deploys as shipped: every manifest (and every kustomization, rendered)
fits the Kubernetes and KubeRay schemas, KubeRay CRDs have their required fields, every accelerator a config asks for
is provided by a GPU worker group, one image name is used everywhere; the overlays, rendered, can share a namespace
(no kind and name twice), run their own image in every container and their own config nightly, with retries and a
deadline on every job; the Airflow DAG submits a Ray job with Airflow 3's imports, and its task runs; the README's
deploy section is what renders."""

from __future__ import annotations

import ast
import copy
import functools
import gzip
import importlib
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from imagefleet.configs import load_config
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
KUBERAY_SCHEMAS = REPO / "tests" / "support" / "kuberay_schemas"  # KubeRay v1.6.2 CRDs, see the README there
KUSTOMIZATIONS = sorted(p.parent for p in INFRA.rglob("kustomization.yaml"))
OVERLAYS = sorted(p for p in (INFRA / "overlays").iterdir() if (p / "kustomization.yaml").exists())
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "namespace", "namePrefix", "images",
                    "patches"}


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


def containers(node: Any) -> Iterable[dict[str, Any]]:
    """Every container spec in an object, at any depth (a RayCronJob's job template included): each item of a
    `containers` or `initContainers` list, which is where kustomize's image transformer looks too."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


def _image_name(image: str) -> str:
    """`registry/repo:tag@digest` -> `registry/repo` (a registry's `:port` is not a tag)."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def _retag(image: str, entry: dict[str, str]) -> str:
    """An `images:` entry applied to one image, as kustomize does: newName, then newTag or digest."""
    name = entry.get("newName", _image_name(image))
    if "digest" in entry:
        return f"{name}@{entry['digest']}"
    if "newTag" in entry:
        return f"{name}:{entry['newTag']}"
    return name + image[len(_image_name(image)):]


def kustomize_build(folder: Path) -> list[dict[str, Any]]:
    """`kustomize build folder` the simple way, for the kustomization fields infra/ uses (KUSTOMIZE_FIELDS).

    Resources (files and folders), configMapGenerator (`files:`), patches as RFC 6902 lists targeted by kind and
    name, namespace, namePrefix, and `images:` retagging every container found at any depth (as kustomize's image
    transformer does). Not done, as infra/ has no references between its objects: name references are not
    rewritten, and generated ConfigMaps get no hash suffix. A field beyond these fails here instead of being
    skipped (teach this function, or use kustomize); where kustomize is installed,
    test_real_kustomize_agrees_and_its_output_fits_the_schemas checks that both render the same."""
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
        if "namespace" in kustomization:
            doc["metadata"]["namespace"] = kustomization["namespace"]
        for container in containers(doc):
            for entry in kustomization.get("images", []):
                assert set(entry) <= {"name", "newName", "newTag", "digest"}, f"{folder}: unsupported {entry}"
                if "image" in container and _image_name(container["image"]) == entry["name"]:
                    container["image"] = _retag(container["image"], entry)
    return out


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name != "kustomization.yaml"],
                         ids=lambda p: str(p.relative_to(INFRA)))
def test_manifest_fits_the_kubernetes_and_kuberay_schemas(path: Path) -> None:
    """Every document of every manifest file, as written (the overlays' renderings are checked below)."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    errors = [f"{d['kind']}/{d['metadata']['name']} {e}" for d in documents for e in schema_errors(d)]
    assert documents and not errors, "\n".join(errors)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(INFRA)))
def test_kustomization_renders_objects_that_fit_the_schemas(folder: Path) -> None:
    rendered = kustomize_build(folder)
    names = [(d["kind"], d["metadata"]["name"]) for d in rendered]
    assert len(names) == len(set(names)), f"kustomize refuses duplicate resources: {names}"
    assert {"RayCluster", "RayCronJob", "RayService"} <= {kind for kind, _ in names}
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
NO_KUSTOMIZE = pytest.mark.skipif(shutil.which(KUSTOMIZE[0]) is None, reason="neither kustomize nor kubectl is "
                                  "installed (Debian: `apt-get install kubectl`)")


@functools.cache
def _kustomize_output(folder: Path) -> str:
    done = subprocess.run([*KUSTOMIZE, str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def real_kustomize(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` sends: `kubectl kustomize folder` (or `kustomize build`), parsed."""
    return [d for d in yaml.safe_load_all(_kustomize_output(folder)) if d]


# the overlay checks below run on both renderings: kustomize's own where installed, and kustomize_build everywhere
RENDERERS = [pytest.param(kustomize_build, id="kustomize_build"),
             pytest.param(real_kustomize, id=" ".join(KUSTOMIZE), marks=NO_KUSTOMIZE)]


@NO_KUSTOMIZE
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(INFRA)))
def test_real_kustomize_agrees_and_its_output_fits_the_schemas(folder: Path) -> None:
    """Where kustomize is at hand, its own rendering validates too, and matches kustomize_build on the CRDs."""
    rendered = real_kustomize(folder)
    errors = [f"{d['kind']}/{d['metadata']['name']} {e}" for d in rendered for e in schema_errors(d)]
    assert not errors, "\n".join(errors)

    def crds(documents: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], Any]:
        return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d["spec"]
                for d in documents if d["apiVersion"] == "ray.io/v1"}

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
        lambda: _set(_by_kind("RayCronJob"), "spec.jobTemplate.rayClusterSpec.workerGroupSpecs.0.maxReplicas", "8"),
        "spec.jobTemplate.rayClusterSpec.workerGroupSpecs[0].maxReplicas: '8' is not of type 'integer'"),
    "misspelt RayJob field in a RayCronJob's template": (
        lambda: _rename(_by_kind("RayCronJob"), "spec.jobTemplate.backoffLimit", "backofflimit"),
        "spec.jobTemplate: Additional properties are not allowed ('backofflimit' was unexpected)"),
    "deadline as a duration string": (
        lambda: _set(_by_kind("RayCronJob"), "spec.jobTemplate.activeDeadlineSeconds", "6h"),
        "spec.jobTemplate.activeDeadlineSeconds: '6h' is not of type 'integer'"),
    "misspelt container field in the submitter pod": (
        lambda: _rename(_by_kind("RayCronJob"), "spec.jobTemplate.submitterPodTemplate.spec.restartPolicy",
                        "restartpolicy"),
        "spec.jobTemplate.submitterPodTemplate.spec: Additional properties are not allowed ('restartpolicy' was"),
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
    "label value not a string in a KubeRay object's metadata": (
        lambda: _set(_by_kind("RayCronJob"), "metadata.labels", {"tier": 1}),
        "metadata.labels.tier: 1 is not of type 'string'"),
    "API version KubeRay does not serve": (
        lambda: _set(_by_kind("RayCronJob"), "apiVersion", "ray.io/v1alpha1"),
        "Couldn't find schema for kind RayCronJob with api version ray.io/v1alpha1"),
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
        if d.get("kind") == "RayCronJob":
            specs.append(d["spec"]["jobTemplate"]["rayClusterSpec"])
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
    nightly = [d for _, d in docs() if d.get("kind") == "RayCronJob"]
    assert nightly and all(d["spec"]["jobTemplate"]["entrypoint"].startswith("imagefleet run ") for d in nightly)


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

    from imagefleet.jobs.serve import app

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)  # serving touches no prompt table or output: no S3 keys needed
    monkeypatch.chdir(tmp_path)  # the config's model folder (relative to where it runs) must exist: a stand-in
    (tmp_path / ".imagefleet" / "models" / "tiny-sd").mkdir(parents=True)
    (tmp_path / ".imagefleet" / "models" / "tiny-sd" / "model_index.json").write_text("{}")
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


def test_base_lists_every_manifest_it_holds() -> None:
    """A manifest in infra/base that the kustomization does not list would never be deployed."""
    listed = yaml.safe_load((INFRA / "base" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (INFRA / "base").glob("*.yaml") if p.name != "kustomization.yaml")


# --- the overlays as deployed: `kubectl apply -k infra/overlays/<name>` --------------------------------------------

Render = Callable[[Path], list[dict[str, Any]]]


def deployed(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects a rendering puts in the cluster: those rendered, plus every Kubernetes object a rendered
    ConfigMap carries as a manifest for something in the cluster to create later. Kustomize neither prefixes the
    names nor retags the images of those (a ConfigMap's payload is text to it), so the checks below must see them."""
    out = list(objects)
    for doc in objects:
        if doc["kind"] != "ConfigMap":
            continue
        for text in (doc.get("data") or {}).values():
            try:
                carried = [c for c in yaml.safe_load_all(text)
                           if isinstance(c, dict) and {"apiVersion", "kind"} <= set(c)]
            except yaml.YAMLError:
                continue
            for c in carried:  # created in the namespace of whoever applies it: the ConfigMap's
                c.setdefault("metadata", {}).setdefault("namespace", doc["metadata"].get("namespace"))
            out += carried
    return out


def _kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


@pytest.mark.parametrize("render", RENDERERS)
def test_overlays_can_share_a_namespace(render: Render) -> None:
    """Every overlay sets its namespace, and no kind and name is deployed by two overlays: applied to one namespace,
    prod and staging neither overwrite nor delete each other's objects (KubeRay derives the names of what it
    creates from these: `<RayCluster>-head-svc`, `<RayCronJob>-<random>`, so those stay apart too)."""
    assert len(OVERLAYS) >= 2, OVERLAYS
    owner: dict[tuple[str, str], str] = {}
    clashes, misplaced = [], []
    for overlay in OVERLAYS:
        namespace = _kustomization(overlay).get("namespace")
        for doc in deployed(render(overlay)):
            key = (doc["kind"], doc["metadata"]["name"])
            if owner.setdefault(key, overlay.name) != overlay.name:
                clashes.append(f"{key[0]}/{key[1]}: {owner[key]} and {overlay.name}")
            if namespace is None or doc["metadata"].get("namespace") != namespace:
                misplaced.append(f"{overlay.name}: {key[0]}/{key[1]} in {doc['metadata'].get('namespace')!r}, "
                                 f"overlay namespace {namespace!r}")
    assert not clashes, "deployed by two overlays:\n" + "\n".join(clashes)
    assert not misplaced, "\n".join(misplaced)


def _overlay_image(folder: Path, image: str) -> str:
    """What kustomize makes of `image` in `folder`: its resources' `images:` entries first, then its own."""
    kustomization = _kustomization(folder)
    for resource in kustomization.get("resources", []):
        if (folder / resource / "kustomization.yaml").exists():
            image = _overlay_image(folder / resource, image)
    for entry in kustomization.get("images", []):
        if entry["name"] == _image_name(image):
            image = _retag(image, entry)
    return image


@pytest.mark.parametrize("render", RENDERERS)
def test_every_container_runs_the_overlays_image(render: Render) -> None:
    """Every container an overlay deploys, at any depth (the RayCronJob's submitter, head and workers included),
    runs the image the overlay's `images:` names: no image kustomize can't retag, and none from elsewhere."""
    written = {c["image"] for p in MANIFESTS if p.name != "kustomization.yaml"
               for d in yaml.safe_load_all(p.read_text()) if d for c in containers(d)}
    for overlay in OVERLAYS:
        expected = {_overlay_image(overlay, image) for image in written}
        images = {c.get("image") for doc in deployed(render(overlay)) for c in containers(doc)}
        assert images == expected == {_overlay_image(overlay, f"{IMAGE}:any")}, overlay.name


@pytest.mark.parametrize("render", RENDERERS)
@pytest.mark.parametrize("entry", [{"newTag": "retag-check"}, {"digest": "sha256:" + "0" * 64}],
                         ids=["tag", "digest"])
def test_an_overlays_retag_reaches_every_container(render: Render, entry: dict[str, str], tmp_path: Path) -> None:
    """An overlay that pins another tag or a digest gets it in every container of every object."""
    base = Path(shutil.copytree(INFRA / "base", tmp_path / "base"))  # kustomize loads bases from anywhere below
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": [f"../{base.name}"], "images": [{"name": IMAGE, **entry}]}))
    rendered = render(tmp_path / "overlay")
    expected = _retag(f"{IMAGE}:0.1.0", {"name": IMAGE, **entry})
    by_kind = {d["kind"]: [c["image"] for c in containers(d)] for d in deployed(rendered)}
    assert all(image == expected for images in by_kind.values() for image in images), by_kind
    assert len(by_kind.get("RayCronJob", [])) == 5, by_kind  # the submitter, the head and three worker groups


def _job_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec of each job an object runs or creates: a RayJob's, a RayCronJob's template, a Job's, a CronJob's."""
    spec = doc.get("spec", {})
    return {"RayJob": [spec], "RayCronJob": [spec.get("jobTemplate", {})], "Job": [spec],
            "CronJob": [spec.get("jobTemplate", {}).get("spec", {})]}.get(doc["kind"], [])


@pytest.mark.parametrize("render", RENDERERS)
def test_every_job_retries_and_has_a_deadline(render: Render) -> None:
    """Resume makes a retry cost only what is left, so every job retries (`backoffLimit`), and a deadline
    (`activeDeadlineSeconds`) stops one that hangs. A nightly job's worst case, every attempt running to its
    deadline (KubeRay counts the deadline per attempt), ends before the next night's starts: RayCronJob has no
    concurrencyPolicy to stop two running at once."""
    for overlay in OVERLAYS:
        jobs = [(doc, spec) for doc in deployed(render(overlay)) for spec in _job_specs(doc)]
        assert jobs, f"{overlay.name} runs no job"
        for doc, spec in jobs:
            where = f"{overlay.name}: {doc['kind']}/{doc['metadata']['name']}"
            assert spec.get("backoffLimit", 0) >= 1, f"{where} has no retries (backoffLimit)"
            assert spec.get("activeDeadlineSeconds", 0) > 0, f"{where} has no deadline (activeDeadlineSeconds)"
            if doc["kind"] in ("RayCronJob", "CronJob"):
                assert re.fullmatch(r"\d+ \d+ \* \* \*", doc["spec"]["schedule"]), f"{where}: not daily"
                worst_s = (spec["backoffLimit"] + 1) * spec["activeDeadlineSeconds"]
                assert worst_s < 24 * 3600, f"{where}: {worst_s} s of attempts can run into the next night"


@pytest.mark.parametrize("render", RENDERERS)
def test_each_overlays_nightly_runs_its_own_config(render: Render) -> None:
    """Each overlay's RayCronJob runs `imagefleet run` (a Ray job on its own cluster, not Ray Client) on a config
    the image ships (infra/Dockerfile copies configs/ to /opt/imagefleet/configs) that loads with its overrides,
    whose accelerators its own cluster provides, and that writes where no other overlay's nightly writes."""
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "WORKDIR /opt/imagefleet" in dockerfile and "COPY configs ./configs" in dockerfile
    writers: dict[str, list[str]] = {}
    for overlay in OVERLAYS:
        nightly = [d for d in render(overlay) if d["kind"] == "RayCronJob"]
        assert len(nightly) == 1, f"{overlay.name}: {len(nightly)} RayCronJobs"
        template = nightly[0]["spec"]["jobTemplate"]
        argv = shlex.split(template["entrypoint"])
        assert argv[:2] == ["imagefleet", "run"] and argv[2].startswith("/opt/imagefleet/configs/"), argv
        assert "ray://" not in template["entrypoint"]
        overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
        cfg = load_config(REPO / "configs" / Path(argv[2]).name, overrides)
        provided = _accelerators(template["rayClusterSpec"])
        for name, gen in cfg.generators.items():
            needed = gen.pool.accelerator_type
            assert not needed or needed in provided, f"{overlay.name}: {name} needs {needed}, cluster has {provided}"
        writers.setdefault(cfg.output.uri, []).append(overlay.name)
    assert all(len(v) == 1 for v in writers.values()), f"overlays writing the same output: {writers}"


# --- the Airflow DAG -----------------------------------------------------------------------------------------------

DAG_FILE = INFRA / "airflow" / "imagefleet_dag.py"
AIRFLOW_3_IMPORTS = {("airflow.sdk", "DAG"), ("airflow.providers.standard.operators.bash", "BashOperator")}


def _dag_constant(name: str) -> Any:
    tree = ast.parse(DAG_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{DAG_FILE.name} has no module-level {name} = <literal>")


def _head_dashboard(overlay: Path) -> str:
    """The Ray Jobs API of an overlay's RayCluster, at the head service KubeRay creates for it
    (`<RayCluster name>-head-svc` in the cluster's namespace) on the head's `dashboard` port."""
    cluster = next(d for d in kustomize_build(overlay) if d["kind"] == "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in head["ports"] if p["name"] == "dashboard")
    return f"http://{cluster['metadata']['name']}-head-svc.{cluster['metadata']['namespace']}.svc:{port}"


def test_the_dag_submits_a_ray_job_with_airflow_3_imports() -> None:
    """Airflow 3 paths (`airflow.sdk.DAG`, the standard provider's BashOperator), and a Ray job submitted to the
    dashboard (`imagefleet submit --wait`): no driver over Ray Client (`ray://`) inside the Airflow worker."""
    source = DAG_FILE.read_text()
    nodes = list(ast.walk(ast.parse(source)))
    imported = {(n.module, a.name) for n in nodes if isinstance(n, ast.ImportFrom)
                if (n.module or "").startswith("airflow") for a in n.names}
    plain = [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names if a.name.startswith("airflow")]
    assert imported == AIRFLOW_3_IMPORTS and not plain, (imported, plain)
    assert "ray://" not in source and "imagefleet submit " in source and " --wait" in source


def test_the_dag_connects_to_the_head_service_kuberay_creates() -> None:
    """The DAG's default address is the prod overlay's head service, as KubeRay names it, on the dashboard port."""
    assert _dag_constant("DASHBOARD") == _head_dashboard(INFRA / "overlays" / "prod")


def test_airflow_task_runs_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG's task, run the way Airflow 3's BashOperator runs it: the DAG file parsed against stand-in Airflow 3
    modules (Airflow is not a dependency; an import from any other Airflow path fails here), the command's Jinja
    template rendered for a logical date with undefined names as errors (Airflow's default), then `bash -c` in a
    fresh temporary folder with the installed `imagefleet` script on PATH, and the exit status decides the task.
    Its arguments, as bash expands them, are checked; then it runs against a dashboard address where nothing
    listens (IMAGEFLEET_RAY_DASHBOARD): the config loads with the DAG's overrides, and the submission stops at the
    connection with one line and exit 2 (test_submit_cli.py; tests/integration/test_submit.py submits for real)."""
    import os
    import sys
    import sysconfig
    import types

    import jinja2

    captured: dict[str, Any] = {}

    class Dag:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            captured["dag"] = kwargs

        def __enter__(self) -> Dag:
            return self

        def __exit__(self, *args: Any) -> None:
            pass

    def bash_operator(**kwargs: Any) -> None:
        captured.update(kwargs)

    modules = {name: types.ModuleType(name) for name in (
        "airflow", "airflow.sdk", "airflow.providers", "airflow.providers.standard",
        "airflow.providers.standard.operators", "airflow.providers.standard.operators.bash")}
    modules["airflow.sdk"].DAG = Dag  # type: ignore[attr-defined]
    modules["airflow.providers.standard.operators.bash"].BashOperator = bash_operator  # type: ignore[attr-defined]
    for name, module in modules.items():
        module.__path__ = []  # type: ignore[attr-defined]  # a package: its submodules are the stand-ins only
        monkeypatch.setitem(sys.modules, name, module)
    exec(compile(DAG_FILE.read_text(), DAG_FILE.name, "exec"), {})
    assert captured["task_id"] == "generate_images" and captured["retries"] >= 1
    context = {"ds": "2026-11-24", "ds_nodash": "20261124", "ts": "2026-11-24T02:00:00+00:00"}
    command = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(captured["bash_command"]).render(
        context)

    work = tmp_path / "airflowtmp"  # BashOperator's default working directory: a new temporary folder
    work.mkdir()
    scripts = sysconfig.get_path("scripts")
    assert (Path(scripts) / "imagefleet").exists(), f"no `imagefleet` script in {scripts}: install the package"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IMAGEFLEET_RAY_DASHBOARD")}
    env["PATH"] = f"{scripts}{os.pathsep}{env.get('PATH', '')}"  # as on an Airflow worker: the installed package
    expanded = subprocess.run(["bash", "-c", f"set -- {command}; printf '%s\\n' \"$@\""], cwd=work, env=env,
                              capture_output=True, text=True, timeout=30)
    argv = expanded.stdout.splitlines()
    assert argv[:2] == ["imagefleet", "submit"] and Path(argv[2]).is_absolute() and Path(argv[2]).exists(), argv
    assert argv[argv.index("--address") + 1] == _head_dashboard(INFRA / "overlays" / "prod") and "--wait" in argv
    assert "output.uri=s3://imagefleet-prod/outputs/2026-11-24" in argv  # one output folder per logical date

    nowhere = "http://127.0.0.1:1"
    done = subprocess.run(["bash", "-c", command], cwd=work, env={**env, "IMAGEFLEET_RAY_DASHBOARD": nowhere},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"can't reach the Ray dashboard at {nowhere}" in done.stderr, done.stderr[-2000:]


# --- the README's deploy section -----------------------------------------------------------------------------------

def _deploy_section() -> str:
    return (REPO / "README.md").read_text().split("\n## Where it runs\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_deploy_section_is_what_renders() -> None:
    """The section's table of overlays (namespace, objects, image) is what kustomize renders, row for row, and
    the facts around it (feature gate, schedule, retries, deadline, the DAG's address, the KubeRay version the
    schemas come from) are the shipped ones."""
    render = real_kustomize if shutil.which(KUSTOMIZE[0]) else kustomize_build
    section = _deploy_section()
    table = {}
    for line in section.splitlines():
        if line.strip().startswith("| `infra/overlays/"):
            overlay, namespace, objects, images = (re.findall(r"`([^`]+)`", c) for c in line.strip(" |").split("|"))
            table[overlay[0]] = (namespace, sorted(objects), sorted(images))
    rendered = {}
    for overlay in OVERLAYS:
        objects = render(overlay)
        rendered[str(overlay.relative_to(REPO))] = (
            sorted({d["metadata"].get("namespace", "(none)") for d in objects}),
            sorted(f"{d['kind']}/{d['metadata']['name']}" for d in objects),
            sorted({c["image"] for d in objects for c in containers(d)}))
    assert table == rendered
    nightly = next(d for d in render(INFRA / "overlays" / "prod") if d["kind"] == "RayCronJob")
    template = nightly["spec"]["jobTemplate"]
    version = re.search(r"KubeRay \*\*(v[\d.]+)\*\*", (KUBERAY_SCHEMAS / "README.md").read_text())
    assert version
    for fact in ("--feature-gates=RayCronJob=true", f"`{nightly['spec']['schedule']}`",
                 f"`backoffLimit: {template['backoffLimit']}`",
                 f"`activeDeadlineSeconds: {template['activeDeadlineSeconds']}`",
                 _dag_constant("DASHBOARD"), f"KubeRay {version.group(1)}"):
        assert fact in section, f"README's deploy section does not say {fact!r}"


def test_the_image_ships_every_package_the_wheel_has() -> None:
    """`import imagefleet` (the Python API) must work inside the image, not only the CLI's packages."""
    import tomllib

    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    dockerfile = (INFRA / "Dockerfile").read_text()
    for package in folders:
        assert f"COPY {package} ./{package}" in dockerfile, f"infra/Dockerfile does not copy {package}/"
