"""ObjectStore: LocalStore on a folder, S3Store against the real embedded SeaweedFS (write-once, races,
credentials, endpoints), and open_store picking between them."""

import hashlib
import threading
from typing import Any

import pytest

from imagefleet.actors.local_store import LocalStore
from imagefleet.actors.storage import (
    RECORD_MAX_BYTES,
    ObjectStore,
    StorageError,
    parse_location,
    resolve_store_spec,
    s3_client,
)
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import S3Config, StoreSpec


def spec(server: Any, secret: str = "") -> StoreSpec:
    return resolve_store_spec("s3://x", S3Config(endpoint_url=server.endpoint_url), {
        "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": secret or server.secret_key})


def test_parse_location() -> None:
    loc = parse_location("s3://b/p/q/")
    assert (loc.kind, loc.bucket, loc.prefix) == ("s3", "b", "p/q")
    assert parse_location("out").kind == "local"


def test_put_if_absent_is_write_once(s3_server: Any, bucket: str) -> None:
    store = open_store(f"s3://{bucket}/run", spec(s3_server))
    sha = hashlib.sha256(b"one").hexdigest()
    assert store.put_if_absent("images/a.png", b"one", "image/png", sha) == (True, sha)
    written, stored = store.put_if_absent("images/a.png", b"two", "image/png", "x")
    assert not written and stored == sha
    assert store.get("images/a.png") == b"one"
    assert [name for name, _ in store.list("images/")] == ["images/a.png"]
    # an image's record travels with it (user metadata, read by one HEAD); the first writer's record wins
    record = '{"model":"my  models/x \\u00e9 ","pad":"' + "x" * (RECORD_MAX_BYTES - 60) + '"}'
    assert store.put_if_absent("images/b.png", b"b", "image/png", "sb", record) == (True, "sb")
    # the stored object wins, and its digest is computed from its bytes (never the metadata's claim)
    kept = hashlib.sha256(b"b").hexdigest()
    assert store.put_if_absent("images/b.png", b"c", "image/png", "sc", "{}") == (False, kept)
    assert store.record_of("images/b.png") == (record, "sb") and store.record_of("images/a.png") == ("", sha)


def test_racing_writers_one_winner(s3_server: Any, bucket: str) -> None:
    store = open_store(f"s3://{bucket}", spec(s3_server))
    results: list[bool] = []

    def put(i: int) -> None:
        data = f"w{i}".encode()
        results.append(store.put_if_absent("k", data, "text/plain", hashlib.sha256(data).hexdigest())[0])

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_wrong_secret_is_explained(s3_server: Any, bucket: str) -> None:
    store = open_store(f"s3://{bucket}", spec(s3_server, secret="wrong-secret"))
    with pytest.raises(StorageError, match="rejected the credentials") as err:
        store.check_writable()
    assert "wrong-secret" not in str(err.value)


def test_missing_bucket_is_explained(s3_server: Any) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        open_store("s3://no-such-bucket-xyz/p", spec(s3_server)).check_writable()


def test_unreachable_endpoint_is_explained() -> None:
    bad = StoreSpec(kind="s3", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b", max_attempts=1,
                    connect_timeout_s=1)
    with pytest.raises(StorageError, match="cannot reach"):
        open_store("s3://b/p", bad).check_writable()


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    _no_keys(monkeypatch)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY"):
        resolve_store_spec("s3://b/p", S3Config(), {})


