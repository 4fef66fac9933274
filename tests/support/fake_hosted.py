"""A loopback fake of the OpenAI Images API and the Gemini generateContent API (their documented wire formats),
for tests and offline development: `python -m tests.support.fake_hosted --port 8123` (from the repo root).

Fault knobs live on the server object (`server.knobs`), so a test flips them while Ray actors talk to it:
rate_limit_n (429 + retry headers / RetryInfo), quota_exhausted (OpenAI insufficient_quota), server_error_n
(500/503), latency_ms, retired_model (404), thought_images (Gemini interim images). Per-row refusals come from
prompt markers: `[refuse]` (OpenAI 400 moderation_blocked, Gemini blockReason), `[refuse:IMAGE_SAFETY]`,
`[refuse:NO_IMAGE]`, `[refuse:TEXT]` (Gemini finishReason forms).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI_KEY = "sk-fake-imagefleet"
GEMINI_KEY = "g-fake-imagefleet"
OPENAI_MODELS = {"gpt-image-2", "gpt-image-2.5-sunburst", "gpt-image-2.6-flare", "gpt-image-1-mini"}
GEMINI_MODELS = {"gemini-3.1-flash-image", "gemini-3-pro-image", "gemini-3.1-flash-lite-image"}
GEMINI_TIERS = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}
GEMINI_TOKENS = {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}


@dataclass
class Knobs:
    rate_limit_n: int = 0
    retry_after_ms: int = 50
    quota_exhausted: bool = False
    server_error_n: int = 0
    latency_ms: int = 0
    retired_model: bool = False
    thought_images: int = 0


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def png(width: int, height: int, seed_text: str) -> bytes:
    """A deterministic flat-colour PNG (colour from the prompt)."""
    from PIL import Image

    h = hashlib.sha256(seed_text.encode()).digest()
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (h[0], h[1], h[2])).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def gemini_size(aspect: str, tier: str) -> tuple[int, int]:
    a, b = (int(x) for x in aspect.split(":"))
    side = GEMINI_TIERS[tier]
    if a >= b:
        return side, max(16, round(side * b / a / 16) * 16)
    return max(16, round(side * a / b / 16) * 16), side


@dataclass
class FakeHosted:
    """Run with `start()`; `url` is the base for OpenAI (`url + "/v1"`) and Gemini (`url`)."""

    port: int = 0
    knobs: Knobs = field(default_factory=Knobs)
    log: list[Logged] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_ticks: int = 2  # polls before a batch completes

    def start(self) -> FakeHosted:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        self.lock = threading.Lock()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- plumbing -----------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = raw
        with self.lock:
            self.log.append(Logged(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, body))
        if self.knobs.latency_ms:
            time.sleep(self.knobs.latency_ms / 1000)
        path = h.path.split("?", 1)[0]
        content_type = "application/json"
        if path.endswith("/images/generations"):
            status, headers, payload = self._openai(h.headers, body)
        elif ":generateContent" in path:
            status, headers, payload = self._gemini(h.headers, path, body)
        elif ":batchGenerateContent" in path:
            status, headers, payload = _gemini_batch_create(self, h.headers, path, body)
        elif "/batches/" in path and "/v1/batches" not in path:
            status, headers, payload = _gemini_batch_get(self, path)
        elif path == "/v1/files" and h.command == "POST":
            status, headers, payload = _openai_file_upload(self, h.headers, raw)
        elif path.startswith("/v1/files/") and path.endswith("/content"):
            status, headers, payload, content_type = 200, {}, self.files[path.split("/")[3]], "application/jsonl"
        elif path == "/v1/batches" and h.command == "POST":
            status, headers, payload = _openai_batch_create(self, h.headers, body)
        elif path.startswith("/v1/batches/"):
            status, headers, payload = _openai_batch_get(self, path.split("/")[3])
        else:
            status, headers, payload = 404, {}, {"error": {"message": f"no route {path}", "code": 404}}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _take(self, knob: str) -> bool:
        with self.lock:
            if getattr(self.knobs, knob) > 0:
                setattr(self.knobs, knob, getattr(self.knobs, knob) - 1)
                return True
        return False

    # -- OpenAI -------------------------------------------------------------------------------------
    def _openai(self, h: Any, body: Any) -> tuple[int, dict[str, str], Any]:
        rid = {"x-request-id": "req_" + uuid.uuid4().hex[:12]}

        def err(status: int, message: str, type_: str, code: str | None,
                extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
            return status, {**rid, **(extra or {})}, {"error": {"message": message, "type": type_, "param": None,
                                                               "code": code}}

        if h.get("authorization") != f"Bearer {OPENAI_KEY}":
            return err(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if self.knobs.quota_exhausted:
            return err(429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota")
        if self._take("rate_limit_n"):
            return err(429, "Rate limit reached for images per min.", "requests", "rate_limit_exceeded",
                       {"retry-after-ms": str(self.knobs.retry_after_ms), "x-ratelimit-remaining-requests": "0"})
        if self._take("server_error_n"):
            return err(500, "The server had an error.", "server_error", None)
        model = body.get("model", "")
        if self.knobs.retired_model or model not in OPENAI_MODELS:
            return err(404, f"The model '{model}' does not exist.", "invalid_request_error", "model_not_found")
        prompt = body.get("prompt", "")
        if "[refuse]" in prompt:
            status, headers, payload = err(400, "Your request was rejected by the safety system. "
                                           "safety_violations=[violence]", "image_generation_user_error",
                                           "moderation_blocked")
            payload["error"]["moderation_details"] = {"moderation_stage": "input", "categories": ["violence"]}
            return status, headers, payload
        if "response_format" in body:
            return err(400, "response_format is not supported for GPT image models", "invalid_request_error", None)
        w, _, hgt = str(body.get("size", "1024x1024")).partition("x")
        n = int(body.get("n", 1))
        if not 1 <= n <= 10:
            return err(400, "n must be between 1 and 10", "invalid_request_error", None)
        quality = body.get("quality", "auto")
        out_tokens = {"low": 272, "medium": 1056, "high": 4160}.get(quality, 1056)
        data = [{"b64_json": base64.b64encode(png(int(w), int(hgt), f"{prompt}/{i}")).decode()} for i in range(n)]
        usage = {"input_tokens": 50, "output_tokens": out_tokens * n, "total_tokens": 50 + out_tokens * n,
                 "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                 "output_tokens_details": {"image_tokens": out_tokens * n, "text_tokens": 0}}
        return 200, rid, {"created": int(time.time()), "data": data, "background": "opaque", "output_format": "png",
                          "size": f"{w}x{hgt}", "quality": quality, "usage": usage}

    # -- Gemini -------------------------------------------------------------------------------------
    def _gemini(self, h: Any, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        def err(status: int, name: str, message: str,
                details: list[Any] | None = None) -> tuple[int, dict[str, str], Any]:
            return status, {}, {"error": {"code": status, "message": message, "status": name,
                                          "details": details or []}}

        key = h.get("x-goog-api-key") or ""
        if key != GEMINI_KEY:
            return err(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
        if self._take("rate_limit_n"):
            return err(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                 "retryDelay": f"{self.knobs.retry_after_ms / 1000:.3f}s"}])
        if self._take("server_error_n"):
            return err(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        model = path.rsplit("/models/", 1)[-1].split(":", 1)[0]
        if self.knobs.retired_model or model not in GEMINI_MODELS:
            return err(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta")
        gen_cfg = body.get("generationConfig", {})
        if "IMAGE" not in gen_cfg.get("responseModalities", []):
            return err(400, "INVALID_ARGUMENT", "responseModalities must include IMAGE for this model")
        image_cfg = gen_cfg.get("imageConfig", {})
        tier, aspect = image_cfg.get("imageSize", "1K"), image_cfg.get("aspectRatio", "1:1")
        if tier not in GEMINI_TIERS:
            return err(400, "INVALID_ARGUMENT", f"imageSize {tier!r} is not supported (use 512, 1K, 2K, 4K)")
        prompt = "".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
        usage = {"promptTokenCount": 7, "candidatesTokenCount": GEMINI_TOKENS[tier],
                 "totalTokenCount": 7 + GEMINI_TOKENS[tier], "thoughtsTokenCount": 40,
                 "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": GEMINI_TOKENS[tier]}]}
        base = {"modelVersion": model, "responseId": uuid.uuid4().hex[:16], "usageMetadata": usage}
        if "[refuse]" in prompt:
            return 200, {}, {**base, "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}
        for reason in ("IMAGE_SAFETY", "NO_IMAGE"):
            if f"[refuse:{reason}]" in prompt:
                return 200, {}, {**base, "candidates": [{"content": {"role": "model", "parts": []},
                                                         "finishReason": reason, "index": 0}]}
        if "[refuse:TEXT]" in prompt:
            return 200, {}, {**base, "candidates": [{"content": {"role": "model", "parts": [
                {"text": "I can't draw that, but here is a description."}]}, "finishReason": "STOP", "index": 0}]}
        w, hh = gemini_size(aspect, tier)
        parts: list[dict[str, Any]] = [{"text": "Here you go"}]
        for t in range(self.knobs.thought_images):  # interim "thinking" images come first and must be skipped
            parts.append({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(
                png(w, hh, f"thought-{t}")).decode()}, "thought": True, "thoughtSignature": "c2ln"})
        parts.append({"inlineData": {"mimeType": "image/png",
                                     "data": base64.b64encode(png(w, hh, prompt)).decode()}})
        return 200, {}, {**base, "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP",
                                                 "index": 0}]}


def _multipart_file(headers: Any, raw: bytes) -> bytes:
    from email.parser import BytesParser
    from email.policy import default

    msg = BytesParser(policy=default).parsebytes(
        b"Content-Type: " + headers.get("content-type", "").encode() + b"\r\n\r\n" + raw)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return bytes(part.get_payload(decode=True))
    return b""


def _openai_file_upload(self: FakeHosted, headers: Any, raw: bytes) -> tuple[int, dict[str, str], Any]:
    if headers.get("authorization") != f"Bearer {OPENAI_KEY}":
        return 401, {}, {"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}
    fid = "file-" + uuid.uuid4().hex[:10]
    self.files[fid] = _multipart_file(headers, raw)
    return 200, {}, {"id": fid, "object": "file", "purpose": "batch", "bytes": len(self.files[fid]),
                     "filename": "batch.jsonl", "status": "processed", "created_at": int(time.time())}


def _openai_batch_create(self: FakeHosted, headers: Any, body: Any) -> tuple[int, dict[str, str], Any]:
    bid = "batch_" + uuid.uuid4().hex[:10]
    self.batches[bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "status": "validating",
                         "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                         "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0, "failed": 0},
                         "metadata": body.get("metadata"), "output_file_id": None, "error_file_id": None,
                         "_auth": headers.get("authorization"), "_ticks": 0}
    return 200, {}, _public(self.batches[bid])


def _openai_batch_get(self: FakeHosted, bid: str) -> tuple[int, dict[str, str], Any]:
    b = self.batches[bid]
    b["_ticks"] += 1
    if b["status"] == "validating":
        b["status"] = "in_progress"
    elif b["status"] == "in_progress" and b["_ticks"] >= self.batch_ticks:
        ok: list[str] = []
        bad: list[str] = []
        for line in self.files[b["input_file_id"]].decode().splitlines():
            req = json.loads(line)
            status, headers, payload = self._openai({"authorization": b["_auth"]}, req["body"])
            out = {"id": "batch_req_" + uuid.uuid4().hex[:8], "custom_id": req["custom_id"],
                   "response": {"status_code": status, "request_id": headers.get("x-request-id", ""),
                                "body": payload}, "error": None}
            (ok if status == 200 else bad).append(json.dumps(out))
        for name, lines in (("output_file_id", ok), ("error_file_id", bad)):
            if lines:
                fid = "file-" + uuid.uuid4().hex[:10]
                self.files[fid] = ("\n".join(lines) + "\n").encode()
                b[name] = fid
        b["request_counts"] = {"total": len(ok) + len(bad), "completed": len(ok), "failed": len(bad)}
        b["status"] = "completed"
    return 200, {}, _public(b)


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if not k.startswith("_")}


def _gemini_batch_create(self: FakeHosted, headers: Any, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
    if (headers.get("x-goog-api-key") or "") != GEMINI_KEY:
        return 400, {}, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid."}}
    version, model = path.split("/")[1], path.rsplit("/models/", 1)[-1].split(":", 1)[0]
    bid = f"batches/{uuid.uuid4().hex[:10]}"
    reqs = body["batch"]["inputConfig"]["requests"]["requests"]
    self.batches[bid] = {"name": bid, "model": model, "version": version, "requests": reqs, "ticks": 0,
                         "state": "BATCH_STATE_PENDING", "auth": headers.get("x-goog-api-key")}
    return 200, {}, _gemini_op(self, bid)


def _gemini_batch_get(self: FakeHosted, path: str) -> tuple[int, dict[str, str], Any]:
    bid = "batches/" + path.rsplit("/batches/", 1)[-1]
    b = self.batches[bid]
    b["ticks"] += 1
    if b["state"] == "BATCH_STATE_PENDING":
        b["state"] = "BATCH_STATE_RUNNING"
    elif b["state"] == "BATCH_STATE_RUNNING" and b["ticks"] >= self.batch_ticks:
        out = []
        for item in b["requests"]:
            status, _, payload = self._gemini({"x-goog-api-key": b["auth"]},
                                              f"/{b['version']}/models/{b['model']}:generateContent", item["request"])
            entry: dict[str, Any] = {"metadata": item.get("metadata", {})}
            entry["response" if status == 200 else "error"] = payload if status == 200 else payload["error"]
            out.append(entry)
        b["output"] = {"inlinedResponses": {"inlinedResponses": out}}
        b["state"] = "BATCH_STATE_SUCCEEDED"
    return 200, {}, _gemini_op(self, bid)


def _gemini_op(self: FakeHosted, bid: str) -> dict[str, Any]:
    b = self.batches[bid]
    meta: dict[str, Any] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                            "model": f"models/{b['model']}", "state": b["state"], "name": bid}
    if "output" in b:
        meta["output"] = b["output"]
    return {"name": bid, "metadata": meta, "done": b["state"] == "BATCH_STATE_SUCCEEDED"}



def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.support.fake_hosted")
    p.add_argument("--port", type=int, default=8123)
    args = p.parse_args(argv)
    server = FakeHosted(port=args.port).start()
    print(f"fake OpenAI at {server.url}/v1 (key {OPENAI_KEY}); fake Gemini at {server.url} (key {GEMINI_KEY})")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
