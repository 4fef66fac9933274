"""Online serving: the batch job's generator actors behind Ray Serve, with dynamic batching and autoscaling.

    HTTP ─► Gateway (validate with the batch PromptPreprocessor: same seeds, same image keys)
              └─► generator-<name> deployment (the plan's generator stage; @serve.batch groups concurrent requests
                  into one model call; replicas autoscale within the generator's pool min..max size)
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from imagefleet.actors import PromptPreprocessor
from imagefleet.actors.backend_io import CONDITIONING_COLUMNS, GENERATOR_INPUT_COLUMNS
from imagefleet.actors.image_writer import CONTENT_TYPES, image_file
from imagefleet.actors.inputs import InputProblem, check_image, sha256_of
from imagefleet.configs.generator_base import MASK_TASKS
from imagefleet.configs.job import JobConfig
from imagefleet.configs.prep import PrepConfig
from imagefleet.configs.routing import ColumnRouting
from imagefleet.configs.serve import ServeConfig
from imagefleet.configs.source import InputLimits
from imagefleet.pipelines.http_limits import HeadLimits, ProxyLimits, head_problem
from imagefleet.pipelines.openai_images import (
    IMAGES_ROUTE,
    MODELS_ROUTE,
    error_body,
    images_headers,
    images_response,
    models_body,
    parse_images_request,
)
from imagefleet.pipelines.plan import Stores, generator_stage
from imagefleet.pipelines.pools import serve_gateway_options, serve_generator_options
from imagefleet.pipelines.serve_protocol import (
    GenerateRequest,
    RequestProblem,
    failure_status,
    image_entry,
    image_headers,
    parse_generate_request,
    read_body,
)
from imagefleet.pipelines.slices import prep_config
from imagefleet.pipelines.text_to_image import failure_line

if TYPE_CHECKING:
    from ray.serve import Application
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

# what a generator actor reads of a preprocessed row (the same for every backend), and the request's own input files
ROW_FIELDS = (*GENERATOR_INPUT_COLUMNS, *CONDITIONING_COLUMNS, "input_data")


def build_app(cfg: JobConfig, stores: Stores) -> Application:
    """The lazy Serve application for `cfg`'s generators; nothing starts until `serve.run`.

    Args:
        cfg: the job config (generators, serve, output encoding).
        stores: resolved connections and API keys.
    """
    # 1 one deployment per generator, sized by its batch pool: min..max replicas, GPUs per replica
    handles = {}
    for name in cfg.generators:
        stage = generator_stage(cfg, stores, name, online=True)
        deployment = serve.deployment(name=f"generator-{name}", **serve_generator_options(stage.pool, cfg.serve))(
            GeneratorReplica)
        handles[name] = deployment.bind(
            stage.actor, stage.kwargs, stage.pool.batch_size, cfg.serve.batch_wait_timeout_s, cfg.output.quality,
            cfg.output.png_compress_level, cfg.output.keep_provider_bytes,
        )
    # 2 one async gateway in front: requests become prompt rows exactly like a batch run's
    gateway = serve.deployment(name="gateway", **serve_gateway_options())(Gateway)
    return gateway.bind(serve_prep_config(cfg, stores), handles, cfg.serve, cfg.output.format, cfg.source.inputs)


def serve_prep_config(cfg: JobConfig, stores: Stores | None = None) -> PrepConfig:
    """The preprocessor slice for requests: fields named like the request, `generator` picks the route, one image
    per request at the requested size (no template, no variants), nothing read from earlier runs."""
    return prep_config(cfg, stores).model_copy(update={
        "prompt_column": "prompt", "id_column": "id", "negative_prompt_column": "negative_prompt", "columns": {},
        "template": None, "variants": [], "resume": None,
        "routing": ColumnRouting(default=cfg.default_generator, column="generator"), "budget_usd": 0.0,
        "max_images_per_row": cfg.serve.max_images_per_request,
    })


PATCHED_RAY = "2.60."
"""The Ray versions whose Serve replica internals `bind_internal_grpc_to_node_ip` was written against."""


def bind_internal_grpc_to_node_ip() -> None:
    """Make this replica's inter-deployment gRPC server listen on the Ray node's address, not every interface.

    Ray Serve 2.60 starts that server on `[::]:0` in every replica, with no option to change it
    (`ray/serve/_private/replica.py`, `Replica._on_initialized`). Handles dial it at `node_ip:port`, so the node's
    Ray address keeps it working: 127.0.0.1 for a local serve, the node's cluster IP on a cluster. Ray runs a
    replica's constructor before it starts the server, so the constructors call this. A private function of Ray:
    patched only on the Ray versions it was read from (PATCHED_RAY; tests/integration/test_serve.py checks that no
    listening socket is on all interfaces); on any other version nothing is patched and a warning says so.
    """
    import ray

    if not ray.__version__.startswith(PATCHED_RAY):
        logger.warning("ray %s: the replicas' internal gRPC port is left as Ray binds it (all interfaces; the "
                       "narrowing is written for ray %s.x)", ray.__version__, PATCHED_RAY)
        return
    from ray.serve._private import replica

    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None:
        logger.warning("ray.serve replica internals changed: its gRPC port may listen on all interfaces")
        return
    if getattr(add_port, "binds_node_ip", False):
        return
    node_ip = ray.util.get_node_ip_address()
    node_host = f"[{node_ip}]" if ":" in node_ip else node_ip

    def add_port_on_node_ip(server: Any, address: str) -> Any:
        host, _, port = address.rpartition(":")
        return add_port(server, f"{node_host}:{port}" if host in ("[::]", "0.0.0.0") else address)

    add_port_on_node_ip.binds_node_ip = True  # type: ignore[attr-defined]
    setattr(replica, "add_port_to_grpc_server", add_port_on_node_ip)  # noqa: B010 - a private attribute of Ray


class GeneratorReplica:
    """One replica of a generator: the batch job's actor class, fed by `@serve.batch`.

    Args:
        actor: the generator's actor class (the batch job's, from its plan stage).
        kwargs: the actor's constructor arguments (its config slice).
        max_batch_size: requests grouped into one call (the pool's batch_size).
        batch_wait_timeout_s: how long to wait for a batch to fill.
        quality: JPEG/WebP quality.
        png_compress_level: PNG zlib level.
        keep_provider_bytes: answer with a hosted provider's file as sent (its own format), like the batch writer
            stores it.
    """

    def __init__(self, actor: type, kwargs: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float,
                 quality: int, png_compress_level: int, keep_provider_bytes: bool = True) -> None:
        bind_internal_grpc_to_node_ip()
        self.impl = actor(**kwargs)
        self.quality, self.png_compress_level = quality, png_compress_level
        self.keep_provider_bytes = keep_provider_bytes
        self.generate.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]  # added by @serve.batch
        self.generate.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # the model call runs in a thread so the replica keeps queueing the next batch meanwhile
        return await asyncio.to_thread(self._run, rows)

    def _run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # 1 requests → the columnar batch the actor class takes
        batch = {name: _column([r[name] for r in rows]) for name in ROW_FIELDS if name in rows[0]}
        # 2 the same call a batch run makes (row errors come back as data)
        out = self.impl(batch)
        # 3 encode each image here, next to the pixels (smaller replies than raw pixels); a hosted provider's file
        #   is answered as sent, in its own format (as the batch writer stores it)
        results = []
        for i, row in enumerate(rows):
            width, height, status = int(out["width"][i]), int(out["height"][i]), str(out["status"][i])
            error, encoded, fmt = str(out["error"][i]), b"", row["format"]
            if status == "generated":
                try:
                    encoded, fmt = image_file(out["image"][i], str(out["image_mime"][i]), width, height,
                                              fmt=row["format"], quality=self.quality,
                                              png_compress_level=self.png_compress_level,
                                              keep_provider_bytes=self.keep_provider_bytes)
                except Exception as exc:  # noqa: BLE001 - a provider file PIL can't decode fails this image only
                    status, error = "error", f"encode failed: {type(exc).__name__}: {exc}"
            results.append({
                "image_key": row["image_key"], "seed": row["seed"], "width": width, "height": height,
                "status": status, "error": error, "generate_ms": float(out["generate_ms"][i]),
                "cost_usd": float(out["cost_usd"][i]), "batch_size": len(rows), "encoded": encoded, "format": fmt,
            })
        return results


class Gateway:
    """HTTP ingress: GET /healthz, POST /generate, and the OpenAI Images API (POST /v1/images/generations,
    GET /v1/models; `openai_images`), both routes through one path (`_images`).

    Args:
        prep: the preprocessor slice (validation, routing, seeds, image keys).
        generators: generator name → its deployment handle.
        cfg: the serve slice.
        default_format: image encoding when the request names none.
    """

    def __init__(self, prep: PrepConfig, generators: dict[str, Any], cfg: ServeConfig, default_format: str,
                 limits: InputLimits | None = None) -> None:
        bind_internal_grpc_to_node_ip()
        self.task = prep.task
        self.limits = limits or InputLimits()
        self.prep = PromptPreprocessor(prep)
        # a request without input images is text-to-image whatever the config's task (a batch row without one is an
        # error: there, a missing packshot must not silently become an unrelated image)
        plain = prep.model_copy(update={"task": "text-to-image"})
        self.text_prep = self.prep if prep.task == "text-to-image" else PromptPreprocessor(plain)
        self.models = {name: f"{g.model}@{g.revision}" for name, g in prep.generators.items()}
        self.default_generator = prep.default_generator
        self.generators = generators
        self.cfg = cfg
        self.default_format = default_format
        # request heads are limited where they arrive, in the HTTP proxies, before they are buffered
        self.head_limits = HeadLimits(cfg.max_request_line_bytes, cfg.max_header_bytes, cfg.max_header_count)
        self.proxies = ProxyLimits(self.head_limits)
        self.proxies.refresh()

    async def __call__(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        path = "/" + request.url.path.strip("/")
        problem = _openai_problem if path.startswith("/v1/") else _problem  # errors in the shape of the route's API
        if self.proxies.due():  # a proxy started since (on a node that got a replica) gets the limits too
            await asyncio.to_thread(self.proxies.refresh)
        refused = head_problem(request.scope, self.head_limits)  # a proxy without them yet
        if refused is not None:
            return problem(RequestProblem(*refused))
        if path in ("/", "/healthz", MODELS_ROUTE):
            if request.method not in ("GET", "HEAD"):
                return problem(RequestProblem(405, f"{path} answers GET"))
            if path == MODELS_ROUTE:
                return JSONResponse(models_body(list(self.models)))
            return JSONResponse({"status": "ok", "generators": self.models,
                                 "default_generator": self.default_generator})
        routes = {"/generate": self._generate, IMAGES_ROUTE: self._openai_images}
        if path not in routes:
            return problem(RequestProblem(404, f"no route {path}: use POST /generate, POST {IMAGES_ROUTE} (the "
                                               f"OpenAI Images API), GET /healthz or GET {MODELS_ROUTE}"))
        if request.method != "POST":
            return problem(RequestProblem(405, f"{path} answers POST with a JSON body"))
        try:
            # the size limit holds while reading: a declared or streamed body over it is refused, never buffered
            body = await read_body(request.stream(), request.headers.get("content-length"),
                                   self.cfg.max_request_bytes)
            return await routes[path](body, request.headers.get("accept", ""))
        except RequestProblem as exc:
            return problem(exc)
        except Exception:  # a bug, not the client's fault: still a JSON error, with the traceback in the log
            logger.exception("POST %s failed", path)
            return problem(RequestProblem(500, "internal error while handling the request; see the server log"))

    async def _generate(self, body: bytes, accept: str) -> Response:
        """POST /generate: the image's bytes, or JSON with every image and what the manifest would record."""
        from starlette.responses import JSONResponse, Response

        req = parse_generate_request(body, accept, default_format=self.default_format,
                                     default_response=self.cfg.default_response,
                                     max_request_bytes=self.cfg.max_request_bytes,
                                     max_images=self.cfg.max_images_per_request)
        name, results = await self._images(req)
        if req.response == "image":
            return Response(results[0]["encoded"], media_type=CONTENT_TYPES[results[0]["format"]],
                            headers=image_headers(results[0], name))
        return JSONResponse({"generator": name, "model": self.models[name],
                             "images": [image_entry(r) for r in results]})

    async def _openai_images(self, body: bytes, accept: str) -> Response:
        """POST /v1/images/generations: OpenAI's ImagesResponse (base64 images), keys and seeds in headers."""
        import time

        from starlette.responses import JSONResponse

        req = parse_images_request(body, models=list(self.models), default_format=self.default_format,
                                   max_request_bytes=self.cfg.max_request_bytes,
                                   max_images=self.cfg.max_images_per_request)
        name, results = await self._images(req)
        return JSONResponse(images_response(results, int(time.time())), headers=images_headers(results, name))

    async def _images(self, req: GenerateRequest) -> tuple[str, list[dict[str, Any]]]:
        """A parsed request's images, made exactly like a batch row's (both routes come here); the generator's name
        and one result per image. Raises RequestProblem for anything but a full set of images."""
        import pyarrow as pa
        from ray.serve.exceptions import BackPressureError

        # 1 validate and key exactly like a batch row
        inputs = self._inputs(req)
        prep = self.prep if inputs else self.text_prep
        prepared = prep(pa.Table.from_pylist([{**req.row, **inputs}]))
        rows = [{k: _scalar(v[i]) for k, v in prepared.items()} for i in range(len(prepared["status"]))]
        if rows[0]["status"] == "error":
            raise RequestProblem(400, rows[0]["error"])
        name = rows[0]["generator"]
        # 2 each image is one request to the generator's deployment; concurrent ones share model calls
        files = (req.images, req.mask)
        calls = [self.generators[name].generate.remote({**{k: r[k] for k in ROW_FIELDS if k in r}, "input_data": files,
                                                        "format": req.format})
                 for r in rows]
        try:
            results = await asyncio.wait_for(asyncio.gather(*calls), timeout=self.cfg.request_timeout_s)
        except TimeoutError:
            raise RequestProblem(504, f"no image within serve.request_timeout_s={self.cfg.request_timeout_s}") from None
        except BackPressureError:
            raise RequestProblem(503, f"generator {name!r} is at its queue limit; retry later") from None
        except Exception as exc:  # noqa: BLE001 - a replica failure (quota, auth, crash): one line, no traceback
            logger.warning("generator %s failed: %s", name, exc)
            raise RequestProblem(503, f"generator {name!r} failed: {failure_line(exc)}") from exc
        # 3 the first failure, if any, answers for the request
        failed = [r for r in results if r["status"] != "generated"]
        if failed:
            raise RequestProblem(failure_status(failed[0]), failed[0]["error"])
        return name, list(results)

    def _inputs(self, req: Any) -> dict[str, str]:
        """The request's input images and mask, checked and hashed like a batch row's (a 400 names the problem)."""
        if not req.images and not req.mask:
            return {}  # text-to-image
        if self.task == "text-to-image":
            raise RequestProblem(400, "this server makes images from text only (source.task=text-to-image); "
                                      "drop \"images\" and \"mask\"")
        if not req.images:
            raise RequestProblem(400, f'source.task={self.task}: a "mask" needs its image in "images" (base64)')
        if req.mask and self.task not in MASK_TASKS:
            raise RequestProblem(400, f'source.task={self.task} takes no "mask"')
        if self.task == "inpaint" and not req.mask:
            raise RequestProblem(400, 'source.task=inpaint: send the "mask" (base64; white = change)')
        files = {**{f"images[{k}]": d for k, d in enumerate(req.images)}, **({"mask": req.mask} if req.mask else {})}
        too_big = [name for name, data in files.items() if len(data) > self.limits.max_image_bytes]
        if too_big:
            raise RequestProblem(413, f"{too_big[0]} is over {self.limits.max_image_bytes} bytes "
                                      f"(source.inputs.max_image_bytes)")
        try:
            sizes = [check_image(f"images[{k}]", data, self.limits.max_image_pixels, file=False)
                     for k, data in enumerate(req.images)]
            if req.mask and check_image("mask", req.mask, self.limits.max_image_pixels, mask=True,
                                        file=False) != sizes[0]:
                raise InputProblem(f"mask size differs from images[0] ({sizes[0][0]}x{sizes[0][1]}); they must match")
        except InputProblem as exc:
            raise RequestProblem(400, str(exc)) from exc
        return {"input_images": json.dumps([f"request:images[{k}]" for k in range(len(req.images))]),
                "input_sha256": ",".join(sha256_of(d) for d in req.images),
                "mask_uri": "request:mask" if req.mask else "", "mask_sha256": sha256_of(req.mask) if req.mask else "",
                "input_error": ""}


def _problem(problem: RequestProblem) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": str(problem), "status": problem.status}, status_code=problem.status)


def _openai_problem(problem: RequestProblem) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(problem), status_code=problem.status)


def _column(values: list[Any]) -> np.ndarray:
    """Values as a 1-D column (tuples of files stay one object per row; numpy would make them a second axis)."""
    if not isinstance(values[0], (str, tuple)):
        return np.asarray(values)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
