"""Config loading: strictness, readable errors, overrides, and every shipped YAML."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from imagefleet.configs import ConfigError, load_config
from imagefleet.configs.loader import parse_config
from tests.helpers import REPO, tiny_job, write_config

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    assert any(p.name == "local_tiny.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.generators


def test_unknown_key_names_key_and_valid_ones(tmp_path: Path) -> None:
    raw = tiny_job("p.parquet", "m", "out")
    raw["output"]["formt"] = "png"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path / "c.yaml", raw))
    msg = str(err.value)
    assert "output.formt" in msg and "format" in msg and "quality" in msg


def test_unknown_key_inside_generator(tmp_path: Path) -> None:
    raw = tiny_job("p.parquet", "m", "out")
    raw["generators"]["tiny"]["pool"]["gpus"] = 1
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path / "c.yaml", raw))
    assert "generators.tiny.pool.gpus" in str(err.value) and "num_gpus" in str(err.value)


def test_wrong_type_is_explained(tmp_path: Path) -> None:
    raw = tiny_job("p.parquet", "m", "out")
    raw["generators"]["tiny"]["pool"]["batch_size"] = "many"
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(write_config(tmp_path / "c.yaml", raw))


def test_overrides_win_and_parse_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tiny_job("p.parquet", "m", "out"))
    cfg = load_config(path, ["generators.tiny.pool.max_size=3", "output.format=jpeg", "seed=99"])
    assert cfg.generators["tiny"].pool.max_size == 3
    assert cfg.output.format == "jpeg" and cfg.seed == 99


def test_override_without_equals_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tiny_job("p.parquet", "m", "out"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["seed"])


def test_configs_are_frozen() -> None:
    cfg = parse_config(tiny_job("p.parquet", "m", "out"))
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("generators", "tiny", "pool"), {"min_size": 3, "max_size": 2, "initial_size": 2}, "min_size"),
        (("generators", "tiny", "defaults"), {"width": 100}, "multiple of 8"),
        (("output",), {"uri": "s3://"}, "bucket"),
        (("output",), {"uri": "ftp://host/x"}, "s3://"),
        (("output",), {"uri": "out/../../etc"}, "'..'"),
        (("routing",), {"default": "nope"}, "not a configured generator"),
    ],
)
def test_invalid_combinations(path: tuple[str, ...], value: dict, match: str) -> None:
    raw = tiny_job("p.parquet", "m", "out")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node.update(value)
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_dump_has_no_secrets() -> None:
    """Configs only name the variables that hold secrets."""
    cfg = parse_config(tiny_job("p.parquet", "m", "s3://b/x"))
    dumped = str(cfg.model_dump(mode="json"))
    assert "AWS_SECRET_ACCESS_KEY" in dumped
