"""An s3:// model folder is keyed by its content, like a local one (issue #31): the same weights on S3 and on disk
share image keys (nothing made again), weights replaced on S3 get new keys and are fetched again by the actor (the
node's copy is never served stale), and each object is read once per version (cached by its ETag)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import imagefleet
from imagefleet.actors import model_digest
from imagefleet.actors.model_digest import folder_digest, store_folder_digest
from imagefleet.actors.s3_store import S3Store
from imagefleet.actors.storage import resolve_store_spec
from imagefleet.configs.storage import S3Config, StoreSpec
from imagefleet.pipelines.manifest import read_manifest_columns
from tests.helpers import tiny_job, write_prompts


def _upload(s3_env: Any, bucket: str, folder: Path, prefix: str) -> None:
    client = s3_env.client()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                              Body=path.read_bytes())


def test_an_s3_model_folder_is_keyed_by_its_weights(tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _upload(s3_env, bucket, tiny_model, "models/tiny")
    uri = f"s3://{bucket}/models/tiny"
    store = S3Store(uri, resolve_store_spec(uri, S3Config()))
    reads: list[str] = []
    real = S3Store.stored_sha256

    def counting(self: S3Store, rel: str) -> str:
        reads.append(rel)
        return real(self, rel)

    monkeypatch.setattr(S3Store, "stored_sha256", counting)
    assert store_folder_digest(store) == folder_digest(tiny_model)  # the same files: the same identity
    first_reads = len(reads)
    assert first_reads > 0 and store_folder_digest(store) == folder_digest(tiny_model)
    assert len(reads) == first_reads  # unchanged ETags: nothing read again

    write_prompts(tmp_path / "p.parquet", {"prompt": ["a fox", "an owl"]})
    raw = tiny_job(tmp_path / "p.parquet", tiny_model, str(tmp_path / "out"))
    raw["cluster"]["executor"] = "in_process"
    raw["generators"]["tiny"]["defaults"].update(width=32, height=32)
    raw["generators"]["tiny"]["local_cache_dir"] = str(tmp_path / "node-cache")
    made = imagefleet.run(raw, echo=None).summary
    assert made is not None and made.num_written == 2

    raw["generators"]["tiny"]["model"] = uri  # the same weights, now on S3: every image is already there
    again = imagefleet.run(raw, echo=None).summary
    assert again is not None and again.num_already_present == 2 and again.num_written == 0

    # retrained in place: the scheduler's config changes (as new weights would) -> new keys, fetched again
    config = (tiny_model / "scheduler" / "scheduler_config.json").read_text()
    s3_env.client().put_object(Bucket=bucket, Key="models/tiny/scheduler/scheduler_config.json",
                               Body=config.replace("{", '{"retrained": 1, ', 1).encode())
    retrained = imagefleet.run(raw, echo=None).summary
    assert retrained is not None and retrained.num_written == 2 and retrained.num_already_present == 0
    copies = sorted(p.parent.name for p in (tmp_path / "node-cache").glob("*/.imagefleet-complete"))
    assert len(copies) == 2  # the node's first copy was not served for the new weights
    versions = read_manifest_columns(str(tmp_path / "out"), StoreSpec(kind="local"), ["model_version"]).column(0)
    assert set(versions.to_pylist()) == {store_folder_digest(store)}
    assert store_folder_digest(store) != folder_digest(tiny_model)
    assert model_digest.cache_file().exists()


def test_an_empty_s3_model_folder_is_one_line(tmp_path: Path, s3_env: Any, bucket: str) -> None:
    import subprocess

    from tests.helpers import CLI, write_config

    write_prompts(tmp_path / "p.parquet", {"prompt": ["a fox"]})
    raw = tiny_job(tmp_path / "p.parquet", f"s3://{bucket}/models/nothing-here", str(tmp_path / "out"))
    done = subprocess.run([*CLI, "run", str(write_config(tmp_path / "job.yaml", raw)), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and f"no model files under s3://{bucket}/models/nothing-here" \
        in done.stderr
