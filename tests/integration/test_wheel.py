"""The package as a user installs it: the wheel built from this repository, installed into a fresh virtualenv
outside it, used from a folder holding the user's own `jobs/` and `configs/` packages (issue #31)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, sleep_job, write_config, write_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of what the build reads (setuptools writes `build/` beside the sources it builds)."""
    import shutil

    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("actors", "configs", "jobs", "pipelines", "imagefleet"):  # imagefleet/: symlinks kept
        shutil.copytree(REPO / package, src / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("imagefleet-*.whl"))


def test_the_wheel_installs_one_package(wheel: Path) -> None:
    """Nothing but `imagefleet` (and its metadata) lands in site-packages; the shipped configs come along."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"imagefleet"}, tops
    for module in ("imagefleet/__init__.py", "imagefleet/jobs/cli.py", "imagefleet/actors/image_writer.py",
                   "imagefleet/pipelines/plan.py", "imagefleet/configs/loader.py",
                   "imagefleet/configs/local_tiny.yaml"):
        assert module in names


def test_an_installed_imagefleet_runs_beside_a_users_own_jobs_and_configs(wheel: Path, tmp_path: Path) -> None:
    """A fresh virtualenv (its dependencies reached through a path file: no download) with the wheel installed,
    run from a folder whose own `jobs/` and `configs/` packages would have shadowed the old top-level ones."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dev venv's packages (not its .pth files: this repository's editable install stays out)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    user = tmp_path / "project"
    for package, module in (("jobs", "api"), ("configs", "settings")):
        (user / package).mkdir(parents=True)
        (user / package / "__init__.py").write_text("")
        (user / package / f"{module}.py").write_text("OWNER = 'the user'\n")
    write_prompts(user / "p.parquet", {"prompt": ["a fox", "an owl"]})
    raw = sleep_job(user / "p.parquet", str(user / "out"))
    raw["cluster"]["executor"] = "in_process"
    cfg = write_config(user / "job.yaml", raw)
    cli = env / "bin" / "imagefleet"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=user, capture_output=True, text=True, timeout=300,
                              env={"PATH": f"{env / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
                                   "AWS_EC2_METADATA_DISABLED": "true", "RAY_USAGE_STATS_ENABLED": "0"})

    probe = run(str(python), "-c", "import imagefleet, jobs.api, configs.settings; "
                                   "print(imagefleet.__version__, imagefleet.__file__, jobs.api.OWNER)")
    assert probe.returncode == 0, probe.stderr
    version, where, owner = probe.stdout.split(maxsplit=2)
    assert version[0].isdigit() and where.startswith(str(site)) and owner.strip() == "the user"
    assert run(str(cli), "--version").stdout.strip() == f"imagefleet {version}"
    done = run(str(cli), "run", str(cfg), "--progress", "off")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok               : 2" in done.stdout
    dry = run(str(cli), "submit", str(cfg), "--address", "http://127.0.0.1:1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"working_dir: {user}" in dry.stdout and "site-packages" not in dry.stdout
    assert "python -m imagefleet.jobs.cli run" in dry.stdout
