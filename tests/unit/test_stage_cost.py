"""bench/stage_cost.py: the sizing arithmetic and its report, on made-up stage costs (the measurement itself is a
benchmark run, not a test)."""

import numpy as np

from bench import stage_cost

FIXED = {"run ledger": ("ledger", 1), "preprocessor": ("preprocess", 4), "input reader": ("inputs:jpeg", 2),
         "escalator": ("escalate", 1)}


def stages(write_ms: float = 4.0) -> list[dict]:
    """Every key `sizing` reads, at 0.01 ms each, but the write at `write_ms`, the preprocessor at 0.05 ms."""
    keys = ["read", "manifest", "commit", "resume", "preprocess:rerun", "ledger:rerun", "inputs:jpeg", "inputs:png",
            "escalate", "ledger",
            "write:png:8",
            *(f"generate:{px}" for px in (512, 1024)), *(f"hop:{px}" for px in (512, 1024)),
            *(f"write:{f}:{px}" for f in stage_cost.FORMATS for px in stage_cost.SIZES)]
    out = [{"key": k, "stage": k, "detail": "", "unit": "image", "units": 1000, "layout": "", "cpu_ms": 0.01,
            "wall_ms": 0.01, "peak_mb": 1.0, "rss_mb": 1.0} for k in keys]
    out.append({**out[0], "key": "preprocess", "cpu_ms": 0.05})
    for r in out:
        if r["key"].startswith("write:") and r["key"] != "write:png:8":
            r["cpu_ms"] = write_ms
    return out


def test_cores_per_gpu_is_rate_times_cpu_per_image() -> None:
    s = stage_cost.sizing(stages(), FIXED)
    turbo = s["workloads"][0]
    assert turbo["img_s"] == 235.0
    # read, preprocess, run ledger, generate, hand-off, write, manifest: 0.01 + 0.05 + 0.01 + 0.01 + 0.01 + 4 + 0.01
    assert turbo["cores_per_gpu"]["jpeg"] == round(235 * 4.1 / 1000, 2)
    assert turbo["caps_gpus"]["preprocessor"] == int(4 * 1000 / 0.05 / 235)  # 20,000 rows/s an actor, 4 actors
    assert turbo["caps_gpus"]["run ledger"] == int(1000 / 0.01 / 235)  # the one ledger: 100,000 rows/s
    assert turbo["caps_gpus"]["input reader"] == int(2 * 1000 / 0.01 / 235)
    assert s["s3_client_ms"] == 0.0  # no S3 rows measured: the local folder's figures
    assert s["resume_s_per_million"] == 10.0


def test_s3_client_cost_is_added_per_image() -> None:
    rows = stages() + [{**stages()[0], "key": "write_s3:png:8", "cpu_ms": 1.01}]
    s = stage_cost.sizing(rows, FIXED)
    assert s["s3_client_ms"] == 1.0
    assert s["per_image_ms"]["jpeg:512"] == round(4.1 + 1.0, 3)


def test_report_names_every_stage_and_workload() -> None:
    result = {"at": "now", "machine": "m", "commit": "c", "rows": 1000, "stages": stages(),
              "sizing": stage_cost.sizing(stages(), FIXED)}
    text = "\n".join(stage_cost.markdown(result))
    assert "SDXL 30 steps 1024 px, CFG" in text and "GPUs fed: preprocessor (4)" in text
    assert "GPUs fed: run ledger (1)" in text and "the run ledger feeds" in text
    assert text.count("\n| write:") == 10


def test_photo_is_deterministic_rgb() -> None:
    a, b = stage_cost.photo(32, 3), stage_cost.photo(32, 3)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
