"""The embedded SeaweedFS serves data only on its authenticated S3 port: every other port refuses it."""

from __future__ import annotations

import http.client
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

PAYLOAD = b"imagefleet-secret-" * 200  # > 2 KiB: stored as a volume needle, not inline in the filer
REFUSED = {401, 403, 404, 405}  # 404/405: that HTTP API is switched off (`-disableHttp`)


def unsigned(method: str, url: str, body: bytes | None = None) -> tuple[int | str, bytes]:
    """One request without credentials: (status or the connection error's name, body)."""
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            try:
                return resp.status, resp.read()
            except http.client.IncompleteRead as exc:
                return resp.status, exc.partial
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
        return type(exc).__name__, b""


def needle_ids(data_dir: Path, collection: str) -> list[str]:
    """File ids (`vid,keycookie`) of the needles stored for a bucket, read from the volume files on disk."""
    fids = []
    for idx in sorted(data_dir.glob(f"{collection}_*.idx")):
        vid = int(idx.stem.rsplit("_", 1)[1])
        dat, raw = idx.with_suffix(".dat").read_bytes(), idx.read_bytes()
        for width in (17, 16):  # index entry: key(8) offset(5 in the "8000GB" build, else 4) size(4)
            found = []
            for i in range(0, len(raw) - width + 1, width):
                entry = raw[i:i + width]
                offset = 8 * (int.from_bytes(entry[8:12], "big") + (entry[12] << 32 if width == 17 else 0))
                if int.from_bytes(entry[width - 4:], "big", signed=True) <= 0:
                    continue  # deleted
                # needle header: cookie(4) key(8); its key must match the index entry's
                if len(raw) % width or dat[offset + 4:offset + 12] != entry[:8]:
                    break
                found.append(f"{vid},{int.from_bytes(entry[:8], 'big'):x}{dat[offset:offset + 4].hex()}")
            else:
                fids += found
                break
    return fids


def test_only_the_s3_port_serves_data(s3_server: Any, bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="a/obj.bin", Body=PAYLOAD)
    fids = needle_ids(s3_server.data_dir / "data", bucket)
    assert fids, "the object's needle was not found in the volume files"
    port = s3_server.ports
    filer, master, volume, admin = (f"http://127.0.0.1:{port[n]}" for n in ("filer", "master", "volume", "admin"))
    attempts: list[tuple[str, str, bytes | None]] = []
    for fid in fids:  # the volume server, even knowing the exact file id
        attempts += [("GET", f"{volume}/{fid}", None), ("PUT", f"{volume}/{fid}", b"overwritten"),
                     ("POST", f"{volume}/{fid}", b"overwritten"), ("DELETE", f"{volume}/{fid}", None)]
    attempts += [
        ("GET", f"{volume}/ui/index.html", None),
        # the master: topology, file-id assignment (a write ticket), lookups, volume growth
        ("GET", f"{master}/dir/status", None),
        ("GET", f"{master}/dir/assign", None),
        ("GET", f"{master}/dir/lookup?volumeId={fids[0].split(',')[0]}", None),
        ("GET", f"{master}/vol/status", None),
        ("GET", f"{master}/{fids[0]}", None),
        ("GET", f"{master}/vol/grow?count=1", None),
        # the admin server's API
        ("GET", f"{admin}/api/s3/buckets", None),
        ("GET", f"{admin}/api/cluster/topology", None),
        # the filer's HTTP API: read, list, overwrite, create, delete (destructive ones last)
        ("GET", f"{filer}/buckets/{bucket}/a/obj.bin", None),
        ("GET", f"{filer}/buckets/{bucket}/a/?pretty=y", None),
        ("GET", f"{filer}/buckets/", None),
        ("GET", f"{filer}/", None),
        ("PUT", f"{filer}/buckets/{bucket}/a/obj.bin", b"overwritten"),
        ("PUT", f"{filer}/buckets/{bucket}/a/new.bin", b"planted"),
        ("DELETE", f"{filer}/buckets/{bucket}/a/obj.bin", None),
        ("GET", f"{master}/col/delete?collection={bucket}", None),
        ("DELETE", f"{filer}/buckets/{bucket}?recursive=true", None),
    ]
    leaks = []
    for method, url, body in attempts:
        status, reply = unsigned(method, url, body)
        if not (status in REFUSED or isinstance(status, str)) or PAYLOAD[:18] in reply or bucket.encode() in reply:
            leaks.append(f"{method} {url} -> {status} {reply[:120]!r}")
    assert not leaks, "unauthenticated access on a non-S3 port:\n" + "\n".join(leaks)
    # nothing changed, and signed S3 requests still work
    assert client.get_object(Bucket=bucket, Key="a/obj.bin")["Body"].read() == PAYLOAD
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/obj.bin"]
    client.put_object(Bucket=bucket, Key="a/second.bin", Body=b"ok")
    client.delete_object(Bucket=bucket, Key="a/second.bin")
    # and the S3 port itself wants a signature
    assert unsigned("GET", f"{s3_server.endpoint_url}/{bucket}/a/obj.bin")[0] == 403
    assert unsigned("PUT", f"{s3_server.endpoint_url}/{bucket}/a/obj.bin", b"overwritten")[0] == 403


@pytest.mark.parametrize("name", ["filer", "master", "volume", "s3", "admin"])
def test_grpc_ports_need_weeds_own_certificate(s3_server: Any, name: str) -> None:
    import grpc

    target = f"127.0.0.1:{s3_server.ports[name] + 10000}"
    directory = b"/buckets"
    request = b"\x0a" + bytes([len(directory)]) + directory  # filer_pb.ListEntriesRequest{directory}
    for kind in ("plaintext", "tls-no-client-cert"):  # the second trusts the server but has no client certificate
        if kind == "plaintext":
            channel = grpc.insecure_channel(target)
        else:
            ca = (s3_server.data_dir / "tls" / "ca.crt").read_bytes()
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca),
                                          options=[("grpc.ssl_target_name_override", "localhost")])
        with channel:
            call = channel.unary_stream("/filer_pb.SeaweedFiler/ListEntries")
            with pytest.raises(grpc.RpcError) as info:
                list(call(request, timeout=10))
            # UNIMPLEMENTED or OK would mean the connection was accepted
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (kind, info.value)


def test_server_folder_is_private(s3_server: Any) -> None:
    d = s3_server.data_dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700  # volume files inside are created world-readable
    for secret in ("server.json", "s3.json", "security.toml", "tls/weed.key"):
        assert stat.S_IMODE((d / secret).stat().st_mode) == 0o600, secret


def test_a_fresh_server_holds_a_test_suites_worth_of_buckets(tmp_path: Path) -> None:
    """Each bucket is a SeaweedFS collection with a volume of its own; left to `weed mini`'s default, the volume cap
    (free disk / 1 GiB) ran out after ~65 buckets and every later put answered InternalError (CI at 97%)."""
    from imagefleet.jobs.seaweed import S3Server

    server = S3Server.prepare(tmp_path / "sw").start()
    try:
        client = server.client()
        for i in range(100):
            server.ensure_bucket(f"cap-{i:03d}")
            client.put_object(Bucket=f"cap-{i:03d}", Key="k", Body=PAYLOAD)
        assert client.get_object(Bucket="cap-099", Key="k")["Body"].read() == PAYLOAD
    finally:
        server.stop()
