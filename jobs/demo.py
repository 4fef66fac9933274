"""`imagefleet demo`: the whole pipeline offline — tiny model, embedded S3, bundled prompts, local Ray."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SUBJECTS = ["a red fox", "a lighthouse", "a bowl of ramen", "an astronaut", "a vintage bicycle", "a koi pond",
            "a mountain cabin", "a paper crane", "a city tram", "a sunflower field", "a robot barista",
            "a desert canyon", "a snowy owl", "a glass teapot", "a night market", "a sailboat"]
STYLES = ["watercolor", "studio photo", "isometric 3d render", "charcoal sketch", "pixel art"]
SIZES = [(64, 64), (96, 64), (64, 96), (128, 128)]


def example_prompts(n: int = 80) -> dict[str, list[object]]:
    """The bundled example table: n prompts over four sizes, a few with negative prompts and 2 images."""
    rows: dict[str, list[object]] = {k: [] for k in ("id", "prompt", "negative_prompt", "width", "height",
                                                      "num_images")}
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        rows["id"].append(f"demo-{i:04d}")
        rows["prompt"].append(f"{SUBJECTS[i % len(SUBJECTS)]}, {STYLES[(i // len(SUBJECTS)) % len(STYLES)]}")
        rows["negative_prompt"].append("blurry, low quality" if i % 3 == 0 else None)
        rows["width"].append(w)
        rows["height"].append(h)
        rows["num_images"].append(2 if i % 10 == 0 else 1)
    return rows


def write_example_prompts(path: str | Path, n: int = 80) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(example_prompts(n)), path)
    return path


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="imagefleet demo", description="Start the embedded S3 on loopback and run, on "
                                "local Ray, configs/world_cascade.yaml on 96 prompts of the shapes world (the trained "
                                "tiny models in bench/world: up to 4 drafts a prompt scored by the trained fact "
                                "verifier, the worst 1% escalated to the heavy model, every image graded by the "
                                "world's oracle into the report beside draft-only and heavy-only runs), or, without "
                                "those models, configs/local_tiny.yaml with a tiny random-weight model on 80 example "
                                "prompts. Extra arguments go to `imagefleet run` (e.g. --set k=v).")
    p.parse_known_args(argv)  # --help prints and exits here, before anything is built or started
    from imagefleet.jobs import generate, world_demo
    from imagefleet.jobs.seaweed import S3Server
    from imagefleet.jobs.tiny_models import build_tiny_pipeline

    home = Path(os.environ.get("IMAGEFLEET_HOME", ".imagefleet"))
    world = world_demo.available()
    # 1 models and prompts: the shapes world's trained models (checked in), else a tiny random-weight model
    if world:
        print("demo: the shapes world — trained tiny draft and heavy models, a cascade, graded by an exact oracle")
        world_demo.write_prompts(home / "prompts" / "world.parquet")
    else:
        print("demo: building the tiny offline model and the example prompts ...")
        build_tiny_pipeline(home / "models" / "tiny-sd")
        write_example_prompts(home / "prompts" / "demo.parquet")
    # 2 embedded S3 on loopback, auth on; left running so the outputs can be inspected
    server = S3Server.prepare(home / "s3")
    if not server.running():
        server.start()
    server.ensure_bucket("imagefleet-demo")
    os.environ.update(server.env())
    print(f"demo: SeaweedFS S3 at {server.endpoint_url}")
    # 3 the real job on local Ray with the bundled config (the world: then every image graded by the oracle)
    if world:
        config, args = world_demo.CONFIG, [*world_demo.overrides(home), *argv]
    else:
        config = Path(__file__).resolve().parent.parent / "configs" / "local_tiny.yaml"
        args = [f"--set=source.uri={home / 'prompts' / 'demo.parquet'}",
                f"--set=generators.tiny.model={home / 'models' / 'tiny-sd'}", *argv]
    code = generate.main([str(config), *args])
    if world and code == 0:
        print("\n" + world_demo.grade(args))
    output = output_uri(config, args)
    print("")
    if code == 0:
        print(local_report(output, home))
    cli = shutil.which("imagefleet") or str(Path(sys.executable).parent / "imagefleet")  # outside the venv too
    print(f"demo: read any stored object: {cli} cat {output}/manifest/_manifest.json")
    print(f"demo: browse the bucket with boto3 or any S3 client: eval \"$({cli} s3 env --dir {home / 's3'})\"")
    print(f"demo: stop the S3 server: {cli} s3 stop --dir {home / 's3'}")
    return code


def output_uri(config: Path, args: list[str]) -> str:
    """The run's output as `imagefleet run` read it: the config with the same `--set` overrides (the loader's
    own parsing, so every spelling of `--set` counts)."""
    import argparse

    from imagefleet.configs.loader import ConfigError, load_config

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    overrides = p.parse_known_args(args)[0].overrides
    try:
        return load_config(config, overrides).output.uri
    except ConfigError:  # the run said what is wrong with them: the shipped config's output
        return load_config(config).output.uri


def local_report(output: str, home: Path) -> str:
    """The run's report copied out of the bucket to a local file a browser opens (it is self-contained: the
    contact sheet's thumbnails are inline); the line saying where it is."""
    from imagefleet.actors.layout import REPORT_HTML
    from imagefleet.actors.storage import StorageError, resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config

    target = (home / REPORT_HTML).resolve()
    try:
        store = open_store(output, resolve_store_spec(output, S3Config()))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get(REPORT_HTML))
    except (StorageError, OSError, RuntimeError) as exc:
        return f"demo: the report is {output}/{REPORT_HTML} (not copied here: {exc})"
    except Exception as exc:  # noqa: BLE001 - botocore's errors: the demo ran; say where the report is
        return f"demo: the report is {output}/{REPORT_HTML} (not copied here: {type(exc).__name__})"
    return f"demo: open the report in a browser: {target.as_uri()}"
