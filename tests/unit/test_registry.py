"""One registry per kind, derived from the config unions: union member → config class → actor class."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from imagefleet.actors import GENERATOR_ACTORS, GENERATORS, SCORER_ACTORS, SCORERS
from imagefleet.configs.generator import GENERATOR_CONFIGS, GeneratorConfig
from imagefleet.configs.generator_base import GeneratorBase, Needs, backend_name
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.configs.routing import ROUTING_MODES, RoutingConfig
from imagefleet.configs.scorer import SCORER_CONFIGS, ScorerConfig
from tests.helpers import sleep_job


def members(annotation: Any) -> set[type]:
    out: set[type] = set()
    for arg in typing.get_args(annotation):
        if isinstance(arg, type):
            out.add(arg)
        else:
            out |= members(arg)
    return out


def test_generator_union_configs_and_actors_agree() -> None:
    assert members(GeneratorConfig) == set(GENERATOR_CONFIGS)
    assert {a.CONFIG for a in GENERATOR_ACTORS} == set(GENERATOR_CONFIGS)
    assert set(GENERATORS) == {backend_name(c) for c in GENERATOR_CONFIGS}
    for name, actor in GENERATORS.items():
        assert backend_name(actor.CONFIG) == name
        assert issubclass(actor.CONFIG, GeneratorBase)


def test_scorer_union_configs_and_actors_agree() -> None:
    assert members(ScorerConfig) == set(SCORER_CONFIGS)
    assert {a.CONFIG for a in SCORER_ACTORS} == set(SCORER_CONFIGS)
    assert set(SCORERS) == {c.model_fields["backend"].default for c in SCORER_CONFIGS}


def test_routing_union_lists_every_mode() -> None:
    assert members(RoutingConfig) == set(ROUTING_MODES)
    assert len({m.model_fields["mode"].default for m in ROUTING_MODES}) == len(ROUTING_MODES)


def test_every_backend_declares_its_run_time_needs() -> None:
    from imagefleet.configs.hosted import OpenAIImagesConfig

    assert OpenAIImagesConfig().needs().api_key_env == "OPENAI_API_KEY"
    assert OpenAIImagesConfig(batch_mode=True).needs().state_store
    assert not OpenAIImagesConfig(batch_mode=True).online().needs().state_store  # served directly
    for cls in GENERATOR_CONFIGS:
        fields = {"model": "x"} if cls.model_fields["model"].is_required() else {}
        assert isinstance(cls(**fields).needs(), Needs)


BACKENDS = [("generators", c) for c in GENERATOR_CONFIGS] + [("scorer", c) for c in SCORER_CONFIGS]


@pytest.mark.parametrize(("kind", "config_class"), BACKENDS,
                         ids=[f"{k}-{c.model_fields['backend'].default}" for k, c in BACKENDS])
def test_a_wrong_key_under_any_backend_names_that_backends_keys(kind: str, config_class: type) -> None:
    raw = sleep_job("in.parquet", "/tmp/out")
    block = {"backend": config_class.model_fields["backend"].default, "model": "m", "typo_key": 1}
    raw[kind] = {"g": block} if kind == "generators" else block
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert f"valid keys here: {', '.join(sorted(config_class.model_fields))}" in str(err.value)


@pytest.mark.parametrize("mode", ROUTING_MODES, ids=lambda m: m.model_fields["mode"].default)
def test_a_wrong_key_under_any_routing_mode_names_that_modes_keys(mode: type) -> None:
    raw = sleep_job("in.parquet", "/tmp/out")
    raw["routing"] = {"mode": mode.model_fields["mode"].default, "typo_key": 1}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert f"valid keys here: {', '.join(sorted(mode.model_fields))}" in str(err.value)
