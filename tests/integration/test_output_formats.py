"""Training-data outputs: WebDataset tar shards (S3 and local) and a manifest Hugging Face `datasets` reads."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagefleet.actors.layout import MANIFEST_DIR, WEBDATASET_DIR, WEBDATASET_INDEX
from imagefleet.actors.storage import resolve_store_spec
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import S3Config
from imagefleet.jobs import generate
from imagefleet.pipelines.webdataset import read_index
from tests.helpers import sleep_job, write_config, write_prompts
from tests.integration.test_pipeline import objects

pytestmark = pytest.mark.slow


def shard_job(tmp_path: Path, output_uri: str, n: int = 12, per_shard: int = 5) -> Path:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"a photo of thing {i}" for i in range(n)],
                                                 "width": [16 + 8 * (i % 2) for i in range(n)]})
    raw = sleep_job(src, output_uri)
    raw["output"]["webdataset"] = {"enabled": True, "samples_per_shard": per_shard}
    return write_config(tmp_path / "job.yaml", raw)


def read_tar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_webdataset_shards_on_s3_then_rerun_is_identical(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    cfg = shard_job(tmp_path, f"s3://{bucket}/wds")
    assert generate.main([str(cfg)]) == 0
    assert "webdataset       : s3://" in capsys.readouterr().out
    store = resolve_store_spec(f"s3://{bucket}/wds", S3Config())
    index = read_index(open_store(f"s3://{bucket}/wds", store))
    assert index["num_samples"] == 12 and index["num_shards"] == 3
    assert [s["num_samples"] for s in index["shards"]] == [5, 5, 2]  # samples_per_shard is a cap
    client = s3_env.client()
    keys = set()
    for shard in index["shards"]:
        body = client.get_object(Bucket=bucket, Key=shard["url"][len(f"s3://{bucket}/"):])["Body"].read()
        assert len(body) == shard["bytes"]
        members = read_tar(body)
        names = sorted(members)
        assert len(names) == 3 * shard["num_samples"]
        # WebDataset convention: samples are consecutive files sharing a basename (the image key)
        stems = [n.split(".", 1)[0] for n in names]
        assert stems[::3] == stems[1::3] == stems[2::3] and stems[::3] == sorted(set(stems))
        for stem in stems[::3]:
            meta = json.loads(members[f"{stem}.json"])
            image = Image.open(io.BytesIO(members[f"{stem}.png"]))
            assert meta["image_key"] == stem and meta["prompt"].startswith("a photo") and len(meta["sha256"]) == 64
            assert members[f"{stem}.txt"].decode() == meta["prompt"]  # the caption
            assert image.size == (meta["width"], meta["height"])
            keys.add(stem)
    assert len(keys) == 12
    # a rerun (nothing to generate) exports again: same shards, and the old export's folder is gone
    assert generate.main([str(cfg), "--run-id", "rerun-1"]) == 0
    again = read_index(open_store(f"s3://{bucket}/wds", store))
    assert again["export_id"] == "rerun-1"
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in index["shards"]]
    tars = [k for k in objects(s3_env, bucket, f"wds/{WEBDATASET_DIR}/") if k.endswith(".tar")]
    assert len(tars) == 3 and all("/rerun-1/" in k for k in tars)


def test_local_manifest_and_shards_load_with_hf_datasets(tmp_path: Path, ray_cluster: None) -> None:
    import datasets

    out = tmp_path / "out"
    assert generate.main([str(shard_job(tmp_path, str(out), n=10, per_shard=4))]) == 0
    # the manifest as-is: one row per image, columns typed by the manifest schema; by the index (exact) and by
    # globbing the folder (after a clean commit it holds only the current parts)
    listed = json.loads((out / MANIFEST_DIR / "_manifest.json").read_text())["parts"]
    manifest = datasets.load_dataset("parquet", data_files=[str(out / p) for p in listed], split="train")
    globbed = datasets.load_dataset("parquet", data_files=str(out / MANIFEST_DIR / "part-*.parquet"), split="train")
    assert manifest.num_rows == globbed.num_rows == 10 and set(manifest["status"]) == {"ok"}
    import pyarrow.dataset as pads

    assert pads.dataset([str(out / p) for p in listed]).count_rows() == 10
    assert {"image_key", "prompt", "seed", "width", "image_uri", "sha256"} <= set(manifest.column_names)
    assert manifest.features["seed"].dtype == "int64" and manifest.features["prompt"].dtype == "string"
    # the shards through the `webdataset` loader: decoded images next to their metadata
    index = json.loads((out / WEBDATASET_INDEX).read_text())
    shards = datasets.load_dataset("webdataset", data_files=[s["url"] for s in index["shards"]], split="train")
    assert shards.num_rows == 10
    sample = shards[0]
    assert sample["png"].size == (sample["json"]["width"], sample["json"]["height"])
    assert sample["__key__"] == sample["json"]["image_key"]


def test_a_rerun_in_another_format_makes_the_images_in_that_format(tmp_path: Path, ray_cluster: None,
                                                                     capsys: Any) -> None:
    """Stored bytes depend on output.format: images stored as PNG are not "already present" for a JPEG run, and
    no manifest row may point at an object that does not exist."""
    out = tmp_path / "out"
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"thing {i}" for i in range(6)]})
    cfg = write_config(tmp_path / "job.yaml", sleep_job(src, str(out)))
    assert generate.main([str(cfg)]) == 0
    capsys.readouterr()
    assert generate.main([str(cfg), "--set", "output.format=jpeg"]) == 0
    assert "6 written, 0 already present" in capsys.readouterr().out
    import pyarrow.dataset as pads

    listed = json.loads((out / MANIFEST_DIR / "_manifest.json").read_text())["parts"]
    rows = pads.dataset([str(out / p) for p in listed]).to_table().to_pylist()
    assert len(rows) == 6 and all(r["image_uri"].endswith(".jpg") and Path(r["image_uri"]).exists() for r in rows)
    assert Image.open(rows[0]["image_uri"]).format == "JPEG"
