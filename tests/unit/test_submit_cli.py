"""`imagefleet submit|status|logs` without a cluster: one-line answers, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imagefleet.jobs import submit
from tests.helpers import REPO, sleep_job, write_config, write_prompts

NOWHERE = "http://127.0.0.1:1"


@pytest.mark.parametrize("verb", [submit.status, submit.logs])
def test_unreachable_dashboard_is_one_line(verb: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert verb(["raysubmit_nope", "--address", NOWHERE]) == 2  # type: ignore[operator]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "can't reach the Ray dashboard" in err[0] and "--address" in err[0]


def test_local_source_is_explained_or_shipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    cfg = write_config(tmp_path / "job.yaml", sleep_job(src, "s3://b/o"))
    assert submit.submit([str(cfg), "--address", NOWHERE, "--ship-source"]) == 2
    assert "uploads the working folder only" in capsys.readouterr().err
    assert submit.submit([str(cfg), "--address", NOWHERE]) == 2  # a note, then the unreachable cluster
    err = capsys.readouterr().err.strip().splitlines()
    assert "local path" in err[0] and "--ship-source" in err[0] and "can't reach" in err[1]


def test_the_working_folder_never_holds_an_installed_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed imagefleet used to ship the folder above its code — site-packages — as the job's working_dir.
    The working folder is the user's (`--working-dir`, default the current one), and an installed environment in
    it or around it is refused in one line."""
    import sysconfig

    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    cfg = write_config(tmp_path / "job.yaml", sleep_job(src, "s3://b/o"))
    site_packages = sysconfig.get_paths()["purelib"]
    assert submit.submit([str(cfg), "--address", NOWHERE, "--working-dir", site_packages]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is inside an installed environment" in err[0]
    assert submit.working_dir_problem(REPO) == ""  # a checkout: its .venv is excluded
    (tmp_path / "venv").mkdir()  # a folder holding a virtualenv EXCLUDES doesn't leave out
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert submit.working_dir_problem(tmp_path).startswith(f"the working folder {tmp_path} holds")
