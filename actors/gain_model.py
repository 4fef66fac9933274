"""GainModel (numpy only): how much a prompt is predicted to gain from a cascade's heavy generator over its draft,
from the prompt text alone — what predictive routing (`routing.cascade.predict`) asks before any draft is made.

The model is ridge regression in closed form over hashed word n-grams: a prompt's lower-cased words and their
n-grams (up to `ngrams` words) are hashed (BLAKE2b, not Python's salted `hash`) into `buckets` signed features,
the row scaled to unit length; the target is heavy score - draft score in the scorer's units. Everything is
deterministic: the same folder gives the same prediction for the same prompt on every machine, so a rerun sends
the same rows to the heavy generator and resume stays exact.

`imagefleet train-router` (jobs/train_router.py) fits one from earlier runs' manifests and writes a folder:

    router.json    format, feature spec, ridge lambda, fit quality (held-out R^2, rank correlation), the predicted
                   gains' quantiles and the threshold that sends each share of rows to heavy, rows and manifests
    weights.npz    weights (buckets,) and intercept
    rows.parquet   the training rows (prompt, draft and heavy score, gain, prediction, held out or not)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREDICTED = "predicted_heavy"
"""The route of a row predictive routing sent straight to the heavy generator (no draft)."""
FORMAT = "imagefleet-gain-model/1"
"""`router.json`'s `format`: what this code reads."""
MODEL_FILE = "router.json"
WEIGHTS_FILE = "weights.npz"
ROWS_FILE = "rows.parquet"
LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)
"""Ridge strengths tried on the held-out prompts; the best held-out R^2 is refitted on every row."""
SHARES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
"""Shares of rows `router.json` gives a `heavy_above` for (the training prompts' predicted-gain quantiles)."""
WORD = re.compile(r"[a-z0-9]+")


class GainModelError(ValueError):
    """A gain model folder that can't be used (one line saying what to change)."""


def tokens(prompt: str, ngrams: int) -> list[str]:
    """The prompt's lower-cased words and every run of 2..ngrams consecutive words (joined by spaces)."""
    words = WORD.findall(prompt.lower())
    return [" ".join(words[i:i + n]) for n in range(1, ngrams + 1) for i in range(len(words) - n + 1)]


def hashed(prompt: str, buckets: int, ngrams: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices, values) of the prompt's features: each token adds +-1 to its bucket (the sign from the
    hash too, so collisions cancel on average), and the vector is scaled to unit length (an empty one stays 0)."""
    acc: dict[int, float] = {}
    for tok in tokens(prompt, ngrams):
        h = int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "big")
        idx = h % buckets
        acc[idx] = acc.get(idx, 0.0) + (1.0 if h >> 63 else -1.0)
    order = sorted(acc)
    val = np.array([acc[i] for i in order], dtype=np.float64)
    norm = math.sqrt(float(val @ val)) if len(val) else 0.0
    return np.array(order, dtype=np.int64), (val / norm if norm > 0 else val)


def features(prompts: list[str], buckets: int, ngrams: int) -> np.ndarray:
    """The dense feature matrix (len(prompts), buckets) of `hashed`."""
    x = np.zeros((len(prompts), buckets), dtype=np.float64)
    for row, prompt in enumerate(prompts):
        idx, val = hashed(prompt, buckets, ngrams)
        x[row, idx] = val
    return x


@dataclass(frozen=True, eq=False)
class GainModel:
    """A fitted gain model: predicted gain = intercept + weights . hashed(prompt)."""

    weights: np.ndarray
    """One weight per bucket."""
    intercept: float
    """The mean gain of the training rows (the weights fit what the words add to it)."""
    buckets: int
    """Hashed feature buckets."""
    ngrams: int
    """Longest word run hashed (1 = words only, 2 = words and word pairs)."""

    def predict_one(self, prompt: str) -> float:
        """The predicted gain of one prompt (the scorer's units)."""
        idx, val = hashed(prompt, self.buckets, self.ngrams)
        return float(self.intercept + float(self.weights[idx] @ val))

    def predict(self, prompts: list[str]) -> np.ndarray:
        """The predicted gains of several prompts."""
        return np.array([self.predict_one(p) for p in prompts], dtype=np.float64)


def fit(prompts: list[str], gains: np.ndarray, buckets: int, ngrams: int, lam: float) -> GainModel:
    """Ridge regression in closed form, the intercept not penalised: w = (Xc'Xc + lam I)^-1 Xc'yc on centred X, y
    (with fewer rows than buckets its equal dual, w = Xc'(Xc Xc' + lam I)^-1 yc: an n x n system)."""
    x = features(prompts, buckets, ngrams)
    y = np.asarray(gains, dtype=np.float64)
    mean_x, mean_y = x.mean(axis=0), float(y.mean())
    xc = x - mean_x
    if len(prompts) < buckets:
        w = xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(len(prompts)), y - mean_y)
    else:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(buckets), xc.T @ (y - mean_y))
    return GainModel(weights=w, intercept=mean_y - float(mean_x @ w), buckets=buckets, ngrams=ngrams)


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SSE / SST (0 when y is constant)."""
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else 0.0


def rank_correlation(y: np.ndarray, pred: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties; 0 when either side is constant)."""
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v), dtype=np.float64)
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            same = v == value
            r[same] = r[same].mean()
        return r

    a, b = ranks(y), ranks(pred)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def held_out(prompt: str, share: float) -> bool:
    """Whether a prompt string is in the held-out set (by a hash of the string, so every row of one prompt is on
    the same side and the choice is the same on every run)."""
    h = int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8, person=b"heldout").digest(), "big")
    return (h % 10_000) < share * 10_000


