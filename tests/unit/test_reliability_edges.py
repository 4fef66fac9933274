"""Reliability at the edges (#30): duplicate columns, deeply nested config, inputs outside the table's folder, a
source that is a symlink of the output, control characters in prompts and an unset `env:VAR` config. Each used to
crash with a traceback, read what it must not, or make an image it should refuse; each is one line now (or, for a
row, that row's error)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagefleet.actors.generation import run_generation
from imagefleet.actors.input_reader import InputReader
from imagefleet.actors.inputs import UNUSABLE
from imagefleet.configs.loader import MAX_CONFIG_DEPTH, ConfigError, apply_overrides, load_config, parse_config
from imagefleet.configs.prep import InputReaderConfig
from imagefleet.configs.source import InputLimits
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.text_to_image import InputError, _check_separate
from tests.helpers import sleep_job, write_config, write_prompts

DEEP = MAX_CONFIG_DEPTH + 1


def cli_run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """`imagefleet run ARGS`: the exit code and the lines on stderr."""
    from imagefleet.jobs.cli import main

    code = main(["run", *args])
    return code, capsys.readouterr().err.strip().splitlines()


# item 8: a prompt table with two columns of one name ----------------------------------------------------------------

@pytest.mark.parametrize("names", [["prompt", "prompt"], ["prompt", "negative_prompt", "negative_prompt"]])
@pytest.mark.parametrize("dry_run", [True, False])
def test_duplicate_column_names_are_one_line_and_exit_2_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], names: list[str], dry_run: bool
) -> None:
    import ray

    table = pa.Table.from_arrays([pa.array([f"v{i}"]) for i in range(len(names))], names=names)
    pq.write_table(table, tmp_path / "p.parquet")
    config = write_config(tmp_path / "job.yaml", sleep_job(tmp_path / "p.parquet", str(tmp_path / "out")))
    running = ray.is_initialized()  # the suite's shared Ray may already run in this process
    code, err = cli_run([str(config), *(["--dry-run"] if dry_run else [])], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"column {names[-1]!r} appears 2 times in the data; give each column its own name" in err[0]
    assert ray.is_initialized() == running  # refused before any Ray was started
    assert not (tmp_path / "out").exists()


def test_a_duplicated_column_the_run_does_not_read_is_left_alone(tmp_path: Path) -> None:
    import imagefleet

    table = pa.Table.from_arrays([pa.array(["a cat"]), pa.array([1]), pa.array([2])], names=["prompt", "x", "x"])
    pq.write_table(table, tmp_path / "p.parquet")
    assert imagefleet.run(sleep_job(tmp_path / "p.parquet", str(tmp_path / "out")), dry_run=True, echo=None).plan


# item 9: config nesting is bounded ----------------------------------------------------------------------------------

def test_deeply_nested_yaml_is_one_line_naming_where(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("seed: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=f"job.yaml: line 2 is nested more than {MAX_CONFIG_DEPTH} levels deep"):
        load_config(path)
    # aliases nest without deep YAML: each line one level deeper than the one before
    path.write_text("a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 2 * DEEP)))
    with pytest.raises(ConfigError, match=r"a\d+\[0\]\[0\]\S* is nested more than"):
        load_config(path)


def test_deeply_nested_set_values_and_keys_are_one_line() -> None:
    with pytest.raises(ConfigError, match="--set x: line 1 is nested more than"):
        apply_overrides({}, ["x=" + "[" * 5000 + "]" * 5000])
    with pytest.raises(ConfigError, match=r"--set a\.a\.a.*: the key is nested more than"):
        apply_overrides({}, ["a." * 5000 + "b=1"])
    with pytest.raises(ConfigError, match=r"--set a\.b: a\.b\[0\]\[0\]\S* is nested more than"):
        apply_overrides({}, ["a.b=" + "[" * (DEEP - 2) + "]" * (DEEP - 2)])
    assert apply_overrides({}, ["a.b=" + "[" * (DEEP - 3) + "]" * (DEEP - 3)])  # the deepest that fits


def test_deep_or_cyclic_dicts_from_python_are_config_errors() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["x"] = node = {}
    with pytest.raises(ConfigError, match=r"x\.x\.x.* is nested more than"):
        parse_config(deep)
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(ConfigError, match="is nested more than"):
        apply_overrides(cycle, [])


def test_deep_config_exits_2_from_the_cli_and_is_typed_in_the_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import imagefleet

    write_prompts(tmp_path / "p.parquet", {"prompt": ["a cat"]})
    raw = sleep_job(tmp_path / "p.parquet", str(tmp_path / "out"))
    config = write_config(tmp_path / "job.yaml", raw)
    code, err = cli_run([str(config), "--dry-run", "--set", "x=" + "[" * 3000 + "]" * 3000], capsys)
    assert code == 2 and len(err) == 1 and "nested more than" in err[0], err
    with config.open("a") as fh:
        fh.write("x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")
    code, err = cli_run([str(config), "--dry-run"], capsys)
    assert code == 2 and len(err) == 1 and "nested more than" in err[0], err
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(3000):
        node["x"] = node = {}
    with pytest.raises(imagefleet.ConfigInvalid, match="nested more than"):
        imagefleet.run({**raw, "generators": deep}, echo=None, dry_run=True)
    with pytest.raises(imagefleet.ConfigInvalid, match="nested more than"):
        imagefleet.run(raw, ["x=" + "[" * 3000 + "]" * 3000], echo=None, dry_run=True)


# item 12: input files stay under the table's folder (after symlinks) unless a root allows them ----------------------

def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (200, 40, 10)).save(path)
    return path


def _read(table_dir: Path, cells: list[str], roots: list[str] | None = None) -> list[str]:
    cfg = InputReaderConfig(task="image-to-image", image_column="image", mask_column="mask",
                            base_uri=str(table_dir), allowed_roots=roots or [], store=StoreSpec(kind="local"),
                            limits=InputLimits())
    out = InputReader(cfg)(pa.table({"prompt": ["p"] * len(cells), "image": cells}))
    return [str(e) for e in out.column("input_error").to_pylist()]


def test_inputs_outside_the_tables_folder_are_refused_with_one_message(tmp_path: Path) -> None:
    table, outside = tmp_path / "table", tmp_path / "outside"
    _png(table / "ok.png")
    real = _png(outside / "real.png")
    (table / "text.png").write_text("not an image")
    (table / "link.png").symlink_to(real)
    (table / "linkdir").symlink_to(outside)
    cells = ["ok.png", "../outside/real.png", "link.png", "linkdir/real.png", str(real), "../outside/nothing.png",
             "linkdir/nothing.png", "missing.png", "text.png", "s3://bucket/outside/real.png"]
    errors = _read(table, cells)
    assert errors[0] == ""
    # one message for outside (existing or not), missing and not an image: nothing tells which outside files exist
    assert all(e.endswith(f": {UNUSABLE}") for e in errors[1:]), errors
    # each names the path as the row wrote it (resolved against the table's folder), never where a link leads
    assert errors[2].startswith(f"{table / 'link.png'}: ") and errors[3].startswith(f"{table / 'linkdir/real.png'}: ")
    assert errors[1].startswith(f"{real}: ") and errors[5].startswith(f"{outside / 'nothing.png'}: ")


def test_allowed_roots_admit_other_folders_and_prefixes(tmp_path: Path) -> None:
    table, outside = tmp_path / "table", tmp_path / "outside"
    _png(table / "ok.png")
    real = _png(outside / "real.png")
    (table / "link.png").symlink_to(real)
    errors = _read(table, ["../outside/real.png", "link.png", str(real)], roots=[str(outside)])
    assert errors == ["", "", ""]
    sibling = _png(tmp_path / "outside-2" / "x.png")  # a prefix of the name is not the folder
    assert _read(table, [str(sibling)], roots=[str(outside)])[0].endswith(UNUSABLE)
    # an s3:// input under an allowed prefix gets past the confinement (then needs an S3 connection)
    s3 = _read(table, ["s3://b/pack/x.png", "s3://b/packs/x.png"], roots=["s3://b/pack"])
    assert "no S3 connection" in s3[0] and s3[1].endswith(UNUSABLE)


def test_a_table_named_without_a_folder_has_the_working_folder_as_its_own() -> None:
    from imagefleet.pipelines.slices import input_base

    assert input_base("p.parquet") == os.getcwd()  # was the file itself: no input could be under it
    assert input_base("/p.parquet") == "/"


@pytest.mark.parametrize("root", ["relative/folder", "", "/data/../etc", "s3://", "s3://b/../x"])
def test_allowed_roots_must_be_absolute_folders_or_s3_prefixes(root: str) -> None:
    raw = sleep_job("p.parquet", "out")
    raw["source"]["allowed_roots"] = [root]
    with pytest.raises(ConfigError, match=r"source\.allowed_roots: .* is not an (absolute folder|s3:// prefix)"):
        parse_config(raw)


# item 13: a source that is the output under another name ------------------------------------------------------------

def test_a_symlink_alias_of_the_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    write_prompts(out / "p.parquet", {"prompt": ["a cat"]})
    (tmp_path / "alias").symlink_to(out)
    for source in (tmp_path / "alias", tmp_path / "alias" / "p.parquet", tmp_path / "alias" / "*.parquet"):
        with pytest.raises(InputError, match="overlap \\(once symlinks are resolved\\)"):
            _check_separate(str(source), str(out))
    with pytest.raises(InputError, match="overlap"):  # the other way round: the output is inside the source
        _check_separate(str(out), str(tmp_path / "alias" / "run"))
    config = write_config(tmp_path / "job.yaml", sleep_job(tmp_path / "alias" / "p.parquet", str(out)))
    code, err = cli_run([str(config), "--dry-run"], capsys)
    assert code == 2 and len(err) == 1 and "overlap (once symlinks are resolved)" in err[0], err


# control characters in prompts ---------------------------------------------------------------------------------------

def test_prompts_with_control_characters_are_error_rows() -> None:
    prompts = ["fine", "nul\x00here", "tab\tand\nnewlines\r\n", "bell\x07", "ok"]
    n = len(prompts)
    batch = {"prompt": np.array(prompts, dtype=object), "negative_prompt": np.array([""] * 4 + ["esc\x1b"], object),
             "seed": np.arange(n), "width": np.full(n, 16), "height": np.full(n, 16), "num_steps": np.full(n, 2),
             "guidance_scale": np.zeros(n), "status": np.array(["pending"] * n, object),
             "error": np.array([""] * n, object), "enqueued_at": np.zeros(n)}
    made: list[str] = []

    def generate(reqs: Any) -> list[np.ndarray]:
        made.extend(r.prompt for r in reqs)
        return [np.zeros((r.height, r.width, 3), np.uint8) for r in reqs]

    out = run_generation(batch, batch_size=8, generate=generate, is_fatal=lambda e: False, usd_per_second=0.0,
                         usd_per_image=0.0)
    assert list(out["status"]) == ["generated", "error", "generated", "error", "error"]
    assert "prompt contains control character U+0000 at position 3" in out["error"][1]
    assert "U+0007" in out["error"][3] and "negative_prompt contains control character U+001B" in out["error"][4]
    assert sorted(made) == ["fine", "tab\tand\nnewlines\r\n"]


def test_a_nul_prompt_makes_no_image_end_to_end(tmp_path: Path) -> None:
    import imagefleet

    write_prompts(tmp_path / "p.parquet", {"prompt": ["a cat", "a \x00 dog"]})
    raw = sleep_job(tmp_path / "p.parquet", str(tmp_path / "out"))
    raw["cluster"] = {"address": "local", "executor": "in_process"}
    result = imagefleet.run(raw, echo=None, progress="off")
    rows = sorted(result.manifest().to_table().to_pylist(), key=lambda r: r["prompt"])
    assert [r["status"] for r in rows] == ["error", "ok"] and "U+0000" in rows[0]["error"]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 1


# env:VAR configs ------------------------------------------------------------------------------------------------------

def test_an_unset_env_config_is_one_line_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    import imagefleet
    from imagefleet.jobs.api import load

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("IMAGEFLEET_TEST_NOPE", raising=False)
    with pytest.raises(imagefleet.ConfigInvalid, match="env:IMAGEFLEET_TEST_NOPE: the environment variable "
                                                        "IMAGEFLEET_TEST_NOPE is not set"):
        load("env:IMAGEFLEET_TEST_NOPE")
    import yaml

    monkeypatch.setenv("IMAGEFLEET_TEST_YAML", yaml.safe_dump(sleep_job("p.parquet", "out")))
    assert load("env:IMAGEFLEET_TEST_YAML", ["seed=9"]).seed == 9
    with pytest.raises(imagefleet.ConfigInvalid, match="invalid config env:IMAGEFLEET_TEST_YAML"):
        load("env:IMAGEFLEET_TEST_YAML", ["seed=-x"])
    assert os.listdir(tmp_path) == []  # the YAML is read from the variable: no temp file, whatever happens
