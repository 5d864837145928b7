"""One suite, two backends: local directory and S3 over HTTP (moto server)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from galaxy_models.storage import (
    KeyNotFoundError,
    LocalStore,
    S3Config,
    S3Store,
    StorageError,
    Store,
    check_key,
    open_store,
    read_uri,
    split_uri,
)


def test_write_read_roundtrip(store: Store) -> None:
    store.write_bytes("raw/survey/a.bin", b"\x00\x01payload")
    assert store.read_bytes("raw/survey/a.bin") == b"\x00\x01payload"
    store.write_json("models/m/1/card.json", {"b": 2, "a": [1]})
    assert store.read_json("models/m/1/card.json") == {"a": [1], "b": 2}


def test_overwrite_replaces_whole_object(store: Store) -> None:
    store.write_bytes("k", b"long old content" * 100)
    store.write_bytes("k", b"new")
    assert store.read_bytes("k") == b"new"


def test_streamed_read(store: Store) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    store.write_bytes("big/blob", data)
    chunks = []
    with store.open_read("big/blob") as stream:
        while chunk := stream.read(65536):
            chunks.append(chunk)
    assert len(chunks) > 1
    assert b"".join(chunks) == data


def test_upload_file(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "shard.tar"
    source.write_bytes(b"x" * 300_000)
    store.upload_file("datasets/d/v1/train-000000.tar", source)
    assert store.read_bytes("datasets/d/v1/train-000000.tar") == source.read_bytes()


def test_list_by_prefix(store: Store) -> None:
    for key in ["incoming/b1/1.jpg", "incoming/b1/2.jpg", "incoming/b2/3.jpg", "incoming-old/x", "raw/y"]:
        store.write_bytes(key, b"x")
    assert store.list("incoming/") == ["incoming/b1/1.jpg", "incoming/b1/2.jpg", "incoming/b2/3.jpg"]
    assert store.list("incoming/b1/") == ["incoming/b1/1.jpg", "incoming/b1/2.jpg"]
    assert store.list("incoming") == [
        "incoming-old/x",
        "incoming/b1/1.jpg",
        "incoming/b1/2.jpg",
        "incoming/b2/3.jpg",
    ]
    assert store.list("nothing/") == []
    assert len(store.list()) == 5


def test_exists_and_delete(store: Store) -> None:
    assert not store.exists("a/b")
    store.write_bytes("a/b", b"1")
    assert store.exists("a/b")
    store.delete("a/b")
    assert not store.exists("a/b")
    store.delete("a/b")  # deleting an absent key is not an error


def test_missing_key_raises_key_not_found(store: Store) -> None:
    with pytest.raises(KeyNotFoundError, match="nope/x"):
        store.read_bytes("nope/x")
    with pytest.raises(FileNotFoundError):  # KeyNotFoundError is also a FileNotFoundError
        store.read_bytes("nope/x")


def test_create_if_absent_first_writer_wins(store: Store) -> None:
    assert store.create_if_absent("catalogs/b/v/_manifest.json", b"first")
    assert not store.create_if_absent("catalogs/b/v/_manifest.json", b"second")
    assert store.read_bytes("catalogs/b/v/_manifest.json") == b"first"


def _race(threads: int, attempt: Callable[[int], bool]) -> dict[int, bool]:
    """Run ``attempt(i)`` in ``threads`` threads released at once; their results by ``i``."""
    results: dict[int, bool] = {}
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = attempt(i)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def test_create_if_absent_concurrent_writers(store: Store) -> None:
    """Eight threads race for one key: exactly one wins and its content is what is stored."""
    results = _race(8, lambda i: store.create_if_absent("models/m/production.json", f"writer {i}".encode()))
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert store.read_bytes("models/m/production.json") == f"writer {winners[0]}".encode()


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "a\nb", "x\x00", "a/", ".tmp-x", "a/.tmp-1-b"],
)
def test_invalid_keys_are_rejected(store: Store, key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        store.write_bytes(key, b"x")
    with pytest.raises(ValueError, match="invalid storage key"):
        check_key(key)


def test_url_names_the_object(store: Store) -> None:
    assert store.url("raw/s/labels.csv").endswith("/raw/s/labels.csv")
    assert store.url("a").startswith(("file://", "s3://"))


def test_local_write_leaves_no_temp_files_and_is_atomic(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("d/k", b"1")
    store.create_if_absent("d/k", b"2")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k"]


def test_local_failed_write_keeps_old_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("k", b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("galaxy_models.storage.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes("k", b"new")
    assert store.read_bytes("k") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_unreachable_s3_names_the_store() -> None:
    config = S3Config(
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        region_name="us-east-1",
        access_key_id="x",
        secret_access_key="y",  # type: ignore[arg-type]
        max_attempts=1,
        connect_timeout=1,
    )
    store = S3Store("galaxy-bucket", "p", config)
    with pytest.raises(StorageError, match=r"s3://galaxy-bucket/p"):
        store.read_bytes("raw/x")


def test_missing_bucket_is_a_storage_error(s3_config: S3Config) -> None:
    store = S3Store("no-such-bucket-here", "", s3_config)
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        store.write_bytes("a", b"x")


def test_open_store_dispatch(tmp_path: Path, s3_config: S3Config) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    s3 = open_store("s3://my-bucket/some/prefix", s3_config)
    assert isinstance(s3, S3Store)
    assert s3.uri == "s3://my-bucket/some/prefix"
    with pytest.raises(ValueError, match="gs://x"):
        open_store("gs://x/y")
    with pytest.raises(ValueError, match="invalid S3 bucket name"):
        open_store("s3://Bad_Bucket/x")
    with pytest.raises(ValueError, match="names no bucket"):
        open_store("s3:///x")


def test_s3_prefix_isolates_keys(s3_bucket: str, s3_config: S3Config) -> None:
    a = S3Store(s3_bucket, "team-a", s3_config)
    b = S3Store(s3_bucket, "team-b", s3_config)
    a.write_bytes("raw/x", b"a")
    assert b.list() == []
    assert a.list() == ["raw/x"]


def test_read_uri_local_and_s3(tmp_path: Path, s3_bucket: str, s3_config: S3Config) -> None:
    (tmp_path / "votes.csv").write_bytes(b"local")
    assert read_uri(tmp_path / "votes.csv") == b"local"
    S3Store(s3_bucket, "p", s3_config).write_bytes("votes.csv", b"remote")
    assert read_uri(f"s3://{s3_bucket}/p/votes.csv", s3_config) == b"remote"
    assert split_uri(f"s3://{s3_bucket}/p/votes.csv") == (f"s3://{s3_bucket}/p", "votes.csv")


def test_s3_multipart_upload(s3_bucket: str, s3_config: S3Config, tmp_path: Path) -> None:
    config = s3_config.model_copy(update={"multipart_threshold": 5 * 1024 * 1024})
    store = S3Store(s3_bucket, "", config)
    data = bytes(range(256)) * (6 * 4096)  # 6 MiB, above the threshold
    store.write_bytes("big", data)
    assert store.read_bytes("big") == data
    head = store.client.head_object(Bucket=s3_bucket, Key="big")
    assert "-" in head["ETag"]  # multipart ETags carry the part count


def test_local_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    def broken(out: object) -> None:
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        store._replace("d/k", broken)
    assert list((tmp_path / "d").iterdir()) == []


def test_replace_if_swaps_only_the_version_it_read(store: Store) -> None:
    key = "models/m/production.json"
    assert store.replace_if(key, b"v1", None)  # None: only if absent
    assert not store.replace_if(key, b"v1 again", None)
    data, tag = store.read_tagged(key)
    assert data == b"v1"
    assert store.replace_if(key, b"v2", tag)
    assert not store.replace_if(key, b"v3", tag)  # stale: v2 replaced what the tag named
    assert store.read_bytes(key) == b"v2"
    with pytest.raises(KeyNotFoundError):
        store.read_tagged("models/m/absent.json")
    assert not store.replace_if("models/m/absent.json", b"x", tag)


def test_replace_if_concurrent_writers(store: Store) -> None:
    """Eight threads read the same version and race to replace it: exactly one wins."""
    key = "models/m/production.json"
    store.write_bytes(key, b"v0")
    _, tag = store.read_tagged(key)
    results = _race(8, lambda i: store.replace_if(key, f"writer {i}".encode(), tag))
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert store.read_bytes(key) == f"writer {winners[0]}".encode()


def test_s3_conditional_write_that_already_landed_is_ours(s3_bucket: str, s3_config: S3Config) -> None:
    """The decision after a 412: a retried PUT whose first attempt landed (its response lost) finds its
    own bytes and reports the write as done; different bytes are a real conflict."""
    store = S3Store(s3_bucket, "p", s3_config)
    store.write_bytes("catalogs/b/v/_manifest.json", b"ours")  # the attempt whose response was lost
    assert store.create_if_absent("catalogs/b/v/_manifest.json", b"ours")
    assert not store.create_if_absent("catalogs/b/v/_manifest.json", b"theirs")
    _, tag = store.read_tagged("catalogs/b/v/_manifest.json")
    store.write_bytes("catalogs/b/v/_manifest.json", b"swapped")  # the swap landed; the retry holds a stale tag
    assert store.replace_if("catalogs/b/v/_manifest.json", b"swapped", tag)
    assert not store.replace_if("catalogs/b/v/_manifest.json", b"other", tag)
