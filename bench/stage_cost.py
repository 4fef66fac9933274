"""Per-stage cost: CPU-seconds and peak memory per image for every stage of a run, one stage at a time, in this
process (no Ray), and the fleet sizing that follows from them.

    python bench/stage_cost.py [--rows 50000]        (or: python bench/run_all.py --only stage_cost)

Every stage is the product's own: a run's plan is made from a job config (`text_to_image.plan_run`), and each
stage's actor is built from the plan's constructor arguments and called on batches of the plan's size in the format
Ray Data hands it, as `pipelines/in_process.py` runs them. The generator is the `sleep` backend with a model that
takes no time and returns ready uint8 pixels, so what is left is the stage's own host side (buckets, seeds, pixels
to bytes, timing and cost columns); images the writer and scorers see are photo-like synthetic pixels of each size
(`photo`). Hand-offs between actors are estimated with Ray Data's own block conversions (`handoffs`).

CPU time is `time.process_time()`: every thread of this process (the writer's encode threads, torch's), and not
what other jobs on a shared machine take, which wall time would show. Memory: the traced peak (Python and numpy
allocations, `tracemalloc`) of one call, and the process RSS high-water rise over the stage (native buffers too:
PIL, Arrow, torch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, WORK, git_rev, machine  # noqa: E402

# shared/PERFORMANCE.md, "Physical limits, one H100": (workload, image side px, img/s at the limit)
WORKLOADS = (("SD-Turbo 1 step 512 px", 512, 235.0), ("SD-Turbo 1 step 512 px, tiny VAE", 512, 797.0),
             ("SDXL-Turbo 4 steps 512 px", 512, 88.0), ("SDXL 30 steps 1024 px, CFG", 1024, 1.90))
FORMATS, SIZES = ("png", "jpeg", "webp"), (64, 512, 1024)
WRITES = {64: 512, 512: 96, 1024: 32}  # images per format and size (about 1-3 CPU-s each)
NODE = {"cores": 16, "gpus": 8, "share": 0.5}  # the node: 16 cores per 8 H100s at 50% of the limit
FIXED_POOLS = ("preprocess", "inputs", "escalate")
Batch = dict[str, np.ndarray]


@dataclass
class Measured:
    units: int
    cpu_s: float
    wall_s: float
    peak_mb: float | None
    rss_mb: float
    outputs: list[Any]
    warm_output: Any = None


NO_WARM = object()
"""`measure`'s warm-up for work that can't be repeated (the commit): none, and no traced peak."""


class RssPeak:
    """The process's RSS high-water rise while the block runs (sampled every 5 ms from /proc)."""

    def __enter__(self) -> RssPeak:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.rise_mb = (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(call: Callable[[Any], Any], warm: Any, batches: list[Any], units: int, keep: bool = True) -> Measured:
    """`call` once on `warm` under tracemalloc (its peak; lazy imports and caches warm up, not counted), then on
    every batch, timed; `units` = images (or rows) in `batches`; `keep`: keep the outputs (else each is dropped as
    the next call starts, so the RSS rise is the stage's working set)."""
    peak, warm_output = None, None
    if warm is not NO_WARM:
        tracemalloc.start()
        warm_output = call(warm)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    with RssPeak() as rss:
        cpu, wall = time.process_time(), time.perf_counter()
        outputs = [call(b) for b in batches] if keep else [_drop(call(b)) for b in batches]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Measured(units, cpu, wall, peak, rss.rise_mb, outputs, warm_output)


def _drop(_: Any) -> None:
    return None


def row(key: str, stage: str, detail: str, m: Measured, layout: str, unit: str = "image", **extra: Any
        ) -> dict[str, Any]:
    return {"key": key, "stage": stage, "detail": detail, "unit": unit, "units": m.units, "layout": layout,
            "cpu_ms": round(m.cpu_s / m.units * 1000, 4), "wall_ms": round(m.wall_s / m.units * 1000, 4),
            "peak_mb": None if m.peak_mb is None else round(m.peak_mb, 1), "rss_mb": round(m.rss_mb, 1), **extra}


def photo(size: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: smooth colour fields, hard-edged discs and sensor-like noise (PNG keeps ~0.6 of its
    raw bytes, JPEG q90 ~0.06: in the range of real diffusion outputs; flat or random images would flatter or
    punish the encoders)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size, 3), 128.0, np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.5, 6), rng.uniform(0.5, 6), rng.uniform(0, 6.3)
            img[..., c] += rng.uniform(15, 40) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] += rng.uniform(-60, 60, 3)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_prompts(path: Path, n: int, extra: dict[str, list[Any]] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    subjects = ["a red fox", "an old lighthouse", "a bowl of ramen", "a vintage car", "two cats", "a glass teapot"]
    styles = ["oil painting", "35mm photo, shallow depth of field", "watercolor", "isometric 3d render"]
    places = ["on a foggy pier", "in a neon-lit alley", "on a kitchen table", "in an alpine meadow at dawn"]
    prompts = [f"{subjects[i % 6]} {places[i // 6 % 4]}, {styles[i // 24 % 4]}, highly detailed, variation {i}"
               for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": prompts, **(extra or {})}), path, row_group_size=65_536)
    return path


@dataclass
class Job:
    """One job's checked plan, as `imagefleet run` makes it (config → stores → source footers → plan)."""

    cfg: Any
    stores: Any
    source: Any
    plan: Any

    def stage(self, name: str) -> Any:
        return next(s for s in self.plan.stages if s.name == name)

    def actor(self, name: str) -> Any:
        stage = self.stage(name)
        return stage.actor(**stage.kwargs)

    def layout(self, name: str) -> str:
        """The stage's pool as this plan sizes it; `fixed`: no config key sizes it (pipelines/pools.py constants)."""
        p = self.stage(name).pool
        size = f"{p.max_size} actor" if p.min_size == p.max_size == 1 else f"{p.min_size}..{p.max_size} actors"
        return f"{size}, fixed" if name in FIXED_POOLS else f"{size} (config)"

    def generator(self, name: str, pixels: dict[int, np.ndarray]) -> Any:
        """Generator `name`'s actor with a model that takes no time and returns ready uint8 pixels of each row's
        size (what a real model hands the host after its device copy): the stage's own host side is what is left."""
        actor = self.actor(name)
        actor._generate = lambda requests: [pixels[r.width] for r in requests]  # the stand-in's sleep and fill
        return actor


def job(base: Path, prompts: Path, **sections: Any) -> Job:
    from imagefleet.jobs.api import load
    from imagefleet.jobs.preflight import resolve_stores
    from imagefleet.pipelines.text_to_image import inspect_source, plan_run

    raw = {"name": "stage-cost", "seed": 1, "source": {"uri": str(prompts)},
           "generators": {"g": {"backend": "sleep", "defaults": {"width": 8, "height": 8}}},
           "output": {"uri": str(base / "out")}, "cluster": {"address": "local"}}
    cfg = load({**raw, **sections})
    stores = resolve_stores(cfg)
    source_info = inspect_source(cfg, stores)
    return Job(cfg, stores, source_info, plan_run(cfg, stores, source_info))


def timed_ledger(**kwargs: Any) -> Any:
    """A run ledger (`actors.run_ledger.RunLedger(**kwargs)`) as the preprocessors call it on Ray, timing its own
    side: each call's keys read and its answer written as Ray's transfer does (pickle protocol 5), and `settle`.
    The preprocessor's side of the transfer runs in the preprocessor's call and counts there. The first call
    (`measure`'s warm-up) is not counted."""
    import pickle

    from imagefleet.actors.run_ledger import RunLedger

    class TimedLedger(RunLedger):
        cpu_s = wall_s = 0.0
        calls = 0

        def settle(self, keys: list[str], usd: list[float]) -> Any:
            sent = pickle.dumps((keys, usd), protocol=5)  # the preprocessor's side
            cpu, wall = time.process_time(), time.perf_counter()
            answer = pickle.dumps(super().settle(*pickle.loads(sent)), protocol=5)
            if self.calls:
                self.cpu_s += time.process_time() - cpu
                self.wall_s += time.perf_counter() - wall
            self.calls += 1
            return pickle.loads(answer)

    return TimedLedger(**kwargs)


def preprocessing(j: Job, table: Any, rows: int, ledger: Any, rerun: bool) -> tuple[list[dict[str, Any]], Any]:
    """The preprocessor over `table` in its pool's batches, sharing `ledger` (`timed_ledger`) as a pool on Ray does:
    the preprocessor's CPU per image (the ledger's side taken out) and the ledger's; and the preprocessed batches."""
    stage = j.stage("preprocess")
    size = stage.pool.batch_size
    m = measure(stage.actor(**stage.kwargs, ledger=ledger), table.slice(0, size), calls([table], size), rows)
    own = Measured(m.units, m.cpu_s - ledger.cpu_s, m.wall_s - ledger.wall_s, m.peak_mb, m.rss_mb, m.outputs)
    led = Measured(m.units, ledger.cpu_s, ledger.wall_s, None, 0.0, [])
    key, what = ("preprocess:rerun", "rerun: every row found in the index") if rerun else (
        "preprocess", "validate, route, seed, key")
    found = "every key found, its index row returned" if rerun else "budget reserved (an empty output: no lookups)"
    return [row(key, "preprocess", what + " (its side of the ledger call)", own, j.layout("preprocess"),
                actors=stage.pool.max_size),
            row(key.replace("preprocess", "ledger"), "run ledger", f"{found}; the call's transfer", led,
                "1 actor a run")], m.outputs


def calls(batches: Iterable[Any], size: int) -> list[Any]:
    """`batches` cut into calls of `size` rows (Arrow tables or numpy columns), as a stage's pool batches them."""
    out = []
    for b in batches:
        n = b.num_rows if hasattr(b, "num_rows") else len(b["status"])
        for i in range(0, n, size):
            out.append(b.slice(i, size) if hasattr(b, "num_rows") else {k: v[i:i + size] for k, v in b.items()})
    return out


def with_pixels(batch: Batch, size: int, images: list[bytes]) -> Batch:
    """The batch with its images swapped for photo-like pixels of `size` (as a generator of that size returns)."""
    n = len(batch["status"])
    return {**batch, "image": np.array([images[i % len(images)] for i in range(n)], dtype=object),
            "width": np.full(n, size, np.int32), "height": np.full(n, size, np.int32)}


def take(batch: Batch, start: int, n: int) -> Batch:
    return {k: v[start:start + n] for k, v in batch.items()}


def concat(batches: list[Batch]) -> Batch:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def bundle(tables: list[Any], rows: int) -> list[Any]:
    """Writer outputs bundled into manifest parts of at least `rows` rows (as `write_manifest_tables` does)."""
    import pyarrow as pa

    parts, pending = [], []
    for t in tables:
        pending.append(t)
        if sum(p.num_rows for p in pending) >= rows:
            parts.append(pa.concat_tables(pending))
            pending = []
    return parts + ([pa.concat_tables(pending)] if pending else [])


def text_to_image(base: Path, rows: int, arrays: dict[int, np.ndarray]
                  ) -> tuple[list[dict[str, Any]], Job, Any, Batch, Batch]:
    """read → preprocess → generate (host side, 8 px) → write (8 px PNG) → manifest step → commit → resume scan
    over `rows` prompts; returns the cost rows, the job, the table, and the preprocessed and generated rows."""
    import pyarrow as pa

    from imagefleet.actors.run_ledger import start_kwargs
    from imagefleet.actors.stores import open_store
    from imagefleet.pipelines.commit import Lease, commit, stage_part
    from imagefleet.pipelines.in_process import manifest_table
    from imagefleet.pipelines.manifest import _to_manifest_rows, part_rows
    from imagefleet.pipelines.prompt_table import read_piece
    from imagefleet.pipelines.text_to_image import source_pieces

    # a budget (an estimate per image): the ledger reserves every row as a budgeted run's does; planned for a
    # 32-CPU Ray (nothing starts): the preprocessor pool at its cluster size, not this machine's
    j = job(base, write_prompts(base / "prompts" / "p.parquet", rows), limits={"budget_usd": 1e9},
            generators={"g": {"backend": "sleep", "defaults": {"width": 8, "height": 8},
                              "cost": {"usd_per_image": 0.001}}}, cluster={"address": "local", "num_cpus": 32})
    ledger_kwargs = start_kwargs(j.stage("preprocess").kwargs["cfg"]) or {}
    out = []
    # 1 read the prompt table (Ray Data read tasks); five passes for a stable figure
    fs, pieces = source_pieces(j.cfg, j.stores, j.source)
    m = measure(lambda p: read_piece(p, j.plan.source_columns, fs, j.source.types), pieces[0], pieces * 5, rows * 5)
    out.append(row("read", "read", "Parquet prompt table (prompt column)", m, "read tasks"))
    table = pa.concat_tables(m.outputs[: len(pieces)])
    # 2 preprocess, a first run: the table in the pool's batches, the run ledger's side apart
    costs, preprocessed = preprocessing(j, table, rows, timed_ledger(**ledger_kwargs), rerun=False)
    out += costs
    pending = concat(preprocessed)
    # 3 generate: the stage's host side only (a model that takes no time), in its rows per call
    gen = j.stage("generate:g")
    batches = calls(preprocessed, gen.call_rows or gen.pool.batch_size)
    m = measure(j.generator("generate:g", arrays), batches[0], batches, rows)
    out.append(row("generate:8", "generate", "host side, 8 px (no model)", m, j.layout("generate:g")))
    generated = concat(m.outputs)
    # 4 write 8 px PNGs to a local folder: the writer's floor per image (sha256, record, one file each)
    writer = j.actor("write")
    batches = calls([generated], j.stage("write").pool.batch_size)
    m = measure(writer, batches[0], batches[1:], rows - len(batches[0]["status"]))
    writer.close()
    out.append(row("write:png:8", "write", "png 8 px (the per-image floor)", m, j.layout("write")))
    # 5 the manifest step (Ray Data write tasks): typed rows, bundled into staged parts
    store = open_store(j.cfg.output.uri, j.stores.output)
    lease = Lease(store, "stage-cost", 3600).acquire()
    parts = bundle([manifest_table(b) for b in [m.warm_output, *m.outputs]], part_rows(rows))
    m = measure(lambda t: stage_part(store, lease.attempt, _to_manifest_rows(t, lease.run_id)), parts[0],
                parts[1:], rows - parts[0].num_rows)
    out.append(row("manifest", "manifest", f"typed rows, staged parts of {part_rows(rows)} rows", m, "write tasks"))
    # 6 commit (the driver, once at the end): one listing of the parts (rows from their names), the index written
    m = measure(lambda _: commit(store, lease, rows), NO_WARM, [None], rows)
    lease.release()
    out.append(row("commit", "commit", f"{rows:,} rows in {len(parts)} parts", m, "driver, once at the end", "row"))
    # 7 resume scan: a rerun's ledger builds its index (manifest parts + one image listing) as it starts
    m = measure(lambda _: timed_ledger(**ledger_kwargs), None, [None], rows)
    out.append(row("resume", "resume scan", f"{rows:,} manifest rows + image listing", m, "run ledger start, once",
                   "row"))
    out += preprocessing(j, table, rows, m.outputs[0], rerun=True)[0]
    return out, j, table, pending, generated


def generate_sizes(j: Job, pending: Batch, arrays: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """The generate stage's host side at 512 and 1024 px: pixels as bytes, rows and timing columns."""
    gen, out = j.generator("generate:g", arrays), []
    for size, n in ((512, 256), (1024, 64)):
        part = {**take(pending, 0, n + 16), "width": np.full(n + 16, size, np.int32),
                "height": np.full(n + 16, size, np.int32)}
        m = measure(gen, take(part, 0, 16), calls([take(part, 16, n)], 16), n, keep=False)
        out.append(row(f"generate:{size}", "generate", f"host side, {size} px (no model)", m, j.layout("generate:g")))
    return out


def handoffs(generated: Batch, pixels: dict[int, list[bytes]]) -> list[dict[str, Any]]:
    """One hop of a 32-image block between actors as Ray Data makes it: numpy batch → Arrow block → serialized with
    out-of-band buffers → one copy into the object store → Arrow → numpy batch."""
    import pickle

    from ray.data.block import BlockAccessor

    def hop(batch: Batch) -> Batch:
        buffers: list[Any] = []
        meta = pickle.dumps(BlockAccessor.batch_to_block(batch), protocol=5, buffer_callback=buffers.append)
        stored = [bytearray(b.raw()) for b in buffers]
        return BlockAccessor.for_block(pickle.loads(meta, buffers=stored)).to_batch_format("numpy")

    out = []
    for size, reps in ((64, 60), (512, 12), (1024, 4)):
        block = with_pixels(take(generated, 0, 32), size, pixels[size])
        m = measure(hop, block, [block] * reps, 32 * reps, keep=False)
        out.append(row(f"hop:{size}", "hand-off", f"generator → writer, {size} px (Ray Data block, approx.)", m,
                       "between actors"))
    return out


def writers(base: Path, prompts: Path, generated: Batch, pixels: dict[int, list[bytes]]) -> list[dict[str, Any]]:
    """The image writer per format and size, to a local folder (the plan's writer, `output.format` set)."""
    out = []
    for fmt in FORMATS:
        j = job(base / fmt, prompts, output={"uri": str(base / fmt / "out"), "format": fmt})
        size, writer, start = j.stage("write").pool.batch_size, j.actor("write"), 0
        for px in SIZES:
            part = with_pixels(take(generated, start, WRITES[px] + size), px, pixels[px])
            start += WRITES[px] + size  # keys never repeat within one output: every image is written
            batches = calls([part], size)
            m = measure(writer, batches[0], batches[1:], WRITES[px])
            stored = int(np.mean([b for o in m.outputs for b in o["bytes"]]))
            out.append(row(f"write:{fmt}:{px}", "write", f"{fmt} {px} px", m, j.layout("write"), bytes=stored))
        writer.close()
    return out


def s3_writers(base: Path, prompts: Path, generated: Batch, pixels: dict[int, list[bytes]]) -> list[dict[str, Any]]:
    """The image writer to the embedded S3 (SeaweedFS on loopback; started here, stopped after): this process's CPU
    only (the client: signing, HTTP, the conditional put), not the server's."""
    from imagefleet.jobs.seaweed import S3Server

    server = S3Server.prepare(base / "s3").start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    out = []
    try:
        server.ensure_bucket("stage-cost")
        for fmt, px, n in (("png", 8, 512), ("jpeg", 512, 96), ("png", 512, 96)):
            j = job(base / f"s3-{fmt}-{px}", prompts, output={"uri": f"s3://stage-cost/{fmt}-{px}", "format": fmt})
            size, writer = j.stage("write").pool.batch_size, j.actor("write")
            images = pixels[px] if px in pixels else [photo(px, seed).tobytes() for seed in range(8)]
            batches = calls([with_pixels(take(generated, 0, n + size), px, images)], size)
            m = measure(writer, batches[0], batches[1:], n)
            writer.close()
            out.append(row(f"write_s3:{fmt}:{px}", "write", f"{fmt} {px} px to S3 (loopback SeaweedFS)", m,
                           j.layout("write")))
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def inputs(base: Path, pixels: dict[int, list[bytes]], rows: int = 128) -> list[dict[str, Any]]:
    """The input reader (image-to-image rows): each row's 512 px input read, decoded to check it, and hashed."""
    import pyarrow.parquet as pq

    from imagefleet.actors.image_writer import encode_image

    out = []
    for fmt in ("png", "jpeg"):
        folder = base / f"i2i-{fmt}" / "prompts"
        (folder / "img").mkdir(parents=True)
        files = [encode_image(np.frombuffer(p, np.uint8).reshape(512, 512, 3), fmt, 90, 1) for p in pixels[512]]
        names = [f"img/{i}.{fmt}" for i in range(rows)]
        for i, name in enumerate(names):
            (folder / name).write_bytes(files[i % len(files)])
        table_path = write_prompts(folder / "p.parquet", rows, {"image": names})
        j = job(folder.parent, table_path, source={"uri": str(table_path), "task": "image-to-image"})
        table = pq.read_table(table_path, columns=list(j.plan.source_columns))
        size = j.stage("inputs").pool.batch_size
        m = measure(j.actor("inputs"), table.slice(0, size), calls([table], size), rows)
        out.append(row(f"inputs:{fmt}", "input images", f"one 512 px {fmt} per row: read, decode, hash", m,
                       j.layout("inputs"), "row", actors=j.stage("inputs").pool.max_size))
    return out


def cascade(base: Path, prompts: Path, table: Any, pixels: dict[int, list[bytes]], rows: int = 4096
            ) -> list[dict[str, Any]]:
    """The scorers (the world's tiny CLIP through the plan; the `vqa` backend on a tiny random LLaVA) and the
    escalator (an absolute threshold, which streams) on drafts of a cascade's plan."""
    import torch

    from imagefleet.actors.vqa_scorer import VqaScorer
    from imagefleet.configs.scorer import VqaScorerConfig
    from imagefleet.jobs.tiny_models import build_tiny_vlm

    torch.set_num_threads(1)  # one thread, as in a Ray actor (Ray sets OMP_NUM_THREADS=1)
    sleep = {"backend": "sleep", "defaults": {"width": 64, "height": 64}}
    j = job(base / "cascade", prompts, generators={"draft": sleep, "heavy": sleep},
            routing={"mode": "cascade", "cascade": {"draft": "draft", "escalate": "heavy", "threshold": 12.0}},
            scorer={"backend": "clip", "model": str(REPO / "bench" / "world" / "models" / "clip")},
            cluster={"address": "local", "num_cpus": 32})  # pools sized as for the text-to-image rows' cluster
    batches = [table.slice(0, rows)]
    for name in ("preprocess", "generate:draft"):
        stage, actor = j.stage(name), j.actor(name)
        batches = [actor(b) for b in calls(batches, stage.call_rows or stage.pool.batch_size)]
    drafts, out = concat(batches), []
    size = j.stage("score").pool.batch_size
    scorers = (("clip", "CLIP, the world's tiny model", j.actor("score"), ((64, 512), (512, 128))),
               ("vqa", "VQA, tiny random LLaVA", VqaScorer(VqaScorerConfig(model=str(build_tiny_vlm(base / "vlm")))),
                ((512, 128),)))
    for name, what, scorer, sizes in scorers:
        for px, n in sizes:
            scored = calls([with_pixels(take(drafts, 0, n + size), px, pixels[px])], size)
            m = measure(scorer, scored[0], scored[1:], n)
            out.append(row(f"score:{name}:{px}", "score", f"{what}, {px} px images", m, j.layout("score")))
    # the escalator on scored drafts: scores uniform in 0..40, threshold 12 (30% escalated, each re-keyed)
    scored = {**drafts, "clip_score": np.random.default_rng(0).uniform(0, 40, rows)}
    batches = calls([scored], j.stage("escalate").pool.batch_size)
    m = measure(j.actor("escalate"), batches[0], batches, rows)
    out.append(row("escalate", "escalate", "threshold policy, 30% escalated", m, j.layout("escalate"), "draft",
                   actors=j.stage("escalate").pool.max_size))
    return out


def sizing(stages: list[dict[str, Any]], fixed: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """CPU cores per GPU at each workload's physical-limit rate, the fleet the fixed-size stages can feed, and the
    issue's node (16 cores per 8 H100s at half of SD-Turbo's limit)."""
    ms = {r["key"]: r["cpu_ms"] for r in stages}
    rows = {r["key"]: r for r in stages}
    # images go to S3 in production: the S3 client's extra CPU per image (measured at 8 px) on top of the folder's
    s3 = max(0.0, ms["write_s3:png:8"] - ms["write:png:8"]) if "write_s3:png:8" in ms else 0.0

    def parts(px: int, fmt: str) -> dict[str, float]:
        """CPU ms per image of each per-image stage of a text-to-image run (one pixel hand-off)."""
        keys = {"read": "read", "preprocess": "preprocess", "run ledger": "ledger",
                "generate (host side)": f"generate:{px}", "hand-off": f"hop:{px}",
                "encode + store": f"write:{fmt}:{px}", "manifest": "manifest"}
        return {**{name: ms[k] for name, k in keys.items()}, "S3 client": s3}

    def per_image(px: int, fmt: str) -> float:
        return sum(parts(px, fmt).values())

    workloads = []
    for name, px, rate in WORKLOADS:
        caps = {stage: int(n * 1000 / ms[key] / rate) for stage, (key, n) in fixed.items()}
        workloads.append({"workload": name, "px": px, "img_s": rate, "caps_gpus": caps,
                          "cores_per_gpu": {f: round(rate * per_image(px, f) / 1000, 2) for f in FORMATS}})
    node = []
    for vae, limit in (("full VAE", 235.0), ("tiny VAE", 797.0)):
        per_gpu = NODE["share"] * limit
        rate = NODE["gpus"] * per_gpu
        node.append({"vae": vae, "gpu_img_s": per_gpu, "node_img_s": rate,
                     "caps_gpus": {k: int(n * 1000 / ms[key] / per_gpu) for k, (key, n) in fixed.items()
                                   if k in ("run ledger", "preprocessor")},
                     "cores": {f: round(rate * per_image(512, f) / 1000, 1) for f in FORMATS}})
    return {"per_image_ms": {f"{f}:{px}": round(per_image(px, f), 3) for f in FORMATS for px in (512, 1024)},
            "parts_512_ms": {f: {k: round(v, 4) for k, v in parts(512, f).items()} for f in FORMATS},
            "s3_client_ms": round(s3, 3), "workloads": workloads, "node": node,
            "fixed": {k: v[1] for k, v in fixed.items()},
            "resume_s_per_million": round(ms["resume"] * 1000, 1),
            "resume_index_bytes_per_row": round(max(rows["resume"]["rss_mb"], rows["resume"]["peak_mb"] or 0) * 2**20
                                                / rows["resume"]["units"]),
            "commit_s_per_million": round(ms["commit"] * 1000, 1),
            "preprocess_rows_s": round(1000 / ms["preprocess"]), "rerun_rows_s": round(1000 / ms["preprocess:rerun"]),
            "ledger_rows_s": round(1000 / ms["ledger"]), "ledger_rerun_rows_s": round(1000 / ms["ledger:rerun"])}


def remeasured(r: dict[str, Any]) -> str:
    """The note on rows measured again by `--only` ('' when there are none)."""
    again = r.get("remeasured")
    if not again:
        return ""
    notes = [f" Rows {', '.join(a['keys'])} measured again {a['at']} at commit {a['commit']} "
             f"(`python bench/stage_cost.py --only {a.get('only', 'text_to_image')} --rows {r['rows']}`)."
             for a in (again if isinstance(again, list) else [again])]
    return "".join(notes) + " The others as above."


def markdown(r: dict[str, Any]) -> list[str]:
    """The BENCHMARKS.md section (bench/run_all.py folds it in from bench/results/stage_cost.json)."""
    s, fmt = r["sizing"], "PNG / JPEG / WebP"
    lines = ["## Per-stage CPU cost and fleet sizing", "",
             f"{r['at']} · {r['machine']} · commit {r['commit']} · `python bench/stage_cost.py --rows {r['rows']}`",
             "", "Each stage of the product's own plan, one at a time in one process (no Ray), on batches of the "
             "plan's sizes; CPU time of every thread (`time.process_time`, robust to other jobs on this shared "
             "machine; wall time for reference). Images are photo-like synthetic pixels; the writer stores to a "
             "local folder with its defaults (PNG level 1, JPEG/WebP quality 90, WebP method 4, image records on). "
             "Peak: traced Python/numpy allocations of one call; RSS: the process's high-water rise over the stage."
             + remeasured(r), "", "| stage | what | runs as | CPU ms | per | wall ms | peak MB | RSS MB | bytes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["stages"]:
        lines.append(f"| {x['stage']} | {x['detail']} | {x['layout']} | {x['cpu_ms']:.3g} | {x['unit']} | "
                     f"{x['wall_ms']:.3g} | {x['peak_mb'] if x['peak_mb'] is not None else '–'} | {x['rss_mb']} | "
                     f"{x.get('bytes', '')} |")
    store = f"to S3 (the folder's figures plus the S3 client's {s['s3_client_ms']:g} ms an image)" \
        if s["s3_client_ms"] else "to a local folder"
    lines += ["", "CPU cores per GPU at each workload's physical-limit rate (shared/PERFORMANCE.md, one H100), "
              "counting every per-image stage of a text-to-image run — read, preprocess, the run ledger, the "
              "generator's host "
              "side (not the model's own thread driving the GPU), one hand-off to the writer, encode + store " + store
              + ", manifest — and the most GPUs each stage of fixed size feeds at one core per actor:", "",
              f"| workload | img/s per GPU | cores per GPU: {fmt} | "
              + " | ".join(f"GPUs fed: {k} ({n})" for k, n in s["fixed"].items()) + " |",
              "|---|---|---|" + "---|" * len(s["fixed"])]
    for w in s["workloads"]:
        cores = " / ".join(f"{w['cores_per_gpu'][f]:g}" for f in FORMATS)
        lines.append(f"| {w['workload']} | {w['img_s']:g} | {cores} | "
                     + " | ".join(f"{w['caps_gpus'][k]:,}" for k in s["fixed"]) + " |")
    parts = s["parts_512_ms"]
    common = {k: v for k, v in parts["png"].items() if k != "encode + store"}
    lines += ["", "Where a 512 px image's CPU goes (ms): " + ", ".join(f"{k} {v:.3g}" for k, v in common.items())
              + " (together " + f"{sum(common.values()):.3g}); encode + store "
              + " / ".join(f"{parts[f]['encode + store']:.3g}" for f in FORMATS) + f" ({fmt}).", "",
              f"One node of {NODE['cores']} cores per {NODE['gpus']} H100s at {NODE['share']:.0%} of SD-Turbo's limit, "
              f"pipeline cores needed ({fmt}):"]
    for n in s["node"]:
        lines.append(f"- {n['vae']} ({n['gpu_img_s']:g} img/s a GPU, {n['node_img_s']:,.0f} a node): "
                     + " / ".join(f"{n['cores'][f]:g}" for f in FORMATS)
                     + f"; the run ledger feeds {n['caps_gpus']['run ledger']:,} such GPUs, the preprocessor pool "
                     f"({s['fixed']['preprocessor']} actors) {n['caps_gpus']['preprocessor']:,}.")
    ms = {x["key"]: x["cpu_ms"] for x in r["stages"]}
    readers, turbo = s["fixed"]["input reader"], WORKLOADS[0][2]
    index_gib = s["resume_index_bytes_per_row"] * 1e8 / 2**30
    lines += [f"- Preprocessor: {s['preprocess_rows_s']:,} rows/s an actor on a first run, {s['rerun_rows_s']:,} on a "
              f"rerun (every row found in the resume index); a pool of up to {s['fixed']['preprocessor']} actors.",
              "- Run ledger (one actor a run: the budget count and the resume index): "
              f"{s['ledger_rows_s']:,} rows/s on a first run (budget reserved; nothing to look up), "
              f"{s['ledger_rerun_rows_s']:,} on a rerun (every key "
              "found, where its row is returned: the preprocessor reads the rows from their parts), with its side of "
              "each call's transfer: what caps one run now.",
              f"- Input reader ({readers} actors): an image-to-image run with 512 px PNG inputs "
              f"({ms['inputs:png']:.3g} ms a row) feeds {readers * 1000 / ms['inputs:png'] / turbo:.2g} SD-Turbo GPUs, "
              f"with JPEG inputs {readers * 1000 / ms['inputs:jpeg'] / turbo:.2g}.",
              f"- Once per run, in parallel (Ray tasks of 64 parts over the cluster; threads here): the resume scan "
              f"{s['resume_s_per_million']:g} CPU-s per million manifest rows before the first image "
              f"({s['resume_s_per_million'] * 100 / 60 / 16:.1f} min at 100M rows on 16 cores), its keys-only index "
              f"~{s['resume_index_bytes_per_row']} bytes a row at its peak in the run ledger ({index_gib:.1f} GiB "
              f"at 100M rows); the commit {s['commit_s_per_million']:g} CPU-s per million rows after the last "
              "(local folder).", ""]
    return lines


def run(rows: int = 50_000, s3: bool = True) -> dict[str, Any]:
    """Every stage's cost and the sizing; the working folder is removed afterwards."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    base = WORK / "stage-cost"
    shutil.rmtree(base, ignore_errors=True)
    started = time.process_time()
    pixels = {px: [photo(px, seed).tobytes() for seed in range(8)] for px in SIZES}
    arrays = {px: photo(px, 0) for px in (8, *SIZES)}
    stages, j, table, pending, generated = text_to_image(base, rows, arrays)
    stages += generate_sizes(j, pending, arrays)
    stages += handoffs(generated, pixels)
    stages += writers(base, base / "prompts" / "p.parquet", generated, pixels)
    stages += s3_writers(base, base / "prompts" / "p.parquet", generated, pixels) if s3 else []
    stages += inputs(base, pixels)
    stages += cascade(base, base / "prompts" / "p.parquet", table, pixels)
    shutil.rmtree(base, ignore_errors=True)
    return {"at": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "stages": stages,
            "sizing": sizing(stages, fixed_of(stages)), "cpu_s": round(time.process_time() - started, 1),
            "uncommitted": _uncommitted()}


def fixed_of(stages: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """The stages of fixed size (pipelines/pools.py constants): the row whose cost caps each, and its actors."""
    actors = {r["key"]: r["actors"] for r in stages if "actors" in r}
    return {"run ledger": ("ledger", 1), "preprocessor": ("preprocess", actors["preprocess"]),
            "input reader": ("inputs:jpeg", actors["inputs:jpeg"]), "escalator": ("escalate", actors["escalate"])}


def remeasure(only: str, rows: int) -> dict[str, Any]:
    """`--only text_to_image`: the text-to-image rows (read, preprocess, run ledger, generate at 8 px, write at 8 px,
    manifest, commit, resume scan); `--only cascade`: the scorers' and the escalator's rows. Measured again and put
    in place of theirs in bench/results/stage_cost.json, the rest kept as measured (`remeasured` says which rows,
    when and at which commit)."""
    base = WORK / f"stage-cost-{only}"
    shutil.rmtree(base, ignore_errors=True)
    started = time.process_time()
    if only == "text_to_image":
        fresh = text_to_image(base, rows, {8: photo(8, 0)})[0]
    else:
        import pyarrow.parquet as pq

        prompts = write_prompts(base / "prompts" / "p.parquet", rows)
        fresh = cascade(base, prompts, pq.read_table(prompts),
                        {px: [photo(px, seed).tobytes() for seed in range(8)] for px in SIZES})
    shutil.rmtree(base, ignore_errors=True)
    result = json.loads((REPO / "bench" / "results" / "stage_cost.json").read_text())
    new = {r["key"]: r for r in fresh}
    kept = [new.pop(r["key"], r) for r in result["stages"]]
    stages = kept
    if "ledger" in new:  # an earlier result without the run ledger's rows: they go after the preprocessor's
        at = next(i for i, r in enumerate(kept) if r["key"] == "preprocess") + 1
        stages = [*kept[:at], new.pop("ledger"), *kept[at:]]
    if "ledger:rerun" in new:
        stages[[r["key"] for r in stages].index("preprocess:rerun") + 1:0] = [new.pop("ledger:rerun")]
    assert not new and result["rows"] == rows, "the rows measured must be those of the earlier run"
    earlier = result.get("remeasured") or []
    earlier = [a for a in (earlier if isinstance(earlier, list) else [earlier])
               if a.get("only", "text_to_image") != only]  # the last re-measurement of each kind
    result.update(stages=stages, sizing=sizing(stages, fixed_of(stages)), remeasured=[*earlier, {
        "only": only, "keys": [r["key"] for r in fresh], "at": time.strftime("%Y-%m-%d %H:%M"), "commit": git_rev(),
        "cpu_s": round(time.process_time() - started, 1), "uncommitted": _uncommitted()}])
    return result


def _uncommitted() -> list[str]:
    """Product files that differed from the commit while this ran (others may be editing the tree)."""
    import subprocess

    status = subprocess.run(["git", "status", "--porcelain", "--", "actors", "pipelines", "configs"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout
    return [line[3:] for line in status.splitlines()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000, help="prompt rows for read/preprocess/manifest/commit/resume")
    p.add_argument("--no-s3", action="store_true", help="skip the writer rows on the embedded S3 (SeaweedFS)")
    p.add_argument("--only", choices=["text_to_image", "cascade"], default=None,
                   help="measure only the text-to-image rows (read, preprocess, run ledger, 8 px generate and write, "
                        "manifest, commit, resume) or the cascade's (scorers, escalator) again, keeping the other "
                        "rows of bench/results/stage_cost.json")
    args = p.parse_args()
    if args.only:
        result = remeasure(args.only, args.rows)
    else:
        result = run(args.rows, not args.no_s3)
        result["machine"], result["commit"] = machine(), git_rev()
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "stage_cost.json").write_text(json.dumps(result, indent=2))
    print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
