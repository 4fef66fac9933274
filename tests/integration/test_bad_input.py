"""Bad-input suite: config, input and storage mistakes each give a clear message or an error row.

Run-level mistakes must stop `imagefleet run` with exit code 2 and a one-line explanation before any work,
leaving no manifest and no images; row-level mistakes become `status=error` rows while the run finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from imagefleet.jobs import generate
from tests.helpers import sleep_job, write_config, write_prompts
from tests.integration.test_pipeline import manifest, objects

pytestmark = pytest.mark.slow


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _del(raw: dict[str, Any], dotted: str) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[p]
    del node[parts[-1]]


# (case id, how to break things, expected message fragment)
RUN_LEVEL: list[tuple[str, Any, str]] = [
    # config
    ("unknown-top-key", lambda c: _set(c["raw"], "sed", 1), "unknown key 'sed'"),
    ("unknown-nested-key", lambda c: _set(c["raw"], "output.bucket", "x"), "unknown key 'output.bucket'"),
    ("wrong-type", lambda c: _set(c["raw"], "generators.sleepy.pool.batch_size", "many"), "batch_size"),
    ("negative-pool", lambda c: _set(c["raw"], "generators.sleepy.pool.max_size", -1), "max_size"),
    ("bad-output-scheme", lambda c: _set(c["raw"], "output.uri", "ftp://x/y"), "s3://bucket/prefix"),
    ("output-dotdot", lambda c: _set(c["raw"], "output.uri", "s3://b/../../x"), "'..'"),
    ("bucketless-output", lambda c: _set(c["raw"], "output.uri", "s3://"), "must name a bucket"),
    ("unknown-backend", lambda c: _set(c["raw"], "generators.sleepy.backend", "dalle"), "backend"),
    ("missing-source", lambda c: _del(c["raw"], "source"), "source"),
    ("bad-default-size", lambda c: _set(c["raw"], "generators.sleepy.defaults.width", 100), "multiple of 8"),
    ("routing-unknown", lambda c: _set(c["raw"], "routing", {"default": "nope"}), "not a configured generator"),
    ("missing-env-secret", lambda c: c["mp"].delenv("AWS_SECRET_ACCESS_KEY"), "set AWS_ACCESS_KEY_ID and AWS_SECRET"),
    ("missing-secret-file", lambda c: _set(c["raw"], "output.s3", {"secret_file": "/nonexistent/creds"}),
     "cannot read s3.secret_file"),
    # input
    ("not-parquet", lambda c: (c["src"].write_text("prompt\na cat\n")), "not a readable Parquet file"),
    ("zero-byte-file", lambda c: c["src"].write_bytes(b""), "not a readable Parquet file"),
    ("empty-table", lambda c: write_prompts(c["src"], {"prompt": pa.array([], pa.string())}), "has no rows"),
    ("missing-prompt-column", lambda c: write_prompts(c["src"], {"text": ["a"]}), "prompt column 'prompt' is missing"),
    ("prompt-not-string", lambda c: write_prompts(c["src"], {"prompt": [1, 2]}), "expected string"),
    ("width-not-integer", lambda c: write_prompts(c["src"], {"prompt": ["a"], "width": ["wide"]}), "expected integer"),
    ("seed-float-type", lambda c: write_prompts(c["src"], {"prompt": ["a"], "seed": [1.5]}), "expected integer"),
    ("source-missing", lambda c: _set(c["raw"], "source.uri", str(c["tmp"] / "nope.parquet")), "does not exist"),
    ("glob-no-match", lambda c: _set(c["raw"], "source.uri", str(c["tmp"] / "*.nothing")), "matched no files"),
    ("bad-source-bucket", lambda c: _set(c["raw"], "source.uri", "s3://no-such-bucket-zz/p.parquet"), "source"),
    # storage
    ("wrong-secret", lambda c: c["mp"].setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret"), "rejected the credentials"),
    ("missing-bucket", lambda c: _set(c["raw"], "output.uri", "s3://no-such-bucket-zz/x"), "does not exist"),
    ("no-permission", lambda c: (c["mp"].setenv("AWS_ACCESS_KEY_ID", c["srv"].reader_key),
                                 c["mp"].setenv("AWS_SECRET_ACCESS_KEY", c["srv"].reader_secret)), "may not write"),
    ("unreachable", lambda c: (c["mp"].setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
                               _set(c["raw"], "output.s3", {"max_attempts": 1, "connect_timeout_s": 1})),
     "cannot reach the S3 endpoint"),
    ("no-fake-gpus", lambda c: _set(c["raw"], "generators.sleepy.pool.num_gpus", 4),
     "pool 'generate:sleepy' asks for 4 GPU per actor"),
    ("unknown-accelerator", lambda c: _set(c["raw"], "generators.sleepy.pool.accelerator_type", "H100"),
     "pool 'generate:sleepy' asks for accelerator_type H100"),
    ("later-file-wrong-type", lambda c: write_prompts(c["tmp"] / "p2.parquet", {"prompt": ["c"], "width": ["wide"]})
     and _set(c["raw"], "source.uri", str(c["tmp"] / "*.parquet")), "p2.parquet: column 'width' has type string"),
    ("later-file-no-prompt", lambda c: write_prompts(c["tmp"] / "p2.parquet", {"text": ["c"]})
     and _set(c["raw"], "source.uri", str(c["tmp"] / "*.parquet")), "p2.parquet: prompt column 'prompt' is missing"),
    ("column-in-one-file", lambda c: write_prompts(c["tmp"] / "p2.parquet", {"prompt": ["c"], "seed": [1]})
     and _set(c["raw"], "source.uri", str(c["tmp"] / "*.parquet")), "column 'seed' is in"),
    ("later-file-not-parquet", lambda c: (c["tmp"] / "p2.parquet").write_text("prompt\nx\n")
     and _set(c["raw"], "source.uri", str(c["tmp"] / "*.parquet")), "p2.parquet is not a readable Parquet file"),
    ("source-is-output", lambda c: (_set(c["raw"], "source.uri", str(c["tmp"] / "data" / "p.parquet")),
                                    _set(c["raw"], "output.uri", str(c["tmp"] / "data")),
                                    write_prompts(c["tmp"] / "data" / "p.parquet", {"prompt": ["a"]})), "overlap"),
    ("long-temp-dir", lambda c: _set(c["raw"], "cluster.temp_dir", "/tmp/" + "t" * 60), "must stay under 107 bytes"),
    ("no-cpu-headroom", lambda c: _set(c["raw"], "generators.sleepy.pool.num_cpus", 2), "leaving less than the 1 CPU"),
]


@pytest.mark.parametrize(("case", "breaker", "message"), RUN_LEVEL, ids=[c[0] for c in RUN_LEVEL])
def test_run_level_mistakes_stop_before_any_work(
    case: str, breaker: Any, message: str, tmp_path: Path, s3_env: Any, bucket: str, monkeypatch: Any,
    capsys: Any, ray_cluster: None,
) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a", "b"]})
    raw = sleep_job(src, f"s3://{bucket}/x")
    breaker({"raw": raw, "src": src, "tmp": tmp_path, "mp": monkeypatch, "srv": s3_env})
    code = generate.main([str(write_config(tmp_path / "job.yaml", raw))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert "not-the-secret" not in err and s3_env.secret_key not in err and s3_env.reader_secret not in err
    assert not objects(s3_env, bucket, "x/")


def test_bad_run_ids_are_refused_before_work(tmp_path: Path, capsys: Any) -> None:
    cfg = write_config(tmp_path / "job.yaml", sleep_job("p.parquet", "out"))
    for bad in ("../..", "a/b"):
        with pytest.raises(SystemExit) as exit_:
            generate.main([str(cfg), "--run-id", bad])
        assert exit_.value.code == 2
        assert "not a valid run id" in capsys.readouterr().err


def test_bad_override_is_rejected(tmp_path: Path, capsys: Any) -> None:
    cfg = write_config(tmp_path / "job.yaml", sleep_job("p.parquet", "out"))
    assert generate.main([str(cfg), "--set", "seed"]) == 2
    assert "key=value" in capsys.readouterr().err


ROWS = {
    "id": ["ok", "null", "empty", "long", "emoji", "dotdot", "slash", "dup", "dup", "size0", "huge", "odd", "steps",
           "zero", "nan"],
    "prompt": ["a cat", None, "", "x" * 100_000, "猫 🐱 ünïcødé", "p", "q", "same", "same", "s", "h", "o", "st", "z",
               "n"],
    "width": [16, 16, 16, 16, 16, 16, 16, 16, 16, 0, 100_000, 20, 16, 16, 16],
    "num_steps": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -2, 1, 1],
    "num_images": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1],
    "guidance_scale": [0.0] * 14 + [float("nan")],
}
ROW_IDS = ["ok", "null", "empty", "long", "emoji", "../../etc/passwd", "a/b/c", "dup", "dup", "size0", "huge", "odd",
           "steps", "zero", "nan"]
EXPECTED = {
    "ok": "ok", "null": "prompt is null", "empty": "prompt is empty", "long": "limit is 10,000", "emoji": "ok",
    "../../etc/passwd": "ok", "a/b/c": "ok", "dup": "ok", "size0": "multiple of 8", "huge": "maximum side",
    "odd": "multiple of 8", "steps": "num_steps", "zero": "num_images", "nan": "finite",
}


def test_row_level_mistakes_become_error_rows(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None
) -> None:
    src = write_prompts(tmp_path / "p.parquet", {**ROWS, "id": ROW_IDS})
    cfg = write_config(tmp_path / "job.yaml", sleep_job(src, f"s3://{bucket}/rows"))
    assert generate.main([str(cfg)]) == 0
    rows = manifest(s3_env, bucket, "rows")
    assert len(rows) == len(ROW_IDS)  # one row per request, duplicates included
    for r in rows:
        want = EXPECTED[r["id"]]
        if want == "ok":
            assert r["status"] == "ok", r
        else:
            assert r["status"] == "error" and want in r["error"], r
    # keys derived from user data never escape the prefix: every object is under rows/images/
    keys = objects(s3_env, bucket, "")
    assert all(k.startswith("rows/") for k in keys)
    images = [k for k in keys if k.startswith("rows/images/")]
    assert len(images) == 5  # ok, emoji, dotdot, slash, and ONE object for the duplicate pair
    dups = [r for r in rows if r["id"] == "dup"]
    assert dups[0]["image_uri"] == dups[1]["image_uri"]


def test_unplaceable_pool_on_a_cluster_fails_after_startup_timeout(ray_cluster: None) -> None:
    """On a real cluster (an autoscaler may still add nodes) a pool is given `cluster.startup_timeout_s` to be
    placed; then the run fails naming the pool and what it asked for instead of waiting forever."""
    import time

    from imagefleet.pipelines.pools import Pool, unplaceable

    pools = {"generate:sdxl": Pool(1, 2, 1, num_cpus=1, batch_size=4, num_gpus=1, accelerator_type="H100"),
             "write": Pool(1, 1, 1, num_cpus=0.5, batch_size=16)}
    started = time.monotonic()
    problem = unplaceable(pools, timeout_s=2)
    assert 1.5 < time.monotonic() - started < 15
    assert "pool 'generate:sdxl' could not get" in problem and "accelerator_type:H100" in problem
    assert "startup_timeout_s=2" in problem
    assert unplaceable({"write": pools["write"]}, timeout_s=5) == ""  # placeable pools pass (and are released)


def test_an_endpoint_that_accepts_but_never_answers_fails_preflight_quickly(
    tmp_path: Path, s3_env: Any, monkeypatch: Any, capsys: Any
) -> None:
    """Once stalled the start for 547 s; now bounded by a few connect timeouts."""
    import socket
    import threading
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # accepted, never answered
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
        raw = sleep_job(src, "s3://silent-bucket/x")
        raw["output"]["s3"] = {"connect_timeout_s": 1}
        started = time.monotonic()
        assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 2
        assert time.monotonic() - started < 30
        assert "accepted the connection but did not answer" in capsys.readouterr().err
    finally:
        stop.set()
        for conn in held:
            conn.close()
        silent.close()


def test_report_mistakes_are_one_line(tmp_path: Path, s3_env: Any, bucket: str, monkeypatch: Any,
                                      capsys: Any) -> None:
    from imagefleet.jobs import cli

    assert cli.main(["report", f"s3://{bucket}/nothing"]) == 2
    assert "no manifest at" in capsys.readouterr().err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert cli.main(["report", f"s3://{bucket}/nothing"]) == 2
    err = capsys.readouterr().err
    assert "credentials" in err and "Traceback" not in err and "not-the-secret" not in err
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    assert not (Path.cwd() / "--help").exists()
