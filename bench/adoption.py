"""What adopting lost rows costs a rerun: the resume index over N stored images whose manifest rows a dead run
never wrote (one record read, a HEAD, and a GET for its sha256, per image the rerun asks for) against the same
images named by a manifest part (neither). Embedded SeaweedFS on loopback; tiny PNGs written by the real ImageWriter."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from bench.common import Timer, git_rev, machine, prepare_env, start_s3


def run(images: int) -> dict[str, Any]:
    prepare_env()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagefleet.actors.image_writer import ImageWriter
    from imagefleet.actors.layout import manifest_part
    from imagefleet.actors.resume_index import load_index
    from imagefleet.actors.storage import arrow_filesystem, resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config
    from imagefleet.configs.writer import ImageWriterConfig

    server = start_s3("s3-adoption")
    bucket = "adopt-" + uuid.uuid4().hex[:6]
    server.ensure_bucket(bucket)
    uri = f"s3://{bucket}/run"
    spec = resolve_store_spec(uri, S3Config(endpoint_url=server.endpoint_url), dict(server.env()))
    try:
        writer = ImageWriter(ImageWriterConfig(uri=uri, format="png", quality=90, png_compress_level=1,
                                               num_upload_threads=8, store=spec))
        keys = [(uuid.uuid4().hex + uuid.uuid4().hex)[:40] for _ in range(images)]
        n = images
        batch = {"image": np.array([bytes(8 * 8 * 3)] * n, dtype=object),
                 "image_mime": np.array([""] * n, dtype=object),
                 "image_key": np.array(keys, dtype=object), "width": np.full(n, 8), "height": np.full(n, 8),
                 "status": np.array(["generated"] * n, dtype=object), "error": np.array([""] * n, dtype=object),
                 "generator": np.array(["gpt"] * n, dtype=object), "model": np.array(["gpt-image-2@api"] * n,
                                                                                      dtype=object),
                 "seed": np.arange(n), "num_steps": np.ones(n, np.int32), "guidance_scale": np.zeros(n),
                 "cost_usd": np.full(n, 0.04), "requests": np.ones(n, np.int32), "generate_ms": np.full(n, 900.0),
                 "queue_ms": np.full(n, 5.0), "generated_at": np.full(n, time.time())}
        rows = writer(batch)
        writer.close()
        store = open_store(uri, spec)
        with Timer() as t_adopt:
            index = load_index(store, "png")
            adopted = sum(index.get(k) is not None for k in keys)
        table = pa.table({c: rows[c] for c in ("image_key", "status", "sha256", "bytes", "error", "mime")})
        fs, root = arrow_filesystem(uri, spec)
        pq.write_table(table, f"{root}/{manifest_part('r1', 0)}", filesystem=fs)
        with Timer() as t_listed:
            index = load_index(store, "png")
            listed = sum(index.get(k) is not None for k in keys)
    finally:
        server.stop()
    return {"images": images, "adopted": adopted, "found_in_manifest": listed,
            "adopt_s": round(t_adopt.seconds, 2), "manifest_s": round(t_listed.seconds, 2),
            "adopt_ms_per_image": round(t_adopt.seconds / images * 1000, 2),
            "at": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "commit": git_rev()}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=1024)
    print(json.dumps(run(p.parse_args().images), indent=2))
