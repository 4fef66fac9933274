"""`imagefleet train-verifier OUTPUT OUT`: train a fact verifier (actors/fact_verifier.py) from a committed output's
images and a labels table, into a folder the `facts` scorer loads (`scorer: {backend: facts, model: OUT}`).

The labels table (Parquet; default: OUTPUT's evaluations/oracle.parquet, as `bench/world/demo.py grade` writes it):

    image_key: string                                  an image of OUTPUT (its image, kept draft or heavy image)
    facts:     list<struct<fact: string, holds: bool>> each fact of the image's prompt and whether it holds

Rows whose `facts` is null or empty are skipped; other columns are ignored.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagefleet.actors.fact_verifier import VerifierConfig, build_network, save_verifier, to_pixels, words

LABELS_DEFAULT = "evaluations/oracle.parquet"
"""Where the labels are looked for inside OUTPUT when --labels is not given."""
IMAGE_COLUMNS = (("image_key", "image_uri"), ("draft_image_key", "draft_image_uri"),
                 ("heavy_image_key", "heavy_image_uri"))
"""The manifest's (key, uri) column pairs whose images labels may name: final images, kept drafts, heavy images."""


class TrainError(ValueError):
    """Bad input for training: one line saying what to change."""


@dataclass(frozen=True)
class Labelled:
    """A training set: images (N x S x S x 3 uint8) and one row per fact label (which image, the fact, holds)."""

    images: np.ndarray
    fact_image: np.ndarray
    facts: list[str]
    holds: np.ndarray


def vocabulary(facts: list[str]) -> tuple[str, ...]:
    """Every word of the facts, sorted (a verifier's vocabulary)."""
    return tuple(sorted({w for f in set(facts) for w in words(f)}))


