"""Golden vectors: the literal image keys, seeds and ids that name every stored image.

Every value below names objects that already exist in users' outputs. A rerun finds its finished images (and
doesn't pay for them again) only because it computes these same values. If one of these tests fails, the change
re-keys stored images: either undo it, or make it a deliberate, reviewed diff of these vectors together with a
migration note in README.md ("Image keys and seeds").

The vectors are written out literally, never recomputed with the code under test: a test that runs the same code
twice can't notice that the code changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from imagefleet.actors.keys import (
    adapter_key,
    adapters_text,
    combination_id,
    conditioning,
    derive_row_id,
    derive_seed,
    image_key,
    weight_text,
)

SD15 = dict(model="runwayml/stable-diffusion-v1-5", revision="main", scheduler="", prompt="a red fox in snow",
            negative_prompt="", seed=1234, width=512, height=512, num_steps=30, guidance_scale=7.5)
IMG2IMG = ("task=image-to-image;inputs=" + "ab" * 32 + ";strength=0.6;adapters=detail@" + "ef" * 32 + ":1,style@"
           + "cd" * 32 + ":0.8")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "c3948fb46cfcad17834a398aaa2d7f17e5a65706"),
        ({"render": "dtype=bfloat16,tiny_vae=madebyollin/taesd"}, "b27940eda682113007197c26195d84bcfaaf7fe2"),
        ({"conditioning": IMG2IMG}, "09cddab10dcca0fdeaf9481135faa7ef5c267db6"),
        # non-ASCII prompt and negative prompt (UTF-8, not \\u escapes), a scheduler, guidance rounded to 6 places
        ({"prompt": "猫 🐱 café", "negative_prompt": "ぼやけた", "scheduler": "EulerDiscreteScheduler",
          "guidance_scale": 7.0000001}, "6ce3a4efe5cd54f9fc52b8e83572edf2117e122d"),
    ],
    ids=["plain", "render", "conditioning", "non-ascii"],
)
def test_image_key(fields: dict[str, Any], expected: str) -> None:
    assert image_key(**{**SD15, **fields}) == expected


def test_derived_seeds_and_row_ids() -> None:
    assert derive_seed(0, "row-1", 0) == 900196525
    assert derive_seed(42, "p-abc", 3) == 869650233
    assert derive_seed(2**31, "猫", 7) == 286028750
    assert derive_row_id("a red fox in snow") == "p-049e0c0b66d60a70"
    assert derive_row_id("猫 🐱 café") == "p-e8ad4460ba9b745b"


def test_template_combination_ids() -> None:
    assert combination_id({"style": "oil", "subject": "fox"}) == "948b11302f75"
    assert combination_id({"n": 3, "x": "猫", "f": 1.5}) == "1f01bf0b90ab"


def test_conditioning_text() -> None:
    assert conditioning(task="text-to-image") == ""
    assert conditioning(task="edit", input_sha256="aa") == "task=edit;inputs=aa"
    assert conditioning(task="inpaint", input_sha256="aa,bb", mask_sha256="cc", strength=0.35,
                        selection="best_of=4,scorer=clip") == \
        "task=inpaint;inputs=aa,bb;mask=cc;strength=0.35;selection=best_of=4,scorer=clip"
    adapters = adapter_key([("style", 0.8), ("detail", 1.0)], {"style": "cd" * 32, "detail": "ef" * 32})
    assert conditioning(task="image-to-image", input_sha256="ab" * 32, strength=0.6, adapters=adapters) == IMG2IMG


def test_adapter_text() -> None:
    assert adapter_key([("b", 0.5), ("a", 1.25)], {"a": "11", "b": "22"}) == "a@11:1.25,b@22:0.5"
    assert adapter_key([], {}) == ""
    assert adapters_text([("b", 0.5), ("a", 1.0)]) == "b:0.5,a:1"
    assert weight_text(0.3333333333) == "0.333333" and weight_text(-2) == "-2"


def test_render_text_of_configs() -> None:
    """A generator's render text enters every key it makes: its spelling is pinned like the key itself."""
    from imagefleet.configs.generator import DiffusersConfig
    from imagefleet.configs.hosted import GeminiImageConfig, OpenAIImagesConfig

    assert DiffusersConfig(model="m").render() == ""
    assert DiffusersConfig(model="m", dtype="bfloat16", variant="fp16", tiny_vae="madebyollin/taesd",
                           step_cache=0.1, fp8_weights=True).render() == \
        "dtype=bfloat16,variant=fp16,tiny_vae=madebyollin/taesd,step_cache=0.1,fp8_weights"
    assert OpenAIImagesConfig(model="gpt-image-2").render() == ""
    assert OpenAIImagesConfig(model="gpt-image-2", quality="high", output_format="webp").render() == \
        "quality=high,format=webp"
    assert GeminiImageConfig(model="gemini-3.1-flash-image").render() == ""


