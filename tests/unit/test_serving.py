"""Serve pieces without Ray: the HTTP request contract and how pool configs become Serve options."""

from __future__ import annotations

import pytest

from configs.generator import PoolConfig
from configs.serve import ServeConfig
from pipelines.pools import serve_generator_options
from pipelines.serve_protocol import RequestProblem, failure_status, parse_generate_request


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
