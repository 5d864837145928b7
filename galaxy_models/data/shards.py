"""WebDataset shards in the store: described, verified against the manifest, opened for reading.

Plain tar files; this module needs neither webdataset nor torch (writing is ``data.writer``,
the training pipeline over them ``data.loader``).
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from galaxy_models.data.manifest import DatasetManifest, ShardInfo
from galaxy_models.domain import NAME_PATTERN
from galaxy_models.storage import KeyNotFoundError, LocalStore, S3Config, S3Store, Store


class CorruptShardError(ValueError):
    """A shard does not match its manifest entry."""


class UnsafeMemberError(CorruptShardError):
    """A shard holds a tar member our writer never produces: a link, a device, a path, a huge file.

    Shards are written by our own ingest and pinned by sha256, so such a member means the shard is
    not ours: every reader refuses it (even a lenient loader), rather than skip it and read on.
    """


# What ``data.writer`` puts in a shard: ``<GalaxyID>.<ext>`` regular files and nothing else.
MEMBER_EXTENSIONS: tuple[str, ...] = ("jpg", "cls", "json")
_MEMBER_NAME = re.compile(rf"({NAME_PATTERN.pattern})\.({'|'.join(MEMBER_EXTENSIONS)})")
# The largest member a reader loads into memory: the stored-image cap (32 MiB,
# ``data.images.DEFAULT_MAX_IMAGE_BYTES``) with headroom. Checked from the header, before any data is read.
MAX_MEMBER_BYTES = 64 << 20
# Tar headers (ustar, and any PAX or GNU long-name headers tarfile reads whole before it hands out
# the member) allowed between one member's data and the next member. Ours are one 512-byte block.
MAX_HEADER_BYTES = 1 << 20


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

    Every tar member is checked from its header before anything else is read (``check_member``),
    so a shard that is not ours is refused even where its manifest entry was made to match it.

    Returns:
        The number of shards checked.

    Raises:
        CorruptShardError: naming the shard and what differs (``UnsafeMemberError``: and the member).
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
                names = [name for name, _ in iter_shard_members(reader, shard.key, read_data=False)]
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


def check_member(shard: str, member: tarfile.TarInfo) -> str:
    """The sample key of a tar member, if it is one our writer produces; else ``UnsafeMemberError``.

    Checked from the header alone, before the member's data is read: a regular file (no link,
    device, FIFO, directory or sparse file), named ``<GalaxyID>.<jpg|cls|json>`` (so no path, no
    ``..``, nothing absolute) and at most ``MAX_MEMBER_BYTES`` long.
    """
    name = member.name
    if not member.isreg() or member.issparse():
        raise UnsafeMemberError(f"shard {shard}: member {name!r} is a {_member_kind(member)}, not a regular file")
    match = _MEMBER_NAME.fullmatch(name)
    if match is None:
        raise UnsafeMemberError(f"shard {shard}: member {name!r} is not <GalaxyID>.<{'|'.join(MEMBER_EXTENSIONS)}>")
    if not 0 <= member.size <= MAX_MEMBER_BYTES:
        raise UnsafeMemberError(
            f"shard {shard}: member {name!r} is {member.size} bytes, over the {MAX_MEMBER_BYTES}-byte cap"
        )
    return match.group(1)


def _member_kind(member: tarfile.TarInfo) -> str:
    kinds = [
        (member.issym(), "symlink"),
        (member.islnk(), "hard link"),
        (member.isdir(), "directory"),
        (member.ischr() or member.isblk(), "device"),
        (member.isfifo(), "FIFO"),
        (member.issparse(), "sparse file"),
    ]
    return next((kind for matches, kind in kinds if matches), f"member of tar type {member.type!r}")


def iter_shard_members(stream: Any, shard: str, *, read_data: bool = True) -> Iterator[tuple[str, bytes]]:
    """``(member name, data)`` for each member of a tar stream, each checked before its data is read.

    The one way readers walk a shard: streaming (``r|``, nothing extracted, nothing written), every
    member through ``check_member``, and the bytes tarfile reads between members bounded by
    ``MAX_HEADER_BYTES``, so an oversized PAX or long-name header is refused too. With
    ``read_data=False`` the data is skipped (``b""``), as ``verify_dataset`` only needs the names.

    Raises:
        UnsafeMemberError: naming the shard and the member.
    """
    guard = _BoundedReader(stream, shard)
    with tarfile.open(fileobj=guard, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            check_member(shard, member)
            guard.allow(member)
            data = b""
            if read_data:
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted is not None else b""
            yield member.name, data
            tar.members = []  # a streaming reader keeps no list of what it has passed


class _BoundedReader:
    """Passes reads through up to a limit: the data of the last checked member plus room for headers."""

    def __init__(self, stream: Any, shard: str) -> None:
        self.stream, self.shard = stream, shard
        self.pos, self.limit, self.after = 0, MAX_HEADER_BYTES, "the start"

    def allow(self, member: tarfile.TarInfo) -> None:
        self.limit = member.offset_data + member.size + MAX_HEADER_BYTES
        self.after = f"member {member.name!r}"

    def read(self, n: int = -1) -> bytes:
        room = self.limit - self.pos + 1  # one byte past the limit tells a reader that went over
        chunk: bytes = self.stream.read(room if n is None or n < 0 else min(n, room))
        self.pos += len(chunk)
        if self.pos > self.limit:
            raise UnsafeMemberError(
                f"shard {self.shard}: the tar headers after {self.after} run past {MAX_HEADER_BYTES} bytes"
            )
        return chunk


def iter_shard_files(
    sources: Iterable[dict[str, Any]], handler: Callable[[Exception], bool]
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: opened shards -> ``{"fname", "data", "__url__"}`` per member, ``{}`` after each shard.

    Stands in for webdataset's ``tar_file_expander`` (same output, so its ``group_by_keys`` follows),
    reading through ``iter_shard_members`` so every member is checked before its data is read. Other
    errors (a truncated tar) go to ``handler``, as webdataset's would; an unsafe member always stops
    the pipeline.
    """
    for source in sources:
        url = source["url"]
        try:
            for name, data in iter_shard_members(source["stream"], url):
                yield {"fname": name, "data": data, "__url__": url}
            yield {}  # the end of a shard: samples of different shards never merge
        except UnsafeMemberError:
            raise
        except Exception as exn:
            if not handler(exn):
                break


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
