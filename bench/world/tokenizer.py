"""A byte-level CLIP tokenizer (as jobs/tiny_models.py writes it) plus BPE merges for the world's words.

The 512 byte tokens and two specials keep any text encodable; merges learned on the world's vocabulary make each
of its words a single token, so a tiny text encoder reads words instead of spelling them out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.world.scene import WORDS
from imagefleet.jobs.tiny_models import byte_chars

MAX_TOKENS = 16  # the longest world prompt (v1 and v2) is 9 words + 2 specials


def learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE merges that turn each word into one token (most frequent pair first, ties by first seen)."""
    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in seqs):
        counts: dict[tuple[str, str], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        best = max(counts, key=lambda p: counts[p])  # dicts keep insertion order: ties go to the first seen
        merges.append(best)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i:i + 2] = [s[i] + s[i + 1]]
                i += 1
    return merges


def write_tokenizer(folder: Path, words: tuple[str, ...] = WORDS) -> int:
    """Write vocab.json and merges.txt to `folder` (merges for `words`: v1's by default); returns the vocabulary
    size."""
    chars = byte_chars()
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab.update({ch + "</w>": i + 256 for i, ch in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    merges = learn_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return len(vocab)


def load_tokenizer(folder: Path) -> Any:
    """The CLIPTokenizer for a folder `write_tokenizer` wrote (Any: transformers type)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)
