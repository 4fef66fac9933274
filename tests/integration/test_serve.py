"""`imagefleet serve` on 127.0.0.1 with the tiny model: a real Ray Serve app in its own process."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imagefleet.actors.keys import derive_row_id, derive_seed, image_key
from imagefleet.jobs.seaweed import pick_ports
from tests.helpers import CLI, REPO, send_until_answered, tiny_job, write_config

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, url: str, proc: subprocess.Popen[str], log: Path, model: str) -> None:
        self.url, self.proc, self.log, self.model = url, proc, log, model

    def post(self, body: Any, headers: dict[str, str] | None = None, path: str = "/generate",
             method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data if method == "POST" else None, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    port = pick_ports()["s3"]
    raw = tiny_job(tmp / "unused.parquet", tiny_model, str(tmp / "out"))
    # 2 fake GPUs, one per replica: replicas autoscale between 1 and 2 like the batch pool
    raw["generators"]["tiny"]["pool"].update(min_size=1, max_size=2, initial_size=1, batch_size=4)
    raw["serve"] = {"port": port, "batch_wait_timeout_s": 0.5}
    # requests with "images" are image-to-image, the rest text-to-image; rows may pick the tiny LoRA
    raw["source"]["task"] = "image-to-image"
    from imagefleet.jobs.tiny_models import build_tiny_lora

    lora = build_tiny_lora(tiny_model, tmp / "lora")
    raw["generators"]["tiny"]["loras"] = [{"name": "brand", "path": str(lora), "default": False}]
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/s{uuid.uuid4().hex[:6]}"
    cfg = write_config(tmp / "serve.yaml", raw)
    log = tmp / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "serve", str(cfg)], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 150
        while "imagefleet serving" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(f"http://127.0.0.1:{port}", proc, log, str(tiny_model))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


def test_healthz_lists_generators(server: Server) -> None:
    status, _, body = server.post(b"", path="/healthz", method="GET")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "generators": {"tiny": f"{server.model}@main"},
                                "default_generator": "tiny"}


def test_every_listening_socket_is_on_loopback(server: Server) -> None:
    import ipaddress

    import psutil

    # the serve process and everything it started: GCS, raylet, agents, the Serve controller, proxy and replicas
    root = psutil.Process(server.proc.pid)
    listening: dict[str, list[str]] = {}
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.setdefault(name, []).append(conn.laddr.ip)
    open_ = {name: ips for name, ips in listening.items()
             if not all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip in ips)}
    assert not open_, f"listening beyond loopback: {open_}"
    # the check saw the Serve processes: the proxy (HTTP) and the replicas (their inter-deployment gRPC servers)
    assert any("ProxyActor" in name for name in listening), listening
    assert sum("ServeReplica" in name for name in listening) >= 2, listening


def test_image_bytes_have_the_batch_jobs_key(server: Server) -> None:
    status, headers, body = server.post({"prompt": "a red fox"})
    assert status == 200 and headers["content-type"] == "image/png"
    assert png_size(body) == (64, 64)
    # the same prompt in a batch run (job seed 7, no seed column) gets the same seed and image key
    seed = derive_seed(7, derive_row_id("a red fox"), 0)
    assert int(headers["x-imagefleet-seed"]) == seed
    from imagefleet.actors.model_digest import folder_digest

    assert headers["x-imagefleet-image-key"] == image_key(  # a local model folder is keyed by its content
        model=folder_digest(server.model), revision="main", scheduler="", prompt="a red fox", negative_prompt="",
        seed=seed,
        width=64, height=64, num_steps=2, guidance_scale=0.0, render="dtype=float32")  # the config sets the dtype
    # deterministic: the same request twice gives the same bytes
    assert server.post({"prompt": "a red fox"})[2] == body


def b64_png(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40), mode: str = "RGB") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_image_to_image_and_lora_requests(server: Server) -> None:
    """An input image in the request: checked, hashed into the key like a batch row's input file; the key and
    the pixels follow the image's content; a LoRA named in the request changes the image; bad inputs are 400s."""
    import hashlib

    from imagefleet.actors.keys import adapter_key, conditioning

    red = b64_png((220, 30, 30))
    status, headers, body = server.post({"prompt": "a bottle on a beach", "images": red, "strength": 0.5})
    assert status == 200 and png_size(body) == (64, 64), body[:300]
    seed = derive_seed(7, derive_row_id("a bottle on a beach"), 0)
    made_of = conditioning(task="image-to-image", input_sha256=hashlib.sha256(base64.b64decode(red)).hexdigest(),
                           strength=0.5)
    from imagefleet.actors.model_digest import folder_digest

    assert headers["x-imagefleet-image-key"] == image_key(
        model=folder_digest(server.model), revision="main", scheduler="", prompt="a bottle on a beach",
        negative_prompt="",
        seed=seed, width=64, height=64, num_steps=2, guidance_scale=0.0, render="dtype=float32",
        conditioning=made_of)
    blue = server.post({"prompt": "a bottle on a beach", "images": [b64_png((30, 30, 220))], "strength": 0.5})
    assert blue[0] == 200 and blue[1]["x-imagefleet-image-key"] != headers["x-imagefleet-image-key"]
    assert blue[2] != body
    styled = server.post({"prompt": "a bottle on a beach", "images": red, "strength": 0.5, "loras": "brand:0.8"})
    assert styled[0] == 200 and styled[2] != body and styled[1]["x-imagefleet-image-key"] != \
        headers["x-imagefleet-image-key"]
    assert "brand@" in adapter_key([("brand", 0.8)], {"brand": "x"})
    for request, message in [
        ({"prompt": "x", "images": "%%%"}, "is not valid base64"),
        ({"prompt": "x", "images": base64.b64encode(b"GIF89a nope").decode()}, "is not a readable image"),
        ({"prompt": "x", "images": [red, red]}, "2 input images, but generator 'tiny' takes at most 1"),
        ({"prompt": "x", "images": red, "mask": b64_png((255, 0, 0), mode="L")}, "takes no \"mask\""),
        ({"prompt": "x", "images": red, "loras": "nope"}, "LoRA adapter 'nope' is not configured"),
        ({"prompt": "x", "images": red, "strength": 0}, "strength=0.0 must be in (0, 1]"),
    ]:
        code, _, reply = server.post(request)
        assert code == 400 and message in json.loads(reply)["error"], (request, reply)


