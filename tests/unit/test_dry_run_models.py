"""A missing local model folder is refused before any work, --dry-run included (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefleet.jobs import generate
from tests.helpers import tiny_job, write_config, write_prompts


def test_missing_local_model_fails_the_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    missing = tmp_path / "no-such-model"
    cfg = write_config(tmp_path / "job.yaml", tiny_job(src, missing, str(tmp_path / "out")))
    assert generate.main([str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "local model folder" in err[0] and str(missing) in err[0]
