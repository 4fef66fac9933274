"""The parallel, keys-only resume scan (actors/resume_scan.py) decides every key as the resume rules say, on random
outputs: checked against a plain, row-by-row reading of those rules (the one the index used before it was
columnar), on the thread path and on Ray tasks; the index holds ~50 bytes a key; rows are read per part, cached."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from imagefleet.actors import resume_scan
from imagefleet.actors.layout import image_rel, manifest_part
from imagefleet.actors.resume_index import READ, load_index
from imagefleet.actors.resume_scan import PartRows, Read, fixed_width, positions, read_candidates
from imagefleet.actors.storage import ObjectStore
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from tests.unit.test_resume_index import row, setup

MIMES = {"image/png": "png", "image/webp": "webp", None: None}


def expected(parts: list[list[dict[str, Any]]], present: set[str], fmt: str, keep: bool
             ) -> dict[str, tuple[str, str, str]]:
    """What the resume rules settle, key by key, read row by row: (status, sha256 or error, final key) of the row
    `get` returns — a key's first ok row whose image is stored in a format the run takes, else its last error row; a
    draft with no ok row of its own leads to the final image of the (last) escalated row that names it."""
    own: dict[str, dict[str, Any]] = {}
    drafts: dict[str, dict[str, Any]] = {}
    for r in (r for part in parts for r in part):
        key, status = r.get("image_key"), r.get("status")
        if not key or status not in ("ok", "error") or (key in own and own[key]["status"] == "ok"):
            continue
        if status == "ok":
            stored = MIMES[r.get("mime")] or fmt
            ext = {"png": "png", "webp": "webp"}[stored]
            if not ((stored == fmt or (keep and (r.get("requests") or 0) > 0)) and f"{key}.{ext}" in present):
                continue
            if r.get("route") == "escalated" and r.get("draft_image_key"):
                drafts[r["draft_image_key"]] = r
        own[key] = r
    out = {}
    for key in {*own, *drafts}:
        if key in own and own[key]["status"] == "ok":
            out[key] = ("ok", own[key]["sha256"], "")
        elif key in drafts:
            out[key] = ("ok", drafts[key]["sha256"], drafts[key]["image_key"])
        else:
            out[key] = ("error", own[key]["error"], "")
    return out


def random_output(tmp: Path, seed: int) -> tuple[ObjectStore, list[list[dict[str, Any]]], set[str]]:
    rng = random.Random(seed)
    keys = [f"{rng.getrandbits(160):040x}" for _ in range(30)]
    parts = []
    for _ in range(rng.randint(1, 12)):
        part = []
        for _ in range(rng.randint(0, 25)):
            key = rng.choice(keys)
            extra: dict[str, Any] = {"mime": rng.choice(list(MIMES)), "requests": rng.choice([0, 0, 1, None]),
                                     "route": None, "draft_image_key": None, "heavy_image_key": None}  # every column
            if rng.random() < 0.2:
                extra.update(route="escalated", draft_image_key=rng.choice(keys))
            if rng.random() < 0.1:
                extra.update(heavy_image_key=rng.choice(keys))
            part.append(row(key if rng.random() < 0.97 else "", rng.choice(["ok", "ok", "error", "skipped"]),
                            **extra, error=f"boom {len(parts)}.{len(part)}"))  # which error row: its text says
        parts.append(part or [row(keys[0], "pending")])
    present = {f"{k}.{ext}" for k in keys for ext in ("png", "webp") if rng.random() < 0.6}
    store = setup(tmp, parts, [])
    for name in present:
        key, ext = name.split(".")
        path = tmp / image_rel(key, ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    in_name_order = [parts[n] for n in sorted(range(len(parts)), key=lambda n: manifest_part(f"r{n}", 0))]
    return store, in_name_order, present  # the scan reads parts in name order


@pytest.mark.parametrize("seed", range(12))
def test_every_key_is_settled_as_the_rules_say(tmp_path: Path, seed: int) -> None:
    store, parts, present = random_output(tmp_path, seed)
    for fmt, keep in (("png", True), ("webp", False)):
        index = load_index(store, fmt, keep)
        want = expected(parts, present, fmt, keep)
        asked = sorted({r["image_key"] for p in parts for r in p if r["image_key"]} | set(want) | {"0" * 40})
        for key in asked:
            prior = index.get(key)
            got = None if prior is None else (prior.status, prior.sha256 if prior.status == "ok" else prior.error,
                                              prior.final_key)
            assert got == want.get(key), (seed, fmt, key)


def test_ray_tasks_read_what_the_threads_read(tmp_path: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    store, parts, _ = random_output(tmp_path, 99)
    rels = sorted(rel for rel, _ in store.list("manifest/"))
    read = Read(str(tmp_path), StoreSpec(kind="local"), str(tmp_path), "png", True, 0.0)
    monkeypatch.setattr(resume_scan, "PARTS_PER_TASK", 2)  # several tasks from a dozen parts
    on_ray = read_candidates(read, rels, on_ray=True)
    here = read_candidates(read, rels, on_ray=False)
    assert on_ray.equals(here) and on_ray.num_rows == sum(
        1 for p in parts for r in p if r["image_key"] and r["status"] in ("ok", "error"))


def test_the_index_holds_about_fifty_bytes_a_key(tmp_path: Path) -> None:
    keys = [f"{i:040x}" for i in range(2000)]
    store = setup(tmp_path, [[row(k, "ok") for k in keys[i:i + 500]] for i in range(0, 2000, 500)], keys)
    index = load_index(store, "png")
    held = index.keys.nbytes + index.locs.nbytes + index.ok.nbytes + index.drafts.nbytes + index.draft_locs.nbytes
    assert len(index) == 2000 and held / 2000 <= 50
    assert all(k in index for k in keys[::97]) and "f" * 40 not in index


def test_part_rows_are_read_once_per_part_while_cached(tmp_path: Path) -> None:
    keys = [f"{i:040x}" for i in range(40)]
    setup(tmp_path, [[row(k, "ok", clip_score=float(i)) for i, k in enumerate(keys[:20])],
                     [row(k, "ok") for k in keys[20:]]], keys)
    index = load_index(open_store(str(tmp_path), StoreSpec(kind="local")), "png")
    reader = PartRows(str(tmp_path), StoreSpec(kind="local"), READ, 0.0)
    found = index.find(keys[:20] + keys[:3])
    rows = reader.take([f.loc for f in found], index.parts_of([f.loc for f in found]))
    assert [r["image_key"] for r in rows] == keys[:20] + keys[:3] and rows[5]["clip_score"] == 5.0
    reader.take([found[0].loc], index.parts_of([found[0].loc]))
    assert reader.reads == 1


def test_keys_of_other_widths_never_match_by_truncation() -> None:
    stored = fixed_width(pa.array(sorted(["a" * 40, "b" * 12, "c" * 40])))
    assert stored.dtype.itemsize == 40
    assert positions(stored, ["a" * 40, "a" * 41, "b" * 12, "b" * 11, "", "c" * 40]).tolist()[1:5] == [-1, 1, -1, -1]


def test_keys_sharing_their_first_bytes_are_told_apart() -> None:
    rng = random.Random(5)
    stored = sorted({"abcdefgh" + "".join(rng.choice("0123") for _ in range(4)) for _ in range(60)}
                    | {f"{rng.getrandbits(64):016x}" for _ in range(60)} | {"abcdefgh", "abcdefg"})
    fixed = fixed_width(pa.array(stored))
    asked = stored + ["abcdefgh" + "".join(rng.choice("0123") for _ in range(4)) for _ in range(60)] + ["abcdef", "z"]
    want = [stored.index(k) if k in stored else -1 for k in asked]
    assert np.sort(fixed).tolist() == fixed.tolist() and positions(fixed, asked).tolist() == want


def test_a_ledger_actor_on_ray_scans_with_tasks_and_answers_as_one_in_process(tmp_path: Path, ray_cluster: None
                                                                              ) -> None:
    import ray

    from imagefleet.actors.run_ledger import RunLedger
    from imagefleet.configs.prep import ResumeConfig

    keys = [f"{i:040x}" for i in range(3 * resume_scan.PARTS_PER_TASK)]  # one part a key: three scan tasks' worth
    setup(tmp_path, [[row(k, "ok" if i % 5 else "error")] for i, k in enumerate(keys)], keys)
    resume = ResumeConfig(output_uri=str(tmp_path), store=StoreSpec(kind="local"), skip_existing=True,
                          image_format="png", retry_failed=False)
    asked = keys[::7] + ["f" * 40]
    here = RunLedger(resume).settle(asked, [0.0] * len(asked))
    actor = ray.remote(num_cpus=0)(RunLedger).remote(resume)
    there = ray.get(actor.settle.remote(asked, [0.0] * len(asked)))
    ray.kill(actor)
    assert there == here and len(there.rows) == len(asked) - 1
