"""Config and input mistakes that used to crash, hang or silently misbehave: each is one clear line now."""

from __future__ import annotations

import argparse
import decimal
from pathlib import Path

import pyarrow as pa
import pytest

from imagefleet.actors import PromptPreprocessor
from imagefleet.configs.loader import ConfigError, load_config, parse_config
from imagefleet.jobs.runtime import check_temp_dir, run_id_arg
from imagefleet.pipelines.slices import prep_config
from imagefleet.pipelines.text_to_image import InputError, _check_separate, glob_match
from tests.helpers import sleep_job, write_config

BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))


def write(tmp_path: Path, text: str | bytes, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.timeout(20)
def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(write(tmp_path, BOMB))


def test_duplicate_keys_are_refused_with_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"duplicate key 'seed' at line 2"):
        load_config(write(tmp_path, "seed: 1\nseed: 2\n"))
    with pytest.raises(ConfigError, match="duplicate key 'uri'"):
        load_config(write(tmp_path, "source:\n  uri: a.parquet\n  uri: b.parquet\n"))


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d, "is a folder; pass the YAML file"),
    (lambda d: write(d, "name: caf\xe9\n".encode("latin-1")), "is not UTF-8 text"),
    (lambda d: d / "missing.yaml", "does not exist"),
])
def test_unreadable_config_paths_are_one_line(tmp_path: Path, make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(make(tmp_path))  # type: ignore[operator]


@pytest.mark.parametrize(("override", "message"), [
    ("seed=!!python/object/apply:os.system ['true']", "--set seed is not valid YAML: could not determine"),
    ("seed=[1,", "--set seed is not valid YAML"),
    ("seed", "key=value"),
])
def test_bad_overrides_are_one_line(tmp_path: Path, override: str, message: str) -> None:
    path = write_config(tmp_path / "job.yaml", sleep_job("p.parquet", "out"))
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_empty_uris_are_refused() -> None:
    raw = sleep_job("p.parquet", "")
    with pytest.raises(ConfigError, match="output.uri is empty"):
        parse_config(raw)
    raw = sleep_job("", "out")
    with pytest.raises(ConfigError, match="source.uri"):
        parse_config(raw)


def test_a_budget_without_a_cost_estimate_is_refused() -> None:
    raw = sleep_job("p.parquet", "out")
    raw["limits"] = {"budget_usd": 10}
    with pytest.raises(ConfigError, match="budget_usd=10 can't be enforced: generator 'sleepy' has no cost estimate"):
        parse_config(raw)
    raw["generators"]["sleepy"]["cost"] = {"usd_per_image": 0.01}
    assert parse_config(raw).limits.budget_usd == 10


@pytest.mark.parametrize("bad", ["../..", "a/b", "", ".hidden", "x" * 101, "a b", "run\n"])
def test_run_ids_are_names_never_paths(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a valid run id"):
        run_id_arg(bad)
    assert run_id_arg("2026-11-24T01.retry_2") == "2026-11-24T01.retry_2"


def test_temp_dir_must_be_short_and_writable(tmp_path: Path) -> None:
    from imagefleet.actors.storage import StorageError

    with pytest.raises(StorageError, match="must stay under 107 bytes"):
        check_temp_dir("/tmp/" + "x" * 80)
    import shutil
    import uuid

    short = Path(f"/tmp/ift-{uuid.uuid4().hex[:6]}")
    try:
        short.mkdir()
        (short / "file").write_text("")
        with pytest.raises(StorageError, match="is not writable"):
            check_temp_dir(str(short / "file" / "ray"))
        check_temp_dir(str(short / "ray"))
    finally:
        shutil.rmtree(short)


@pytest.mark.parametrize(("path", "pattern", "hit"), [
    ("/d/a.parquet", "/d/*.parquet", True),
    ("/d/sub/a.parquet", "/d/*.parquet", False),  # `*` stays within one folder
    ("/d/sub/a.parquet", "/d/**/*.parquet", True),
    ("/d/a.parquet", "/d/**/*.parquet", True),
    ("/d/x/y/a.parquet", "/d/**/a.parquet", True),
    ("/d/a.txt", "/d/*.parquet", False),
])
def test_globs_match_by_folder(path: str, pattern: str, hit: bool) -> None:
    assert glob_match(path, pattern) is hit


@pytest.mark.parametrize(("source", "output"), [
    ("/data/run", "/data/run"),
    ("/data/run/prompts.parquet", "/data/run"),
    ("/data/run/*.parquet", "/data/run"),
    ("/data", "/data/run"),
    ("s3://b/run/prompts.parquet", "s3://b/run"),
    ("s3://b/x/*.parquet", "s3://b/x"),
])
def test_source_and_output_must_not_overlap(source: str, output: str) -> None:
    with pytest.raises(InputError, match="overlap"):
        _check_separate(source, output)


@pytest.mark.parametrize(("source", "output"), [
    ("/data/prompts.parquet", "/data/run"), ("/data/run-in/*.parquet", "/data/run"), ("s3://a/x", "s3://b/x"),
    ("s3://b/prompts/p.parquet", "s3://b/out"),
])
def test_separate_source_and_output_pass(source: str, output: str) -> None:
    _check_separate(source, output)


def test_undecodable_text_and_decimal_numbers_are_row_data_not_crashes() -> None:
    """One invalid-UTF-8 prompt is one error row; a decimal guidance column (SQL exports) is a number."""
    cfg = parse_config(sleep_job("p.parquet", "out"))
    raw = pa.array([b"a fine prompt", b"bad \xff bytes", b"another"], pa.binary())
    prompts = pa.Array.from_buffers(pa.string(), 3, raw.buffers())
    guidance = pa.array([decimal.Decimal("7.50"), decimal.Decimal("1.25"), None], pa.decimal128(4, 2))
    out = PromptPreprocessor(prep_config(cfg))(pa.table({"prompt": prompts, "guidance_scale": guidance}))
    by_status = sorted(zip(out["status"], out["error"], out["guidance_scale"], strict=True), key=lambda r: r[0])
    errors = [r for r in by_status if r[0] == "error"]
    assert len(errors) == 1 and "prompt is not valid UTF-8 text" in errors[0][1]
    assert sorted(g for s, _, g in by_status if s == "pending") == [5.0, 7.5]  # null → the default
