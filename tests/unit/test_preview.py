"""`imagefleet preview` (jobs/preview.py, pipelines/preview.py): a run's first N images through its own plan, in
this process, into a local folder with a contact sheet, and nothing committed or written to the configured output;
only the rows those images come from are read; templates and variants expand as in a run (the same image keys);
hosted cost is estimated before the first paid request and the budget holds; bad input is one line, exit 2."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imagefleet
from imagefleet.jobs import cli
from tests.helpers import sleep_job, tiny_job, write_config, write_prompts
from tests.support.fake_hosted import OPENAI_KEY, FakeHosted


def prompts_file(path: Path, prompts: list[str], row_group_size: int = 3) -> Path:
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(prompts))], "prompt": prompts}), path,
                   row_group_size=row_group_size)
    return path


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (empty when the folder doesn't exist)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()} if folder.exists() else {}


def test_preview_makes_n_images_and_commits_none(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`imagefleet preview CONFIG -n 4`: four rows with the run's seeds and keys, three images in the preview folder
    (the empty prompt is an error row, shown with its error), preview.html naming each; the configured output is
    never made."""
    src = prompts_file(tmp_path / "p.parquet", ["a red fox", "", *[f"prompt {i}" for i in range(2, 10)]])
    out = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", sleep_job(src, str(out)))
    folder = tmp_path / "preview"
    assert cli.main(["preview", str(config), "-n", "4", "--out", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()  # no images, manifest, lease, records or run.json: not even the folder
    images = sorted(p.relative_to(folder).as_posix() for p in (folder / "images").rglob("*.png"))
    assert len(images) == 3
    html = (folder / "preview.html").read_text()
    assert f"contact sheet: {(folder / 'preview.html').as_uri()}" in printed
    assert printed.index("cost estimate:") < printed.index("a red fox")  # said before anything is made
    for rel in images:
        assert f'href="{rel}"' in html  # each thumbnail links to its full image beside the page
    assert html.count("data:image/jpeg;base64,") == 3
    for text in ("a red fox", "prompt 2", "prompt 3", "prompt is empty", "sleepy"):
        assert text in html
    assert "prompt is empty" in printed and "prompt 4" not in printed
    # the API gives the same rows, shaped like the manifest's
    result = imagefleet.preview(config, n=4, out=folder, echo=None)
    rows = result.rows.to_pylist()
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"] and result.rows_read == 4
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok"]
    assert all(Path(r["image_uri"]).is_file() for r in rows if r["status"] == "ok")
    # without --out: a new temp folder, kept and named
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    said: list[str] = []
    fresh = imagefleet.preview(config, n=1, echo=said.append)
    assert Path(fresh.folder).parent == tmp_path and Path(fresh.folder).name.startswith("imagefleet-preview-")
    assert fresh.folder in said[0] and Path(fresh.html).is_file()
    assert not out.exists()


def test_only_the_rows_the_images_come_from_are_read(tmp_path: Path) -> None:
    """A table whose later row groups can't be decoded previews fine: its first 3 images are in the first two row
    groups, and reading stops there (the whole table does not read)."""
    src = prompts_file(tmp_path / "p.parquet", [f"prompt {i}" for i in range(12)], row_group_size=2)
    meta = pq.read_metadata(src)
    start = meta.row_group(2).column(0).data_page_offset
    end = meta.row_group(meta.num_row_groups - 1).column(1).data_page_offset
    data = bytearray(src.read_bytes())
    data[start:end] = b"\xff" * (end - start)  # data pages of row groups 2.. garbage; the footer intact
    src.write_bytes(bytes(data))
    with pytest.raises(OSError):
        pq.read_table(src)
    config = write_config(tmp_path / "job.yaml", sleep_job(src, str(tmp_path / "out")))
    result = imagefleet.preview(config, n=3, out=tmp_path / "preview", echo=None)
    assert [r["status"] for r in result.rows.to_pylist()] == ["ok"] * 3 and result.rows_read == 3


def test_templates_and_variants_make_the_runs_images_and_a_committed_output_is_untouched(tmp_path: Path) -> None:
    """A template (2 prompts a row) × 2 variants makes 4 images a row: a preview of 6 reads 2 rows and makes the
    first 6 of the images a run makes from them (same ids, variants, seeds and keys); the run's committed output
    is byte for byte and time for time as it was."""
    src = prompts_file(tmp_path / "p.parquet", ["fox", "owl", "cat"])
    raw = sleep_job(src, str(tmp_path / "out"))
    raw["source"].update(template={"text": "a {{ prompt }} in the {{ place }}", "vars": {"place": ["snow", "sea"]}},
                         variants=["1:1", "16:9"])
    raw["generators"]["sleepy"]["defaults"] = {"width": 64, "height": 64}
    raw["cluster"]["executor"] = "in_process"
    config = write_config(tmp_path / "job.yaml", raw)
    run = imagefleet.run(config, echo=None)
    made = {r["image_key"]: r for r in run.manifest().to_table().to_pylist()}
    assert len(made) == 12
    before = tree(tmp_path / "out")
    result = imagefleet.preview(config, n=6, out=tmp_path / "preview", echo=None)
    rows = result.rows.to_pylist()
    assert len(rows) == 6 and result.rows_read == 2
    assert [r["id"].split("#")[0] for r in rows] == ["r0"] * 4 + ["r1"] * 2
    for r in rows:
        twin = made[r["image_key"]]
        assert (r["id"], r["prompt"], r["variant"], r["seed"], r["width"], r["height"]) == (
            twin["id"], twin["prompt"], twin["variant"], twin["seed"], twin["width"], twin["height"])
    assert {r["prompt"] for r in rows[:4]} == {"a fox in the snow", "a fox in the sea"}
    assert tree(tmp_path / "out") == before


def test_num_images_and_fan_out_count_as_in_a_run(tmp_path: Path) -> None:
    """Rows asking for 2, 1 (null) and 3 images, each sent to two generators: a preview of 5 reads two rows (4 + 2
    images) and makes 5 of the run's images."""
    src = write_prompts(tmp_path / "p.parquet", {"id": ["r0", "r1", "r2"], "prompt": ["fox", "owl", "cat"],
                                                 "num_images": pa.array([2, None, 3], pa.int32())})
    raw = sleep_job(src, str(tmp_path / "out"))
    raw["generators"]["other"] = {**raw["generators"]["sleepy"], "defaults": {"width": 32, "height": 32}}
    raw["routing"] = {"mode": "fanout", "fanout": ["sleepy", "other"]}
    raw["cluster"]["executor"] = "in_process"
    config = write_config(tmp_path / "job.yaml", raw)
    keys = {r["image_key"] for r in imagefleet.run(config, echo=None).manifest().to_table().to_pylist()}
    assert len(keys) == 12
    result = imagefleet.preview(config, n=5, out=tmp_path / "preview", echo=None)
    rows = result.rows.to_pylist()
    assert result.rows_read == 2 and [r["id"] for r in rows] == ["r0"] * 4 + ["r1"]
    assert {r["image_key"] for r in rows} <= keys and {r["generator"] for r in rows[:4]} == {"sleepy", "other"}


def test_tiny_diffusers_preview_shows_real_images(tmp_path: Path, tiny_model: Path) -> None:
    """The tiny diffusers model in process: two decodable images of the configured size in the preview folder,
    thumbnails inline in the sheet, and an s3:// output that is never connected to (no credentials needed)."""
    from PIL import Image

    src = prompts_file(tmp_path / "p.parquet", ["a lighthouse", "a bowl of fruit", "a third"])
    config = write_config(tmp_path / "job.yaml", tiny_job(src, tiny_model, "s3://nowhere/run"))
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for key in env:
        os.environ.pop(key)
    try:
        result = imagefleet.preview(config, n=2, out=tmp_path / "preview", echo=None)
    finally:
        os.environ.update(env)
    rows = result.rows.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["generator"] == "tiny" for r in rows)
    for r in rows:
        pixels = np.asarray(Image.open(io.BytesIO(Path(r["image_uri"]).read_bytes())))
        assert pixels.shape == (64, 64, 3) and pixels.std() > 0
    assert Path(result.html).read_text().count("data:image/jpeg;base64,") == 2


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHosted]:
    server = FakeHosted().start()
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    yield server
    server.stop()


