"""Escalator (CPU, one actor): the cascade's decision — re-queue low-scoring drafts for the heavy generator."""

from __future__ import annotations

import numpy as np

from actors.keys import image_key
from configs.prep import GeneratorIdentity
from configs.routing import CascadeConfig

Batch = dict[str, np.ndarray]


class Escalator:
    """Rows whose draft scored below the threshold become `pending` rows of the escalate generator.

    The draft's pixels, score and generator move to `draft_*` columns (kept if `keep_draft`); the row gets
    the heavy generator's image key. A single actor makes `max_escalations` an exact cap.

    Args:
        cfg: the cascade settings.
        heavy: identity of the escalate generator (for its image keys).
    """

    INPUT_COLUMNS = {
        "clip_score": "draft score",
        "status": "`generated` rows are candidates",
        "image": "the draft's pixels",
        "image_key": "the draft's key",
        "generator": "the draft's generator",
        "model": "the draft's model",
        "prompt": "for the heavy image's key",
        "negative_prompt": "for the heavy image's key",
        "seed": "for the heavy image's key",
        "width": "for the heavy image's key",
        "height": "for the heavy image's key",
        "num_steps": "for the heavy image's key",
        "guidance_scale": "for the heavy image's key",
    }
    OUTPUT_COLUMNS = {
        "route": "draft | escalated",
        "draft_image": "pixels of the draft (escalated rows with keep_draft)",
        "draft_image_key": "key of the draft image",
        "draft_score": "score of the draft",
        "draft_generator": "generator that made the draft",
        "status": "escalated rows become `pending` again",
        "image_key": "escalated rows get the heavy image's key",
        "generator": "escalated rows move to the heavy generator",
        "model": "escalated rows move to the heavy model",
        "image": "emptied for escalated rows",
    }

    def __init__(self, cfg: CascadeConfig, heavy_name: str, heavy: GeneratorIdentity) -> None:
        self.cfg = cfg
        self.heavy_name = heavy_name
        self.heavy = heavy
        self.escalated = 0

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        out = dict(batch)
        route = np.array(["draft"] * n, dtype=object)
        draft_image = np.array([b""] * n, dtype=object)
        draft_key = np.array([""] * n, dtype=object)
        draft_score = np.full(n, np.nan)
        draft_gen = np.array([""] * n, dtype=object)
        status, key, gen = (np.array(batch[c], dtype=object) for c in ("status", "image_key", "generator"))
        model, image = np.array(batch["model"], dtype=object), np.array(batch["image"], dtype=object)
        scores = np.array(batch["clip_score"], dtype=np.float64)
        for i in range(n):
            if status[i] != "generated" or not scores[i] < self.cfg.threshold:
                continue
            if self.cfg.max_escalations and self.escalated >= self.cfg.max_escalations:
                continue  # budget cap: the draft stays final
            self.escalated += 1
            route[i], draft_key[i], draft_score[i], draft_gen[i] = "escalated", key[i], scores[i], gen[i]
            draft_image[i] = image[i] if self.cfg.keep_draft else b""
            h = self.heavy
            key[i] = image_key(model=h.model, revision=h.revision, scheduler=h.scheduler,
                               prompt=str(batch["prompt"][i]), negative_prompt=str(batch["negative_prompt"][i]),
                               seed=int(batch["seed"][i]), width=int(batch["width"][i]),
                               height=int(batch["height"][i]), num_steps=int(batch["num_steps"][i]),
                               guidance_scale=float(batch["guidance_scale"][i]))
            gen[i], model[i], status[i], image[i] = self.heavy_name, f"{h.model}@{h.revision}", "pending", b""
        out.update(route=route, draft_image=draft_image, draft_image_key=draft_key, draft_score=draft_score,
                   draft_generator=draft_gen, status=status, image_key=key, generator=gen, model=model, image=image)
        return out
