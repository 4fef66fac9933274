"""`imagefleet train-verifier`: a committed run's images (the sleep stand-in's flat colours) plus a labels table of
per-fact labels -> a verifier folder a run then scores with (`scorer: {backend: facts, model: FOLDER}`); bad input
is one line and exit 2, before any training."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.jobs.cli import main as cli
from tests.helpers import sleep_job, write_prompts

FACT = pa.struct([("fact", pa.string()), ("holds", pa.bool_())])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A committed in-process run of 24 rows (flat images, a colour per seed) and each image's labels."""
    from PIL import Image

    import imagefleet

    root = tmp_path_factory.mktemp("train-verifier")
    write_prompts(root / "in" / "p.parquet", {"prompt": [f"a flat colour {i}" for i in range(24)]})
    raw = sleep_job(root / "in" / "p.parquet", str(root / "out"))
    raw["cluster"]["executor"] = "in_process"
    result = imagefleet.run(raw, echo=None)
    assert result.summary is not None and result.summary.num_ok == 24
    labels = []
    for row in result.to_pandas().to_dict("records"):
        with Image.open(io.BytesIO(Path(row["image_uri"]).read_bytes())) as img:
            r, _, b = np.asarray(img.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
        labels.append({"image_key": row["image_key"], "facts": [{"fact": "it is reddish", "holds": bool(r >= 125)},
                                                                {"fact": "it is bluish", "holds": bool(b >= 125)}]})
    return root, labels


def write_labels(path: Path, labels: list[dict[str, Any]], facts_type: Any = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_key": [r["image_key"] for r in labels],
                             "facts": pa.array([r["facts"] for r in labels], facts_type or pa.list_(FACT))}), path)
    return path


def test_trains_a_folder_a_run_scores_with(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Labels at the default place (OUTPUT/evaluations/oracle.parquet); the folder then scores a run's rows by
    their facts column: score = mean P(yes) of the facts, each recorded."""
    import imagefleet

    root, labels = run
    write_labels(root / "out" / "evaluations" / "oracle.parquet", labels)
    folder = tmp_path / "verifier"
    assert cli(["train-verifier", str(root / "out"), str(folder), "--steps", "40", "--image-size", "16",
                "--batch-images", "8"]) == 0
    said = capsys.readouterr().out
    assert "24 images, 48 fact labels" in said and "40 steps" in said and "backend: facts" in said
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "imagefleet-fact-verifier" and config["image_size"] == 16
    assert config["vocab"] == ["bluish", "is", "it", "reddish"]
    assert config["trained"]["steps"] == 40 and config["trained"]["labels"] == "evaluations/oracle.parquet"
    # a run scored by the folder, its facts from the prompt table
    facts = [["it is reddish", "it is bluish"], ["it is bluish"], None]
    write_prompts(tmp_path / "in" / "p.parquet", {"prompt": ["one", "two", "three"],
                                                  "facts": pa.array(facts, pa.list_(pa.string()))})
    raw = sleep_job(tmp_path / "in" / "p.parquet", str(tmp_path / "scored"),
                    scorer={"backend": "facts", "model": str(folder)})
    raw["cluster"]["executor"] = "in_process"
    result = imagefleet.run(raw, echo=None)
    rows = {r["prompt"]: r for r in result.to_pandas().to_dict("records")}
    assert all(r["status"] == "ok" and 0 < r["clip_score"] < 1 for r in rows.values())
    recorded = [f["fact"] for f in rows["one"]["facts"]]
    assert recorded == facts[0]
    assert rows["one"]["clip_score"] == pytest.approx(np.mean([f["p_yes"] for f in rows["one"]["facts"]]))
    assert rows["three"]["facts"] is None


def _no_facts(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image_key": r["image_key"], "facts": []} for r in labels]


def _one_class(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image_key": r["image_key"], "facts": [{"fact": "it is flat", "holds": True}]} for r in labels]


def _unknown(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*labels, {"image_key": "no-such-key", "facts": labels[0]["facts"]}]


@pytest.mark.parametrize(("change", "says"), [
    (_no_facts, "holds no fact labels (every row's facts is null or empty)"),
    (_one_class, "every label in"),
    (_unknown, "name 1 image key(s) OUTPUT's manifest doesn't hold (first: no-such-key)"),
])
def test_bad_labels_are_one_line(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str], change: Any, says: str) -> None:
    root, labels = run
    path = write_labels(tmp_path / "labels.parquet", change(labels))
    assert cli(["train-verifier", str(root / "out"), str(tmp_path / "v"), "--labels", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and err.startswith("imagefleet: ")
    assert not (tmp_path / "v").exists()


def test_other_bad_input_is_one_line(run: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    root, labels = run
    cases = []
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"key": ["a"], "labels": ["x"]}), wrong)
    cases.append((["--labels", str(wrong)], "lacks column(s) image_key, facts (it has key, labels)"))
    cases.append((["--labels", str(tmp_path / "absent.parquet")], "no labels table at"))
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    cases.append((["--labels", str(text)], "is not a Parquet file"))
    typed = write_labels(tmp_path / "typed.parquet", [{"image_key": r["image_key"], "facts": ["it is red"]}
                                                      for r in labels], pa.list_(pa.string()))
    cases.append((["--labels", str(typed)], "is not image_key: string with facts: list<struct<fact: string, holds"))
    for extra, says in cases:
        assert cli(["train-verifier", str(root / "out"), str(tmp_path / "v"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "\n" not in err, (extra, err)
    assert cli(["train-verifier", str(tmp_path / "nothing"), str(tmp_path / "v")]) == 2
    assert "no committed manifest at" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert cli(["train-verifier", str(root / "out"), str(tmp_path / "full")]) == 2
    assert "already holds files" in capsys.readouterr().err


def test_a_graded_world_run_is_a_training_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shapes world's cascade on 8 prompts, graded by `bench/world/demo.py grade`: its evaluations hold each
    image's world facts and the oracle's verdict on each, so `train-verifier OUTPUT FOLDER` needs nothing else."""
    import yaml

    import imagefleet
    from bench.quality_replay import Policy, job_config
    from bench.world.demo import grade
    from bench.world.demo import write_prompts as world_prompts
    from bench.world.verifier_data import world_facts

    source = world_prompts(tmp_path / "world.parquet", 8, seed=11)
    raw = job_config(Policy(escalate_fraction=0.25), source, tmp_path / "out")
    (tmp_path / "world.yaml").write_text(yaml.safe_dump(raw))
    assert imagefleet.run(raw, echo=None, progress="off").summary.num_ok == 8  # type: ignore[union-attr]
    assert "world oracle" in grade(str(tmp_path / "world.yaml"), [])
    grades = pq.read_table(tmp_path / "out" / "evaluations" / "oracle.parquet")
    assert grades.schema.field("facts").type == pa.list_(FACT)
    prompts = pq.read_table(source).column("prompt").to_pylist()
    assert len(grades) >= 8  # every final image, and the kept drafts of escalated rows
    for row in grades.to_pylist():
        assert [f["fact"] for f in row["facts"]] in [world_facts(p) for p in prompts]
        assert row["faithfulness"] == pytest.approx(np.mean([f["holds"] for f in row["facts"]]))
    assert cli(["train-verifier", str(tmp_path / "out"), str(tmp_path / "v"), "--steps", "3"]) == 0
    assert f"{len(grades)} images" in capsys.readouterr().out