def fit(data: Labelled, cfg: VerifierConfig, steps: int, batch_images: int = 64, seed: int = 0, lr: float = 2e-3,
        log: Any = None, start: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train a verifier network on `data`: each step draws `batch_images` images and asks all their facts (binary
    cross-entropy, AdamW, linear warm-up then cosine decay). Seeded; `start`: weights to continue from (a state
    dict of the same config). Returns (the network, a training record). Any: a torch.nn.Module."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(cfg)
    if start is not None:
        network.load_state_dict(start)
    opt = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    order = np.argsort(data.fact_image, kind="stable")
    starts = np.searchsorted(data.fact_image[order], np.arange(len(data.images) + 1))
    tokens = torch.tensor([cfg.tokens(f) for f in data.facts])
    targets = torch.from_numpy(data.holds.astype(np.float32))
    labelled = np.flatnonzero(np.diff(starts) > 0)
    started, losses = time.process_time(), []
    network.train()
    for step in range(steps):
        warm = min(1.0, (step + 1) / max(1, steps // 20))
        for group in opt.param_groups:
            group["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
        # 1 a batch of images and every fact labelled on them
        chosen = rng.choice(labelled, size=min(batch_images, len(labelled)), replace=False)
        rows = np.concatenate([order[starts[i]:starts[i + 1]] for i in chosen])
        image_of = np.repeat(np.arange(len(chosen)), [starts[i + 1] - starts[i] for i in chosen])
        # 2 one step on their binary cross-entropy
        logits = network(to_pixels(list(data.images[chosen]), cfg.image_size), tokens[rows],
                         torch.from_numpy(image_of))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 500 == 0 or step == steps - 1):
            log(f"step {step} loss {np.mean(losses[-500:]):.4f} ({time.process_time() - started:.0f} CPU-s)")
    network.eval()
    record = {"steps": steps, "batch_images": batch_images, "seed": seed, "lr": lr, "images": len(data.images),
              "fact_labels": len(data.facts), "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
              "cpu_s": round(time.process_time() - started, 1)}
    return network, record


def read_labels(objects: Any, uri: str) -> Any:
    """The labels table at `uri` (a path inside OUTPUT, a local file or an s3:// URI) as an Arrow table."""
    import pyarrow.parquet as pq

    from imagefleet.actors.storage import StorageError, resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config

    try:
        if "://" not in uri and not uri.startswith(("/", "./", "../", "~")):
            raw = objects.get(uri)
        else:
            parent, _, name = uri.rstrip("/").rpartition("/")
            raw = open_store(parent or ".", resolve_store_spec(parent or ".", S3Config())).get(name)
    except (StorageError, KeyError, FileNotFoundError, ValueError) as exc:
        raise TrainError(f"no labels table at {uri} ({exc}); pass --labels with the Parquet file of per-fact "
                         f"labels (image_key, facts: list<struct<fact, holds>>)") from exc
    try:
        return pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a file that isn't Parquet
        raise TrainError(f"labels {uri} is not a Parquet file ({str(exc).splitlines()[0][:120]})") from exc


def check_labels(table: Any, uri: str) -> list[tuple[str, list[tuple[str, bool]]]]:
    """(image_key, [(fact, holds), ...]) of every labelled row; TrainError for missing or mistyped columns,
    malformed entries, or no labels at all."""
    missing = [c for c in ("image_key", "facts") if c not in table.column_names]
    if missing:
        raise TrainError(f"labels {uri} lacks column(s) {', '.join(missing)} (it has {', '.join(table.column_names)}); "
                         f"write image_key and facts: list<struct<fact: string, holds: bool>>")
    out = []
    for key, facts in zip(table.column("image_key").to_pylist(), table.column("facts").to_pylist(), strict=True):
        if not facts:
            continue
        if not isinstance(key, str) or not isinstance(facts, list) or not all(
                isinstance(f, dict) and isinstance(f.get("fact"), str) and isinstance(f.get("holds"), bool)
                for f in facts):
            raise TrainError(f"labels {uri}: row {key!r} is not image_key: string with facts: "
                             f"list<struct<fact: string, holds: bool>> (got {json.dumps(facts, default=str)[:80]})")
        out.append((key, [(f["fact"], f["holds"]) for f in facts]))
    if not out:
        raise TrainError(f"labels {uri} holds no fact labels (every row's facts is null or empty)")
    kinds = {holds for _, facts in out for _, holds in facts}
    if len(kinds) < 2:
        raise TrainError(f"every label in {uri} says holds={kinds.pop()}; a verifier learns from facts that hold "
                         f"and facts that fail: label images of both")
    return out


def load_training_set(output: str, labels: str, image_size: int) -> Labelled:
    """OUTPUT's labelled images (decoded, resized to `image_size`) and their fact labels."""
    from PIL import Image

    from imagefleet.actors.storage import StorageError, resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config
    from imagefleet.pipelines.commit import current_parts
    from imagefleet.pipelines.manifest import iter_manifest_batches

    try:
        objects = open_store(output, resolve_store_spec(output, S3Config()))
        if not current_parts(objects):
            raise TrainError(f"no committed manifest at {output}: pass the output.uri of a finished run")
        uris: dict[str, str] = {}
        for batch in iter_manifest_batches(objects, [c for pair in IMAGE_COLUMNS for c in pair]):
            for key_col, uri_col in IMAGE_COLUMNS:
                pairs = zip(batch.column(key_col).to_pylist(), batch.column(uri_col).to_pylist(), strict=True)
                uris |= {k: u for k, u in pairs if k and u}
    except (StorageError, ValueError) as exc:
        raise TrainError(str(exc)) from exc
    rows = check_labels(read_labels(objects, labels), labels)
    unknown = [k for k, _ in rows if k not in uris]
    if unknown:
        raise TrainError(f"labels {labels} name {len(unknown)} image key(s) OUTPUT's manifest doesn't hold (first: "
                         f"{unknown[0]}); label images of {output}, or pass the output they came from")
    images = []
    for key, _ in rows:
        with Image.open(io.BytesIO(objects.get(objects.rel_of(uris[key])))) as img:
            images.append(np.asarray(img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)))
    fact_image = np.array([i for i, (_, facts) in enumerate(rows) for _ in facts], dtype=np.int64)
    return Labelled(np.stack(images), fact_image, [f for _, facts in rows for f, _ in facts],
                    np.array([h for _, facts in rows for _, h in facts], dtype=bool))


def main(argv: list[str]) -> int:
    """Train a verifier and print one summary line.

    Args:
        argv: `OUTPUT OUT [--labels URI] [--steps N] [--batch-images N] [--image-size PX] [--seed N] [--lr X]`.

    Returns:
        0; 2 with one line on stderr for bad input (no committed manifest, a labels table without the columns or
        without labels, labels naming images the output doesn't hold, OUT already holding files).
    """
    p = argparse.ArgumentParser(prog="imagefleet train-verifier", description=__doc__.splitlines()[0])
    p.add_argument("output", help="a finished run's output.uri (local folder or s3://bucket/prefix)")
    p.add_argument("out", help="the verifier folder to write (new or empty)")
    p.add_argument("--labels", default=LABELS_DEFAULT, help="the labels Parquet: a path inside OUTPUT, a local file "
                   "or an s3:// URI (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000, help="training steps (default: %(default)s)")
    p.add_argument("--batch-images", type=int, default=64, help="images per step (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="images are read at this size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights and batch order (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    args = p.parse_args(argv)
    from pathlib import Path

    out = Path(args.out).expanduser()
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise TrainError(f"{args.out} already holds files; name a new or empty folder for the verifier")
        if args.steps < 1 or args.batch_images < 1 or args.image_size < 8 or args.image_size % 8:
            raise TrainError("--steps and --batch-images must be >= 1 and --image-size a multiple of 8 (>= 8)")
        data = load_training_set(args.output, args.labels, args.image_size)
    except TrainError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    cfg = VerifierConfig(vocab=vocabulary(data.facts), image_size=args.image_size)
    network, record = fit(data, cfg, args.steps, args.batch_images, args.seed, args.lr)
    save_verifier(out, cfg, network, {"trained": {**record, "output": args.output, "labels": args.labels}})
    print(f"imagefleet: verifier {out}: {len(data.images)} images, {len(data.facts)} fact labels "
          f"({float(data.holds.mean()):.0%} hold), {args.steps} steps in {record['cpu_s']} CPU-s; use it as "
          f"scorer: {{backend: facts, model: {out.resolve()}}}")
    return 0
