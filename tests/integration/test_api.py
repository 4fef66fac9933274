"""`imagefleet.run`: the Python API returns what the run made, and fails with typed one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import imagefleet
from tests.helpers import sleep_job, write_prompts

pytestmark = pytest.mark.slow


def test_run_returns_counts_paths_and_the_manifest(tmp_path: Path, ray_cluster: None) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(10)]})
    lines: list[str] = []
    result = imagefleet.run(sleep_job(src, str(tmp_path / "out")), ["seed=5"], echo=lines.append)
    assert result.summary is not None and result.summary.num_ok == 10 and result.run_id
    assert Path(result.report_uri).exists() and Path(result.record_uri).exists()
    df = result.to_pandas()
    assert len(df) == 10 and set(df["status"]) == {"ok"}
    assert result.manifest().count_rows() == 10 and result.to_ray().count() == 10
    assert any("imagefleet plan" in line for line in lines) and any("written" in line for line in lines)
    again = imagefleet.run(sleep_job(src, str(tmp_path / "out")), ["seed=5"], echo=None)  # a rerun: all present
    assert again.summary is not None and again.summary.num_already_present == 10


def test_typed_errors_carry_the_cli_line(tmp_path: Path, ray_cluster: None) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["ok", "boom here"]})
    raw = sleep_job(src, str(tmp_path / "out"))
    with pytest.raises(imagefleet.ConfigInvalid, match="unknown key 'sede'"):
        imagefleet.run(raw, ["sede=1"], echo=None)
    with pytest.raises(imagefleet.InputInvalid, match="does not exist"):
        imagefleet.run({**raw, "source": {"uri": str(tmp_path / "nope.parquet")}}, echo=None)
    plan = imagefleet.run(raw, dry_run=True, echo=None)
    assert plan.summary is None and "imagefleet plan" in plan.plan
    raw["generators"]["sleepy"]["fail_prompt_substring"] = "boom"
    raw["limits"] = {"max_error_fraction": 0.1}
    with pytest.raises(imagefleet.RunFailed) as failed:
        imagefleet.run(raw, echo=None)
    assert failed.value.result is not None and failed.value.result.summary is not None
    assert failed.value.result.summary.num_error == 1 and failed.value.exit_code == 1
