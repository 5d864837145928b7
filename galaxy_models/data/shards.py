"""WebDataset shards in the store: described, verified against the manifest, opened for reading.

Plain tar files; this module needs neither webdataset nor torch (writing is ``data.writer``,
the training pipeline over them ``data.loader``).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from galaxy_models.data.manifest import DatasetManifest, ShardInfo
from galaxy_models.storage import KeyNotFoundError, LocalStore, S3Config, S3Store, Store


class CorruptShardError(ValueError):
    """A shard does not match its manifest entry."""


def summarize_shard(path: Path) -> tuple[list[str], Counter[str]]:
    """Sample keys (in order) and class counts of a local tar shard."""
    keys: list[str] = []
    classes: Counter[str] = Counter()
    with tarfile.open(path, "r") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if not keys or keys[-1] != key:
                keys.append(key)
            if ext == "cls":
                stream = tar.extractfile(member)
                classes[stream.read().decode().strip() if stream else "?"] += 1
    return keys, classes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_dataset(store: Store, manifest: DatasetManifest, splits: Iterable[str] | None = None) -> int:
    """Check every shard (or those of ``splits``) against the manifest: size, sha256, sample keys.

    Returns:
        The number of shards checked.

    Raises:
        CorruptShardError: naming the shard and what differs.
    """
    wanted = set(splits) if splits is not None else None
    checked = 0
    for shard in manifest.shards:
        if wanted is not None and shard.split not in wanted:
            continue
        digest, size, names = hashlib.sha256(), 0, []
        try:
            with store.open_read(shard.key) as stream:
                reader = _HashingReader(stream, digest)
                with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                    names = [m.name for m in tar]
                while reader.read(1 << 20):  # tar padding after the last member
                    pass
                size = reader.size
        except (tarfile.TarError, EOFError) as err:
            raise CorruptShardError(f"shard {shard.key} is not a readable tar: {err}") from err
        except KeyNotFoundError as err:
            raise CorruptShardError(f"shard {shard.key} listed in the manifest is missing") from err
        if size != shard.size_bytes or digest.hexdigest() != shard.sha256:
            raise CorruptShardError(
                f"shard {shard.key} does not match the manifest: {size} bytes, sha256 {digest.hexdigest()[:12]}... "
                f"(expected {shard.size_bytes} bytes, {shard.sha256[:12]}...)"
            )
        keys = list(dict.fromkeys(n.partition(".")[0] for n in names))
        if keys != shard.sample_keys:
            raise CorruptShardError(f"shard {shard.key} holds {len(keys)} samples, the manifest lists {shard.samples}")
        checked += 1
    return checked


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, stream: IO[bytes], digest: Any) -> None:
        self.stream, self.digest, self.size = stream, digest, 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.stream.read(n)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk


# --- reading shards ---------------------------------------------------------------------------


class S3Opener:
    """Opens ``s3://bucket/key`` as a boto3 streaming body; picklable, so DataLoader workers (fork or
    spawn) carry it and build their own client on first use."""

    def __init__(self, config: S3Config | None = None) -> None:
        self.config = config
        self._stores: dict[str, S3Store] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_stores": {}}

    def __call__(self, url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or mode != "rb":
            raise ValueError(f"S3Opener reads s3:// URLs only, got {url!r} (mode {mode!r})")
        if parsed.netloc not in self._stores:
            self._stores[parsed.netloc] = S3Store(parsed.netloc, "", self.config)
        store = self._stores[parsed.netloc]
        return store.open_stream(parsed.path.lstrip("/"))


def register_s3_scheme(config: S3Config | None = None) -> S3Opener:
    """Let webdataset open ``s3://`` URLs through boto3 (``wds.WebDataset("s3://b/x-000000.tar")``)."""
    import importlib

    # ``webdataset.gopen`` the attribute is a function; the scheme table lives in the module of that name.
    gopen_module = importlib.import_module("webdataset.gopen")
    opener = S3Opener(config)
    gopen_module.gopen_schemes["s3"] = opener
    return opener


def shard_urls(store: Store, shards: Iterable[ShardInfo]) -> list[str]:
    """Where a reader finds each shard: a local path, or an ``s3://`` URL."""
    if isinstance(store, LocalStore):
        return [str(store.path(s.key)) for s in shards]
    if isinstance(store, S3Store):
        return [f"s3://{store.bucket}/{store.prefix + '/' if store.prefix else ''}{s.key}" for s in shards]
    raise ValueError(f"cannot read shards from store {store.uri!r}")


def open_shard(url: str, s3_opener: S3Opener | None = None) -> IO[bytes]:
    """A binary stream over one shard URL (local path or ``s3://``)."""
    if url.startswith("s3://"):
        return (s3_opener or S3Opener())(url)
    return open(url, "rb")


def iter_shard_streams(
    urls: Iterable[dict[str, Any]], s3_opener: S3Opener | None, expected: Mapping[str, ShardInfo] | None = None
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: ``{"url": u}`` -> ``{"url": u, "stream": ...}``, the streams closed after use.

    With ``expected`` (url -> manifest entry) every shard is hashed as it is read, with no second
    pass: once the reader is done with a shard (the next one is asked for), its last padding bytes
    are read and its size and sha256 compared with the manifest. A shard that changed after ingest
    stops the pipeline with ``CorruptShardError`` naming it. A shard a reader leaves half read (the
    end of a training epoch) is not checked that time; it is on a pass that reads it whole.
    """
    for sample in urls:
        url = sample["url"]
        stream = open_shard(url, s3_opener)
        info = expected.get(url) if expected is not None else None
        reader = _HashingReader(stream, hashlib.sha256()) if info is not None else stream
        try:
            yield {**sample, "stream": reader}
            if info is not None:
                _check_read_shard(reader, info, url)  # type: ignore[arg-type]
        finally:
            stream.close()


def _check_read_shard(reader: _HashingReader, info: ShardInfo, url: str) -> None:
    while reader.read(1 << 20):  # tar padding after the last member
        pass
    digest = reader.digest.hexdigest()
    if reader.size != info.size_bytes or digest != info.sha256:
        raise CorruptShardError(
            f"shard {url} does not match its manifest entry ({reader.size} bytes, sha256 {digest[:12]}...; "
            f"expected {info.size_bytes} bytes, {info.sha256[:12]}...): it changed after ingest; "
            "check the dataset with `galaxy-pipeline datasets verify`"
        )
