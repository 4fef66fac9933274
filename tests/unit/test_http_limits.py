"""Request-head limits (#30 item 4): counted as the bytes arrive, on a real uvicorn (httptools) like Serve's proxy."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from imagefleet.pipelines.http_limits import HeadLimits, HeadScanner, head_problem, install
from tests.helpers import send_until_answered

LIMITS = HeadLimits(max_request_line_bytes=1024, max_header_bytes=4096, max_header_count=20)


def scan(*chunks: bytes) -> tuple[int, str] | None:
    scanner = HeadScanner(LIMITS)
    for chunk in chunks:
        refusal = scanner.feed(chunk)
        if refusal is not None:
            return refusal
    return None


def test_a_head_within_the_limits_passes_however_it_is_split() -> None:
    head = b"\r\nPOST /generate?x=1 HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 19 + b"\r\n"
    body = b"\n" * 100_000  # body bytes are not looked at
    assert scan(head + body) is None
    assert scan(*[head[i:i + 1] for i in range(len(head))], body) is None  # byte by byte: CR and LF apart


@pytest.mark.parametrize(("chunks", "status", "message"), [
    ([b"GET /" + b"a" * 2000], 414, "request line is over 1024 bytes"),  # refused before the line ends
    ([b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 5000], 431, "over 4096 bytes in all"),  # inside one header
    ([b"GET / HTTP/1.1\r\n", *[b"X: 1\r\n"] * 21], 431, "over 20 header fields"),
])
def test_a_head_over_a_limit_is_refused_as_soon_as_it_passes(chunks: list[bytes], status: int,
                                                              message: str) -> None:
    refusal = scan(*chunks)
    assert refusal is not None and refusal[0] == status and message in refusal[1]


def test_each_request_on_a_connection_is_counted_anew() -> None:
    scanner = HeadScanner(LIMITS)
    head = b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 15 + b"\r\n"
    for _ in range(3):
        assert scanner.feed(head) is None and not scanner.active
        scanner.expect_head()  # the parser says the message is complete
    assert scanner.feed(b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 25) == LIMITS.too_many_fields()


def test_the_gateway_checks_the_same_limits_on_what_reaches_it() -> None:
    scope: dict[str, Any] = {"method": "GET", "raw_path": b"/healthz", "query_string": b"", "headers": [(b"a", b"b")]}
    assert head_problem(scope, LIMITS) is None
    assert head_problem({**scope, "headers": [(b"x", b"1")] * 21}, LIMITS) == LIMITS.too_many_fields()
    assert head_problem({**scope, "headers": [(b"x", b"1" * 5000)]}, LIMITS) == LIMITS.too_many_bytes()
    assert head_problem({**scope, "query_string": b"q" * 2000}, LIMITS) == LIMITS.too_long_line()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    reply = json.dumps({"headers": len(scope["headers"]), "body": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": reply})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """A uvicorn with httptools, as Ray Serve's proxy runs it, with the limits installed (in this process: the
    protocol class is put back afterwards)."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    patched = ("data_received", "on_message_complete", "imagefleet_head_limits", "imagefleet_counts_heads")
    saved = {name: HttpToolsProtocol.__dict__[name] for name in patched if name in HttpToolsProtocol.__dict__}
    assert install(LIMITS).startswith("installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free, http="httptools", lifespan="off",
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield free
    server.should_exit = True
    thread.join(10)
    for name in patched:
        if name in saved:
            setattr(HttpToolsProtocol, name, saved[name])
        else:
            delattr(HttpToolsProtocol, name)


def exchange(port: int, chunks: Iterator[bytes], sent: list[int]) -> bytes:
    """Send chunks until the server answers or closes; return what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reply = send_until_answered(sock, chunks, sent)
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                reply += data
    return reply


def test_uvicorn_answers_431_and_414_before_reading_the_rest(port: int) -> None:
    def huge_header() -> Iterator[bytes]:
        yield b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "
        for _ in range(1024):  # 64 MiB
            yield b"a" * 65536
            time.sleep(0.001)

    sent: list[int] = []
    reply = exchange(port, huge_header(), sent)
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert json.loads(reply.partition(b"\r\n\r\n")[2]) == {"error": LIMITS.too_many_bytes()[1], "status": 431}
    assert sum(sent) < 8 * 2**20  # most of the 64 MiB never left the client
    many = iter([b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 30 + b"\r\n"])
    assert exchange(port, many, []).startswith(b"HTTP/1.1 431 ")
    long_line = iter([b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"])
    assert exchange(port, long_line, []).startswith(b"HTTP/1.1 414 URI Too Long\r\n")


def test_requests_within_the_limits_and_bodies_pass_on_one_connection(port: int) -> None:
    body = b"x" * 300_000  # a body is not a header: far over max_header_bytes, still fine
    first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    # Host, 18 more and Connection: exactly the 20 fields allowed
    second = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 18 + b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(first)
        time.sleep(0.2)
        sock.sendall(second)
        reply = b""
        while data := sock.recv(65536):
            reply += data
    assert reply.count(b"HTTP/1.1 200 OK") == 2, reply[:500]
    assert b'{"headers": 2, "body": 300000}' in reply and b'{"headers": 20, "body": 0}' in reply
