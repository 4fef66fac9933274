"""Request-head limits of `imagefleet serve`: the request line and headers, counted in Ray Serve's HTTP proxy.

The proxy runs uvicorn with httptools, which buffers a request's line and headers whatever their size (#30: four
requests with 64 MiB of headers each got 200 and left the proxy at 511 MB, the gateway at 384 MB). Ray Serve 2.60
passes no limit to uvicorn, and uvicorn has none for httptools, so the gateway installs these in each proxy
process (`ProxyLimits`, through the actor's `__ray_call__`): every new connection counts its request head as the
bytes arrive, before the parser sees them, and answers 414 or 431 and closes once past a limit. The gateway checks
the same limits on what reaches it (`head_problem`), for a proxy the install has not reached yet.

This module imports only the standard library at the top: the proxy process imports it to unpickle the install.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

REASONS = {414: "URI Too Long", 431: "Request Header Fields Too Large"}
PROXY_CHECK_S = 30.0
"""How often the gateway looks for proxies without the limits (Serve starts one on each node that gets replicas)."""


@dataclass(frozen=True)
class HeadLimits:
    """The serve slice's limits on a request head."""

    max_request_line_bytes: int
    max_header_bytes: int
    max_header_count: int

    def too_long_line(self) -> tuple[int, str]:
        return 414, (f"request line is over {self.max_request_line_bytes} bytes (serve.max_request_line_bytes); "
                     f"send a shorter path and query")

    def too_many_bytes(self) -> tuple[int, str]:
        return 431, f"request headers are over {self.max_header_bytes} bytes in all (serve.max_header_bytes)"

    def too_many_fields(self) -> tuple[int, str]:
        return 431, f"request has over {self.max_header_count} header fields (serve.max_header_count)"


def head_problem(scope: Mapping[str, Any], limits: HeadLimits) -> tuple[int, str] | None:
    """(status, message) when an ASGI request's head is over a limit (sized as sent: `name: value` lines)."""
    headers = list(scope.get("headers") or [])
    if headers and headers[-1][0] == b"x-request-id":
        headers.pop()  # Serve's proxy appends one when the client sent none (RequestIdMiddleware)
    if len(headers) > limits.max_header_count:
        return limits.too_many_fields()
    if sum(len(name) + len(value) + 4 for name, value in headers) + 2 > limits.max_header_bytes:
        return limits.too_many_bytes()
    query = scope.get("query_string") or b""
    line = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + (len(query) + 1 if query else 0) + 10
    return limits.too_long_line() if line > limits.max_request_line_bytes else None


class HeadScanner:
    """One connection's request heads, counted as their bytes arrive: the request line, then header lines up to
    the blank line that ends the head. Body bytes are not looked at; `expect_head` starts the next request."""

    def __init__(self, limits: HeadLimits) -> None:
        self.limits = limits
        self.last = b""
        self.expect_head()

    def expect_head(self) -> None:
        self.active, self.request_line_seen = True, False
        self.line = self.header_bytes = self.header_count = 0

    def feed(self, data: bytes) -> tuple[int, str] | None:
        """Count `data`; (status, message) as soon as the head is over a limit, else None."""
        pos, size = 0, len(data)
        while self.active and pos < size:
            newline = data.find(b"\n", pos)
            end = size if newline < 0 else newline + 1
            self.line += end - pos
            if self.request_line_seen:
                self.header_bytes += end - pos
                if self.header_bytes > self.limits.max_header_bytes:
                    return self.limits.too_many_bytes()
            elif self.line > self.limits.max_request_line_bytes + 2:  # the line and its CRLF
                return self.limits.too_long_line()
            if newline < 0:
                break
            before = data[newline - 1:newline] if newline > 0 else self.last
            text = self.line - 1 - (before == b"\r")  # the line without its line end
            if not self.request_line_seen:
                self.request_line_seen = text > 0  # empty lines before a request line are ignored (RFC 9112 2.2)
            elif text == 0:
                self.active = False  # the head is complete: what follows is its body
            else:
                self.header_count += 1
                if self.header_count > self.limits.max_header_count:
                    return self.limits.too_many_fields()
            self.line, pos = 0, end
        self.last = data[-1:]
        return None


