"""infra/ stays consistent with configs/: manifests parse, KubeRay CRDs have their required fields, every
accelerator a config asks for is provided by a GPU worker group, and one image name is used everywhere."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs import load_config
from tests.conftest import REPO

INFRA = REPO / "infra"
MANIFESTS = sorted(INFRA.rglob("*.yaml"))
IMAGE = "ghcr.io/imagefleet/imagefleet"


def docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def test_manifests_parse() -> None:
    assert MANIFESTS and all(isinstance(d, dict) for _, d in docs())


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
    """The DAG's command, run from a temporary folder as Airflow does (dry run against local stand-ins)."""
    import shlex
    import subprocess
    import sys
    import types

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
    argv = shlex.split(captured["bash_command"].replace("{{ ds }}", "2026-11-24"))
    assert argv[:2] == ["imagefleet", "run"] and Path(argv[2]).is_absolute() and Path(argv[2]).exists()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "p.parquet")
    work = tmp_path / "airflow-task"
    work.mkdir()
    stand_ins = ["--set", "cluster.address=local", "--set", f"output.uri={tmp_path / 'out'}",
                 "--set", f"source.uri={tmp_path / 'p.parquet'}", "--dry-run"]
    done = subprocess.run([sys.executable, "-m", "jobs.cli", *argv[1:], *stand_ins], cwd=work,
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
