"""Pass-through columns (issue #33): the prompt table's own columns reach the manifest unchanged, typed as in the
data, on every row made from their row, without entering the image key; runs here are in process (no Ray) on the
sleep backend. tests/integration/test_pass_through.py runs one on Ray's pools."""

from __future__ import annotations

import datetime as dt
import decimal
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import imagefleet
from imagefleet.actors.pass_through import carry_problem, decode_columns, encode_rows, stored_type
from imagefleet.jobs.cli import main
from tests.helpers import sleep_job, write_config, write_prompts

SKUS = ["sku-1", "sku-2", "sku-3", "sku-4"]


def _table(path: Path) -> Path:
    """A user's prompt table: a string key, an int64 label, a float weight with a null, and a column named like
    a manifest column (`status`)."""
    return write_prompts(path, {
        "prompt": ["a red chair", "a red chair", "a blue lamp", "a green sofa"],  # two SKUs share a prompt
        "sku": SKUS,
        "label": pa.array([3, 1, 4, None], pa.int64()),
        "weight": pa.array([0.5, None, 2.25, 1.0], pa.float64()),
        "status": ["draft", "live", "live", "retired"],
    })


def _job(src: Path, out: Path, **source: Any) -> dict[str, Any]:
    raw = sleep_job(src, str(out))
    raw["source"].update(source)
    raw["cluster"]["executor"] = "in_process"
    return raw


def _manifest(result: Any) -> pa.Table:
    return result.manifest().to_table()


def test_the_users_columns_reach_the_manifest_typed_as_in_the_input_and_join_back(tmp_path: Path) -> None:
    """`source.pass_through: all` (the default): sku stays a string, label int64, weight float64 with its null;
    `status` can't overwrite the manifest's own status, so it is carried as `source_status`; the manifest joins
    back to the input table on sku; the image keys are the keys of the same run without pass-through."""
    src = _table(tmp_path / "p.parquet")
    result = imagefleet.run(_job(src, tmp_path / "out"), echo=None)
    assert "carries: sku, label, weight, status → source_status" in result.plan
    table = _manifest(result)
    assert table.schema.field("sku").type == pa.string()
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("weight").type == pa.float64()
    assert table.schema.field("source_status").type == pa.string()
    assert set(table.column("status").to_pylist()) == {"ok"}  # the manifest's own status, untouched
    assert "prompt" in table.schema.names and "source_prompt" not in table.schema.names  # the prompt is there once
    joined = pq.read_table(src).join(table.select(["sku", "image_key", "source_status"]), "sku")
    assert joined.num_rows == 4 and sorted(joined.column("sku").to_pylist()) == SKUS
    assert all(r["status"] == r["source_status"] and r["image_key"] for r in joined.to_pylist())
    by_sku = {r["sku"]: r for r in table.to_pylist()}
    assert [by_sku[s]["label"] for s in SKUS] == [3, 1, 4, None]
    assert [by_sku[s]["weight"] for s in SKUS] == [0.5, None, 2.25, 1.0]
    assert [by_sku[s]["source_status"] for s in SKUS] == ["draft", "live", "live", "retired"]
    # never part of the key: the same table with nothing carried makes the same images
    bare = imagefleet.run(_job(src, tmp_path / "bare", pass_through="none"), echo=None)
    plain = _manifest(bare)
    assert "sku" not in plain.schema.names and "carries" not in bare.plan
    assert sorted(plain.column("image_key").to_pylist()) == sorted(table.column("image_key").to_pylist())


def test_a_rerun_and_an_adopting_run_still_carry_the_columns(tmp_path: Path) -> None:
    """A rerun makes nothing and carries the columns again; so does a run that finds the images without a manifest
    (adopted from their records)."""
    src = _table(tmp_path / "p.parquet")
    out = tmp_path / "out"
    first = _manifest(imagefleet.run(_job(src, out), echo=None))
    again = imagefleet.run(_job(src, out), echo=None)
    assert again.summary is not None and again.summary.num_written == 0 and again.summary.num_already_present == 4
    shutil.rmtree(out / "manifest")
    adopted = imagefleet.run(_job(src, out), echo=None)
    assert adopted.summary is not None and adopted.summary.num_written == 0
    for table in (_manifest(again), _manifest(adopted)):
        assert table.schema == first.schema
        key = ["sku", "label", "weight", "source_status", "image_key"]
        assert sorted(table.select(key).to_pylist(), key=str) == sorted(first.select(key).to_pylist(), key=str)