def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def test_a_profile_reaches_the_store(s3_server: Any, bucket: str, tmp_path: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys in the environment, an AWS profile instead (as `aws configure --profile team` writes it): boto3's
    default chain signs every request, the object API and pyarrow's Parquet I/O alike; no key is in the spec."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagefleet.actors.storage import arrow_filesystem

    _no_keys(monkeypatch)
    creds = tmp_path / "credentials"
    creds.write_text(f"[team]\naws_access_key_id = {s3_server.access_key}\n"
                     f"aws_secret_access_key = {s3_server.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "team")
    s = resolve_store_spec(f"s3://{bucket}/prof", S3Config(endpoint_url=s3_server.endpoint_url))
    assert s.credentials == "chain" and s.profile == "team" and not s.access_key.get_secret_value()
    store = open_store(f"s3://{bucket}/prof", s)
    store.check_writable()
    store.put("x.txt", b"hello")
    assert store.get("x.txt") == b"hello"
    fs, root = arrow_filesystem(f"s3://{bucket}/prof", s)
    pq.write_table(pa.table({"a": [1, 2]}), f"{root}/t.parquet", filesystem=fs)
    assert pq.read_table(f"{root}/t.parquet", filesystem=fs).column("a").to_pylist() == [1, 2]
    # s3.profile names one explicitly; a profile that isn't there is one line naming it
    assert resolve_store_spec("s3://b", S3Config(profile="team"), {}).profile == "team"
    with pytest.raises(StorageError, match="AWS profile 'nope' is not in the AWS config or credentials files"):
        resolve_store_spec("s3://b", S3Config(profile="nope"), {})


def test_region_and_endpoint_come_from_where_the_aws_tools_read_them(s3_server: Any, bucket: str, tmp_path: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile whose config names its region and, in a `services` section, its S3 endpoint (as `aws configure`
    and teams' shared config files write them): no endpoint or region in imagefleet's config or the environment,
    and the run reaches the store and signs for that region (before: us-east-1 always, the endpoint only from
    AWS_ENDPOINT_URL). AWS_REGION / AWS_DEFAULT_REGION come before the profile's region; s3.region before both."""
    _no_keys(monkeypatch)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    profile = f"regional-{bucket}"  # a profile name of its own: boto3 sessions are kept per profile per process
    (tmp_path / "credentials").write_text(f"[{profile}]\naws_access_key_id = {s3_server.access_key}\n"
                                          f"aws_secret_access_key = {s3_server.secret_key}\n")
    (tmp_path / "config").write_text(f"[profile {profile}]\nregion = eu-west-3\nservices = seaweed\n\n"
                                     f"[services seaweed]\ns3 =\n  endpoint_url = {s3_server.endpoint_url}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", profile)
    s = resolve_store_spec(f"s3://{bucket}/regional", S3Config())
    assert (s.endpoint_url, s.region) == (s3_server.endpoint_url, "eu-west-3")
    assert s3_client(s).meta.region_name == "eu-west-3"
    store = open_store(f"s3://{bucket}/regional", s)
    store.put("x.txt", b"hello")
    assert store.get("x.txt") == b"hello"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert resolve_store_spec("s3://b", S3Config()).region == "ap-south-1"
    monkeypatch.setenv("AWS_REGION", "ca-central-1")
    assert resolve_store_spec("s3://b", S3Config()).region == "ca-central-1"
    assert resolve_store_spec("s3://b", S3Config(region="us-west-2")).region == "us-west-2"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the environment comes before the profile's
    assert resolve_store_spec("s3://b", S3Config()).endpoint_url == "http://127.0.0.1:9"


def test_session_token_credentials_are_sent_with_their_keys(s3_server: Any, bucket: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporary keys (STS, SSO exports) come with AWS_SESSION_TOKEN: it is kept (secret) and signs with them."""
    from imagefleet.actors.storage import _keys

    _no_keys(monkeypatch)
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEtemporary"}
    s = resolve_store_spec(f"s3://{bucket}", S3Config(endpoint_url=s3_server.endpoint_url), env)
    assert s.credentials == "keys" and s.session_token.get_secret_value() == "FwoGZXIvYXdzEtemporary"
    assert "FwoGZXIvYXdzEtemporary" not in repr(s) and "FwoGZXIvYXdzEtemporary" not in s.model_dump_json()
    assert _keys(s)[2] == "FwoGZXIvYXdzEtemporary"
    signer = s3_client(s)._request_signer._credentials  # what the client signs with
    assert signer.token == "FwoGZXIvYXdzEtemporary" and signer.access_key == s3_server.access_key


def test_no_credentials_at_all_say_every_way_to_give_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    _no_keys(monkeypatch)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY .*an AWS profile"):
        resolve_store_spec("s3://b/p", S3Config(), {})


def test_half_a_key_pair_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_keys(monkeypatch)
    with pytest.raises(StorageError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \\(only AWS_ACCESS_KEY_ID"):
        resolve_store_spec("s3://b/p", S3Config(), {"AWS_ACCESS_KEY_ID": "AK"})


def test_secret_file(tmp_path: Any) -> None:
    f = tmp_path / "creds"
    f.write_text("access_key=AK\nsecret_key=SK\n")
    s = resolve_store_spec("s3://b", S3Config(secret_file=str(f)), {})
    assert s.access_key.get_secret_value() == "AK" and "SK" not in repr(s) and "SK" not in s.model_dump_json()


def test_open_store_picks_the_implementation(tmp_path: Any) -> None:
    from imagefleet.actors.s3_store import S3Store

    local = StoreSpec(kind="local")
    assert type(open_store(str(tmp_path), local)) is LocalStore
    assert type(open_store(f"file://{tmp_path}", local)) is LocalStore
    s3 = open_store("s3://b/p", StoreSpec(kind="s3", access_key="a", secret_key="b"))
    assert type(s3) is S3Store and s3.uri_of("images/x.png") == "s3://b/p/images/x.png"
    assert s3.rel_of("s3://b/p/images/x.png") == "images/x.png"
    with pytest.raises(TypeError):
        ObjectStore(str(tmp_path), local)  # type: ignore[abstract]  # the interface, not a store
    with pytest.raises(ValueError, match="not a local folder"):
        LocalStore("s3://b/p", local)
    with pytest.raises(ValueError, match="not an s3"):
        S3Store(str(tmp_path), local)


def test_local_store_is_write_once(tmp_path: Any) -> None:
    store = open_store(str(tmp_path / "out"), StoreSpec(kind="local"))
    sha = hashlib.sha256(b"one").hexdigest()
    assert store.put_if_absent("images/a.png", b"one", "image/png", sha) == (True, sha)
    assert store.put_if_absent("images/a.png", b"two", "image/png", "x") == (False, sha)  # stored object wins
    assert store.put_if_absent("images/r.png", b"r", "image/png", "sr", '{"seed":1}') == (True, "sr")
    kept = store.record_of("images/r.png")  # an extended attribute where the file system has them
    assert kept in (('{"seed":1}', "sr"), ("", "")) and store.record_of("images/a.png") == ("", "")
    store.put("run.json", b"{}")
    store.put("run.json", b"{ }")  # records may be overwritten
    store.copy("images/a.png", "images/b.png")
    (tmp_path / "out" / "images" / ".tmp-half-written").write_bytes(b"?")
    assert sorted(store.list("images/")) == [("images/a.png", 3), ("images/b.png", 3), ("images/r.png", 1)]
    assert store.get("run.json") == b"{ }" and store.exists("images/b.png") and not store.exists("nope")
    store.delete("images/b.png")
    store.delete("images/b.png")  # absent: no error
    store.delete_prefix("images")
    assert list(store.list("")) == [("run.json", 3)]
    store.check_writable()


def test_local_store_not_writable_is_explained(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot write to"):
        open_store(str(blocker / "out"), StoreSpec(kind="local")).check_writable()