def _job(**extra: Any) -> dict[str, Any]:
    """A job written out in full (not the shared test helper's), so its defaults can't drift under the vectors."""
    return {
        "name": "golden",
        "seed": 7,
        "source": {"uri": "prompts.parquet"},
        "generators": {
            "draft": {"backend": "diffusers", "model": "org/draft", "revision": "r1",
                      "defaults": {"width": 64, "height": 64, "num_steps": 2, "guidance_scale": 0.0}},
            "heavy": {"backend": "diffusers", "model": "org/heavy", "dtype": "bfloat16",
                      "defaults": {"width": 128, "height": 96, "num_steps": 8, "guidance_scale": 5.0,
                                   "negative_prompt": "lowres"}},
        },
        "output": {"uri": "out"},
        "routing": {"default": "draft"},
        **extra,
    }


def _prep(**extra: Any) -> tuple[Any, Any]:
    from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
    from imagefleet.configs.loader import parse_config
    from imagefleet.pipelines.slices import prep_config

    cfg = parse_config(_job(**extra))
    return cfg, PromptPreprocessor(prep_config(cfg))


def test_the_keys_and_seeds_a_run_computes() -> None:
    """The preprocessor's rows, as a run keys them: derived ids and seeds, explicit settings, several images."""
    _, prep = _prep()
    out = prep(pa.table({"id": ["a", None, "c"], "prompt": ["a red fox", "猫 🐱", "a blue bird"],
                         "num_images": [2, 1, 1], "seed": [None, None, 99], "width": [None, 72, None],
                         "negative_prompt": [None, None, "blurry"]}))
    rows = sorted(zip(out["id"], out["image_index"], out["seed"], out["image_key"], strict=True))
    assert [(str(i), int(x), int(s), str(k)) for i, x, s, k in rows] == [
        ("a", 0, 741375526, "5d8f282a7886a35bf074ab93351921f74ddd2ac2"),
        ("a", 1, 833739317, "b2e46ad1fef516e21cf6a1bb0cd232e3de2b50ee"),
        ("c", 0, 99, "46dcfd0a15288397da5adfe158c1ee57aacae165"),
        ("p-433de35cd7a350fc", 0, 278843130, "7190f45dadf9231ac758278460eb6c2d420211f4"),
    ]


def test_the_key_of_an_escalated_image() -> None:
    """A cascade's heavy image: the heavy generator's defaults and render, the draft's seed and explicit settings."""
    from imagefleet.actors.escalator import Escalator
    from imagefleet.pipelines.slices import prep_config

    cfg, prep = _prep(routing={"mode": "cascade", "default": "draft",
                               "cascade": {"draft": "draft", "escalate": "heavy", "threshold": 0.5}},
                      scorer={"backend": "rule"})
    out = dict(prep(pa.table({"id": ["a", "b"], "prompt": ["a red fox", "a blue bird"], "num_steps": [None, 3]})))
    n = len(out["id"])
    out.update(status=np.array(["generated"] * n, dtype=object), clip_score=np.zeros(n),
               image=np.array([b"x"] * n, dtype=object), image_mime=np.array([""] * n, dtype=object))
    esc = Escalator(cfg.routing.cascade, "heavy", prep_config(cfg).generators["heavy"])(out)
    rows = sorted(zip(esc["id"], esc["draft_image_key"], esc["image_key"], esc["num_steps"], strict=True))
    assert [(str(i), str(d), str(k), int(s)) for i, d, k, s in rows] == [
        # heavy defaults (128x96, 8 steps, guidance 5, 'lowres', dtype=bfloat16), the draft's seed
        ("a", "5d8f282a7886a35bf074ab93351921f74ddd2ac2", "b9abfc5487fb0acf2a56ac669f1548df08de90a2", 8),
        # the row set num_steps=3 itself: the heavy image keeps it
        ("b", "427cbcbf04a2e78e8a875f6486b99b654647d2b9", "f5a08d8786a123cf9d15f8fd9a2889aab05d444e", 3),
    ]
