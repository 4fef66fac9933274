"""VqaScorer: VQAScore-style prompt-image alignment — a vision-language model's probability of answering yes.

`YesNoModel` (the model, its processor and the yes-probability of image-question pairs) is shared with the `facts`
scorer (actors/facts_scorer.py), which asks one question per fact of the prompt."""

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


def vlm_model_problem(model: str) -> str:
    """Why a local model folder can't be a vision-language scorer's ('' = fine; hub ids are left to the actor)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return local_model_problem(model, lambda t: t in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                               "a vision-language model (AutoModelForImageTextToText: llava, qwen2_vl, …)")


class YesNoModel:
    """A vision-language model (`AutoModelForImageTextToText`) and its processor, loaded once, answering yes/no
    questions about images: P(answer) at the first answer token, read from one forward pass — nothing is generated.

    Args:
        model: hub id or local folder.
        dtype: weights dtype (`auto` = bfloat16 on CUDA, float32 on CPU).
        answer: the answer whose probability is returned (its first token, with and without a leading space).
    """

    def __init__(self, model: str, dtype: str, answer: str) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        # 1 device and dtype from torch (fake GPUs set CUDA_VISIBLE_DEVICES without a device)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = dtype if dtype != "auto" else ("bfloat16" if self.device == "cuda" else "float32")
        # 2 the model and its processor
        load: Any = AutoModelForImageTextToText.from_pretrained  # Any: heavy library type
        self.model: Any = load(model, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.processor: Any = AutoProcessor.from_pretrained(model)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # the answer position is the last one of every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # 3 the answer's first token, spelled with and without a leading space (tokenizers differ)
        ids = {tokenizer.encode(text, add_special_tokens=False)[0]
               for text in (answer, " " + answer) if tokenizer.encode(text, add_special_tokens=False)}
        self.answer_ids = sorted(ids)
        self.templated = getattr(self.processor, "chat_template", None) is not None
        self.image_token = str(getattr(self.processor, "image_token", "<image>"))

    def p_yes(self, images: list[Any], questions: list[str], per_pass: int = 0) -> list[float]:
        """P(answer) for each (image, question) pair, `per_pass` pairs per forward pass (0 = all in one)."""
        step = per_pass or max(1, len(images))
        out: list[float] = []
        for start in range(0, len(images), step):
            # 1 each question in the model's chat format when it has one
            texts = [self._prompt(q) for q in questions[start:start + step]]
            inputs = self.processor(images=images[start:start + step], text=texts, return_tensors="pt",
                                    padding=True).to(self.device)
            # 2 the next-token distribution after the question; P(answer) summed over its spellings
            with self.torch.inference_mode():
                logits = self.model(**inputs).logits[:, -1, :].float()
                probs = logits.softmax(dim=-1)[:, self.answer_ids].sum(dim=-1)
            out.extend(float(p) for p in probs.cpu())
        return out

    def plain(self, text: str) -> str:
        """`text` with the image token written as plain text: the processor expands that token wherever it appears,
        so one inside a user's prompt or fact would not match the images (a ValueError for the whole batch)."""
        return text.replace(self.image_token, self.image_token.strip("<>[]") or "image")

    def _prompt(self, question: str) -> str:
        if self.templated:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return str(self.processor.apply_chat_template(messages, add_generation_prompt=True))
        return f"{self.image_token}\n{question} Answer:"


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
        return vlm_model_problem(cfg.model)

    def __init__(self, cfg: VqaScorerConfig) -> None:
        self.cfg = cfg
        self.vlm = YesNoModel(cfg.model, cfg.dtype, cfg.answer)

    def __call__(self, batch: Batch) -> Batch:
        return score_batch(batch, self._score)

    def _score(self, images: list[Any], prompts: list[str]) -> list[float]:
        questions = [self.cfg.question.replace("{prompt}", self.vlm.plain(p)) for p in prompts]
        return self.vlm.p_yes(images, questions)
