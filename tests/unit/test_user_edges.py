"""Small things a user meets first: --set values as YAML 1.2, init's cluster address, the embedded S3's stop on a
mistyped folder, the version."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefleet.configs.loader import apply_overrides, parse_yaml


def test_set_values_are_read_as_yaml_1_2_not_base_60() -> None:
    """YAML 1.1 reads `1:1` as 61 and `9:16` as 556 (base 60): aspect ratios would become numbers."""
    raw = apply_overrides({"source": {}}, ["source.variants=[1:1,9:16]", "seed=12", "x=0x10", "y=1.5"])
    assert raw["source"]["variants"] == ["1:1", "9:16"] and raw["seed"] == 12 and raw["x"] == 16 and raw["y"] == 1.5
    assert parse_yaml("variants: [16:9, 4:3]", "t") == {"variants": ["16:9", "4:3"]}


def test_init_writes_a_private_local_cluster(tmp_path: Path) -> None:
    """`address: auto` joins whatever Ray runs on the machine; a new config runs on its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagefleet.jobs import init

    pq.write_table(pa.table({"prompt": ["a cat"]}), tmp_path / "p.parquet")
    assert init.main([str(tmp_path / "p.parquet"), "--output", str(tmp_path / "job.yaml")]) == 0
    text = (tmp_path / "job.yaml").read_text()
    assert "address: local" in text and "address: auto" not in text


def test_s3_stop_on_a_mistyped_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imagefleet.jobs.cli import main

    typo = tmp_path / "s3-typo"
    assert main(["s3", "stop", "--dir", str(typo)]) == 2
    assert not typo.exists()  # no folder made, no server reported
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no embedded S3" in err[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import imagefleet
    from imagefleet.jobs.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"imagefleet {imagefleet.__version__}"
    assert imagefleet.__version__[0].isdigit()


def test_set_into_a_generator_that_isnt_there_names_the_ones_that_are() -> None:
    from imagefleet.configs.loader import ConfigError

    raw = {"generators": {"main": {"backend": "diffusers", "model": "m"}}}
    with pytest.raises(ConfigError, match="no generator 'mian' in the config \\(it has: main\\)"):
        apply_overrides(raw, ["generators.mian.model=x"])
    added = apply_overrides(raw, ["generators.extra.backend=sleep"])  # adding one names its backend
    assert added["generators"]["extra"] == {"backend": "sleep"}


def test_a_run_leaves_the_process_environment_as_it_found_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook or pipeline step calling imagefleet.run keeps its own environment and logging level."""
    import logging
    import os

    import imagefleet
    from imagefleet.jobs.runtime import RAY_ENV
    from tests.helpers import sleep_job, write_prompts

    for key in RAY_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the user's own value survives too
    level = logging.getLogger().level
    write_prompts(tmp_path / "p.parquet", {"prompt": ["a cat"]})
    result = imagefleet.run(sleep_job(tmp_path / "p.parquet", str(tmp_path / "out")), dry_run=True, echo=None,
                            verbose=True)
    assert result.plan
    assert [k for k in RAY_ENV if k in os.environ] == ["TOKENIZERS_PARALLELISM"]
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true" and logging.getLogger().level == level


def test_dry_run_finds_pools_the_local_ray_could_never_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU pool on a machine (or cluster.num_gpus) without GPUs, or pools that leave no CPU for Ray Data's own
    tasks: the run would wait forever once Ray started; --dry-run says so in one line, before Ray starts."""
    import imagefleet
    import imagefleet.actors.contract
    from tests.helpers import sleep_job, write_prompts

    # as in a fresh process (the suite's shared Ray may already run in this one: a run would then reuse it)
    monkeypatch.setattr(imagefleet.actors.contract, "ray_running", lambda: False)

    write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(50)]})
    raw = sleep_job(tmp_path / "p.parquet", str(tmp_path / "out"))
    raw["cluster"]["num_gpus"] = 1  # the pool wants 2 actors x 1 GPU: one fits, but the pool's minimum is 2
    raw["generators"]["sleepy"]["pool"].update(num_gpus=2, min_size=1, initial_size=1)
    with pytest.raises(imagefleet.InputInvalid, match="asks for 2 GPU per actor but this local Ray has 1"):
        imagefleet.run(raw, dry_run=True, echo=None)
    raw["cluster"].update(num_gpus=2, num_cpus=2)
    raw["generators"]["sleepy"]["pool"].update(num_gpus=1, num_cpus=1)
    with pytest.raises(imagefleet.InputInvalid, match="leaving less than the 1 CPU"):
        imagefleet.run(raw, dry_run=True, echo=None)