def hosted_job(src: Path, out: str, fake: FakeHosted) -> dict[str, Any]:
    raw = sleep_job(src, out)
    raw["generators"] = {"oa": {
        "backend": "openai", "base_url": fake.url + "/v1", "quality": "low",
        "limits": {"requests_per_min": 6000, "images_per_min": 6000, "initial_backoff_s": 0.05},
        "pool": {"min_size": 1, "max_size": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 4},
        "defaults": {"width": 1024, "height": 1024}}}
    return raw


def test_hosted_preview_says_the_cost_first_and_keeps_the_budget(tmp_path: Path, fake: FakeHosted) -> None:
    """A hosted generator against the loopback fake: the estimate is said before the first request reaches the
    provider; with a budget of 1.5 images' estimate, one image is made and paid, the next two are `skipped` rows
    naming the budget; the preview's cost is what the provider billed."""
    src = prompts_file(tmp_path / "p.parquet", ["a red fox", "an owl", "a cat", "a dog"])
    raw = hosted_job(src, str(tmp_path / "out"), fake)
    per_image = imagefleet.load(raw).generators["oa"].estimate_usd(0)
    raw["limits"] = {"budget_usd": round(per_image * 1.5, 6)}
    config = write_config(tmp_path / "job.yaml", raw)
    said: list[tuple[str, int]] = []
    result = imagefleet.preview(config, n=3, out=tmp_path / "preview", echo=lambda text: said.append(
        (text, len(fake.log))))
    estimate = next((text, requests) for text, requests in said if "cost estimate" in text)
    assert estimate[1] == 0 and "$" in estimate[0] and "budget" in estimate[0]
    rows = result.rows.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "skipped", "skipped"]
    assert all("budget_usd" in r["error"] for r in rows[1:])
    assert fake.paid_count("openai") == 1 and fake.paid_usd("openai") > 0
    assert result.cost_usd == pytest.approx(fake.paid_usd("openai"))
    assert not (tmp_path / "out").exists()
    html = Path(result.html).read_text()
    assert f"${rows[0]['cost_usd']:.4f}" in html and "budget_usd" in html


