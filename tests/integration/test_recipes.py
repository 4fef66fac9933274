"""The README's loading recipes, run as written: the manifest into Hugging Face `datasets`, the shards into
`webdataset` (and into `datasets` through it), for an s3:// output and a local one."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from imagefleet.jobs import cat, generate
from tests.helpers import sleep_job, write_config, write_prompts

pytestmark = pytest.mark.slow


def run_job(tmp_path: Path, output_uri: str, n: int) -> None:
    """A sleep-backend run of `n` prompts with a WebDataset export (5 samples per shard)."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"a photo of thing {i}" for i in range(n)],
                                                 "width": [16 + 8 * (i % 2) for i in range(n)]})
    raw = sleep_job(src, output_uri)
    raw["output"]["webdataset"] = {"enabled": True, "samples_per_shard": 5}
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0


def load_manifest(out: str) -> Any:
    """README "Output layout": the exact current manifest as a `datasets.Dataset`, on any store."""
    import datasets
    import pyarrow.dataset
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(out)
    index = json.load(fs.open_input_stream(f"{root}/manifest/_manifest.json"))
    parts = pyarrow.dataset.dataset([f"{root}/{p}" for p in index["parts"]], filesystem=fs)
    return datasets.Dataset(parts.to_table())


def read_shard_index(out: str) -> dict[str, Any]:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(out)
    return dict(json.load(fs.open_input_stream(f"{root}/webdataset/index.json")))


def check_samples(samples: list[dict[str, Any]], sha_by_key: dict[str, str]) -> None:
    """One sample per `ok` image, each the stored bytes (sha256 as in the manifest) with its metadata."""
    assert sorted(s["__key__"] for s in samples) == sorted(sha_by_key)
    for s in samples:
        assert hashlib.sha256(s["png"]).hexdigest() == sha_by_key[s["__key__"]]
        assert json.loads(s["json"])["image_key"] == s["__key__"]


@pytest.fixture
def imagefleet_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pipe:imagefleet cat ...` runs the `imagefleet` command, as it would in an activated venv."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_s3_output_loads_with_datasets_and_webdataset(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, imagefleet_on_path: None
) -> None:
    import datasets
    import webdataset

    out = f"s3://{bucket}/recipes"
    run_job(tmp_path, out, n=12)
    # the manifest, with nothing but pyarrow's own S3 (it reads AWS_ENDPOINT_URL and the keys from the env)
    manifest = load_manifest(out)
    assert manifest.num_rows == 12 and set(manifest["status"]) == {"ok"}
    assert manifest.features["seed"].dtype == "int64" and manifest.features["prompt"].dtype == "string"
    sha_by_key = dict(zip(manifest["image_key"], manifest["sha256"], strict=True))
    # the shards: webdataset has no s3:// handler, the index's pipe: pattern streams them through `imagefleet cat`
    index = read_shard_index(out)
    assert index["num_shards"] == 3 and index["pipe_pattern"].startswith("pipe:imagefleet cat 's3://")
    samples = list(webdataset.WebDataset(index["pipe_pattern"], shardshuffle=False))
    check_samples(samples, sha_by_key)
    # the same stream as a `datasets.Dataset` (its own webdataset loader would need s3fs for s3:// URLs)
    shards = datasets.Dataset.from_generator(
        lambda: iter(webdataset.WebDataset(index["pipe_pattern"], shardshuffle=False)))
    assert shards.num_rows == 12
    check_samples(list(shards), sha_by_key)
    image = shards.cast_column("png", datasets.Image())[0]
    meta = json.loads(image["json"])
    assert image["png"].size == (meta["width"], meta["height"])


def test_cat_says_what_is_missing(s3_env: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cat.main([f"s3://{bucket}/no/such.tar"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NoSuchKey" in err and f"s3://{bucket}/no/such.tar" in err
    assert cat.main([f"s3://{bucket}"]) == 2
    assert "is a bucket, not an object" in capsys.readouterr().err


def test_local_output_loads_with_the_same_recipes(tmp_path: Path, ray_cluster: None) -> None:
    import webdataset

    out = str(tmp_path / "out")
    run_job(tmp_path, out, n=7)
    manifest = load_manifest(out)
    assert manifest.num_rows == 7
    index = read_shard_index(out)
    assert "pipe_pattern" not in index  # a local path needs no command
    samples = list(webdataset.WebDataset(index["url_pattern"], shardshuffle=False))
    check_samples(samples, dict(zip(manifest["image_key"], manifest["sha256"], strict=True)))
