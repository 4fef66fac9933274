"""How the stores meet failure: S3 errors explained in one line, transient ones (an outage, throttling) told
apart and ridden out within a time budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


def explain_s3_error(exc: BaseException, where: str) -> str:
    """One line telling the user what went wrong with S3 and what to change."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    name = type(exc).__name__
    if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
        return f"S3 rejected the credentials for {where} ({code}): check the access key / secret key"
    if code in ("AccessDenied", "403", "Forbidden"):
        return f"the credentials may not write to {where} ({code}): use keys with write permission on the bucket"
    if code in ("NoSuchBucket", "404"):
        return f"bucket for {where} does not exist ({code}): create it or fix the URI"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"cannot reach the S3 endpoint for {where}: {exc} — check s3.endpoint_url and that the server runs"
    if name == "ReadTimeoutError":
        return (f"the S3 endpoint for {where} accepted the connection but did not answer in time ({exc}) — check "
                f"s3.endpoint_url points at an S3 server, and that it is healthy")
    return f"S3 error for {where}: {code or name}: {exc}"


ARROW_RETRYABLE = ("NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "THROTTLING",
                   "REQUEST_TIMEOUT", "UNKNOWN (HTTP status 5")
RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "503", "500", "502", "504"}


def is_transient(exc: BaseException) -> bool:
    """Outage-like S3 failures worth riding out: connection problems, 5xx, throttling."""
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
                "ProxyConnectionError", "ConnectionError"):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in RETRYABLE_CODES or status >= 500
    # pyarrow's S3 filesystem (manifest part reads) raises OSError naming the AWS SDK's error type
    return isinstance(exc, OSError) and any(f"AWS Error {kind}" in str(exc) for kind in ARROW_RETRYABLE)


def with_retries(fn: Callable[[], T], budget_s: float, what: str) -> T:
    """Call `fn`, retrying transient store errors with capped exponential backoff for up to `budget_s`."""
    deadline = time.monotonic() + budget_s
    delay = 0.25
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: transient store error (%s), retrying in %.1fs", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
