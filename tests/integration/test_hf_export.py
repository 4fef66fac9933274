"""`imagefleet export OUTPUT DEST` after real runs: Hugging Face `datasets` loads the export with
`load_dataset("imagefolder", data_dir=DEST)` and no recipe (stored bytes, prompts as `text`, the manifest's and
the user's columns typed, no inferred `label`), from a local output and an s3:// one; the same run's WebDataset
shards carry the user's columns in each sample's JSON."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from imagefleet.actors.storage import resolve_store_spec
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import S3Config
from imagefleet.jobs import cli, generate
from imagefleet.pipelines.manifest import read_manifest_columns
from imagefleet.pipelines.webdataset import read_index
from tests.helpers import sleep_job, write_config, write_prompts

pytestmark = pytest.mark.slow

PROMPTS = [f"a photo of thing {i}" for i in range(7)] + ["a broken thing"]


def run_job(tmp_path: Path, output_uri: str, webdataset: bool = False) -> None:
    """A sleep-backend run on Ray of 8 prompts with the user's own columns; one prompt fails (an error row)."""
    src = write_prompts(tmp_path / "p.parquet", {
        "prompt": PROMPTS,
        "sku": [f"SKU-{i}" for i in range(8)],
        "class_id": pa.array([i % 3 for i in range(8)], pa.int64()),
        "price": [1.5 * i if i % 2 else None for i in range(8)],
        "tags": [["red"] * (i % 2) for i in range(8)],
    })
    raw = sleep_job(src, output_uri)
    raw["generators"]["sleepy"]["fail_prompt_substring"] = "broken"
    if webdataset:
        raw["output"]["webdataset"] = {"enabled": True, "samples_per_shard": 4}
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0


def export(capsys: pytest.CaptureFixture[str], output: str, dest: str) -> str:
    capsys.readouterr()
    assert cli.main(["export", output, dest]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    return line


def stored_images(output: str) -> dict[str, tuple[str, bytes]]:
    """image_key → (prompt, stored bytes) of the output's ok rows, read from the store."""
    objects = open_store(output, resolve_store_spec(output, S3Config()))
    rows = read_manifest_columns(output, objects.spec, ["image_key", "prompt", "status", "image_uri"]).to_pylist()
    return {r["image_key"]: (r["prompt"], objects.get(objects.rel_of(r["image_uri"]))) for r in rows
            if r["status"] == "ok"}


def check_imagefolder(dest: Path, output: str) -> None:
    """What a `datasets` user gets from DEST with no recipe."""
    import datasets
    from PIL import Image

    stored = stored_images(output)
    ds = datasets.load_dataset("imagefolder", data_dir=str(dest), split="train")
    assert ds.num_rows == len(stored) == 7
    assert "label" not in ds.column_names  # no class inferred from the folder
    features = ds.features
    assert isinstance(features["image"], datasets.Image)
    assert {n: features[n].dtype for n in ("text", "id", "image_key", "generator", "model", "sku")} == dict.fromkeys(
        ("text", "id", "image_key", "generator", "model", "sku"), "string")
    assert features["seed"].dtype == "int64" and features["class_id"].dtype == "int64"
    assert features["width"].dtype == "int32" and features["price"].dtype == "float64"
    assert features["clip_score"].dtype == "float64" and features["route"].dtype == "string"
    assert features["tags"] == datasets.List(datasets.Value("string"))
    assert sorted(ds["text"]) == sorted(p for p, _ in stored.values())  # the caption column is the prompt
    raw = ds.cast_column("image", datasets.Image(decode=False))
    for row, undecoded in zip(ds, raw, strict=True):
        prompt, data = stored[row["image_key"]]
        assert row["text"] == row["prompt"] == prompt
        on_disk = undecoded["image"]["bytes"] or Path(undecoded["image"]["path"]).read_bytes()
        assert on_disk == data and hashlib.sha256(data).hexdigest() == row["sha256"]  # the stored bytes, once
        assert row["image"].tobytes() == Image.open(io.BytesIO(data)).tobytes()
        i = int(prompt.rsplit(" ", 1)[-1])
        assert (row["sku"], row["class_id"], row["price"], row["tags"]) == (
            f"SKU-{i}", i % 3, 1.5 * i if i % 2 else None, ["red"] * (i % 2))


def test_local_output_exports_to_an_imagefolder_and_its_shards_carry_the_users_columns(
        tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    run_job(tmp_path, out, webdataset=True)
    dest = tmp_path / "hf"
    line = export(capsys, out, str(dest))
    assert line.startswith(f"exported 7 images to {dest} (7 copied, 0 already there); left out 1 row without an "
                           f"image (1 error)")
    check_imagefolder(dest, out)
    # the metadata alone, as plain Parquet
    import datasets

    meta = datasets.load_dataset("parquet", data_files=str(dest / "train" / "metadata.parquet"), split="train")
    assert meta.num_rows == 7 and meta.features["file_name"].dtype == "string"
    assert all((dest / "train" / name).is_file() for name in meta["file_name"])
    # again: idempotent
    assert "(0 copied, 7 already there)" in export(capsys, out, str(dest))
    check_imagefolder(dest, out)
    # the WebDataset shards of the same run: each sample's JSON holds the user's columns, typed
    objects = open_store(out, resolve_store_spec(out, S3Config()))
    samples = {}
    for shard in read_index(objects)["shards"]:
        with tarfile.open(shard["url"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    sample = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    samples[sample["image_key"]] = sample
    assert len(samples) == 7
    for sample in samples.values():
        i = int(sample["prompt"].rsplit(" ", 1)[-1])
        assert (sample["sku"], sample["class_id"], sample["price"], sample["tags"]) == (
            f"SKU-{i}", i % 3, 1.5 * i if i % 2 else None, ["red"] * (i % 2))


def test_s3_output_exports_to_a_local_folder_and_to_a_bucket(
        tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    out = f"s3://{bucket}/run"
    run_job(tmp_path, out)
    dest = tmp_path / "hf"
    assert "left out 1 row without an image (1 error)" in export(capsys, out, str(dest))
    check_imagefolder(dest, out)
    # into a bucket (datasets reads s3:// through s3fs, not installed here): the same files, the same metadata
    remote = f"s3://{bucket}/datasets/run"
    assert export(capsys, out, remote).startswith(f"exported 7 images to {remote} (7 copied, 0 already there)")
    client = s3_env.client()
    listed = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                   Prefix="datasets/run/")
              for o in page.get("Contents", [])}
    assert listed == {f"datasets/run/train/{p.name}" for p in (dest / "train").iterdir()}
    body = client.get_object(Bucket=bucket, Key="datasets/run/train/metadata.parquet")["Body"].read()
    assert body == (dest / "train" / "metadata.parquet").read_bytes()  # the same rows, byte for byte
    assert "(0 copied, 7 already there)" in export(capsys, out, remote)