def test_every_manifest_row_of_a_request_carries_its_input_rows_values(tmp_path: Path) -> None:
    """Fan-out to two generators × two images per row × two variants, and a cascade with escalations: each
    manifest row has the values of the input row it was made from."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["good lamp", "meh chair", "meh sofa"],
                                                 "sku": ["L", "C", "S"], "label": pa.array([10, 20, 30], pa.int64()),
                                                 "num_images": [2, 1, 2]})
    raw = _job(src, tmp_path / "fan", variants=["1:1", "16:9"])
    raw["generators"]["other"] = {**raw["generators"]["sleepy"], "model": "other-model"}
    raw["routing"] = {"mode": "fanout", "fanout": ["sleepy", "other"]}
    table = _manifest(imagefleet.run(raw, echo=None))
    assert table.num_rows == 5 * 2 * 2
    assert {(r["sku"], r["label"]) for r in table.to_pylist()} == {("L", 10), ("C", 20), ("S", 30)}
    assert all(dict(zip("LCS", ["good lamp", "meh chair", "meh sofa"], strict=True))[r["sku"]] == r["prompt"]
               for r in table.to_pylist())
    # the cascade: a low draft is redone by the heavy generator on the same row
    raw = _job(src, tmp_path / "cascade")
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model"}
    raw["routing"] = {"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy", "threshold": 0.5}}
    raw["scorer"] = {"backend": "rule", "marker": "good"}
    rows = _manifest(imagefleet.run(raw, echo=None)).to_pylist()
    assert sorted(r["route"] for r in rows).count("escalated") == 3
    assert all({"good lamp": "L", "meh chair": "C", "meh sofa": "S"}[r["prompt"]] == r["sku"] for r in rows)
    assert all(r["label"] == {"L": 10, "C": 20, "S": 30}[r["sku"]] for r in rows)


def test_a_list_carries_those_columns_and_a_missing_or_colliding_one_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pass_through: [sku, weight]` carries only those (a manifest-named one listed is carried prefixed); a listed
    column the data lacks, or two columns that would become one manifest column, stop the run before work:
    exit 2, one line, nothing written."""
    src = _table(tmp_path / "p.parquet")
    table = _manifest(imagefleet.run(_job(src, tmp_path / "out", pass_through=["weight", "sku", "prompt"]),
                                     echo=None))
    assert table.schema.names[-3:] == ["weight", "sku", "source_prompt"] and "label" not in table.schema.names
    bad = write_config(tmp_path / "bad.yaml", _job(src, tmp_path / "bad", pass_through=["sku", "colour"]))
    assert main(["run", str(bad), "--progress", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "source.pass_through names column 'colour', which the data lacks" in err[0]
    assert not (tmp_path / "bad").exists()
    clash = write_prompts(tmp_path / "clash.parquet", {"prompt": ["x"], "seed_note": ["n"], "error": ["e"],
                                                        "source_error": ["f"]})
    with pytest.raises(imagefleet.InputInvalid, match="columns 'error' and 'source_error' would both be the "
                                                      "manifest's 'source_error'"):
        imagefleet.run(_job(clash, tmp_path / "clash"), dry_run=True, echo=None)


def test_nested_binary_and_temporal_columns_are_carried_and_bad_cells_are_error_rows(tmp_path: Path) -> None:
    """Lists, structs, maps, bytes, timestamps and decimals come out as they went in; a text cell that is not
    UTF-8, and a row whose values are over `source.max_pass_through_bytes`, are that row's error (never a
    traceback); the other rows are made."""
    n = 4
    src = tmp_path / "p.parquet"
    pq.write_table(pa.table({
        "prompt": [f"p{i}" for i in range(n)],
        "tags": pa.array([["a", "b"], [], None, ["c"]], pa.list_(pa.string())),
        "box": pa.array([{"x": 1, "y": 2.5}, None, {"x": None, "y": 0.0}, {"x": 4, "y": 1.0}],
                        pa.struct([("x", pa.int32()), ("y", pa.float64())])),
        "attrs": pa.array([[("k", "v")], [], None, [("a", "b")]], pa.map_(pa.string(), pa.string())),
        "raw": pa.array([b"\x00\xff", b"", None, b"x"], pa.binary()),
        "at": pa.array([dt.datetime(2024, 5, 1, 12, 0, 0, 123456), None, dt.datetime(1999, 1, 1),
                        dt.datetime(2000, 1, 1)], pa.timestamp("us", tz="UTC")),
        "price": pa.array([decimal.Decimal("9.99"), None, decimal.Decimal("0.10"), decimal.Decimal("1.00")],
                          pa.decimal128(6, 2)),
        "note": pa.array([b"fine", b"\xff\xfe bad", b"ok", b"y" * 300], pa.binary()).cast(pa.string(), safe=False),
    }), src)
    table = _manifest(imagefleet.run(_job(src, tmp_path / "out", max_pass_through_bytes=400), echo=None))
    rows = {r["prompt"]: r for r in table.to_pylist()}
    assert [rows[f"p{i}"]["status"] for i in range(n)] == ["ok", "error", "ok", "error"]
    assert "pass-through column 'note' is not valid UTF-8 text" in rows["p1"]["error"]
    assert "source.max_pass_through_bytes=400" in rows["p3"]["error"]
    original = pq.read_table(src)
    for name in ("tags", "box", "attrs", "raw", "at", "price"):
        assert table.schema.field(name).type == original.schema.field(name).type, name
        assert rows["p0"][name] == original.column(name)[0].as_py(), name
        assert rows["p2"][name] == original.column(name)[2].as_py(), name
    assert rows["p1"]["tags"] is None  # an error row carries nothing it could not carry whole


def test_all_carries_what_every_file_has(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Files of one table that differ in a column nobody named, or a file with a column twice: `all` carries the
    columns every file has once and says which it leaves out; the run goes on."""
    folder = tmp_path / "t"
    write_prompts(folder / "a.parquet", {"prompt": ["a"], "sku": ["A"], "extra": [1]})
    write_prompts(folder / "b.parquet", {"prompt": ["b"], "sku": ["B"]})
    with caplog.at_level("WARNING"):
        table = _manifest(imagefleet.run(_job(folder, tmp_path / "out"), echo=None))
    assert "sku" in table.schema.names and "extra" not in table.schema.names
    assert "leaves out column(s) extra: not in every file" in caplog.text
    # a column a file has twice can't be told apart: left out too (a named one is refused)
    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array([1]), pa.array([2]), pa.array(["A"])],
                                        names=["prompt", "x", "x", "sku"]), twice)
    table = _manifest(imagefleet.run(_job(twice, tmp_path / "twice"), echo=None))
    assert table.schema.names[-1] == "sku" and "x" not in table.schema.names
    with pytest.raises(imagefleet.InputInvalid, match="column 'x' appears 2 times in the data"):
        imagefleet.run(_job(twice, tmp_path / "twice", pass_through=["x"]), dry_run=True, echo=None)


def test_the_codec_round_trips_every_type_parquet_stores() -> None:
    """What the preprocessor writes into PASS_THROUGH decodes to the same values and types (nulls, NaN, uint64,
    float16, dictionary, fixed-size binary and lists, times, durations...)."""
    import math

    table = pa.table({
        "i": pa.array([2**62, None], pa.int64()), "u": pa.array([2**64 - 1, 0], pa.uint64()),
        "f": [math.nan, None], "h": pa.array(np.array([1.5, 2.0], np.float16)), "b": [True, None],
        "s": ["ü", None], "d": pa.array(["p", "q"]).dictionary_encode(), "fb": pa.array([b"ab", None], pa.binary(2)),
        "fl": pa.array([[1, 2], None], pa.list_(pa.int8(), 2)), "n": pa.nulls(2),
        "t": pa.array([dt.time(1, 2, 3, 4), None], pa.time64("us")), "dur": pa.array([5, None], pa.duration("ns")),
        "day": pa.array([dt.date(1, 1, 1), None], pa.date32()),
        "deep": pa.array([[{"k": [b"x"]}], None], pa.list_(pa.struct([("k", pa.list_(pa.binary()))]))),
    })
    names = {c: c for c in table.column_names}
    rows = encode_rows(table, names, 10_000)
    assert all(problem == "" for _, problem in rows)
    schema = pa.schema([pa.field(c, stored_type(table.schema.field(c).type)) for c in table.column_names])
    out = pa.Table.from_arrays(decode_columns([text for text, _ in rows], schema), schema=schema)
    for c in table.column_names:
        want = table.column(c).cast(schema.field(c).type)
        if c == "f":
            assert math.isnan(out.column(c)[0].as_py()) and out.column(c)[1].as_py() is None
        else:
            assert out.column(c).equals(want), c
    assert carry_problem(pa.month_day_nano_interval()) and not carry_problem(schema.field("deep").type)
    assert pc.all(pc.equal(out.column("i"), table.column("i"))).as_py()
