"""Online serving (`imagefleet serve`): HTTP endpoint, dynamic batching and replica autoscaling."""

from typing import Literal

from pydantic import Field

from imagefleet.configs.base import StrictModel


class ServeConfig(StrictModel):
    """How the configured generators are served over HTTP with Ray Serve.

    Each generator becomes one Serve deployment whose replicas are sized by that generator's `pool`
    (min_size..max_size replicas, num_gpus/num_cpus each) and whose model calls group concurrent requests
    (`@serve.batch`, up to `pool.batch_size` images per call).
    """

    host: str = Field(default="127.0.0.1", min_length=1)
    """Address the HTTP proxy binds (loopback by default; 0.0.0.0 inside a container)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port."""
    batch_wait_timeout_s: float = Field(default=0.05, ge=0, le=10)
    """How long a replica waits for more requests to fill a batch before running what it has."""
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    """Replica autoscaling target: in-flight requests per replica before another replica is added."""
    max_queued_requests: int = Field(default=256, ge=-1)
    """Requests a generator may hold waiting before new ones get 503 (-1 = unbounded)."""
    max_request_bytes: int = Field(default=65536, ge=1024)
    """Larger request bodies get 413."""
    max_request_line_bytes: int = Field(default=8192, ge=256, le=1_048_576)
    """A longer request line (method, path and query) gets 414; the proxy stops reading it there."""
    max_header_bytes: int = Field(default=65536, ge=1024, le=16_777_216)
    """Request headers over this many bytes in all (each `name: value` line) get 431; the proxy stops reading them
    there."""
    max_header_count: int = Field(default=100, ge=8, le=10_000)
    """Requests with more header fields get 431."""
    max_images_per_request: int = Field(default=4, ge=1, le=64)
    """Largest `num_images` one request may ask for."""
    default_response: Literal["image", "json"] = "image"
    """What POST /generate returns unless the request says (`response` field or Accept header)."""
    request_timeout_s: float = Field(default=300.0, gt=0)
    """A request whose image takes longer than this gets 504."""
