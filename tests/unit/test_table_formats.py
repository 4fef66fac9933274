"""CSV and JSON Lines prompt tables (issue #33): the format is the file's ending, a source holds one format, a bad
line is one message naming the file and the line, and a run in process (no Ray, sleep backend) reads them as it
reads Parquet: text columns stay text (`001` stays `001`), settings columns are checked, pass-through columns keep
the types read. tests/integration/test_table_formats.py runs them on Ray, one from S3."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import imagefleet
from imagefleet.configs.loader import load_config
from imagefleet.jobs import init
from imagefleet.jobs.cli import main
from imagefleet.pipelines.table_formats import (
    CSV,
    JSONL,
    PARQUET,
    TableError,
    describe_file,
    file_format,
    one_format,
    read_file,
    table_stem,
)
from tests.helpers import sleep_job, write_config, write_prompts


def _job(src: Path, out: Path, **source: Any) -> dict[str, Any]:
    raw = sleep_job(src, str(out))
    raw["source"].update(source)
    raw["cluster"]["executor"] = "in_process"
    return raw


def _refusal(raw: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `imagefleet run` (exit 2) prints for `raw`, before any output exists."""
    assert main(["run", str(write_config(tmp_path / "job.yaml", raw)), "--progress", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert not Path(raw["output"]["uri"]).exists()
    return err[0]


def _rows(result: Any) -> list[dict[str, Any]]:
    return sorted(result.manifest().to_table().to_pylist(), key=lambda r: r["id"])


def test_the_format_is_the_files_ending() -> None:
    assert [file_format(p) for p in ("a.csv", "s3://b/x/A.CSV", "a.csv.gz", "a.jsonl", "a.ndjson.gz", "a.parquet",
                                     "part-0001", "a.json", "a.gz")] == [
        CSV, CSV, CSV, JSONL, JSONL, PARQUET, PARQUET, PARQUET, PARQUET]
    assert [table_stem(p) for p in ("d/prompts.csv.gz", "p.parquet", "x.ndjson", "notes")] == [
        "prompts", "p", "x", "notes"]
    assert one_format(["a.csv", "b.csv.gz"]) == CSV
    with pytest.raises(TableError, match=r"CSV \(a.csv\) and JSON Lines \(b.jsonl\) files; keep one format"):
        one_format(["a.csv", "b.jsonl", "c.parquet"])


def test_a_folder_of_two_formats_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.csv").write_text("prompt\na cat\n")
    (tmp_path / "t" / "b.jsonl").write_text('{"prompt": "a dog"}\n')
    line = _refusal(_job(tmp_path / "t", tmp_path / "out"), tmp_path, capsys)
    assert "a.csv" in line and "b.jsonl" in line and "one format per source" in line


@pytest.mark.parametrize(("name", "text", "message"), [
    ("extra-field.csv", 'id,prompt\n1,a cat\n2,"a dog,\nin a hat"\n3,a cow, moo\n',
     r"line 5: 3 fields where the header has 2 \(a field holding a comma must be quoted\)"),
    ("open-quote.csv", 'id,prompt\n1,a cat\n2,"a dog\n3,a cow\n', r"line 3: a quoted field starting in this row is "
                                                                  r"never closed"),
    ("not-utf8.csv", b"id,prompt\n1,a cat\n2,caf\xe9\n", r"line 3: not UTF-8 text"),
    ("bad-json.jsonl", '{"prompt": "a cat"}\n\n{"prompt": "a dog",}\n', r"line 3: not valid JSON"),
    ("array.jsonl", '{"prompt": "a cat"}\n["a dog"]\n', r"line 2: a JSON array, not an object"),
    ("mixed-ids.jsonl", '{"id": 1, "prompt": "a"}\n{"id": null, "prompt": "b"}\n{"id": "003", "prompt": "c"}\n',
     r"line 3: 'id' is a string but line 1 gave it a number"),
])
def test_a_malformed_line_is_one_message_naming_the_file_and_the_line(
        name: str, text: str | bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / name
    src.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = _refusal(_job(src, tmp_path / "out"), tmp_path, capsys)
    assert f"source file {src} line" in line
    assert re.search(message, line), line


def test_empty_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lone empty file (no bytes, or a header only) has no rows; beside others it adds none and is left out."""
    for name, text in (("empty.csv", ""), ("header.csv", "id,prompt\n"), ("empty.jsonl", "\n")):
        (tmp_path / name).write_text(text)
        line = _refusal(_job(tmp_path / name, tmp_path / "out"), tmp_path, capsys)
        assert line.endswith(f"source {tmp_path / name} has no rows"), line
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "a.csv").write_text("")
    (folder / "b.csv").write_text("id,prompt\n001,a cat\n")
    (folder / "c.csv").write_text("id,prompt\n")
    rows = _rows(imagefleet.run(_job(folder, tmp_path / "out"), echo=None))
    assert [(r["id"], r["prompt"], r["status"]) for r in rows] == [("001", "a cat", "ok")]


def test_a_csv_reads_as_written(tmp_path: Path) -> None:
    """A byte-order mark, RFC 4180 quoting (a comma, a line break and a doubled quote inside a field), UTF-8
    prompts, ids with leading zeros (text, though they look like numbers), empty cells as nulls, per-row settings
    inferred as numbers, and pass-through columns typed as read; a rerun makes nothing new."""
    src = tmp_path / "p.csv"
    src.write_bytes("\ufeffid,prompt,seed,width,label,weight,live,note\n"
                    '001,"a cat, sitting\non a ""red"" mat",5,32,3,0.5,true,x\n'
                    "002,un café à Paris — 東京の猫 🐈,,,4,,false,\n"
                    "010,7,9,16,,1.25,,y\n".encode())
    raw = _job(src, tmp_path / "out", pass_through=["label", "weight", "live", "note"])
    first = imagefleet.run(raw, echo=None)
    table = first.manifest().to_table()
    assert [table.schema.field(c).type for c in ("label", "weight", "live", "note")] == [
        pa.int64(), pa.float64(), pa.bool_(), pa.string()]
    rows = _rows(first)
    assert [(r["id"], r["prompt"], r["status"]) for r in rows] == [
        ("001", 'a cat, sitting\non a "red" mat', "ok"), ("002", "un café à Paris — 東京の猫 🐈", "ok"),
        ("010", "7", "ok")]  # a prompt that looks like a number is still the text
    assert (rows[0]["seed"], rows[0]["width"], rows[2]["seed"], rows[2]["width"]) == (5, 32, 9, 16)
    assert rows[1]["width"] == 16  # an empty cell: the generator's default
    assert [(r["label"], r["weight"], r["live"], r["note"]) for r in rows] == [
        (3, 0.5, True, "x"), (4, None, False, None), (None, 1.25, None, "y")]
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None and again.summary.num_written == 0


def test_a_settings_column_is_checked_as_in_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "p.csv"
    src.write_text("prompt,seed\na cat,1.5\n")
    line = _refusal(_job(src, tmp_path / "out"), tmp_path, capsys)
    assert f"source file {src}: column 'seed' has type double, expected integer" in line


def test_a_folder_of_json_lines_files(tmp_path: Path) -> None:
    """Gzipped JSON Lines files of one folder: ids as the JSON types them (a string keeps its zeros), a key some
    lines lack is null there, an int column beside a float one reads as float, nested values pass through."""
    folder = tmp_path / "t"
    folder.mkdir()
    lines = [{"id": "007", "prompt": "a cat", "num_steps": 3, "meta": {"k": 1}, "score": 1},
             {"id": "008", "prompt": "a dog", "meta": {"k": 2}, "score": 2}]
    (folder / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    (folder / "b.ndjson").write_text(json.dumps({"id": "009", "prompt": "a cow", "num_steps": 2, "meta": {"k": 3},
                                                "score": 2.5}) + "\n")
    result = imagefleet.run(_job(folder, tmp_path / "out", pass_through=["meta", "score"]), echo=None)
    table = result.manifest().to_table()
    assert table.schema.field("score").type == pa.float64()
    rows = _rows(result)
    assert [(r["id"], r["num_steps"], r["meta"], r["score"]) for r in rows] == [
        ("007", 3, {"k": 1}, 1.0), ("008", 30, {"k": 2}, 2.0), ("009", 2, {"k": 3}, 2.5)]  # 30: the default


def test_read_file_reads_a_csv_as_the_driver_typed_it(tmp_path: Path) -> None:
    src = tmp_path / "p.csv.gz"
    src.write_bytes(gzip.compress(b"id,prompt,seed\n001,a,1\n002,b,2\n"))
    fs = pafs.LocalFileSystem()
    schema, rows = describe_file(fs, str(src), ["id", "prompt"])
    assert rows == (2,) and schema.field("id").type == pa.string() and schema.field("seed").type == pa.int64()
    types = pa.schema([pa.field("seed", pa.float64()), pa.field("id", pa.string())])
    read = read_file(fs, str(src), ["seed", "id"], types)
    assert read.schema == types and read.column("id").to_pylist() == ["001", "002"]


def test_init_proposes_a_config_from_a_csv(tmp_path: Path) -> None:
    src = tmp_path / "ads.csv"
    src.write_text("sku,Caption,negative,width\n0012,a red chair,blurry,512\n0013,a blue lamp,,768\n")
    out = tmp_path / "job.yaml"
    assert init.main([str(src), "-o", str(out)]) == 0
    cfg = load_config(out)
    assert (cfg.source.uri, cfg.source.prompt_column, cfg.source.id_column) == (str(src), "Caption", "sku")
    assert cfg.source.negative_prompt_column == "negative" and cfg.name == "ads"
    assert "width" in out.read_text()


def test_init_explains_a_bad_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("prompt,seed\na,1\nb,2,3\n")
    assert init.main([str(src), "-o", str(tmp_path / "job.yaml")]) == 2
    assert f"source file {src} line 3: 3 fields where the header has 2" in capsys.readouterr().err
    parquet = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    assert init.main([str(parquet), "-o", str(tmp_path / "p.yaml")]) == 0


def test_relative_input_images_resolve_against_a_csv_files_folder() -> None:
    from imagefleet.pipelines.slices import input_base

    assert input_base("/data/p.csv.gz") == input_base("/data/p.jsonl") == input_base("/data/p.parquet") == (
        input_base("/data/"))