def test_an_unquoted_template_in_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`text: {{ style }}` is YAML for a mapping whose key is a mapping: a 36-line TypeError traceback before."""
    from imagefleet.jobs.cli import main

    cfg = tmp_path / "t.yaml"
    cfg.write_text("name: t\nsource:\n  uri: p.parquet\n  template:\n    text: {{ style }}\n"
                   "generators: {a: {backend: sleep}}\noutput: {uri: out}\n")
    assert main(["run", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 5" in err[0] and "quote the value" in err[0]
    assert main(["run", str(cfg), "--dry-run", "--set", "source.template.text={{ x }}"]) == 2


def test_ctrl_c_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from imagefleet.jobs import cli, generate

    def interrupted(_argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "main", interrupted)
    assert cli.main(["run", "job.yaml"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted (Ctrl-C)" in err[0] and "resume" in err[0]


def test_api_errors_keep_their_cause(tmp_path: Path) -> None:
    """The one-line message for people, the underlying error for code (`__cause__`), e.g. the storage error
    behind an InputInvalid."""
    import imagefleet
    from tests.helpers import sleep_job, write_prompts

    write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    (tmp_path / "file").write_text("not a folder")
    raw = sleep_job(tmp_path / "p.parquet", str(tmp_path / "file" / "out"))
    with pytest.raises(imagefleet.InputInvalid) as failed:
        imagefleet.run(raw, dry_run=True, echo=None)
    assert failed.value.__cause__ is not None
    with pytest.raises(imagefleet.ConfigInvalid) as bad:
        imagefleet.run({**raw, "nope": 1}, dry_run=True, echo=None)
    assert bad.value.__cause__ is not None


def test_the_botocore_error_behind_a_storage_failure_can_be_inspected(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: an S3 output whose endpoint doesn't answer (a loopback port where nothing listens). The
    message is one line; the chain under it reaches botocore's own error (before: StorageError `from None`)."""
    import imagefleet
    from imagefleet.actors.storage import StorageError
    from imagefleet.jobs.seaweed import pick_ports
    from tests.helpers import sleep_job, write_prompts

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    raw = sleep_job(tmp_path / "p.parquet", "s3://bucket/out")
    raw["output"]["s3"] = {"endpoint_url": f"http://127.0.0.1:{pick_ports()['master']}"}
    with pytest.raises(imagefleet.InputInvalid) as failed:
        imagefleet.run(raw, dry_run=True, echo=None)
    assert "\n" not in str(failed.value) and "cannot reach the S3 endpoint" in str(failed.value)
    chain, cause = [], failed.value.__cause__
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert isinstance(chain[0], StorageError)
    assert any(type(c).__module__.startswith("botocore") for c in chain), [type(c) for c in chain]


def test_a_ray_client_address_is_refused_before_work_with_the_ways_that_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cluster.address: ray://…` (Ray Client): Ray Data's streaming executor fails on a client driver (Ray 2.60,
    on a real `ray start --head`: AttributeError 'Worker' object has no attribute 'core_worker', after the plan
    printed and the run started). Now one line before work, dry run included, naming `imagefleet submit`."""
    from imagefleet.jobs import generate
    from tests.helpers import sleep_job, write_config, write_prompts

    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(40)]})  # more than a batch: Ray
    raw = sleep_job(src, str(tmp_path / "out"))
    raw["cluster"] = {"address": "ray://127.0.0.1:10001"}
    cfg = write_config(tmp_path / "job.yaml", raw)
    for extra in (["--dry-run"], []):
        assert generate.main([str(cfg), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Ray Client can't run Ray Data pipelines" in err[0], err
        assert "imagefleet submit CONFIG --address http://HEAD:8265" in err[0]
    assert not any((tmp_path / "out").rglob("*.png")) and not (tmp_path / "out" / "manifest").exists()
