"""report.html in a real headless browser (Debian chromium): it renders, with images, not a blank page, at a
desktop width (1280 px) and a phone's (400 px). IMAGEFLEET_SCREENSHOT=<path>.png keeps the desktop shot (and
<path>-phone.png) to look at."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from imagefleet.jobs import generate
from tests.helpers import REPO, sleep_job, write_config, write_prompts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian chromium (apt-get install chromium)"),
]


def test_report_renders_in_headless_chromium(tmp_path: Path, ray_cluster: None) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"scene {i}" if i % 7 else "" for i in range(30)],
                                                 "width": [32] * 30, "height": [32] * 30})
    out = tmp_path / "out"
    assert generate.main([str(write_config(tmp_path / "job.yaml", sleep_job(src, str(out), latency_s=0.05)))]) == 0
    png = Path(os.environ.get("IMAGEFLEET_SCREENSHOT", tmp_path / "report.png"))
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": path}
    for shot, size in ((png, (1280, 1600)), (png.with_name(f"{png.stem}-phone.png"), (400, 2400))):
        run = subprocess.run(["bash", str(REPO / "scripts" / "screenshot_report.sh"), str(out), str(shot),
                              *map(str, size)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        with Image.open(shot) as image:
            assert image.size == size
            # a rendered page has structure: many distinct colours and real contrast, unlike a blank or error page
            rgb = image.convert("RGB")
            assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 200
            assert max(ImageStat.Stat(rgb).stddev) > 20
