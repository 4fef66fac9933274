"""FactsScorer: fact-level prompt-image alignment — each fact of a prompt asked of a vision-language model as a
yes/no question; the image's score is the expected share of its facts that hold (the mean of P(yes)).

`scorer.model` is a vision-language model, or a fact verifier folder (actors/fact_verifier.py, made by `imagefleet
train-verifier`), told apart by its config.json: a verifier reads each fact itself (no question template) and a row
without facts is read with its whole prompt as the one fact.

A row's facts come from a prompt-table column (`scorer.facts_column`). They reach the scorer the way the manifest's
pass-through columns do: inside the row's PASS_THROUGH values (actors/pass_through.py), so no stage between the
preprocessor and the scorer needs to know of them. The plan checks before any work that the column is carried
(`FactsScorer.source_problem`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from imagefleet.actors.clip_scorer import (
    IMAGE_SCORER_INPUT_COLUMNS,
    SCORER_OPTIONAL_COLUMNS,
    SCORER_OUTPUT_COLUMNS,
    Batch,
    score_batch,
    score_rows,
)
from imagefleet.actors.fact_verifier import FactVerifier, fact_verifier_problem, is_fact_verifier
from imagefleet.actors.manifest_schema import NAMES
from imagefleet.actors.pass_through import PASS_THROUGH, manifest_name
from imagefleet.actors.vqa_scorer import YesNoModel, vlm_model_problem
from imagefleet.configs.scorer import FactsScorerConfig

if TYPE_CHECKING:
    from imagefleet.configs.source import SourceConfig

logger = logging.getLogger(__name__)
VLM_ONLY = frozenset({"question", "prompt_question", "answer", "dtype"})
"""Settings a fact verifier folder doesn't use (it reads each fact itself, in float32)."""
FACTS = "facts"
"""The manifest column of each fact's result (flat in the pipeline: JSON `[{"fact", "p_yes"}]`, '' = none)."""


@dataclass(frozen=True)
class Ask:
    """What the model is asked about one row's image: one question per fact, or one about the whole prompt."""

    facts: tuple[str, ...]
    questions: tuple[str, ...]


def read_facts(value: Any, cfg: FactsScorerConfig) -> tuple[list[str], str]:
    """A row's facts from its facts column's value, as its pass-through JSON holds it (a list of strings, text
    with one fact per line, or null): (facts, '') — blank entries skipped — or ([], why they are not facts)."""
    column = f"scorer.facts_column {cfg.facts_column!r}"
    if value is None:
        return [], ""
    if not isinstance(value, str | list):
        return [], (f"{column} holds {_shown(value)} in this row, not facts; write a list of statements or text with "
                    f"one statement per line")
    entries = value.splitlines() if isinstance(value, str) else value
    bad = [e for e in entries if e is not None and not isinstance(e, str)]
    if bad:
        return [], f"{column} holds {_shown(bad[0])} among this row's facts; each fact is a statement (text)"
    facts = [e.strip() for e in entries if e and e.strip()]
    if len(facts) > cfg.max_facts:
        return [], (f"{column} holds {len(facts)} facts in this row (limit scorer.max_facts={cfg.max_facts}); keep "
                    f"the ones that matter or raise the limit")
    longest = max(facts, key=len, default="")
    if len(longest) > cfg.max_fact_chars:
        return [], (f"{column} holds a fact of {len(longest):,} characters in this row (limit "
                    f"scorer.max_fact_chars={cfg.max_fact_chars:,}); shorten it or raise the limit")
    return facts, ""


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