def test_json_response_with_several_images(server: Server) -> None:
    status, headers, body = server.post({"prompt": "two owls", "num_images": 2, "width": 32, "height": 48,
                                         "seed": 11, "format": "jpeg"}, headers={"Accept": "application/json"})
    assert status == 200 and headers["content-type"] == "application/json"
    reply = json.loads(body)
    assert reply["generator"] == "tiny" and len(reply["images"]) == 2
    assert [im["seed"] for im in reply["images"]] == [11, 12]
    for im in reply["images"]:
        data = base64.b64decode(im["image_base64"])
        assert data[:3] == b"\xff\xd8\xff" and png_size(data) == (32, 48)
        assert im["content_type"] == "image/jpeg" and len(im["image_key"]) == 40
    # both images of one request share one model call
    assert {im["batch_size"] for im in reply["images"]} == {2}


def test_concurrent_requests_are_batched(server: Server) -> None:
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: server.post({"prompt": f"lighthouse {i}"}), range(8)))
    assert [status for status, _, _ in replies] == [200] * 8
    sizes = [int(headers["x-imagefleet-batch-size"]) for _, headers, _ in replies]
    assert max(sizes) > 1, f"no request shared a model call: {sizes}"
    assert max(sizes) <= 4  # pool.batch_size caps a call


