"""Check that the product runs the world's models unchanged: DiffusersGenerator on the draft and heavy folders,
ClipScorer on the CLIP folder (dict batches, no Ray), and the oracle on what they made.

    python -m bench.world.check_product
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.world import CLIP, DRAFT, HEAVY, oracle, sample_prompts


def _batch(prompts: list[str], steps: int, guidance: float) -> dict[str, np.ndarray]:
    n = len(prompts)
    return {"prompt": np.array(prompts, dtype=object), "negative_prompt": np.array([""] * n, dtype=object),
            "seed": np.arange(n) + 1, "width": np.full(n, 64), "height": np.full(n, 64),
            "num_steps": np.full(n, steps), "guidance_scale": np.full(n, guidance),
            "status": np.array(["pending"] * n, dtype=object), "error": np.array([""] * n, dtype=object),
            "enqueued_at": np.full(n, time.time())}


def check(draft: Path = DRAFT, heavy: Path = HEAVY, clip: Path = CLIP, n: int = 8) -> dict[str, object]:
    """Generate `n` world prompts with each pipeline through DiffusersGenerator, score them with ClipScorer."""
    from imagefleet.actors.clip_scorer import ClipScorer
    from imagefleet.actors.diffusers_generator import DiffusersGenerator
    from imagefleet.configs.generator import DiffusersConfig
    from imagefleet.configs.scorer import ClipScorerConfig

    prompts = sample_prompts(n, seed=12345)
    scorer = ClipScorer(ClipScorerConfig(model=str(clip)))
    report: dict[str, object] = {}
    for name, folder in (("draft", draft), ("heavy", heavy)):
        sampling = json.loads((folder / "sampling.json").read_text())
        generator = DiffusersGenerator(DiffusersConfig(model=str(folder), dtype="float32"))
        out = scorer(generator(_batch(prompts, sampling["num_inference_steps"], sampling["guidance_scale"])))
        if list(out["status"]) != ["generated"] * n:
            raise RuntimeError(f"{name}: {list(out['status'])} {list(out['error'])}")
        images = [np.frombuffer(raw, np.uint8).reshape(64, 64, 3) for raw in out["image"]]
        report[name] = {"faithfulness": float(np.mean([oracle(p, im).faithfulness for p, im in
                                                       zip(prompts, images, strict=True)])),
                        "clip_score": [round(float(s), 1) for s in out["clip_score"]]}
    return report


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    print(json.dumps(check(*args), indent=1))
