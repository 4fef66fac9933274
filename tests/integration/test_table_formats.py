"""CSV and JSON Lines prompt tables end to end (issue #33): `imagefleet run` on Ray's pools (sleep backend, S3
output) reads a local CSV and a gzipped JSON Lines folder from s3://, one manifest row per requested image, ids as
written (leading zeros kept), pass-through columns typed as read; a rerun writes nothing new."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from imagefleet.jobs.cli import main
from tests.helpers import sleep_job, write_config
from tests.integration.test_pipeline import manifest, objects

pytestmark = pytest.mark.slow

N = 12


def _run_twice(raw: dict[str, Any], tmp_path: Path, s3: Any, bucket: str, prefix: str,
               capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """Run `raw` with the CLI, then again: the second run writes no image. The first run's manifest rows."""
    raw["source"]["num_rows_per_block"] = 4  # several blocks through the pools
    cfg = str(write_config(tmp_path / f"{prefix}.yaml", raw))
    assert main(["run", cfg, "--progress", "off"]) == 0, capsys.readouterr().err
    rows = manifest(s3, bucket, prefix)
    images = objects(s3, bucket, f"{prefix}/images/")
    assert main(["run", cfg, "--progress", "off"]) == 0, capsys.readouterr().err
    assert f"0 written, {len(rows)} already present" in capsys.readouterr().out
    again = objects(s3, bucket, f"{prefix}/images/")
    assert again.keys() == images.keys()
    assert all(again[k]["LastModified"] == images[k]["LastModified"] for k in again)
    return rows


def test_a_local_csv_runs_on_ray(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["\ufeffid,prompt,num_images,width,sku,price,on_sale"]
    for i in range(N):
        prompt = f'"item {i}, on a ""plain"" table\nstudio light"' if i % 3 == 0 else f"café item {i}"
        width = 16 if i % 2 else ""  # empty: the generator's default
        lines.append(f"{i:04d},{prompt},{1 + i % 2},{width},{i:06d},{i * 1.5},{str(i % 2 == 0).lower()}")
    src = tmp_path / "prompts.csv"
    src.write_text("\n".join(lines) + "\n")
    raw = sleep_job(src, f"s3://{bucket}/csv")
    raw["source"]["pass_through"] = ["sku", "price", "on_sale"]
    rows = _run_twice(raw, tmp_path, s3_env, bucket, "csv", capsys)
    assert len(rows) == sum(1 + i % 2 for i in range(N)) and {r["status"] for r in rows} == {"ok"}
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == [f"{i:04d}" for i in range(N)]  # text ids: "0007", not 7
    for i in range(N):
        row = by_id[f"{i:04d}"]
        want = f"item {i}, on a \"plain\" table\nstudio light" if i % 3 == 0 else f"café item {i}"
        assert (row["prompt"], row["sku"], row["price"], row["on_sale"]) == (want, i, i * 1.5, i % 2 == 0)
        assert isinstance(row["sku"], int) and isinstance(row["on_sale"], bool)  # pass-through: typed as read


def test_json_lines_from_s3_run_on_ray(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    client = s3_env.client()
    for part in range(2):
        objs = [{"id": f"{part}{i:03d}", "prompt": f"a lamp {part}-{i}", "seed": i, "tags": ["x"] * i,
                 "meta": {"batch": part}} for i in range(N // 2)]
        body = gzip.compress("".join(json.dumps(o) + "\n" for o in objs).encode())
        client.put_object(Bucket=bucket, Key=f"prompts/part-{part}.jsonl.gz", Body=body)
    raw = sleep_job(f"s3://{bucket}/prompts/", f"s3://{bucket}/jsonl")
    rows = _run_twice(raw, tmp_path, s3_env, bucket, "jsonl", capsys)
    assert len(rows) == N and {r["status"] for r in rows} == {"ok"}
    assert sorted(r["id"] for r in rows) == sorted(f"{p}{i:03d}" for p in range(2) for i in range(N // 2))
    for row in rows:
        part, i = int(row["id"][0]), int(row["id"][1:])
        assert (row["seed"], row["tags"], row["meta"]) == (i, ["x"] * i, {"batch": part})
