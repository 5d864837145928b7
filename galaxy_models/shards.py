"""WebDataset shards of a dataset version and the manifest that vouches for them.

Layout: ``datasets/<name>/<version>/{split}-{000000..}.tar`` and ``manifest.json``, written last. A
version without a manifest is incomplete (a run was interrupted) and readers never open it. Each
sample is keyed by its GalaxyID (dot-free by validation) and holds ``jpg`` (the stored crop), ``cls``
(the Table I class) and ``json`` (vote fractions, source key, source colour mode).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import webdataset as wds
from pydantic import BaseModel, Field

from galaxy_models.storage import KeyNotFoundError, LocalStore, S3Config, S3Store, Store

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ShardInfo(BaseModel):
    key: str = Field(description="object key relative to the store root")
    split: str
    samples: int
    classes: dict[str, int]
    sha256: str
    size_bytes: int
    sample_keys: list[str] = Field(description="sample keys (GalaxyIDs) in shard order")


class QuarantineEntry(BaseModel):
    source_key: str
    galaxy_id: str | None
    reason: str


class IngestCounts(BaseModel):
    """Every listed image ends up in exactly one of the four outcome counts."""

    images_listed: int
    sharded: int
    quarantined: int
    without_label: int
    without_class: int
    labels_without_image: int
    converted_to_rgb: int

    @property
    def adds_up(self) -> bool:
        return self.images_listed == self.sharded + self.quarantined + self.without_label + self.without_class


class Normalization(BaseModel):
    """Per-channel statistics of the training split's stored crops, in [0, 1] units."""

    mean: list[float]
    std: list[float]


class DatasetManifest(BaseModel):
    format: int = FORMAT_VERSION
    name: str
    version: str
    created_at: datetime
    images_uri: str
    labels_uri: str
    labels_sha256: str
    config: dict[str, Any]
    class_names: list[str]
    crop_size: int
    normalization: Normalization
    shards: list[ShardInfo]
    totals: dict[str, dict[str, int]] = Field(description="samples per split and class")
    counts: IngestCounts
    quarantine: list[QuarantineEntry]

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.name, self.version)

    def split_shards(self, split: str) -> list[ShardInfo]:
        if split not in self.totals:
            raise ValueError(f"dataset {self.name}/{self.version} has no split {split!r}; it has {sorted(self.totals)}")
        return [s for s in self.shards if s.split == split]

    def split_size(self, split: str) -> int:
        return sum(s.samples for s in self.split_shards(split))


class CorruptShardError(ValueError):
    """A shard does not match its manifest entry."""


def dataset_prefix(name: str, version: str) -> str:
    return f"datasets/{name}/{version}"


def read_manifest(store: Store, name: str, version: str | None = None) -> DatasetManifest:
    """The manifest of a complete dataset version (the newest complete one if ``version`` is None)."""
    if version is None:
        complete = [k for k in store.list(f"datasets/{name}/") if k.endswith(f"/{MANIFEST}")]
        if not complete:
            raise KeyNotFoundError(f"no complete version of dataset {name!r} in {store.uri}")
        manifests = [DatasetManifest.model_validate_json(store.read_bytes(k)) for k in complete]
        return max(manifests, key=lambda m: m.created_at)
    try:
        return DatasetManifest.model_validate_json(store.read_bytes(f"{dataset_prefix(name, version)}/{MANIFEST}"))
    except KeyNotFoundError:
        raise KeyNotFoundError(
            f"dataset {name}/{version} in {store.uri} has no manifest: it does not exist or its ingest did not finish"
        ) from None


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _ShardUploader:
    """ShardWriter's ``post`` hook: describe a finished local shard, upload it, delete the local copy."""

    def __init__(self, store: Store, prefix: str, split: str) -> None:
        self.store, self.prefix, self.split = store, prefix, split
        self.shards: list[ShardInfo] = []
        self.aborted = False

    def __call__(self, fname: str) -> None:
        path = Path(fname)
        try:
            keys, classes = summarize_shard(path)
            if self.aborted or not keys:  # a failed run uploads nothing; empty tails are dropped
                return
            key = f"{self.prefix}/{path.name}"
            info = ShardInfo(
                key=key,
                split=self.split,
                samples=len(keys),
                classes=dict(sorted(classes.items())),
                sha256=_sha256_file(path),
                size_bytes=path.stat().st_size,
                sample_keys=keys,
            )
            self.store.upload_file(key, path)
            self.shards.append(info)
        finally:
            path.unlink(missing_ok=True)


def write_shards(
    store: Store,
    prefix: str,
    split: str,
    samples: Iterable[dict[str, Any]],
    *,
    samples_per_shard: int,
    workdir: Path,
) -> list[ShardInfo]:
    """Write samples into ``{split}-NNNNNN.tar`` shards with webdataset's ShardWriter, uploading each
    as soon as it is closed. Tar headers carry a fixed mtime, so the same samples give the same bytes."""
    uploader = _ShardUploader(store, prefix, split)
    writer = wds.ShardWriter(
        str(workdir / f"{split}-%06d.tar"), maxcount=samples_per_shard, post=uploader, verbose=0, mtime=0
    )
    try:
        for sample in samples:
            writer.write(sample)
    except BaseException:
        uploader.aborted = True
        raise
    finally:
        writer.close()
    return uploader.shards


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


def iter_shard_streams(urls: Iterable[dict[str, Any]], s3_opener: S3Opener | None) -> Iterator[dict[str, Any]]:
    """Pipeline stage: ``{"url": u}`` -> ``{"url": u, "stream": ...}``, the streams closed after use."""
    for sample in urls:
        stream = open_shard(sample["url"], s3_opener)
        try:
            yield {**sample, "stream": stream}
        finally:
            stream.close()
