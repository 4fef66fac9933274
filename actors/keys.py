"""Pure helpers shared by stages: content-hash image keys, derived seeds, shape buckets."""

import hashlib
import json
from typing import Any

KEY_HEX_CHARS = 40
SEED_MAX = 2**31 - 1  # int32: accepted by torch, numpy and the hosted APIs
# Generation settings a row may set; the rest come from its generator's defaults (an escalated cascade row takes
# the heavy generator's defaults for every setting the row did not set). All of them are in the image key.
SETTINGS = ("width", "height", "num_steps", "guidance_scale")


def image_key(
    *,
    model: str,
    revision: str,
    scheduler: str,
    prompt: str,
    negative_prompt: str,
    seed: int,
    width: int,
    height: int,
    num_steps: int,
    guidance_scale: float,
    render: str = "",
    conditioning: str = "",
) -> str:
    """Content hash of everything that determines an image; the same request always maps to one key.

    `render` names the generator's non-default settings that change pixels (dtype, weights variant, tiny VAE,
    hosted quality); `conditioning` what the image is made from besides the prompt (`conditioning()`: the task,
    input images' and mask's content hashes, strength, LoRA adapters' file hashes and weights). Each enters the hash
    only when set, so keys of plain text-to-image rows never change.
    """
    payload = {
        "model": model,
        "revision": revision,
        "scheduler": scheduler,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": int(seed),
        "width": int(width),
        "height": int(height),
        "num_steps": int(num_steps),
        # repr of a rounded float is stable across platforms; 1e-6 is far below any meaningful change
        "guidance_scale": round(float(guidance_scale), 6),
    }
    if render:
        payload["render"] = render
    if conditioning:
        payload["conditioning"] = conditioning
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:KEY_HEX_CHARS]


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