@dataclass
class Trained:
    """What `train` returns: the model refitted on every row, and what was measured on the held-out prompts."""

    model: GainModel
    fit: dict[str, Any]
    predicted: np.ndarray
    """The final model's prediction for every training row."""
    held: np.ndarray
    """Which rows were held out while lambda was chosen."""
    quantiles: dict[str, float] = field(default_factory=dict)


def train(prompts: list[str], gains: np.ndarray, buckets: int = 2048, ngrams: int = 2, held_share: float = 0.2,
          lambdas: tuple[float, ...] = LAMBDAS) -> Trained:
    """Choose lambda on held-out prompt strings (best R^2; the largest on ties), report its held-out R^2 and rank
    correlation, then refit on every row.

    Args:
        prompts: one per training row (a prompt may repeat).
        gains: heavy score - draft score of each row.
        buckets: hashed feature buckets.
        ngrams: longest word run hashed.
        held_share: share of distinct prompt strings held out while lambda is chosen.
        lambdas: ridge strengths tried.
    """
    y = np.asarray(gains, dtype=np.float64)
    held = np.array([held_out(p, held_share) for p in prompts], dtype=bool)
    per_lambda: dict[str, dict[str, float]] = {}
    best = lambdas[len(lambdas) // 2]
    if held.sum() >= 5 and (~held).sum() >= 5:
        train_p = [p for p, h in zip(prompts, held, strict=True) if not h]
        test_p = [p for p, h in zip(prompts, held, strict=True) if h]
        for lam in lambdas:
            pred = fit(train_p, y[~held], buckets, ngrams, lam).predict(test_p)
            per_lambda[repr(lam)] = {"r2": r_squared(y[held], pred),
                                     "rank_correlation": rank_correlation(y[held], pred)}
        best = max(lambdas, key=lambda lam: (round(per_lambda[repr(lam)]["r2"], 12), lam))
    model = fit(prompts, y, buckets, ngrams, best)
    predicted = model.predict(prompts)
    chosen = per_lambda.get(repr(best), {})
    report = {"lambda": best, "rows": len(prompts), "prompts": len(set(prompts)),
              "held_out_rows": int(held.sum()), "held_out_prompts": len({p for p, h in zip(prompts, held, strict=True)
                                                                         if h}),
              "held_out_r2": chosen.get("r2"), "held_out_rank_correlation": chosen.get("rank_correlation"),
              "train_r2": r_squared(y, predicted), "per_lambda": per_lambda,
              "gain_mean": float(y.mean()), "gain_std": float(y.std())}
    return Trained(model=model, fit=report, predicted=predicted, held=held,
                   quantiles={f"{q:.2f}": float(np.quantile(predicted, q)) for q in np.linspace(0, 1, 21)})


def heavy_above_for_share(predicted: np.ndarray) -> dict[str, float]:
    """share of rows → the `heavy_above` that sends about that share of the training prompts to heavy (the
    predicted gains' 1 - share quantile)."""
    return {f"{s:g}": float(np.quantile(predicted, 1 - s)) for s in SHARES}


def save(folder: Path, trained: Trained, info: dict[str, Any]) -> Path:
    """Write `router.json` and `weights.npz` into `folder` (made if missing); `info` joins router.json (the
    manifests used, the target). Returns router.json's path."""
    folder.mkdir(parents=True, exist_ok=True)
    m = trained.model
    np.savez(folder / WEIGHTS_FILE, weights=m.weights, intercept=np.array([m.intercept]))
    doc = {"format": FORMAT,
           "features": {"kind": "hashed word n-grams", "buckets": m.buckets, "ngrams": m.ngrams,
                        "tokens": WORD.pattern + " over the lower-cased prompt", "hash": "blake2b-64, sign = top bit",
                        "scaling": "unit length"},
           "target": "heavy score - draft score (the scorer's units)",
           "fit": trained.fit, "predicted_gain_quantiles": trained.quantiles,
           "heavy_above_for_share": heavy_above_for_share(trained.predicted), **info}
    path = folder / MODEL_FILE
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def load(folder: str | Path) -> GainModel:
    """The model in a folder `save` wrote; GainModelError (one line) when it is missing, unreadable, of another
    format, or its weights don't match its feature spec."""
    where = Path(folder).expanduser()
    hint = "give a folder `imagefleet train-router` wrote"
    if not (where / MODEL_FILE).is_file():
        raise GainModelError(f"{folder} has no {MODEL_FILE}: {hint}")
    try:
        doc = json.loads((where / MODEL_FILE).read_text())
        spec = doc["features"]
        with np.load(where / WEIGHTS_FILE) as npz:
            weights = np.asarray(npz["weights"], dtype=np.float64)
            intercept = float(np.asarray(npz["intercept"]).reshape(-1)[0])
        buckets, ngrams = int(spec["buckets"]), int(spec["ngrams"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise GainModelError(f"{folder} is not a readable gain model ({type(exc).__name__}: {exc}); {hint}") from exc
    if doc.get("format") != FORMAT:
        raise GainModelError(f"{folder}/{MODEL_FILE} has format {doc.get('format')!r}, not {FORMAT!r}; {hint}")
    if weights.shape != (buckets,) or ngrams < 1 or not np.all(np.isfinite(weights)) or not math.isfinite(intercept):
        raise GainModelError(f"{folder}/{WEIGHTS_FILE} holds {weights.shape} weights for {buckets} buckets (or "
                             f"non-finite values); {hint}")
    return GainModel(weights=weights, intercept=intercept, buckets=buckets, ngrams=ngrams)


@dataclass(frozen=True, eq=False)
class GainRouter:
    """What the preprocessor asks of each prompt in a cascade with `predict`: go straight to the heavy generator?

    Built once on the driver from the model folder (`load`) and handed to every preprocessor actor with its
    weights (a few KB), so the actors read no files and the nodes of a cluster needn't see the folder.

    Args:
        model: the gain model.
        heavy_above: prompts predicted to gain more than this go to heavy.
        heavy: the heavy (escalate) generator's name.
    """

    model: GainModel
    heavy_above: float
    heavy: str

    def sends_heavy(self, prompt: str) -> bool:
        """Whether `prompt`'s predicted gain is above `heavy_above`."""
        return self.model.predict_one(prompt) > self.heavy_above
