"""Image keys, derived seeds and object names."""

import pytest

from imagefleet.actors.keys import derive_row_id, derive_seed, image_key, shape_bucket

BASE = dict(model="m", revision="main", scheduler="", prompt="a cat", negative_prompt="", seed=1, width=64,
            height=64, num_steps=2, guidance_scale=0.0)


def test_key_is_deterministic_and_hex() -> None:
    k = image_key(**BASE)
    assert k == image_key(**BASE)
    assert len(k) == 40 and all(c in "0123456789abcdef" for c in k)


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "m2"), ("revision", "v2"), ("scheduler", "Euler"), ("prompt", "a dog"), ("negative_prompt", "x"),
     ("seed", 2), ("width", 72), ("height", 72), ("num_steps", 3), ("guidance_scale", 1.5)],
)
def test_every_field_changes_the_key(field: str, value: object) -> None:
    assert image_key(**{**BASE, field: value}) != image_key(**BASE)


def test_unicode_prompts_hash() -> None:
    assert image_key(**{**BASE, "prompt": "猫 🐱"}) != image_key(**BASE)


def test_seeds_are_deterministic_distinct_and_int32() -> None:
    seeds = {derive_seed(0, "row", i) for i in range(100)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**31 - 1 for s in seeds)
    assert derive_seed(0, "row", 3) == derive_seed(0, "row", 3)
    assert derive_seed(1, "row", 3) != derive_seed(0, "row", 3)
    assert derive_seed(0, "row2", 3) != derive_seed(0, "row", 3)


def test_row_id_from_prompt() -> None:
    assert derive_row_id("a") == derive_row_id("a") != derive_row_id("b")



def test_shape_bucket_groups_equal_shapes() -> None:
    assert shape_bucket(64, 64, 2, 0.0) == shape_bucket(64, 64, 2, 0.0000001)
    assert shape_bucket(64, 64, 2, 0.0) != shape_bucket(64, 72, 2, 0.0)


def test_rows_per_block_fans_out_and_amortizes() -> None:
    from imagefleet.configs.loader import parse_config
    from imagefleet.pipelines.plan import rows_per_block
    from tests.helpers import tiny_job

    cfg = parse_config(tiny_job("p", "m", "out"))  # batch 4, max 2 actors
    assert rows_per_block(cfg, 10) == 4  # tiny input: one batch per block, still several blocks
    assert rows_per_block(cfg, 100) == 12  # 100 rows / (2 actors x 4) → 12, a whole number of batches
    assert rows_per_block(cfg, 1_000_000) == 32  # capped at 8 batches per block


def test_a_generator_takes_a_whole_block_per_call_when_the_block_is_a_few_batches() -> None:
    """Ray Data's per-call costs are paid once per block: the generator stage's calls are block-sized (the actor
    batches them itself), unless a block is one batch, too many batches to hold, or a hosted batch-mode block."""
    from imagefleet.configs.loader import parse_config
    from imagefleet.pipelines.plan import call_rows
    from tests.helpers import tiny_job

    gen = next(iter(parse_config(tiny_job("p", "m", "out")).generators.values()))  # batch 4
    assert call_rows(gen, 32) == 32 and call_rows(gen, 12) == 12
    assert call_rows(gen, 4) == 0  # one batch per block: Ray's batches already are blocks
    assert call_rows(gen, 36) == 0  # a user's big num_rows_per_block: one call per batch, images not held


def test_render_settings_change_the_key_only_when_set() -> None:
    """dtype/variant/tiny VAE (and hosted quality) change the pixels, so they are in the key; defaults add
    nothing, so existing outputs keep their keys."""
    from imagefleet.configs.generator import DiffusersConfig
    from imagefleet.configs.hosted import OpenAIImagesConfig

    base = dict(model="m", revision="main", scheduler="", prompt="p", negative_prompt="", seed=1, width=8, height=8,
                num_steps=1, guidance_scale=0.0)
    assert image_key(**base) == image_key(**base, render="")
    assert DiffusersConfig(model="m").render() == "" and OpenAIImagesConfig().render() == ""
    renders = {DiffusersConfig(model="m", dtype="bfloat16").render(),
               DiffusersConfig(model="m", variant="fp16").render(),
               DiffusersConfig(model="m", tiny_vae="madebyollin/taesd").render(),
               OpenAIImagesConfig(quality="high").render()}
    assert len({image_key(**base, render=r) for r in renders} | {image_key(**base)}) == 5
