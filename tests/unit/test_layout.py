"""The package's layout: one installed package `imagefleet`, whose subpackages are the repository's top-level folders
(PyPI has unrelated `configs`, `actors`, `pipelines`; a user's own `jobs/` must not shadow ours); imports flow one
way; no circles; small files and functions."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ["configs", "actors", "pipelines", "jobs"]


@pytest.mark.parametrize("name", PACKAGES)
def test_subpackages_are_the_repository_folders(name: str) -> None:
    module = importlib.import_module(f"imagefleet.{name}")
    assert Path(module.__file__).resolve().parent == REPO / name
    assert (REPO / "imagefleet" / name).resolve() == REPO / name  # the symlink the tools read through


def test_no_top_level_names_but_imagefleet_are_imported() -> None:
    """Nothing imports `actors`, `configs`, `jobs` or `pipelines` at the top level: installed, only `imagefleet`
    exists, so such an import would find a user's own package of that name (or nothing)."""
    bare = []
    for source in [s for p in (*PACKAGES, "imagefleet", "tests", "bench") for s in (REPO / p).rglob("*.py")]:
        if "imagefleet/" in str(source.relative_to(REPO)) and source.parent != REPO / "imagefleet":
            continue  # imagefleet/<name> are the symlinked folders, read through their own names
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            bare += [f"{source.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bare


LAYERS = ["configs", "actors", "pipelines", "jobs", "imagefleet", "bench"]
"""Import direction, lowest first: bench (benchmarks, the shapes world) → imagefleet (the Python API) → jobs →
pipelines → actors → configs. A module never imports a higher layer."""


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "imagefleet" and len(parts) > 1 and parts[1] in PACKAGES else parts[0]


def import_graph() -> dict[str, set[str]]:
    """Every module of the layers → the project modules it imports (at the top, in functions, for type checking:
    every import statement counts)."""
    modules: dict[str, Path] = {}
    for pkg in LAYERS:
        for source in (REPO / pkg).rglob("*.py"):
            parts = source.relative_to(REPO).with_suffix("").parts
            if pkg == "imagefleet" and len(parts) > 2:
                continue  # the symlinked subpackages: named below through their own folders
            prefix = ("imagefleet",) if pkg in PACKAGES else ()
            modules[".".join((*prefix, *parts)).removesuffix(".__init__")] = source

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, source in modules.items():
        for node in ast.walk(ast.parse(source.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            graph[name] |= {t for t in map(resolve, targets) if t and t != name}
    return graph


def test_import_direction() -> None:
    """A lower layer never imports a higher one (bench included: nothing imports it)."""
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    upward = [f"{a} imports {b}" for a, targets in import_graph().items() for b in targets
              if rank[_layer(b)] > rank[_layer(a)]]
    assert not upward


def test_no_import_circles() -> None:
    """No two modules import each other, directly or around a longer circle (strongly connected components of the
    import graph, Tarjan's algorithm)."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles


def test_no_import_path_hacks() -> None:
    """Runtime code reaches other code by importing it, never by editing sys.path (bench's scripts may, to run
    from a checkout)."""
    for pkg in LAYERS[:-1]:
        for source in (REPO / pkg).rglob("*.py"):
            assert "sys.path.insert" not in source.read_text(), source


MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 75


def test_files_and_functions_stay_small() -> None:
    """House style: product files of at most 400 lines, functions of at most 75 (a flow reads top to bottom)."""
    too_long = []
    for pkg in LAYERS[:-1]:
        for source in (REPO / pkg).rglob("*.py"):
            text = source.read_text()
            if text.count("\n") > MAX_FILE_LINES:
                too_long.append(f"{source.relative_to(REPO)}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        too_long.append(f"{source.relative_to(REPO)}: {node.name}() {lines} lines")
    assert not too_long


def test_driver_imports_stay_light() -> None:
    """Configs, pipelines and the CLI import no torch/diffusers (actors import them lazily)."""
    code = ("import imagefleet.jobs.generate, imagefleet.pipelines.text_to_image, sys; "
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
    assert 'files = ["imagefleet"]' in pyproject, "mypy must cover all (the subpackages through imagefleet/)"
    ruff = subprocess.run([str(bin_dir / "ruff"), "check", "."], cwd=REPO, capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout[-3000:]
    mypy = subprocess.run([str(bin_dir / "mypy")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert mypy.returncode == 0, mypy.stdout[-3000:]
