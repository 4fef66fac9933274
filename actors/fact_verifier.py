"""FactVerifier: a small trained yes/no model of whether one fact holds in an image — a CNN over the image whose
later layers are FiLM-conditioned on the fact's words — and its folder format, which the `facts` scorer loads
through its normal `scorer.model` path.

A verifier folder holds `config.json` (`"kind": "imagefleet-fact-verifier"`, the format version, the network's
hyperparameters and the word vocabulary) and `model.safetensors`. `imagefleet train-verifier`
(jobs/train_verifier.py) writes one from a committed output and a labels table. Torch is imported only where a
network is built or loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KIND = "imagefleet-fact-verifier"
"""`config.json`'s `kind` in a verifier folder (how the `facts` scorer tells it from a vision-language model)."""
FORMAT = 1
"""The folder format's version."""
WEIGHTS = "model.safetensors"
PAD, UNKNOWN = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """A fact's words as the verifier reads them: lower-case runs of letters and digits."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class VerifierConfig:
    """A verifier's hyperparameters and vocabulary (its folder's config.json).

    Args:
        vocab: the words it knows, in token order after `<pad>` and `<unk>` (an unknown word reads as `<unk>`).
        image_size: images are resized to this square (pixels) before they are read.
        max_words: a fact's words beyond this many are dropped.
        trunk: channels of the unconditioned convolutions (the first and the last halve the size; run once per
            image).
        film: channels of the fact-conditioned convolutions (the second halves the size; one per fact).
        word_dim: word embedding size; the fact's reading (a bidirectional GRU) is twice this.
        head_dim: hidden size of the yes/no head.
    """

    vocab: tuple[str, ...]
    image_size: int = 64
    max_words: int = 16
    trunk: tuple[int, ...] = (16, 32, 32)
    film: tuple[int, ...] = (32, 64, 64)
    word_dim: int = 32
    head_dim: int = 64
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {w: i + 2 for i, w in enumerate(self.vocab)})

    def tokens(self, fact: str) -> list[int]:
        """Token ids of a fact, padded (0) to max_words; unknown words are 1."""
        ids = [self.index.get(w, 1) for w in words(fact)][: self.max_words]
        return ids + [0] * (self.max_words - len(ids))

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "index"}
        return {"kind": KIND, "format": FORMAT, **data}

    @staticmethod
    def from_json(data: dict[str, Any]) -> VerifierConfig:
        """Raises ValueError when `data` is not a verifier config this version reads."""
        if data.get("kind") != KIND:
            raise ValueError(f"config.json's kind is {data.get('kind')!r}, not {KIND!r}")
        if data.get("format") != FORMAT:
            raise ValueError(f"verifier format {data.get('format')!r}; this imagefleet reads format {FORMAT}")
        names = set(VerifierConfig.__dataclass_fields__) - {"index"}  # other keys: e.g. how it was trained
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        try:
            return VerifierConfig(**fields)
        except TypeError as exc:
            raise ValueError(f"verifier config.json: {exc}") from exc


def is_fact_verifier(model: str) -> bool:
    """Whether `model` is a local folder whose config.json names it a fact verifier (any format version)."""
    config = Path(model).expanduser() / "config.json"
    try:
        return json.loads(config.read_text()).get("kind") == KIND if config.is_file() else False
    except (OSError, ValueError, AttributeError):
        return False


def fact_verifier_problem(model: str) -> str:
    """Why a verifier folder can't be loaded ('' = it can): its config.json and its weights file."""
    folder = Path(model).expanduser()
    try:
        VerifierConfig.from_json(json.loads((folder / "config.json").read_text()))
    except ValueError as exc:
        return f"scorer.model: {model} is a fact verifier folder this imagefleet can't read ({exc})"
    if not (folder / WEIGHTS).is_file():
        return f"scorer.model: fact verifier folder {model} has no {WEIGHTS}; train it again or copy the file"
    return ""


