"""`imagefleet serve`: the configured generators online over HTTP with Ray Serve, until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from imagefleet.jobs import preflight, run_text, runtime

if TYPE_CHECKING:
    from ray.serve import Application

logger = logging.getLogger("imagefleet")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagefleet serve", description="Serve the config's generators over HTTP.")
    p.add_argument("config", help="the same YAML a batch run uses (its `serve:` section sets host, port, batching)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set serve.port=8001 (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns 0 after a clean stop, 1 if the app failed, 2 for bad config."""
    args = parser().parse_args(argv)
    runtime.prepare_environment()
    from imagefleet.actors.storage import StorageError
    from imagefleet.configs import ConfigError, load_config

    # 1 config and secrets first: nothing starts if they are wrong
    try:
        cfg = load_config(args.config, args.overrides)
        stores = preflight.resolve_stores(cfg, online=True)
    except (ConfigError, StorageError) as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    # 2 Ray, then the Serve app (serve.run returns once every deployment is healthy)
    from ray import serve

    from imagefleet.actors.layout import image_ext
    from imagefleet.pipelines.pools import generator_pool
    from imagefleet.pipelines.serving import build_app
    from imagefleet.pipelines.text_to_image import failure_line

    started = runtime.start_ray(cfg)
    try:
        preflight.check_resources(cfg, {f"generator-{n}": generator_pool(g.pool) for n, g in cfg.generators.items()},
                                spare_cpu=False)
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        serve.run(build_app(cfg, stores), name="imagefleet", route_prefix="/")
    except Exception as exc:  # noqa: BLE001 - a model that can't load, a port in use: one line, then stop
        log = runtime.record_failure("serve", exc)
        print(f"imagefleet: serve failed to start: {failure_line(exc)} (details: {log})", file=sys.stderr)
        _shutdown(started)
        return 1 if not isinstance(exc, StorageError) else 2
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    print(f"imagefleet serving {', '.join(cfg.generators)} at {url}  (POST /generate, GET /healthz; OpenAI Images "
          f"API: POST /v1/images/generations; Ctrl-C stops)")
    ext = image_ext(run_text.stored_format(cfg, cfg.default_generator) or "png")  # what a plain request gets
    print(f"  try: curl -s {url}/generate -d '{{\"prompt\": \"a red fox\"}}' -o fox.{ext}")
    print(f"  or:  OpenAI(base_url=\"{url}/v1\", api_key=\"-\").images.generate(model=\"{cfg.default_generator}\", "
          f"prompt=\"a red fox\")", flush=True)
    # 3 serve until told to stop (handlers set after ray.init, which installs its own)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("imagefleet: stopping", flush=True)
    _shutdown(started)
    return 0


def app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder for KubeRay RayService and `serve run` (`import_path: imagefleet.jobs.serve:app`).

    Args:
        args: `config` (YAML path, or env:VAR) and optional `set` (list of KEY=VALUE overrides). Host and port
            come from the Serve deployment (RayService `serveConfigV2`), not from the config's `serve:` section.
    """
    runtime.prepare_environment()
    from imagefleet.pipelines.serving import build_app

    if "config" not in args:
        raise ValueError("imagefleet serve app needs args: {config: /path/to/config.yaml}")
    cfg = runtime.load_config_arg(str(args["config"]), [str(v) for v in args.get("set", [])])
    return build_app(cfg, preflight.resolve_stores(cfg, online=True))


def _shutdown(started_ray: bool) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
