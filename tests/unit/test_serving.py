"""Serve pieces without Ray: the HTTP request contract and how pool configs become Serve options."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagefleet.configs.generator import PoolConfig
from imagefleet.configs.serve import ServeConfig
from imagefleet.pipelines.pools import serve_generator_options
from imagefleet.pipelines.serve_protocol import RequestProblem, failure_status, parse_generate_request, read_body


def parse(body: bytes, accept: str = "", default_response: str = "image") -> object:
    return parse_generate_request(body, accept, default_format="png", default_response=default_response,
                                  max_request_bytes=2048, max_images=4)


def test_minimal_request_defaults() -> None:
    req = parse(b'{"prompt": "a fox"}')
    assert req.row == {"prompt": "a fox"} and req.format == "png" and req.response == "image"


def test_nulls_are_dropped_and_format_and_response_stay_out_of_the_row() -> None:
    req = parse(b'{"prompt": "a", "seed": null, "format": "webp", "response": "json", "num_images": 3}')
    assert req.row == {"prompt": "a", "num_images": 3} and req.format == "webp" and req.response == "json"


@pytest.mark.parametrize(("accept", "default", "expected"), [
    ("application/json", "image", "json"),
    ("image/png", "json", "image"),
    ("image/*, application/json;q=0.5", "json", "image"),
    ("*/*", "json", "json"),
    ("", "image", "image"),
])
def test_accept_header_picks_the_response(accept: str, default: str, expected: str) -> None:
    assert parse(b'{"prompt": "a"}', accept, default).response == expected


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"x" * 3000, 413, "limit is 2048"),
    (b"", 400, "JSON object"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'"just a string"', 400, "JSON object"),
    (b'{"negative_prompt": "blur"}', 400, 'missing "prompt"'),
    (b'{"prompt": 5}', 400, '"prompt" must be a string'),
    (b'{"prompt": "a", "seed": true}', 400, '"seed" must be a number'),
    (b'{"prompt": "a", "steps": 4}', 400, "unknown field(s) ['steps']"),
    (b'{"prompt": "a", "response": "xml"}', 400, '"response" must be one of'),
    (b'{"prompt": "a", "num_images": 5, "response": "json"}', 400, "limit of 4"),
])
def test_bad_bodies(body: bytes, status: int, message: str) -> None:
    with pytest.raises(RequestProblem) as info:
        parse(body)
    assert info.value.status == status and message in str(info.value)


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(("body", "message"), [
    (b'{"prompt": "a", "seed": ' + b"9" * 400 + b"}", '"seed" has 400 digits; it must be a whole number between'),
    (b'{"prompt": "a", "seed": -' + b"9" * 5000 + b"}", '"seed" has 5000 digits'),  # past Python's int limit
    (b'{"prompt": "a", "width": 1e308}', '"width" must be a whole number between -2147483647 and 2147483647'),
    (b'{"prompt": "a", "height": 1e400}', '"height" must be a finite number'),
    (b'{"prompt": "a", "num_steps": 1099511627776}', '"num_steps" must be a whole number between'),
    (b'{"prompt": "a", "num_images": 4294967296, "response": "json"}', '"num_images" must be a whole number'),
    (b'{"prompt": "a", "guidance_scale": NaN}', "NaN is not valid JSON"),
    (b'{"prompt": "a", "seed": ' + NESTED + b"}", '"seed" nests arrays/objects too deeply'),
    (b'{"prompt": "a", "x": 1, "generator": {"a": ' + NESTED + b"}}", '"generator" nests arrays/objects too deeply'),
    (NESTED, "body nests arrays/objects too deeply"),
    (b'{"prompt": "\\ud800 fox"}', '"prompt" is not valid Unicode text'),
    (b'{"prompt": "a", "negative_prompt": "\\udfff"}', '"negative_prompt" is not valid Unicode text'),
    (b'{"prompt": "a", "generator": 12345678901234567890123456789012345}', '"generator" must be a string, got number'),
])
def test_values_no_row_can_hold_are_400s_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(RequestProblem) as info:
        parse_generate_request(body, "", default_format="png", default_response="json", max_request_bytes=10**6,
                               max_images=4)
    assert info.value.status == 400 and message in str(info.value)


@pytest.mark.parametrize("field", ["seed", "width", "height", "num_steps", "guidance_scale"])
@pytest.mark.parametrize("value", [2**31 - 1, -(2**31 - 1), 1e308])
def test_the_largest_accepted_numbers_become_error_rows_not_crashes(field: str, value: float) -> None:
    import pyarrow as pa

    from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
    from imagefleet.configs.loader import parse_config
    from imagefleet.pipelines.serving import serve_prep_config
    from tests.helpers import tiny_job

    body = f'{{"prompt": "a fox", "{field}": {value!r}}}'.encode()
    try:
        req = parse_generate_request(body, "", default_format="png", default_response="image",
                                     max_request_bytes=2048, max_images=4)
    except RequestProblem as exc:
        assert exc.status == 400 and f'"{field}"' in str(exc)
        return
    # what the gateway does next: the batch preprocessor turns it into one error row naming the field
    prep = PromptPreprocessor(serve_prep_config(parse_config(tiny_job("p", "m", "out"))))
    out = prep(pa.Table.from_pylist([req.row]))
    assert list(out["status"]) == ["error"] and field in str(out["error"][0])


async def chunks(parts: list[bytes], pulled: list[int]) -> AsyncIterator[bytes]:
    for part in parts:
        pulled.append(len(part))
        yield part


def test_a_declared_body_over_the_limit_is_refused_before_reading() -> None:
    pulled: list[int] = []
    with pytest.raises(RequestProblem) as info:
        asyncio.run(read_body(chunks([b"x" * 1000] * 5, pulled), "300000000", 2048))
    assert info.value.status == 413 and "300000000 bytes; the limit is 2048" in str(info.value)
    assert pulled == []


def test_a_streamed_body_is_read_only_up_to_the_limit() -> None:
    pulled: list[int] = []
    with pytest.raises(RequestProblem) as info:  # chunked: no Content-Length
        asyncio.run(read_body(chunks([b"x" * 1000] * 300_000, pulled), None, 2048))
    assert info.value.status == 413 and "the limit is 2048" in str(info.value)
    assert len(pulled) == 3  # stopped at the first chunk past 2048 bytes
    pulled.clear()  # a Content-Length that undersells the body changes nothing
    with pytest.raises(RequestProblem):
        asyncio.run(read_body(chunks([b"x" * 1000] * 10, pulled), "10", 2048))
    assert len(pulled) == 3


def test_bodies_within_the_limit_are_read_whole() -> None:
    assert asyncio.run(read_body(chunks([b"ab", b"", b"cd"], []), "4", 4)) == b"abcd"
    assert asyncio.run(read_body(chunks([b"abcd"], []), None, 4)) == b"abcd"
    for bad in ("-1", "12abc", ""):
        with pytest.raises(RequestProblem) as info:
            asyncio.run(read_body(chunks([], []), bad, 4))
        assert info.value.status == 400 and "Content-Length" in str(info.value)


def test_refusals_are_422_errors_500() -> None:
    assert failure_status({"status": "refused"}) == 422
    assert failure_status({"status": "error"}) == 500


def test_replicas_autoscale_within_the_pool_and_take_its_resources() -> None:
    pool = PoolConfig(min_size=1, max_size=3, initial_size=2, num_gpus=1, num_cpus=2, batch_size=8,
                      accelerator_type="L4")
    opts = serve_generator_options(pool, ServeConfig(target_ongoing_requests=4, max_queued_requests=50))
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 2,
                                          "target_ongoing_requests": 4}
    assert opts["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1, "accelerator_type": "L4"}
    assert opts["max_ongoing_requests"] >= 8  # a replica must be able to hold a full batch
    assert opts["max_queued_requests"] == 50


def test_the_private_serve_patch_runs_only_on_the_ray_it_was_written_for(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """pyproject admits Ray 2.x; the one private Serve detail (the replicas' internal gRPC bind) is patched only on
    the versions it was read from, and left alone, with a warning, on any other."""
    import ray
    from ray.serve._private import replica

    from imagefleet.pipelines import serving

    original = replica.add_port_to_grpc_server
    monkeypatch.setattr(replica, "add_port_to_grpc_server", original)  # restored after the test either way
    monkeypatch.setattr(ray, "__version__", "2.61.0")
    serving.bind_internal_grpc_to_node_ip()
    assert replica.add_port_to_grpc_server is original
    assert "left as Ray binds it" in caplog.text
    pyproject = (Path(serving.__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"ray[serve,data]>=2.60,<3"' in pyproject and '"diffusers>=0.42,<1"' in pyproject


def images(body: dict[str, object] | bytes, max_images: int = 4) -> object:
    from imagefleet.pipelines.openai_images import parse_images_request

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_images_request(raw, models=["tiny", "big"], default_format="png", max_request_bytes=2048,
                                max_images=max_images)


def test_an_openai_request_becomes_the_row_a_generate_request_would_be() -> None:
    req = images({"prompt": "a fox"})
    assert req == parse(b'{"prompt": "a fox", "response": "json"}')  # no model = the default generator
    req = images({"prompt": "two owls", "model": "big", "n": 2, "size": "32x48", "output_format": "jpeg",
                  "response_format": "b64_json", "quality": "auto", "background": "opaque", "moderation": "auto",
                  "stream": False, "user": "u1", "safety_identifier": "h", "style": None})
    assert req == parse(b'{"prompt": "two owls", "generator": "big", "num_images": 2, "width": 32, "height": 48, '
                        b'"format": "jpeg", "response": "json"}')
    assert images({"prompt": "a", "size": "auto", "n": None}).row == {"prompt": "a"}  # null = not given


@pytest.mark.parametrize(("body", "param", "code", "message"), [
    ({"prompt": "a", "seed": 7}, "seed", "unknown_parameter", "Unknown parameter: 'seed'; this server takes"),
    ({"n": 1}, "prompt", "missing_required_parameter", "Missing required parameter: 'prompt'."),
    ({"prompt": None}, "prompt", "invalid_type", "Invalid type for 'prompt': expected a string, but got null"),
    ({"prompt": "a", "model": "dall-e-3"}, "model", "invalid_value",
     "Invalid value for 'model': 'dall-e-3'; this server's models are its generators: 'tiny', 'big'"),
    ({"prompt": "a", "n": 5}, "n", "integer_above_max_value", "Expected a value <= 4 (serve.max_images_per_request)"),
    ({"prompt": "a", "n": 0}, "n", "integer_below_min_value", "Expected a value >= 1, but got 0 instead."),
    ({"prompt": "a", "n": 1.5}, "n", "invalid_type", "Invalid type for 'n': expected an integer, but got number"),
    ({"prompt": "a", "n": True}, "n", "invalid_type", "expected an integer, but got boolean"),
    ({"prompt": "a", "size": "big"}, "size", "invalid_value", "send 'WIDTHxHEIGHT' in pixels such as '512x512'"),
    ({"prompt": "a", "size": "0x64"}, "size", "invalid_value", "'0x64'"),
    ({"prompt": "a", "size": 512}, "size", "invalid_type", "expected a string, but got number"),
    ({"prompt": "a", "response_format": "url"}, "response_format", "invalid_value",
     "this server takes 'b64_json' (images come back inline as base64; this server keeps no image URLs)"),
    ({"prompt": "a", "output_format": "gif"}, "output_format", "invalid_value", "takes png, jpeg, webp"),
    ({"prompt": "a", "quality": "high"}, "quality", "invalid_value", "generators.<name>.defaults"),
    ({"prompt": "a", "background": "transparent"}, "background", "invalid_value", "opaque images"),
    ({"prompt": "a", "stream": True}, "stream", "invalid_value", "not streamed"),
    ({"prompt": "a", "stream": "no"}, "stream", "invalid_type", "expected a boolean"),
    ({"prompt": "a", "output_compression": 50}, "output_compression", "unsupported_parameter", "output.quality"),
    ({"prompt": "a", "user": 5}, "user", "invalid_type", "expected a string"),
    ({"prompt": "\ud800"}, "prompt", "invalid_value", '"prompt" is not valid Unicode text'),
])
def test_openai_requests_are_refused_like_the_real_api(body: dict[str, object], param: str, code: str,
                                                        message: str) -> None:
    with pytest.raises(RequestProblem) as info:
        images(body)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"prompt": "a", "n": ' + b"9" * 40 + b"}", 400, "Expected a value <= 4"),
    (b"[1]", 400, "JSON object"),
    (b"{", 400, "not valid JSON"),
    (b"x" * 3000, 413, "the limit is 2048"),
])
def test_openai_bodies_are_read_like_generate_bodies(body: bytes, status: int, message: str) -> None:
    with pytest.raises(RequestProblem) as info:
        images(body)
    assert info.value.status == status and message in str(info.value)


def test_openai_bodies_match_the_sdks_types() -> None:
    """The response and error bodies as the official SDK reads them."""
    from openai.types import ImagesResponse

    from imagefleet.pipelines.openai_images import error_body, images_headers, images_response, models_body

    results = [{"encoded": b"\x89PNG1", "format": "png", "width": 32, "height": 48, "image_key": "k1", "seed": 11},
               {"encoded": b"\x89PNG2", "format": "png", "width": 32, "height": 48, "image_key": "k2", "seed": 12}]
    reply = ImagesResponse.model_validate(images_response(results, 1700000000))
    assert reply.created == 1700000000 and reply.size == "32x48" and reply.output_format == "png"
    assert [base64.b64decode(im.b64_json or "") for im in (reply.data or [])] == [b"\x89PNG1", b"\x89PNG2"]
    assert images_headers(results, "tiny") == {"X-Imagefleet-Generator": "tiny", "X-Imagefleet-Image-Keys": "k1,k2",
                                               "X-Imagefleet-Seeds": "11,12"}
    assert models_body(["tiny"])["data"] == [{"id": "tiny", "object": "model", "created": 0, "owned_by": "imagefleet"}]
    assert error_body(RequestProblem(400, "bad size", param="size", code="invalid_value")) == {
        "error": {"message": "bad size", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}}
    assert error_body(RequestProblem(503, "busy"))["error"] == {"message": "busy", "type": "server_error",
                                                                 "param": None, "code": None}