def install(limits: HeadLimits) -> str:
    """Count request heads on every HTTP connection this process's uvicorn accepts from now on (a later call sets
    new limits). Says what it did."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if AutoHTTPProtocol is not HttpToolsProtocol:
        return "not installed: uvicorn parses with h11 here, whose own limit (16 KiB a head, 400) applies"
    protocol: Any = HttpToolsProtocol
    protocol.imagefleet_head_limits = limits
    if not getattr(protocol, "imagefleet_counts_heads", False):
        receive, complete = protocol.data_received, protocol.on_message_complete

        def data_received(self: Any, data: bytes) -> None:
            scanner = self.__dict__.get("imagefleet_head")
            if scanner is None:
                scanner = self.imagefleet_head = HeadScanner(type(self).imagefleet_head_limits)
            refusal = scanner.feed(data) if scanner.active else None
            if refusal is None:
                receive(self, data)
            elif not self.transport.is_closing():
                _refuse(self, *refusal)

        def on_message_complete(self: Any) -> None:
            complete(self)
            scanner = self.__dict__.get("imagefleet_head")
            if scanner is not None:
                scanner.expect_head()  # (a pipelined request's head in the same read is parsed unscanned)

        protocol.data_received, protocol.on_message_complete = data_received, on_message_complete
        protocol.imagefleet_counts_heads = True
    return (f"installed: request line {limits.max_request_line_bytes} bytes, headers {limits.max_header_bytes} "
            f"bytes and {limits.max_header_count} fields")


def _refuse(protocol: Any, status: int, message: str) -> None:
    """Answer and close (only close while an earlier pipelined response is still being written)."""
    cycle = protocol.cycle
    if cycle is None or cycle.response_complete:
        body = json.dumps({"error": message, "status": status}).encode()
        head = (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        protocol.transport.write(head.encode() + body)
    protocol.transport.close()


def _install_in_proxy(proxy: Any, limits: HeadLimits) -> str:
    """Run in a proxy actor by `__ray_call__` (which passes the actor first)."""
    return install(limits)


class ProxyLimits:
    """Keeps `limits` installed in every Ray Serve HTTP proxy of the cluster.

    Args:
        limits: the limits to install.
    """

    def __init__(self, limits: HeadLimits) -> None:
        self.limits = limits
        self.sent: set[str] = set()
        self.next_check = 0.0

    def due(self) -> bool:
        """Whether to look for new proxies now (True once per `PROXY_CHECK_S`, for the first caller)."""
        if time.monotonic() < self.next_check:
            return False
        self.next_check = time.monotonic() + PROXY_CHECK_S
        return True

    def refresh(self) -> None:
        """Send the install to each proxy that has not had it (it runs there at once; nothing waits for it)."""
        import ray

        self.next_check = time.monotonic() + PROXY_CHECK_S
        try:  # Ray Serve 2.60 names its proxies so (pinned in pyproject)
            from ray.serve._private.constants import SERVE_NAMESPACE, SERVE_PROXY_NAME

            actors = ray.util.list_named_actors(all_namespaces=True)
        except Exception as exc:  # noqa: BLE001 - the gateway's own check holds meanwhile
            logger.warning("request-head limits: Serve's proxies not listed (tried again in %.0f s): %s",
                           PROXY_CHECK_S, exc)
            return
        for actor in actors:
            name = actor["name"]
            if actor["namespace"] != SERVE_NAMESPACE or not name.startswith(SERVE_PROXY_NAME) or name in self.sent:
                continue
            try:
                call: Any = ray.get_actor(name, namespace=SERVE_NAMESPACE).__ray_call__.remote(_install_in_proxy,
                                                                                         self.limits)
            except ValueError:  # the proxy is gone meanwhile
                continue
            self.sent.add(name)
            call.future().add_done_callback(lambda done, name=name: self._said(name, done))

    def _said(self, name: str, done: Any) -> None:
        try:
            logger.info("request-head limits in %s: %s", name, done.result())
        except Exception as exc:  # noqa: BLE001 - a proxy that can't take them: the gateway's check still holds
            logger.warning("request-head limits not installed in %s (tried again in %.0f s): %s", name,
                           PROXY_CHECK_S, exc)
            self.sent.discard(name)
