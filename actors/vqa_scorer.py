"""VqaScorer: VQAScore-style prompt-image alignment — a vision-language model's probability of answering yes."""

from __future__ import annotations

import logging
from typing import Any

from imagefleet.actors.clip_scorer import (
    IMAGE_SCORER_INPUT_COLUMNS,
    SCORER_OPTIONAL_COLUMNS,
    SCORER_OUTPUT_COLUMNS,
    Batch,
    local_model_problem,
    score_batch,
)
from imagefleet.configs.scorer import VqaScorerConfig

logger = logging.getLogger(__name__)


class VqaScorer:
    """Asks a vision-language model, for each `generated` row, whether its image shows its prompt; the score is
    P(answer) at the first answer token (VQAScore, Lin et al. 2024), read from one forward pass — nothing is
    generated. Everything else passes through; an image that can't be decoded stays unscored.

    Args:
        cfg: this scorer's config slice.
    """

    CONFIG = VqaScorerConfig
    INPUT_COLUMNS = IMAGE_SCORER_INPUT_COLUMNS
    OPTIONAL_COLUMNS = SCORER_OPTIONAL_COLUMNS
    OUTPUT_COLUMNS = SCORER_OUTPUT_COLUMNS

    @staticmethod
    def check_model(cfg: VqaScorerConfig) -> str:
        """Why a local model folder can't be this scorer's ('' = fine; hub ids are left to the actor)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        return local_model_problem(cfg.model, lambda t: t in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                   "a vision-language model (AutoModelForImageTextToText: llava, qwen2_vl, …)")

    def __init__(self, cfg: VqaScorerConfig) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.torch = torch
        # 1 device and dtype from torch (fake GPUs set CUDA_VISIBLE_DEVICES without a device)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if self.device == "cuda" else "float32")
        # 2 the model and its processor, loaded once per actor
        load: Any = AutoModelForImageTextToText.from_pretrained  # Any: heavy library type
        self.model: Any = load(cfg.model, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.processor: Any = AutoProcessor.from_pretrained(cfg.model)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # the answer position is the last one of every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # 3 the answer's first token, spelled with and without a leading space (tokenizers differ)
        ids = {tokenizer.encode(text, add_special_tokens=False)[0]
               for text in (cfg.answer, " " + cfg.answer) if tokenizer.encode(text, add_special_tokens=False)}
        self.answer_ids = sorted(ids)
        self.templated = getattr(self.processor, "chat_template", None) is not None

    def __call__(self, batch: Batch) -> Batch:
        return score_batch(batch, self._score)

    def _score(self, images: list[Any], prompts: list[str]) -> list[float]:
        # 1 one question per image, in the model's chat format when it has one
        texts = [self._question(p) for p in prompts]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True).to(self.device)
        # 2 the next-token distribution after the question; P(answer) summed over its spellings
        with self.torch.inference_mode():
            logits = self.model(**inputs).logits[:, -1, :].float()
            probs = logits.softmax(dim=-1)[:, self.answer_ids].sum(dim=-1)
        return [float(p) for p in probs.cpu()]

    def _question(self, prompt: str) -> str:
        # the processor expands its image token wherever it appears: one inside a user's prompt would not match the
        # images (a ValueError for the whole batch), so it is written as plain text there
        token = str(getattr(self.processor, "image_token", "<image>"))
        question = self.cfg.question.replace("{prompt}", prompt.replace(token, token.strip("<>[]") or "image"))
        if self.templated:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return str(self.processor.apply_chat_template(messages, add_generation_prompt=True))
        return f"{token}\n{question} Answer:"

