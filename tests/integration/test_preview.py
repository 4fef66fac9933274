"""`imagefleet preview` against a real S3 output (SeaweedFS): a committed run's bucket is object for object as it
was after a preview of the same config, which made its images in a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import imagefleet
from imagefleet.jobs import cli
from tests.helpers import sleep_job, write_config, write_prompts
from tests.integration.test_pipeline import objects

pytestmark = pytest.mark.slow


def test_preview_leaves_an_s3_output_untouched(tmp_path: Path, s3_env: Any, bucket: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"id": [f"r{i}" for i in range(6)],
                                                 "prompt": [f"prompt {i}" for i in range(6)]})
    raw = sleep_job(src, f"s3://{bucket}/run")
    raw["cluster"]["executor"] = "in_process"
    config = write_config(tmp_path / "job.yaml", raw)
    committed = imagefleet.run(config, echo=None)
    assert committed.summary is not None and committed.summary.num_ok == 6
    before = {key: (o["ETag"], o["Size"], o["LastModified"]) for key, o in objects(s3_env, bucket).items()}
    assert any(key.startswith("run/manifest/") for key in before)
    folder = tmp_path / "preview"
    assert cli.main(["preview", str(config), "-n", "3", "--out", str(folder)]) == 0
    after = {key: (o["ETag"], o["Size"], o["LastModified"]) for key, o in objects(s3_env, bucket).items()}
    assert after == before  # no image, manifest part, lease, record, log or report
    printed = capsys.readouterr().out
    assert f"contact sheet: {(folder / 'preview.html').as_uri()}" in printed
    made = list((folder / "images").rglob("*.png"))
    assert len(made) == 3
    keys = {p.stem for p in made}
    assert keys <= {r["image_key"] for r in committed.manifest().to_table().to_pylist()}  # the run's images
