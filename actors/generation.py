"""Backend-independent generator logic: pass-through, shape buckets, chunking, row-error isolation, timing."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from imagefleet.actors.backend_io import Outcome, Request, decode_problem, encoded_info, parse_adapter_list
from imagefleet.actors.cells import control_problem
from imagefleet.actors.inputs import InputFiles, InputProblem, load_inputs, sha256_of
from imagefleet.actors.keys import derive_seed, shape_bucket
from imagefleet.configs.request import ROW_COLUMNS

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

class BatchLimits:
    """The most images one model call of each shape bucket fits on this actor's device.

    Learned from out-of-memory errors (the first one halves the bucket's size until a call fits) or probed at
    start (`probe`), and kept for the actor's life: later chunks of that bucket are made at the size that fits
    instead of running out of memory and halving again. A bucket never seen runs at the pool's batch size.
    """

    def __init__(self) -> None:
        self.fits: dict[tuple[Any, ...], int] = {}

    def size(self, bucket: tuple[Any, ...], batch_size: int) -> int:
        """Images per call for `bucket`."""
        return min(batch_size, self.fits.get(bucket, batch_size))

    def ran_out(self, bucket: tuple[Any, ...], images: int) -> int:
        """A call of `images` ran out of memory: the bucket's size is at most half that from now on."""
        self.fits[bucket] = max(1, min(self.fits.get(bucket, images), images // 2))
        return self.fits[bucket]

    def probe(self, bucket: tuple[Any, ...], batch_size: int, run: Callable[[int], Any],
              is_oom: Callable[[BaseException], bool]) -> int:
        """Find the bucket's size once, before real work: `run(n)` makes n images; halve while it runs out of
        memory. One image that doesn't fit raises (the model can't serve this size on this device)."""
        n = self.size(bucket, batch_size)
        while True:
            try:
                run(n)
                return n
            except Exception as exc:
                if not is_oom(exc) or n == 1:
                    raise
                logger.warning("out of memory on %d images of %s at warm-up; trying fewer", n, bucket)
                n = self.ran_out(bucket, n)


# generate_fn(requests) -> one result per request, in order: pixels, or an Outcome.
GenerateFn = Callable[[Sequence[Request]], Sequence[np.ndarray | Outcome]]


def run_generation(
    batch: Batch,
    *,
    batch_size: int,
    generate: GenerateFn,
    is_fatal: Callable[[BaseException], bool],
    usd_per_second: float,
    usd_per_image: float,
    is_oom: Callable[[BaseException], bool] = lambda exc: False,
    name: str = "",
    inputs: InputFiles | None = None,
    limits: BatchLimits | None = None,
) -> Batch:
    """Generate every `pending` row of `batch` routed to generator `name` ('' = every pending row: an actor used
    on its own); everything else passes through unchanged (in a run, each row flows through every pool).

    Rows are grouped by shape bucket (width, height, steps, guidance) so one model call shares them, then
    chunked to `batch_size`. A chunk that raises a non-fatal error is retried row by row so only the
    poison row becomes an error row. A chunk that runs out of memory is retried at half its size, and the
    bucket's chunks stay at the size that fits (`limits`: the actor's, kept across calls; None = this call's); a
    single image that still does, and other fatal errors (CUDA, model load), propagate so Ray restarts the actor.

    A hosted backend's Outcome may carry the provider's file instead of pixels: it goes into `image` as sent, its
    content type into `image_mime` and its size (from the header) into `width`/`height`.

    Image-conditioned rows (a `task` other than text-to-image) get their input files read through `inputs` and
    checked against the hashes in their key; a file that can't be read or changed since is that row's error.
    """
    # 1 prepare outputs: rows that pass through keep what an earlier stage gave them (cascade drafts)
    cols = _output_columns(batch)
    # 2 buckets of pending rows that can share a model call: same shape, task, strength and adapters
    buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    routed = batch["generator"] if name else None
    for i in range(len(cols["status"])):
        if cols["status"][i] == "pending" and (routed is None or routed[i] == name):
            shape = shape_bucket(batch["width"][i], batch["height"][i], batch["num_steps"][i],
                                 batch["guidance_scale"][i])
            buckets[(*shape, *_conditioning_bucket(batch, i))].append(i)
    # 3 run each bucket in chunks of `batch_size` images, isolating row errors; a best-of-N row is N images
    #   (its candidates, with derived seeds), recorded together
    call = _Call(generate, is_fatal, is_oom, usd_per_second, usd_per_image, limits or BatchLimits(), inputs)
    for bucket, rows in buckets.items():
        call.bucket(batch, cols, bucket, rows, batch_size)
    # 4 same columns in, plus the generator's outputs
    out = dict(batch)
    out.update(cols)
    return out


def _output_columns(batch: Batch) -> Batch:
    """The generator's output columns: what an earlier stage gave a row (cascade drafts), else empty; best-of-N
    batches also get the candidates' columns."""
    n = len(batch["status"])

    def column(name: str, default: object, dtype: Any) -> np.ndarray:
        return np.array(batch[name] if name in batch else [default] * n, dtype=dtype)

    cols = {
        "image": column("image", b"", object),
        "image_mime": column("image_mime", "", object),
        "queue_ms": column("queue_ms", 0.0, np.float64),
        "generate_ms": column("generate_ms", 0.0, np.float64),
        "cost_usd": column("cost_usd", 0.0, np.float64),  # accumulates: an escalated row pays for draft + heavy
        "requests": column("requests", 0, np.int32),  # accumulates like cost
        "maybe_billed_usd": column("maybe_billed_usd", 0.0, np.float64),
        "generated_at": column("generated_at", 0.0, np.float64),
        "width": np.array(batch["width"], dtype=np.int32),
        "height": np.array(batch["height"], dtype=np.int32),
        "status": np.array(batch["status"], dtype=object),
        "error": np.array(batch["error"], dtype=object),
    }
    if _best_of(batch):
        cols["candidate_images"] = empty_lists(n)
        for name in ("candidate_seeds", "candidate_mimes", "candidate_sizes"):
            cols[name] = np.array([""] * n, dtype=object)
    return cols


def _best_of(batch: Batch) -> bool:
    return "num_candidates" in batch and any(int(c) > 1 for c in batch["num_candidates"])


@dataclass(frozen=True)
class _Call:
    """How one `run_generation` call makes images: the backend, its error classes, prices and batch limits."""

    generate: GenerateFn
    is_fatal: Callable[[BaseException], bool]
    is_oom: Callable[[BaseException], bool]
    usd_per_second: float
    usd_per_image: float
    limits: BatchLimits
    inputs: InputFiles | None

    def bucket(self, batch: Batch, cols: Batch, bucket: tuple[Any, ...], rows: list[int], batch_size: int) -> None:
        """Make the images of one bucket's rows, chunk by chunk, recording each row's result in `cols`."""
        shape = bucket[:4]  # memory goes with the shape, steps and guidance
        many = _best_of(batch)
        start = 0
        while start < len(rows):
            size = self.limits.size(shape, batch_size)
            chunk_rows, start = rows[start : start + size], start + size
            started = time.time()
            requests: dict[Any, Request] = {}
            for i in chunk_rows:
                cols["queue_ms"][i] = max(0.0, (started - float(batch["enqueued_at"][i])) * 1000)
                try:
                    req = _request(batch, i, self.inputs)
                except InputProblem as exc:  # the row's inputs: its error, its siblings still run
                    _record(cols, i, str(exc), 0.0, timed_usd=0.0)
                    continue
                count = int(batch["num_candidates"][i]) if many else 1
                # candidates are separate requests (hosted backends send rows sharing a key once)
                requests.update({(i, k): replace(req, seed=candidate_seed(req, k), key=req.key + (f"~{k}" if k else ""))
                                 for k in range(count)})
            if requests:
                self._chunk(cols, requests, shape, batch_size, many)

    def _chunk(self, cols: Batch, requests: dict[Any, Request], shape: tuple[Any, ...], batch_size: int,
               many: bool) -> None:
        results: dict[int, list[tuple[Any, Outcome | str, float]]] = defaultdict(list)
        ids = list(requests)
        oom = (self.limits, shape)
        while ids:
            size = self.limits.size(shape, batch_size)  # lower once a chunk has run out of memory
            part, ids = ids[:size], ids[size:]
            for rk, result, ms in _run_chunk(requests, part, self.generate, self.is_fatal, self.is_oom, oom):
                results[rk[0]].append((rk, result, ms))
        for i, outcomes in results.items():
            if len(outcomes) == 1 and not many:
                _, result, ms = outcomes[0]
                _record(cols, i, result, ms, timed_usd=ms / 1000 * self.usd_per_second + self.usd_per_image)
            else:
                _record_candidates(cols, i, outcomes, requests, self.usd_per_second, self.usd_per_image)


def empty_lists(n: int) -> np.ndarray:
    """A column of n empty lists (numpy would read a list of lists as a second axis)."""
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = []
    return out


def candidate_seed(req: Request, k: int) -> int:
    """Candidate k's seed of a best-of-N request: the request's own seed first, then seeds derived from it and the
    image key (never the seed of a neighbouring image index, as seed + k would be)."""
    return req.seed if k == 0 else derive_seed(req.seed, req.key, k)


def _record_candidates(cols: Batch, i: int, outcomes: list[tuple[Any, Outcome | str, float]],
                       requests: dict[Any, Request], usd_per_second: float, usd_per_image: float) -> None:
    """A best-of-N row: every made candidate's image for the scorer to choose from (`candidate_images`, with their
    seeds, content types and sizes in `candidate_seeds`/`candidate_mimes`/`candidate_sizes`, comma-separated);
    the row is `generated` when at least one candidate is, and pays for all of them. When none is, it takes the
    mildest outcome its candidates had: skipped (budget: a rerun continues), then refused, then error."""
    images, seeds, mimes, sizes, total_ms = [], [], [], [], 0.0
    failures: dict[str, str] = {}
    for key, result, ms in sorted(outcomes, key=lambda o: o[0][1]):
        cols["status"][i] = "pending"
        _record(cols, i, result, ms, timed_usd=ms / 1000 * usd_per_second + usd_per_image)
        total_ms += ms
        if cols["status"][i] == "generated":
            images.append(cols["image"][i])
            seeds.append(str(requests[key].seed))
            mimes.append(str(cols["image_mime"][i]))
            sizes.append(f"{int(cols['width'][i])}x{int(cols['height'][i])}")
        else:
            failures.setdefault(str(cols["status"][i]), str(cols["error"][i]))
    cols["generate_ms"][i] = total_ms
    cols["candidate_images"][i] = images
    cols["candidate_seeds"][i], cols["candidate_mimes"][i], cols["candidate_sizes"][i] = (
        ",".join(seeds), ",".join(mimes), ",".join(sizes))
    if images:  # the first made candidate until the scorer picks (its own type and size)
        width, height = sizes[0].split("x")
        cols["status"][i], cols["error"][i], cols["image"][i] = "generated", "", images[0]
        cols["image_mime"][i], cols["width"][i], cols["height"][i] = mimes[0], int(width), int(height)
        return
    status = next(s for s in ("skipped", "refused", "error") if s in failures)
    cols["status"][i], cols["error"][i] = status, f"every candidate {status}: {failures[status]}"


def _record(cols: Batch, i: int, result: Outcome | str, ms: float, timed_usd: float) -> None:
    """Row i's outcome into the output columns (requests, unknown attempts and cost add to earlier generators')."""
    cols["generate_ms"][i] = ms
    cols["generated_at"][i] = time.time()
    if isinstance(result, str):
        cols["status"][i], cols["error"][i] = "error", result
        return
    cols["requests"][i] += result.requests
    cols["maybe_billed_usd"][i] += result.maybe_billed_usd
    if result.error:
        cols["status"][i], cols["error"][i] = "error", result.error
        # a delivered image that can't be used was still paid for; other errors cost what they say
        paid = timed_usd if result.encoded else 0.0
        cols["cost_usd"][i] += result.cost_usd if result.cost_usd is not None else paid
        return
    if result.refusal or result.skipped:
        kind = "refused" if result.refusal else "skipped"
        cols["status"][i], cols["error"][i] = kind, result.refusal or result.skipped
        cols["cost_usd"][i] += result.cost_usd or 0.0
        return
    if result.encoded:  # the provider's file, kept as sent (_check_image read its header)
        cols["requests"][i] += 0 if result.requests else 1  # it came from a request, whatever the backend counted
        mime, width, height = encoded_info(result.encoded, result.mime) or ("", 0, 0)
        cols["image"][i], cols["image_mime"][i] = result.encoded, mime
        cols["width"][i], cols["height"][i] = width, height
    else:
        assert result.image is not None  # _check_image guarantees it
        cols["image"][i], cols["image_mime"][i] = np.ascontiguousarray(result.image, dtype=np.uint8).tobytes(), ""
        cols["height"][i], cols["width"][i] = result.image.shape[0], result.image.shape[1]
    cols["status"][i] = "generated"
    cols["cost_usd"][i] += result.cost_usd if result.cost_usd is not None else timed_usd


def _run_chunk(
    by_row: dict[Any, Request],
    chunk: list[Any],
    generate: GenerateFn,
    is_fatal: Callable[[BaseException], bool],
    is_oom: Callable[[BaseException], bool],
    oom: tuple[BatchLimits, tuple[Any, ...]],
) -> list[tuple[Any, Outcome | str, float]]:
    requests = [by_row[i] for i in chunk]
    started = time.perf_counter()
    try:
        outputs = generate(requests)
        ms = (time.perf_counter() - started) * 1000 / len(chunk)
        return [(i, _check_image(img, req), ms) for i, img, req in zip(chunk, outputs, requests, strict=True)]
    except Exception as exc:  # noqa: BLE001 - classified right below
        if is_oom(exc) and len(chunk) > 1:
            limits, shape = oom
            logger.warning("out of memory on %d images; retrying %d at a time", len(chunk),
                           limits.ran_out(shape, len(chunk)))
            done: list[tuple[Any, Outcome | str, float]] = []
            rest = list(chunk)
            while rest:  # at the size that fits so far (a piece that runs out too lowers it for the rest)
                size = limits.size(shape, len(chunk))
                piece, rest = rest[:size], rest[size:]
                done += _run_chunk(by_row, piece, generate, is_fatal, is_oom, oom)
            return done
        if is_fatal(exc):
            raise
        if len(chunk) == 1:
            logger.debug("row failed: %s", _describe(exc))  # row errors are data; the manifest has them
            return [(chunk[0], _describe(exc), (time.perf_counter() - started) * 1000)]
    # a multi-row chunk failed: retry row by row so only the poison row is lost
    results = []
    for i in chunk:
        results.extend(_run_chunk(by_row, [i], generate, is_fatal, is_oom, oom))
    return results


def _check_image(result: np.ndarray | Outcome, req: Request) -> Outcome | str:
    """Bare arrays must have the requested shape; an Outcome's image only has to be RGB (size may differ), and
    its encoded bytes must decode fully (an error Outcome that keeps the cost otherwise)."""
    if isinstance(result, Outcome):
        if result.refusal or result.error or result.skipped:
            return result
        if result.encoded:
            if encoded_info(result.encoded, result.mime) is None:
                return replace(result, error="provider returned undecodable image bytes")
            problem = decode_problem(result.encoded)  # every pixel, once: a file cut short still has its header
            if problem:
                return replace(result, error=f"provider returned an image that does not decode ({problem})")
            return result
        if result.image is None or result.image.ndim != 3 or result.image.shape[2] != 3:
            return "generator returned no RGB image"
        return result
    if result.shape != (req.height, req.width, 3):
        return f"generator returned shape {result.shape}, expected {(req.height, req.width, 3)}"
    return Outcome(image=result)


def _conditioning_bucket(batch: Batch, i: int) -> tuple[Any, ...]:
    """What beyond the shape a model call must share: task, strength, adapters (absent columns: text-to-image)."""
    def value(name: str, default: Any) -> Any:
        return batch[name][i] if name in batch else default

    strength = float(value("strength", math.nan))
    return (str(value("task", "text-to-image")), round(strength, 6) if math.isfinite(strength) else -1.0,
            str(value("adapters", "")))


def _request(batch: Batch, i: int, inputs: InputFiles | None = None) -> Request:
    """Row i as a request; an image-conditioned row's input files are read (and checked) here, and its texts."""
    for name in ("prompt", "negative_prompt"):  # every backend and serving come through here
        problem = control_problem(str(batch[name][i]), name)
        if problem:
            raise InputProblem(problem)
    task = str(batch["task"][i]) if "task" in batch else "text-to-image"
    images: tuple[bytes, ...] = ()
    mask = b""
    if task != "text-to-image" and "input_data" in batch:  # files sent with the request (serving)
        images, mask = batch["input_data"][i]
        if ",".join(sha256_of(d) for d in images) != str(batch["input_sha256"][i]):
            raise InputProblem("input images differ from the ones the image key was computed from")
    elif task != "text-to-image":
        if inputs is None:
            raise InputProblem(f"task {task}: this generator was started without access to input images")
        images, mask = load_inputs(inputs, str(batch["input_images"][i]), str(batch["input_sha256"][i]),
                                   str(batch["mask_uri"][i]), str(batch["mask_sha256"][i]))
    strength = float(batch["strength"][i]) if "strength" in batch else math.nan
    return Request(
        prompt=str(batch["prompt"][i]),
        negative_prompt=str(batch["negative_prompt"][i]),
        seed=int(batch["seed"][i]),
        width=int(batch["width"][i]),
        height=int(batch["height"][i]),
        num_steps=int(batch["num_steps"][i]),
        guidance_scale=float(batch["guidance_scale"][i]),
        key=str(batch["image_key"][i]) if "image_key" in batch else "",
        task=task,
        images=images,
        mask=mask,
        strength=strength if math.isfinite(strength) else 0.0,
        adapters=parse_adapter_list(str(batch["adapters"][i])) if "adapters" in batch else (),
        settings={name: batch[name][i] for name in OTHER_SETTINGS if name in batch},
    )


OTHER_SETTINGS = tuple(name for name in ROW_COLUMNS if name not in {f.name for f in fields(Request)})
"""Settings of the request table that reach a backend through `Request.settings`."""


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."