def build_network(cfg: VerifierConfig) -> Any:
    """The verifier's torch module (random weights), for `cfg`. Any: a torch.nn.Module (torch loads lazily)."""
    import torch
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> Any:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.ReLU())

    class Network(nn.Module):
        """Image trunk once per image; per fact: FiLM-conditioned convolutions, then max, mean and a coarse map."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(len(cfg.vocab) + 2, cfg.word_dim, padding_idx=0)
            self.read = nn.GRU(cfg.word_dim, cfg.word_dim, batch_first=True, bidirectional=True)
            text = 2 * cfg.word_dim
            chans = [5, *cfg.trunk]  # RGB plus two coordinate channels
            self.trunk = nn.Sequential(*[block(a, b, 2 if i in (0, len(cfg.trunk) - 1) else 1) for i, (a, b) in
                                         enumerate(zip(chans, chans[1:], strict=False))])
            fchans = [cfg.trunk[-1] + 2, *cfg.film]
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, 2 if i == 1 else 1, 1) for i, (a, b) in
                                       enumerate(zip(fchans, fchans[1:], strict=False)))
            self.norms = nn.ModuleList(nn.GroupNorm(min(8, c), c, affine=False) for c in cfg.film)
            self.films = nn.ModuleList(nn.Linear(text, 2 * c) for c in cfg.film)
            self.coarse = nn.Conv2d(cfg.film[-1], 4, 1)
            side = cfg.image_size // 8
            self.head = nn.Sequential(nn.Linear(2 * cfg.film[-1] + 4 * side * side + text, cfg.head_dim), nn.ReLU(),
                                      nn.Linear(cfg.head_dim, 1))

        @staticmethod
        def coords(x: Any) -> Any:
            n, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(n, 1, h, w)
            xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
            return torch.cat([x, xs, ys], dim=1)

        def forward(self, pixels: Any, tokens: Any, image_of_fact: Any) -> Any:
            # 1 the image once (pixels: N x 3 x S x S in [-1, 1]); the fact's words read in order
            feats = self.coords(self.trunk(self.coords(pixels)))[image_of_fact]
            lengths = (tokens != 0).sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, batch_first=True,
                                                       enforce_sorted=False)
            _, hidden = self.read(packed)
            text = torch.cat([hidden[0], hidden[1]], dim=1)
            # 2 per fact: each convolution's channels scaled and shifted by the fact (FiLM)
            x = feats
            for conv, norm, film in zip(self.convs, self.norms, self.films, strict=True):
                gamma, beta = film(text).chunk(2, dim=1)
                x = torch.relu(norm(conv(x)) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
            # 3 what is anywhere (max), how much (mean), and where (a coarse map), with the fact: one logit
            pooled = torch.cat([x.amax((2, 3)), x.mean((2, 3)), self.coarse(x).flatten(1), text], dim=1)
            return self.head(pooled).squeeze(1)

    return Network()


def to_pixels(images: list[np.ndarray], size: int) -> Any:
    """RGB uint8 images (any size) → a float tensor N x 3 x size x size in [-1, 1] (bilinear resize when needed)."""
    import torch
    from PIL import Image

    arrays = [im if im.shape[:2] == (size, size) else
              np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def save_verifier(folder: Path, cfg: VerifierConfig, network: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write a verifier folder: config.json (plus `extra`, e.g. how it was trained) and model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / "config.json").write_text(json.dumps({**cfg.to_json(), **(extra or {})}, indent=1) + "\n")
    return folder


class FactVerifier:
    """A verifier folder loaded for scoring: P(the fact holds) for (image, fact) pairs.

    Args:
        model: the verifier folder (config.json + model.safetensors).
    """

    def __init__(self, model: str) -> None:
        import torch
        from safetensors.torch import load_file

        self.torch = torch
        folder = Path(model).expanduser()
        data = json.loads((folder / "config.json").read_text())
        self.cfg = VerifierConfig.from_json(data)
        self.network: Any = build_network(self.cfg)  # Any: torch.nn.Module
        self.network.load_state_dict(load_file(str(folder / WEIGHTS)))
        self.network.eval()

    def plain(self, text: str) -> str:
        """`text` unchanged: a verifier reads words, with no special tokens to escape (YesNoModel's interface)."""
        return text

    def p_yes(self, images: list[np.ndarray], facts: list[str], per_pass: int = 0) -> list[float]:
        """P(yes) for each (image, fact) pair, `per_pass` pairs per forward pass (0 = all in one); an image
        repeated over consecutive pairs is read once."""
        step = per_pass or max(1, len(images))
        out: list[float] = []
        for start in range(0, len(images), step):
            chunk, said = images[start:start + step], facts[start:start + step]
            new = np.array([j == 0 or chunk[j] is not chunk[j - 1] for j in range(len(chunk))])
            firsts, image_of = np.flatnonzero(new), np.cumsum(new) - 1
            with self.torch.inference_mode():
                logits = self.network(to_pixels([chunk[j] for j in firsts], self.cfg.image_size),
                                      self.torch.tensor([self.cfg.tokens(f) for f in said]),
                                      self.torch.from_numpy(image_of))
            out.extend(float(p) for p in self.torch.sigmoid(logits))
        return out