@pytest.mark.parametrize(
    ("body", "path", "method", "status", "message"),
    [
        (b'{"prompt": ""}', "/generate", "POST", 400, "prompt is empty"),
        (b"not json", "/generate", "POST", 400, "not valid JSON"),
        (b"[1, 2]", "/generate", "POST", 400, "JSON object"),
        (b'{"promt": "typo"}', "/generate", "POST", 400, "unknown field(s) ['promt']"),
        (b'{"prompt": "x", "width": 63}', "/generate", "POST", 400, "multiple of 8"),
        (b'{"prompt": "x", "width": "wide"}', "/generate", "POST", 400, '"width" must be a number'),
        (b'{"prompt": "x", "generator": "nope"}', "/generate", "POST", 400, "not configured"),
        (b'{"prompt": "x", "num_images": 2}', "/generate", "POST", 400, '"response": "json"'),
        (b'{"prompt": "x", "num_images": 99, "response": "json"}', "/generate", "POST", 400, "limit"),
        (b'{"prompt": "x", "format": "gif"}', "/generate", "POST", 400, "format"),
        (b'{"prompt": "' + b"x" * 70000 + b'"}', "/generate", "POST", 413, "limit is 65536"),
        (b'{"prompt": "x", "seed": ' + b"7" * 400 + b"}", "/generate", "POST", 400, '"seed" has 400 digits'),
        (b'{"prompt": "x", "width": 1e308}', "/generate", "POST", 400, '"width" must be a whole number between'),
        (b'{"prompt": "x", "seed": ' + b"[" * 30000 + b"]" * 30000 + b"}", "/generate", "POST", 400,
         '"seed" nests arrays/objects too deeply'),
        (b'{"prompt": "\\ud800"}', "/generate", "POST", 400, '"prompt" is not valid Unicode text'),
        (b"", "/generate", "GET", 405, "POST"),
        (b"", "/nowhere", "GET", 404, "POST /generate"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(
    server: Server, body: bytes, path: str, method: str, status: int, message: str
) -> None:
    got, headers, reply = server.post(body, path=path, method=method)
    assert got == status, reply[:300]
    assert headers["content-type"] == "application/json"
    assert message in json.loads(reply)["error"]


def raw_post(server: Server, head: bytes, chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """POST /generate over a raw socket: send the head, then body chunks until the server answers or closes."""
    return raw_request(server, itertools.chain([b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n"],
                                               chunks))


def raw_request(server: Server, chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """Send raw request bytes until the server answers or closes; its status and body."""
    import socket

    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(next(chunks))
        reply = send_until_answered(sock, chunks)
        sock.settimeout(60)
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
    head_text, _, body = reply.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), body


def serve_rss(server: Server) -> dict[str, int]:
    """The memory probe: resident bytes of the two processes a request passes through, the Serve HTTP proxy and
    the gateway replica (where an unbounded request would be buffered)."""
    import psutil

    rss = {}
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            title = " ".join(proc.cmdline())
            for part, name in (("ProxyActor", "proxy"), ("ServeReplica:imagefleet:gateway", "gateway")):
                if part in title:
                    rss[name] = proc.memory_info().rss
    assert set(rss) == {"proxy", "gateway"}, rss
    return rss


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    return {name: round((after[name] - before[name]) / 2**20, 1) for name in before}


def test_oversized_bodies_are_refused_without_being_read(server: Server) -> None:
    assert server.post(b"", path="/healthz", method="GET")[0] == 200
    before = serve_rss(server)
    # a declared 300 MB body: refused on its Content-Length, before the client has sent any of it
    start = time.time()
    status, body = raw_post(server, b"Content-Length: 300000000\r\n", iter([]))
    assert status == 413 and "300000000 bytes; the limit is 65536" in json.loads(body)["error"]
    assert time.time() - start < 30
    # a chunked body with no length: refused once it passes the limit, with most of it never sent
    sent = []

    def chunked() -> Iterator[bytes]:
        for _ in range(4096):  # up to 256 MiB
            sent.append(1)
            yield b"10000\r\n" + b" " * 65536 + b"\r\n"
            time.sleep(0.01)

    status, body = raw_post(server, b"Transfer-Encoding: chunked\r\n", chunked())
    assert status == 413 and "the limit is 65536" in json.loads(body)["error"]
    assert len(sent) < 4096
    assert all(mib < 32 for mib in grew(before, serve_rss(server)).values()), grew(before, serve_rss(server))
    assert server.post({"prompt": "still fine"})[0] == 200


def test_oversized_request_heads_are_refused_without_being_buffered(server: Server) -> None:
    """#30: four requests with 64 MiB of headers got 200, with 511 MB left in the proxy and 384 MB in the gateway.
    The proxy now counts a head as it arrives and answers 431 (headers) or 414 (request line) past the limits."""
    assert server.post(b"", path="/healthz", method="GET")[0] == 200
    before = serve_rss(server)
    sent: list[int] = []

    def huge_head(one_header: bool) -> Iterator[bytes]:  # 64 MiB: one header, or 1,024 of 64 KiB
        yield b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"X-Pad: " if one_header else b"")
        for i in range(1024):
            sent.append(1)
            yield b"a" * 65536 if one_header else b"X-Pad-%d: " % i + b"a" * 65536 + b"\r\n"
            time.sleep(0.005)

    for one_header in (True, False, True, False):
        sent.clear()
        status, body = raw_request(server, huge_head(one_header))
        assert status == 431, body[:300]
        assert json.loads(body)["error"] == "request headers are over 65536 bytes in all (serve.max_header_bytes)"
        assert len(sent) < 256, len(sent)  # at most a quarter of it left the client
    assert all(mib < 32 for mib in grew(before, serve_rss(server)).values()), grew(before, serve_rss(server))
    # too many fields, and a request line over 8 KiB
    many = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100))
    status, body = raw_request(server, iter([many + b"\r\n"]))
    assert status == 431 and json.loads(body)["error"] == "request has over 100 header fields (serve.max_header_count)"
    status, body = raw_request(server, iter([b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]))
    assert status == 414 and "request line is over 8192 bytes" in json.loads(body)["error"]
    # within the limits: still served (exactly 100 fields: Host, X-0..X-97, Connection; a 4 KiB query)
    status, body = raw_request(server, iter([many.rpartition(b"X-98")[0] + b"Connection: close\r\n\r\n"]))
    assert status == 200, body[:300]
    assert server.post(b"", path="/healthz?" + "q" * 4000, method="GET")[0] == 200


def openai_client(server: Server) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_the_openai_sdk_gets_the_images_generate_gets(server: Server) -> None:
    """POST /v1/images/generations through the official SDK: n images of the asked size, with the seeds, image keys
    and bytes the same request through POST /generate gets (OpenAI's API has no seed: both derive it from the
    prompt); no model = the default generator."""
    client = openai_client(server)
    assert [m.id for m in client.models.list()] == ["tiny"]
    raw = client.images.with_raw_response.generate(model="tiny", prompt="two owls", n=2, size="32x48")
    reply = raw.parse()
    assert reply.size == "32x48" and reply.output_format == "png" and abs(reply.created - time.time()) < 600
    pngs = [base64.b64decode(im.b64_json or "") for im in reply.data or []]
    assert len(pngs) == 2 and all(png_size(png) == (32, 48) for png in pngs)
    status, _, body = server.post({"prompt": "two owls", "num_images": 2, "width": 32, "height": 48,
                                   "response": "json"})
    assert status == 200
    same = json.loads(body)["images"]
    assert [base64.b64decode(im["image_base64"]) for im in same] == pngs
    assert raw.headers["x-imagefleet-image-keys"] == ",".join(im["image_key"] for im in same)
    seeds = [int(seed) for seed in raw.headers["x-imagefleet-seeds"].split(",")]
    assert seeds == [im["seed"] for im in same] and seeds[0] == derive_seed(7, derive_row_id("two owls"), 0)
    plain = client.images.generate(prompt="a red fox", response_format="b64_json")
    assert plain.size == "64x64" and plain.data and plain.data[0].b64_json
    assert base64.b64decode(plain.data[0].b64_json) == server.post({"prompt": "a red fox"})[2]


@pytest.mark.parametrize(("kwargs", "param", "message"), [
    ({"model": "dall-e-3"}, "model", "Invalid value for 'model': 'dall-e-3'; this server's models are its "
                                     "generators: 'tiny' (GET /v1/models lists them)"),
    ({"size": "big"}, "size", "Invalid value for 'size': 'big'; send 'WIDTHxHEIGHT' in pixels"),
    ({"size": "63x64"}, None, "multiple of 8"),  # the batch preprocessor's own check
    ({"extra_body": {"seed": 7}}, "seed", "Unknown parameter: 'seed'"),
    ({"response_format": "url"}, "response_format", "this server keeps no image URLs"),
    ({"n": 9}, "n", "Expected a value <= 4 (serve.max_images_per_request), but got 9 instead."),
])
def test_the_openai_sdk_raises_bad_request_with_our_message(server: Server, kwargs: dict[str, Any],
                                                             param: str | None, message: str) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        openai_client(server).images.generate(prompt="a fox", **kwargs)
    err = info.value
    assert (err.status_code, err.type, err.param) == (400, "invalid_request_error", param)
    assert message in err.message and "\n" not in err.message


def test_openai_route_errors_have_the_openai_shape(server: Server) -> None:
    for body, path, method, status in [
        (b"", "/v1/images/generations", "GET", 405),
        (b"{}", "/v1/images/edits", "POST", 404),
        (b'{"prompt": "' + b"x" * 70000 + b'"}', "/v1/images/generations", "POST", 413),
        (b"not json", "/v1/images/generations", "POST", 400),
    ]:
        got, headers, reply = server.post(body, path=path, method=method)
        assert got == status and headers["content-type"] == "application/json", reply[:300]
        error = json.loads(reply)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"


def test_sigterm_stops_cleanly(server: Server) -> None:
    assert server.post({"prompt": "last one"})[0] == 200  # still healthy after the bad requests
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert "imagefleet: stopping" in server.log.read_text()