class FactsScorer:
    """Asks a vision-language model, for each `generated` row, one yes/no question per fact of its prompt; the
    score is the mean P(yes) (the expected share of facts that hold), and `facts` records each fact's P(yes). A row
    without facts is asked about its whole prompt (the `vqa` score; `facts` stays empty). A row whose facts can't be
    read keeps its image unscored, its `error` saying why. Best-of-N rows keep their best candidate's facts.

    Args:
        cfg: this scorer's config slice.
    """

    CONFIG = FactsScorerConfig
    INPUT_COLUMNS = {**IMAGE_SCORER_INPUT_COLUMNS,
                     PASS_THROUGH: "the row's facts (scorer.facts_column, carried as a pass-through column)",
                     "error": "set for a row whose facts can't be read"}
    OPTIONAL_COLUMNS = (*SCORER_OPTIONAL_COLUMNS, FACTS)
    """As the other scorers', and a cascade's earlier facts (a second scorer keeps the drafts')."""
    OUTPUT_COLUMNS = {**SCORER_OUTPUT_COLUMNS,
                      FACTS: "JSON list of each fact and the kept image's P(yes) ('' = no facts)",
                      "error": "why a row's facts can't be read (its image stays unscored)"}

    @staticmethod
    def check_model(cfg: FactsScorerConfig) -> str:
        """Why a local model folder can't be this scorer's ('' = fine; hub ids are left to the actor): a fact
        verifier folder must be one this version reads, any other a vision-language model."""
        return fact_verifier_problem(cfg.model) if is_fact_verifier(cfg.model) else vlm_model_problem(cfg.model)

    @staticmethod
    def source_problem(cfg: FactsScorerConfig, source: SourceConfig, carried: Collection[str]) -> str:
        """Why the facts column won't reach the scorer ('' = it will), checked by the plan before any work.

        Args:
            carried: the prompt-table columns the run carries as pass-through values.
        """
        column = cfg.facts_column
        if column in carried:
            return ""
        if source.pass_through == "none" or isinstance(source.pass_through, list):
            return (f"scorer.facts_column {column!r} reaches the scorer as a pass-through column, but "
                    f"source.pass_through={source.pass_through!r} leaves it out; add {column!r} to it")
        return (f"scorer.facts_column {column!r} is not a column of the data the run can carry (missing, or read as "
                f"the prompt, id or a setting); name the column holding each prompt's facts, or use scorer.backend: "
                f"vqa to score whole prompts")

    def __init__(self, cfg: FactsScorerConfig) -> None:
        self.cfg = cfg
        self.verifier = is_fact_verifier(cfg.model)
        self.vlm: YesNoModel | FactVerifier
        if self.verifier:
            self.vlm = FactVerifier(cfg.model)
            unused = sorted(VLM_ONLY & set(cfg.model_fields_set))
            if unused:
                logger.warning("scorer.%s has no effect: %s is a fact verifier, which reads each fact itself",
                               ", scorer.".join(unused), cfg.model)
        else:
            self.vlm = YesNoModel(cfg.model, cfg.dtype, cfg.answer)
        self.key = manifest_name(cfg.facts_column, frozenset(NAMES))  # its name among the pass-through values

    def __call__(self, batch: Batch) -> Batch:
        # 1 each row's facts, from its pass-through values
        n = len(batch["status"])
        read = [read_facts(json.loads(text).get(self.key) if text else None, self.cfg)
                for text in batch[PASS_THROUGH]]
        # 2 what to ask about each row's image: its facts, its whole prompt, or nothing (facts that aren't)
        asks = [self._ask(facts, str(batch["prompt"][i])) if not why else None
                for i, (facts, why) in enumerate(read)]
        out = score_batch(batch, lambda images, rows: self._score(images, [asks[int(r)] for r in rows]),
                          texts=[str(i) for i in range(n)], detail=FACTS)
        # 3 a scored row whose facts can't be read says why (its image is kept, unscored)
        errors = np.array(batch["error"], dtype=object)
        for i in score_rows(batch):
            errors[i] = read[i][1] or errors[i]
        out["error"] = errors
        return out

    def _ask(self, facts: list[str], prompt: str) -> Ask:
        if self.verifier:  # the facts themselves; a row without facts: its prompt as the one fact
            return Ask(tuple(facts), tuple(facts) or (prompt,))
        if not facts:
            return Ask((), (self.cfg.prompt_question.replace("{prompt}", self.vlm.plain(prompt)),))
        return Ask(tuple(facts), tuple(self.cfg.question.replace("{fact}", self.vlm.plain(f)) for f in facts))

    def _score(self, images: list[Any], asks: list[Ask | None]) -> list[tuple[float, str]]:
        # 1 every (image, question) pair, `questions_per_pass` to a forward pass
        pairs = [(j, image, q) for j, (image, ask) in enumerate(zip(images, asks, strict=True)) if ask is not None
                 for q in ask.questions]
        p_yes = self.vlm.p_yes([image for _, image, _ in pairs], [q for _, _, q in pairs], self.cfg.questions_per_pass)
        by_image: dict[int, list[float]] = {}
        for (j, _, _), p in zip(pairs, p_yes, strict=True):
            by_image.setdefault(j, []).append(p)
        # 2 an image's score is the mean over its facts; each fact's P(yes) is recorded
        out: list[tuple[float, str]] = []
        for j, ask in enumerate(asks):
            if ask is None:
                out.append((math.nan, ""))
                continue
            ps = by_image[j]
            record = [{"fact": f, "p_yes": p} for f, p in zip(ask.facts, ps, strict=True)] if ask.facts else []
            out.append((sum(ps) / len(ps), json.dumps(record, ensure_ascii=False) if record else ""))
        return out