@pytest.mark.parametrize(("args", "match"), [
    (["-n", "0"], "preview of 0 images: ask for at least 1"),
    (["--out", "s3://bucket/preview"], "--out s3://bucket/preview: give a local folder"),
    (["--out", "{out}/inside"], "overlaps output.uri"),
    (["--set", "source.uri={tmp}/missing.parquet"], "does not exist"),
    (["--set", "generators.sleepy.pool.batch_size=0"], "batch_size"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, args: list[str], match: str) -> None:
    """Preview's own mistakes are one line; the config's and the input's are what `imagefleet run` says of them
    (a missing source: one line; a bad config value: the config's file, then the value)."""
    src = prompts_file(tmp_path / "p.parquet", ["a", "b"])
    out = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", sleep_job(src, str(out)))
    argv = [a.format(out=out, tmp=tmp_path) for a in args]
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert cli.main(["preview", str(config), *argv]) == 2
    assert not list(temp.iterdir())  # no preview folder left behind
    err = capsys.readouterr().err.strip()
    assert err.startswith("imagefleet: ") and match in err, err
    if argv[0] == "--set":  # the config's or the input's mistake: as `run` says it (a config error names its file)
        assert cli.main(["run", str(config), *argv, "--dry-run"]) == 2
        assert capsys.readouterr().err.strip() == err
    else:
        assert len(err.splitlines()) == 1
    assert not out.exists()
