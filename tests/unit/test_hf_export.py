"""`imagefleet export` (pipelines/hf_export.py) at its edges, on small in-process runs into local folders: an
output without a commit, one without an ok image, a DEST holding other files, reruns, and the column names and
types `datasets` needs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imagefleet
from imagefleet.jobs import cli
from imagefleet.pipelines.hf_export import METADATA, hf_name, hf_type, metadata_schema
from tests.helpers import sleep_job, write_prompts


def make_output(tmp_path: Path, prompts: list[str], fail: str = "", **columns: list[Any]) -> str:
    """A committed output of the sleep backend, run in process (no Ray); prompts containing `fail` are errors."""
    out = str(tmp_path / "out")
    src = write_prompts(tmp_path / "p.parquet", {"prompt": prompts, **columns})
    raw = sleep_job(src, out)
    raw["generators"]["sleepy"]["fail_prompt_substring"] = fail
    raw["cluster"] = {"address": "local", "executor": "in_process"}
    imagefleet.run(raw, echo=None)
    return out


def export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["export", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_output_without_a_commit_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "half" / "images").mkdir(parents=True)  # a run that died before its commit
    for output in (tmp_path / "half", tmp_path / "nowhere"):
        code, out, err = export(capsys, str(output), str(tmp_path / "hf"))
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and f"no committed manifest at {output}" in err
    assert not (tmp_path / "hf").exists()


def test_an_output_without_ok_images_exports_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = make_output(tmp_path, ["boom one", "boom two"], fail="boom")
    code, _, err = export(capsys, out, str(tmp_path / "hf"))
    assert code == 2 and err.count("\n") == 1
    assert "nothing to export" in err and "no ok image (2 rows without one)" in err
    assert not (tmp_path / "hf" / METADATA).exists()
    with pytest.raises(imagefleet.InputInvalid, match="nothing to export"):
        imagefleet.export(out, str(tmp_path / "hf"))


def test_a_dest_holding_other_files_is_refused_and_left_alone(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = make_output(tmp_path / "a", ["a cat", "a dog"])
    dest = tmp_path / "hf"
    (dest / "train").mkdir(parents=True)
    (dest / "train" / "notes.txt").write_text("mine")
    code, _, err = export(capsys, out, str(dest))
    assert code == 2 and err.count("\n") == 1
    assert f"{dest} holds train/notes.txt, which an export doesn't write" in err
    assert sorted(p.name for p in dest.rglob("*")) == ["notes.txt", "train"]  # nothing written
    # the output itself (or any folder above it) is not a DEST
    code, _, err = export(capsys, out, out)
    assert code == 2 and "which an export doesn't write" in err
    # an export of another output is not overwritten
    (dest / "train" / "notes.txt").unlink()
    assert export(capsys, out, str(dest))[0] == 0
    other = make_output(tmp_path / "b", ["a bird"])
    code, _, err = export(capsys, other, str(dest))
    assert code == 2 and f"holds an export of {out}: export into an empty folder" in err


def test_a_rerun_copies_only_what_is_missing_and_drops_what_the_output_lost(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = make_output(tmp_path, ["a cat", "a dog", "a bird boom", "a fish"], fail="boom")
    dest = tmp_path / "hf"
    code, line, _ = export(capsys, out, str(dest))
    assert code == 0 and line.count("\n") == 1
    assert line.startswith(f"exported 3 images to {dest} (3 copied, 0 already there); left out 1 row without an "
                           f"image (1 error)")
    images = sorted((dest / "train").glob("*.png"))
    first = (dest / METADATA).read_bytes()
    assert len(images) == 3
    # the same export again: nothing copied, the same metadata bytes
    code, line, _ = export(capsys, out, str(dest))
    assert code == 0 and "(0 copied, 3 already there)" in line
    assert (dest / METADATA).read_bytes() == first
    # a lost image and a torn one are copied again; an image no row names (an earlier export's) is removed
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:10])
    stale = dest / "train" / f"{'f' * 40}.png"
    stale.write_bytes(b"old")
    code, line, _ = export(capsys, out, str(dest))
    assert code == 0 and "(2 copied, 1 already there, 1 no longer in the output removed)" in line
    assert not stale.exists() and sorted((dest / "train").glob("*.png")) == images
    table = pq.read_table(dest / METADATA)
    for name, sha in zip(table.column("file_name").to_pylist(), table.column("sha256").to_pylist(), strict=True):
        assert hashlib.sha256((dest / "train" / name).read_bytes()).hexdigest() == sha
    assert json.loads(table.schema.metadata[b"imagefleet.export"]) == {"output": out}


def test_columns_datasets_would_misread_are_renamed_and_maps_become_entry_lists() -> None:
    taken = {"file_name", "text", "id"}
    assert hf_name("sku", taken) == "sku"
    assert hf_name("text", taken) == "source_text"  # the caption column is the prompt
    assert hf_name("image", taken) == "source_image"  # ImageFolder's own column
    assert hf_name("file_name", taken) == "file_name_value"  # ImageFolder reads *file_name(s) as image paths
    assert hf_name("thumb_file_names", taken) == "thumb_file_names_value"
    assert hf_name("source_text", {"source_text"}) == "source_source_text"
    entries = pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.int64())]))
    assert hf_type(pa.map_(pa.string(), pa.int64())) == entries
    assert hf_type(pa.struct([("m", pa.map_(pa.string(), pa.int64()))])) == pa.struct([("m", entries)])
    assert hf_type(pa.large_list(pa.int8())) == pa.large_list(pa.int8())
    schema = metadata_schema([pa.field("text", pa.string()), pa.field("attrs", pa.map_(pa.string(), pa.int64()))])
    assert schema.names[:2] == ["file_name", "text"] and schema.names[-2:] == ["source_text", "attrs"]
    assert schema.field("seed").type == pa.int64() and schema.field("attrs").type == entries


def test_an_unknown_format_or_a_bucketless_uri_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["export", str(tmp_path), str(tmp_path / "hf"), "--format", "coco"])
    assert exited.value.code == 2 and "invalid choice: 'coco'" in capsys.readouterr().err
    with pytest.raises(imagefleet.ConfigInvalid, match="unknown export format 'coco'"):
        imagefleet.export(str(tmp_path), str(tmp_path / "hf"), format="coco")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "k")
    code, _, err = export(capsys, str(tmp_path), "s3://")
    assert code == 2 and err.count("\n") == 1 and "has no bucket" in err
