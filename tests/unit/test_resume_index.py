"""ResumeIndex on a local output, without Ray: ok beats error, vanished objects are redone, escalated drafts
point at their final image, and parts from older versions (fewer columns) still load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imagefleet.actors.layout import MANIFEST_DIR, image_rel, manifest_part
from imagefleet.actors.resume_index import load_index
from imagefleet.actors.storage import ObjectStore
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec

K = {name: name[0] * 40 for name in ("aaa", "bbb", "ccc", "ddd", "eee")}


def row(key: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"image_key": key, "status": status, "sha256": "s" + key[:3] if status == "ok" else "", "bytes": 10,
            "error": "boom" if status == "error" else "", "generator": "draft", "model": "m@main", **extra}


def setup(tmp: Path, parts: list[list[dict[str, Any]]], objects: list[str]) -> ObjectStore:
    for key in objects:
        (tmp / image_rel(key, "png")).parent.mkdir(parents=True, exist_ok=True)
        (tmp / image_rel(key, "png")).write_bytes(b"x")
    (tmp / MANIFEST_DIR).mkdir()
    for n, rows in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(rows), tmp / manifest_part(f"r{n}", 0))
    return open_store(str(tmp), StoreSpec(kind="local"))


def test_ok_beats_error_and_missing_objects_are_redone(tmp_path: Path) -> None:
    store = setup(tmp_path, [[row(K["aaa"], "error"), row(K["bbb"], "ok")],
                             [row(K["aaa"], "ok", clip_score=31.5, cost_usd=0.02), row(K["ccc"], "ok")]],
                  objects=[K["aaa"], K["bbb"]])
    index = load_index(store, "png")
    a = index.get(K["aaa"])
    assert a is not None and a.status == "ok" and a.carried["clip_score"] == 31.5 and a.carried["cost_usd"] == 0.02
    assert index.get(K["bbb"]).status == "ok"  # type: ignore[union-attr]
    assert index.get(K["ccc"]) is None  # the manifest said ok but the object is gone
    assert index.get("f" * 40) is None


def test_escalated_draft_points_at_the_final_image(tmp_path: Path) -> None:
    heavy = row(K["ddd"], "ok", route="escalated", draft_image_key=K["eee"], generator="heavy", model="h@main",
                draft_score=0.1, clip_score=0.9)
    index = load_index(setup(tmp_path, [[heavy]], objects=[K["ddd"]]), "png")
    prior = index.get(K["eee"])  # the draft's key, as a rerun computes it
    assert prior is not None and prior.final_key == K["ddd"] and prior.final_generator == "heavy"
    assert prior.final_model == "h@main" and prior.carried["route"] == "escalated" and prior.sha256 == "sddd"
    assert index.get(K["ddd"]).final_key == ""  # type: ignore[union-attr]
