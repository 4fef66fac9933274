"""run_generation: pass-through, shape buckets, chunking, poison-row isolation, fatal errors."""

import time
from collections.abc import Sequence

import numpy as np
import pytest

from imagefleet.actors.backend_io import Request
from imagefleet.actors.generation import run_generation


def batch(shapes: list[tuple[int, int]], status: list[str] | None = None, prompts: list[str] | None = None) -> dict:
    n = len(shapes)
    return {
        "prompt": np.array(prompts or [f"p{i}" for i in range(n)], dtype=object),
        "negative_prompt": np.array([""] * n, dtype=object),
        "seed": np.arange(n),
        "width": np.array([w for w, _ in shapes]),
        "height": np.array([h for _, h in shapes]),
        "num_steps": np.array([2] * n),
        "guidance_scale": np.array([0.0] * n),
        "status": np.array(status or ["pending"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "enqueued_at": np.array([time.time()] * n),
    }


class Recorder:
    def __init__(self, poison: str = "") -> None:
        self.calls: list[list[tuple[int, int]]] = []
        self.poison = poison

    def __call__(self, reqs: Sequence[Request]) -> list[np.ndarray]:
        self.calls.append([(r.width, r.height) for r in reqs])
        if self.poison and any(self.poison in r.prompt for r in reqs):
            raise ValueError("poison prompt")
        return [np.zeros((r.height, r.width, 3), np.uint8) for r in reqs]


def gen(b: dict, rec: Recorder, batch_size: int = 4, fatal: bool = False) -> dict:
    return run_generation(b, batch_size=batch_size, generate=rec, is_fatal=lambda e: fatal,
                          usd_per_second=1.0, usd_per_image=0.5)


def test_mixed_sizes_are_bucketed() -> None:
    rec = Recorder()
    out = gen(batch([(64, 64), (96, 64), (64, 64), (96, 64), (64, 64)]), rec)
    assert all(len(set(call)) == 1 for call in rec.calls)
    assert sorted(len(c) for c in rec.calls) == [2, 3]
    assert list(out["status"]) == ["generated"] * 5
    assert [len(x) for x in out["image"]] == [64 * 64 * 3, 96 * 64 * 3] * 2 + [64 * 64 * 3]
    assert (out["cost_usd"] >= 0.5).all()


def test_chunks_respect_batch_size() -> None:
    rec = Recorder()
    gen(batch([(64, 64)] * 10), rec, batch_size=4)
    assert [len(c) for c in rec.calls] == [4, 4, 2]


def test_non_pending_rows_pass_through() -> None:
    rec = Recorder()
    out = gen(batch([(64, 64)] * 3, status=["error", "pending", "cached"]), rec)
    assert list(out["status"]) == ["error", "generated", "cached"]
    assert out["image"][0] == b"" and out["image"][2] == b""
    assert rec.calls == [[(64, 64)]]


def test_only_rows_routed_to_this_generator_are_generated() -> None:
    """Every row flows through every pool of a run: a pool makes only its own rows' images."""
    rec = Recorder()
    b = batch([(64, 64), (32, 32), (64, 64)])
    b["generator"] = np.array(["mine", "other", "mine"], dtype=object)
    out = run_generation(b, batch_size=4, generate=rec, is_fatal=lambda e: False, usd_per_second=0.0,
                         usd_per_image=0.0, name="mine")
    assert list(out["status"]) == ["generated", "pending", "generated"]
    assert rec.calls == [[(64, 64), (64, 64)]] and out["image"][1] == b""


def test_poison_row_is_isolated() -> None:
    rec = Recorder(poison="bad")
    out = gen(batch([(64, 64)] * 4, prompts=["a", "bad", "c", "d"]), rec)
    assert list(out["status"]) == ["generated", "error", "generated", "generated"]
    assert "poison prompt" in out["error"][1]


def test_fatal_errors_propagate() -> None:
    with pytest.raises(ValueError):
        gen(batch([(64, 64)]), Recorder(poison="p"), fatal=True)


def test_wrong_output_shape_is_a_row_error() -> None:
    def bad(reqs: Sequence[Request]) -> list[np.ndarray]:
        return [np.zeros((8, 8, 3), np.uint8) for _ in reqs]

    out = run_generation(batch([(64, 64)]), batch_size=4, generate=bad, is_fatal=lambda e: False,
                         usd_per_second=0, usd_per_image=0)
    assert out["status"][0] == "error" and "shape" in out["error"][0]


class FakeOOM(Exception):
    pass


def test_out_of_memory_retries_at_half_size() -> None:
    calls: list[int] = []

    def gen_fn(reqs: Sequence[Request]) -> list[np.ndarray]:
        calls.append(len(reqs))
        if len(reqs) > 2:
            raise FakeOOM("CUDA out of memory")
        return [np.zeros((r.height, r.width, 3), np.uint8) for r in reqs]

    out = run_generation(batch([(64, 64)] * 8), batch_size=8, generate=gen_fn, is_fatal=lambda e: True,
                         usd_per_second=0, usd_per_image=0, is_oom=lambda e: isinstance(e, FakeOOM))
    assert list(out["status"]) == ["generated"] * 8
    assert calls == [8, 4, 2, 2, 2, 2]  # once 2 fits, the rest of the chunk goes 2 at a time


def test_the_size_that_fits_is_kept_per_shape_for_the_actors_life() -> None:
    """An actor's BatchLimits remembers each shape's size: later calls make that shape at the size that fits from
    the start (no out-of-memory error and halving again); other shapes keep the pool's batch size."""
    from imagefleet.actors.generation import BatchLimits

    calls: list[tuple[int, int]] = []

    def gen_fn(reqs: Sequence[Request]) -> list[np.ndarray]:
        calls.append((reqs[0].width, len(reqs)))
        if reqs[0].width == 128 and len(reqs) > 3:
            raise FakeOOM("CUDA out of memory")
        return [np.zeros((r.height, r.width, 3), np.uint8) for r in reqs]

    limits = BatchLimits()
    run = lambda b: run_generation(b, batch_size=8, generate=gen_fn, is_fatal=lambda e: True,  # noqa: E731
                                   usd_per_second=0, usd_per_image=0, is_oom=lambda e: isinstance(e, FakeOOM),
                                   limits=limits)
    run(batch([(128, 64)] * 8))
    assert calls == [(128, 8), (128, 4), (128, 2), (128, 2), (128, 2), (128, 2)]
    calls.clear()
    out = run(batch([(128, 64)] * 6 + [(64, 64)] * 8))
    assert list(out["status"]) == ["generated"] * 14
    assert sorted(calls) == [(64, 8), (128, 2), (128, 2), (128, 2)]  # learned: no out-of-memory call at all
    # probing at start: halve until one call fits; one image that doesn't fit is the actor's error
    probed: list[int] = []

    def probe_run(n: int) -> None:
        probed.append(n)
        if n > 3:
            raise FakeOOM("CUDA out of memory")

    fresh = BatchLimits()
    assert fresh.probe((256, 256, 1, 0.0), 8, probe_run, lambda e: isinstance(e, FakeOOM)) == 2
    assert probed == [8, 4, 2] and fresh.size((256, 256, 1, 0.0), 8) == 2
    with pytest.raises(FakeOOM):
        BatchLimits().probe((9, 9, 1, 0.0), 4, lambda n: (_ for _ in ()).throw(FakeOOM("x")),
                            lambda e: isinstance(e, FakeOOM))


def test_out_of_memory_on_one_image_propagates() -> None:
    def gen_fn(reqs: Sequence[Request]) -> list[np.ndarray]:
        raise FakeOOM("CUDA out of memory")

    with pytest.raises(FakeOOM):
        run_generation(batch([(64, 64)] * 2), batch_size=2, generate=gen_fn, is_fatal=lambda e: True,
                       usd_per_second=0, usd_per_image=0, is_oom=lambda e: isinstance(e, FakeOOM))


def test_outcome_requests_and_unknown_attempts_are_recorded_for_every_outcome() -> None:
    from imagefleet.actors.backend_io import Outcome

    def hosted(reqs: Sequence[Request]) -> list[Outcome]:
        return [Outcome(image=np.zeros((64, 64, 3), np.uint8), cost_usd=0.1, requests=2),
                Outcome(refusal="blocked", requests=1),
                Outcome(error="timed out", requests=4, maybe_billed_usd=0.3),
                Outcome(skipped="budget reached")][: len(reqs)]

    out = run_generation(batch([(64, 64)] * 4), batch_size=4, generate=hosted, is_fatal=lambda e: False,
                         usd_per_second=0, usd_per_image=0)
    assert list(out["status"]) == ["generated", "refused", "error", "skipped"]
    assert list(out["error"]) == ["", "blocked", "timed out", "budget reached"] and set(out["image_mime"]) == {""}
    assert list(out["requests"]) == [2, 1, 4, 0] and list(out["maybe_billed_usd"]) == [0.0, 0.0, 0.3, 0.0]
    assert list(out["cost_usd"]) == [0.1, 0.0, 0.0, 0.0]
