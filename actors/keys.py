"""Pure helpers shared by stages: content-hash image keys, derived seeds, shape buckets.

`key_of` is the one place a request becomes its image key (the preprocessor, the escalator and serving all call
it); `tests/unit/test_golden_keys.py` pins what every function here returns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imagefleet.configs.generator_base import STRENGTH_TASKS
from imagefleet.configs.request import BY_NAME, KEY_SETTINGS

if TYPE_CHECKING:
    from imagefleet.configs.prep import GeneratorIdentity

KEY_HEX_CHARS = 40
SEED_MAX = 2**31 - 1  # int32: accepted by torch, numpy and the hosted APIs


def image_key(*, model: str, revision: str, scheduler: str, prompt: str, render: str = "", conditioning: str = "",
              **settings: Any) -> str:
    """Content hash of everything that determines an image; the same request always maps to one key.

    `settings` are the request's key settings (`configs.request.KEY_SETTINGS`: negative prompt, seed, size, steps,
    guidance, ...), each normalised by its kind (integers, floats rounded to 6 places, text). `render` names the
    generator's non-default settings that change pixels (dtype, weights variant, tiny VAE, hosted quality);
    `conditioning` what the image is made from besides the prompt (`conditioning()`: the task, input images' and
    mask's content hashes, strength, LoRA adapters' file hashes and weights). These, and settings marked
    `key_when_set`, enter the hash only when set, so keys of rows that don't use them never change.
    """
    unknown = sorted(set(settings) - set(KEY_SETTINGS))
    if unknown:
        raise TypeError(f"image_key: {', '.join(unknown)} is not a key setting of configs.request.REQUEST")
    payload: dict[str, Any] = {"model": model, "revision": revision, "scheduler": scheduler, "prompt": prompt}
    for name in KEY_SETTINGS:
        setting = BY_NAME[name]
        value = _canonical(setting.kind, settings[name])
        if not setting.key_when_set or value not in ("", 0):
            payload[name] = value
    if render:
        payload["render"] = render
    if conditioning:
        payload["conditioning"] = conditioning
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:KEY_HEX_CHARS]


def _canonical(kind: str, value: Any) -> Any:
    """A setting's value as it is hashed: int; float rounded to 6 places (the repr of a rounded float is stable
    across platforms, and 1e-6 is far below any meaningful change); text."""
    if kind in ("int32", "int64"):
        return int(value)
    if kind == "float64":
        return round(float(value), 6)
    return str(value)


def key_of(request: Mapping[str, Any], ident: GeneratorIdentity, adapters: Sequence[tuple[str, float]],
           selection: str = "") -> str:
    """The image key of one request made by the generator `ident`.

    Args:
        request: the row's values: `prompt`, every key setting (`configs.request.KEY_SETTINGS`), and what it is made
            from besides the prompt (`task`, `input_sha256`, `mask_sha256`, `strength`; absent = text-to-image).
        ident: the generator's identity (model — a local folder by its content digest —, revision, scheduler,
            render text, adapters' file hashes).
        adapters: the LoRA adapters (name, weight) applied.
        selection: how the image is chosen among candidates (best-of-N), '' = not chosen.
    """
    task = str(request.get("task", "text-to-image"))
    keyed_strength = task in STRENGTH_TASKS and ident.takes_strength  # a hosted API has none: not in its key
    made_of = conditioning(task=task, input_sha256=str(request.get("input_sha256", "")),
                           mask_sha256=str(request.get("mask_sha256", "")),
                           strength=float(request["strength"]) if keyed_strength else None,
                           adapters=adapter_key(list(adapters), ident.adapters), selection=selection)
    return image_key(model=ident.content or ident.model, revision=ident.revision, scheduler=ident.scheduler,
                     render=ident.render,
                     prompt=str(request["prompt"]), conditioning=made_of,
                     **{name: request[name] for name in KEY_SETTINGS})


def derive_seed(job_seed: int, row_id: str, index: int) -> int:
    """Deterministic per-image seed from (job seed, row id, image index)."""
    digest = hashlib.sha256(f"{job_seed}\x1f{row_id}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_MAX


def derive_row_id(prompt: str) -> str:
    """Row id for data without an id column: a short hash of the prompt (duplicates share it)."""
    return "p-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def combination_id(values: dict[str, Any]) -> str:
    """A template combination's id: a hash of its values, so adding a value to a list keeps every earlier
    combination's id, seed and image (its position in the product would shift)."""
    text = json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def shape_bucket(width: int, height: int, num_steps: int, guidance_scale: float) -> tuple[int, int, int, float]:
    """Rows with equal buckets can share one batched model call."""
    return (int(width), int(height), int(num_steps), round(float(guidance_scale), 6))


def conditioning(*, task: str, input_sha256: str = "", mask_sha256: str = "", strength: float | None = None,
                 adapters: str = "", selection: str = "") -> str:
    """The canonical text of an image's non-prompt inputs, for `image_key` ('' for plain text-to-image).

    Args:
        task: text-to-image | image-to-image | inpaint | edit.
        input_sha256: content hashes of the input images, comma-separated, in order.
        mask_sha256: content hash of the mask ('' = none).
        strength: image-to-image / inpaint strength (None where the task has none).
        adapters: LoRA adapters as `adapter_key()` writes them ('' = none).
        selection: how the image was chosen among candidates (best-of-N: N and the scorer; '' = not chosen).
    """
    parts = [f"task={task}"] if task != "text-to-image" else []
    if input_sha256:
        parts.append(f"inputs={input_sha256}")
    if mask_sha256:
        parts.append(f"mask={mask_sha256}")
    if strength is not None:
        parts.append(f"strength={round(float(strength), 6)}")
    if adapters:
        parts.append(f"adapters={adapters}")
    if selection:
        parts.append(f"selection={selection}")
    return ";".join(parts)


def weight_text(weight: float) -> str:
    """An adapter weight as text, exactly as it enters keys (6 decimals, no trailing zeros): what is written is
    what is applied and what is keyed."""
    return f"{round(float(weight), 6):.6f}".rstrip("0").rstrip(".")


def adapters_text(selected: list[tuple[str, float]]) -> str:
    """The `adapters` column: `name:weight` comma-separated, in the row's order."""
    return ",".join(f"{name}:{weight_text(w)}" for name, w in selected)


def adapter_key(selected: list[tuple[str, float]], hashes: dict[str, str]) -> str:
    """LoRA adapters as they enter a key: `name@<file sha256>:weight` in name order (the order they are listed in
    doesn't change the image)."""
    return ",".join(f"{name}@{hashes[name]}:{weight_text(w)}" for name, w in sorted(selected))
