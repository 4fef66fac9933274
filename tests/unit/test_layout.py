"""The four packages come from this repository (PyPI has unrelated `configs`, `actors`, `pipelines`)."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("name", ["configs", "actors", "pipelines", "jobs", "imagefleet"])
def test_package_imported_from_repo_root(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == REPO / name


def test_import_direction() -> None:
    """imagefleet (the Python API) → jobs → pipelines → actors → configs: a lower layer never imports a higher
    one."""
    order = ["configs", "actors", "pipelines", "jobs", "imagefleet"]
    for i, pkg in enumerate(order):
        higher = order[i + 1 :]
        for source in (REPO / pkg).rglob("*.py"):
            text = source.read_text()
            for other in higher:
                pattern = rf"^\s*(from|import) {other}(\.|\s|$)"
                assert not re.search(pattern, text, re.MULTILINE), f"{source} imports {other}"


def test_driver_imports_stay_light() -> None:
    """Configs, pipelines and the CLI import no torch/diffusers (actors import them lazily)."""
    code = ("import jobs.generate, pipelines.text_to_image, sys; "
            "print(any(m in sys.modules for m in ('torch','diffusers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def pinned_versions() -> dict[str, str]:
    """`name==version` lines of constraints.txt, the one place dev/CI versions are pinned."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            name, _, version = spec.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.slow
def test_lint_and_types_are_clean() -> None:
    """`make lint` in the suite: ruff everywhere, strict mypy on configs/pipelines/jobs/actors ([tool.mypy] files),
    with the ruff and mypy versions pinned in constraints.txt."""
    bin_dir = Path(sys.executable).parent
    pins = pinned_versions()
    for tool in ("ruff", "mypy"):
        out = subprocess.run([str(bin_dir / tool), "--version"], capture_output=True, text=True, check=True).stdout
        assert out.split()[1] == pins[tool], f"{tool} {out.strip()} is not the constraints.txt pin {pins[tool]}"
    pyproject = (REPO / "pyproject.toml").read_text()  # tomllib is 3.11+; the package supports 3.10
    assert 'files = ["configs", "pipelines", "jobs", "actors", "imagefleet"]' in pyproject, "mypy must cover all"
    ruff = subprocess.run([str(bin_dir / "ruff"), "check", "."], cwd=REPO, capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout[-3000:]
    mypy = subprocess.run([str(bin_dir / "mypy")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert mypy.returncode == 0, mypy.stdout[-3000:]
