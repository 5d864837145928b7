"""The object store: one small interface over a local directory and S3.

A *store* is one root URI (``./galaxy-data``, ``file:///data/gz``, ``s3://bucket/prefix``) under
which the pipeline keeps ``raw/``, ``datasets/``, ``models/``, ``incoming/``, ``catalogs/`` and
``exports/``. Keys are ``/``-separated paths relative to that root and are validated before they
touch a file system or a bucket.

Single-key writes are atomic on both backends (local: temp file + ``os.replace``; S3: one PUT or
one multipart upload); nothing is atomic across keys, so writers put data first and a manifest
last. ``create_if_absent`` lets exactly one of several concurrent writers win.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr

_TEMP_PREFIX = ".tmp-"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
MAX_KEY_LENGTH = 1024


class StorageError(RuntimeError):
    """The store could not be reached or refused an operation."""


class KeyNotFoundError(StorageError, FileNotFoundError):
    """The key does not exist in the store."""


class StoreNotFoundError(StorageError):
    """The store itself does not exist, or holds nothing."""


class UnsafeObjectError(StorageError):
    """The key names something other than a regular file inside the store: a symbolic link (or a
    path through one), a FIFO, a device or a socket. Such objects are never read."""


class ObjectTooLargeError(StorageError):
    """The object is larger than the reader's cap."""


class AccessDeniedError(StorageError):
    """The store refused access to this one object (S3 ``403 AccessDenied``); retrying does not help."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "special file"


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``ValueError`` naming it.

    Rejected: empty keys, a leading ``/``, ``\\``, empty, ``.`` or ``..`` segments, control
    characters, names starting with the temp-file prefix, and keys over 1024 characters.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid storage key {key!r}: must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid storage key {key[:60]!r}...: longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise ValueError(f"invalid storage key {key!r}: must be relative (no leading '/')")
    if "\\" in key or _CONTROL_CHARS.search(key):
        raise ValueError(f"invalid storage key {key!r}: contains a backslash or control character")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid storage key {key!r}: empty, '.' or '..' path segment")
        if part.startswith(_TEMP_PREFIX):
            raise ValueError(f"invalid storage key {key!r}: segment {part!r} uses the reserved temp prefix")
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix may be empty or end with '/'; otherwise it follows the key rules."""
    if prefix == "":
        return prefix
    check_key(prefix.rstrip("/") or "/")
    return prefix


class S3Config(BaseModel):
    """How to reach S3. Unset fields fall through to boto3's own resolution (environment variables
    such as ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``, config files, roles)."""

    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; None = AWS or AWS_ENDPOINT_URL")
    region_name: str | None = Field(None, description="None = AWS_DEFAULT_REGION / profile")
    access_key_id: str | None = Field(None, description="None = environment or instance role")
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    max_attempts: int = Field(5, ge=1, le=20, description="retries in botocore's 'standard' mode")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    multipart_threshold: int = Field(64 * 1024 * 1024, ge=5 * 1024 * 1024)


class Store(ABC):
    """Keys -> bytes under one root URI."""

    uri: str

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix`` (a string prefix, as in S3), sorted."""

    @abstractmethod
    def open_stream(self, key: str, max_bytes: int | None = None) -> IO[bytes]:
        """A binary stream over the object; the caller closes it.

        Raises:
            KeyNotFoundError: if absent.
            ObjectTooLargeError: if ``max_bytes`` is given and the object is larger (checked before reading).
            UnsafeObjectError: (local stores) if the key is not a regular file inside the store.
        """

    @contextlib.contextmanager
    def open_read(self, key: str, max_bytes: int | None = None) -> Iterator[IO[bytes]]:
        """``open_stream`` as a context manager, for data too large to hold at once."""
        stream = self.open_stream(key, max_bytes)
        try:
            yield stream
        finally:
            stream.close()

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The whole object, refused (``ObjectTooLargeError``) beyond ``max_bytes``: the size is checked
        before reading, and no more than ``max_bytes + 1`` bytes are read even if it grows meanwhile.
        Raises ``KeyNotFoundError`` if absent."""
        with self.open_read(key, max_bytes) as stream:
            if max_bytes is None:
                return stream.read()
            data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ObjectTooLargeError(f"{key!r} in {self.uri} is larger than the {max_bytes}-byte cap")
        return data

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old object or the whole new one, never a part."""

    @abstractmethod
    def upload_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy a local file into the store atomically (multipart on S3 for large files)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the key; removing an absent key is not an error."""

    @abstractmethod
    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Write only if no object exists at ``key``. Returns whether this call wrote it."""

    @abstractmethod
    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The object and a tag naming this exact version of it, for ``replace_if``.
        Raises ``KeyNotFoundError`` if absent."""

    @abstractmethod
    def replace_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """Compare and swap: write ``data`` only if the object is still the version ``tag`` names
        (``None``: only if there is no object). Returns whether this call wrote it."""

    @abstractmethod
    def root_exists(self) -> bool:
        """Whether the store's root (directory or bucket) exists."""

    @abstractmethod
    def is_empty(self) -> bool:
        """Whether the store holds no object at all."""

    def url(self, key: str) -> str:
        """The full URI of ``key``."""
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


class LocalStore(Store):
    """A directory on a local or network file system."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = self.root.as_uri()

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def root_exists(self) -> bool:
        return self.root.is_dir()

    def is_empty(self) -> bool:
        with os.scandir(self.root) as entries:
            return all(e.name.startswith(_TEMP_PREFIX) for e in entries)

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by the string prefix.
        directory = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not directory.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TEMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TEMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def open_stream(self, key: str, max_bytes: int | None = None) -> IO[bytes]:
        fd = self._open_regular(key)
        try:
            size = os.fstat(fd).st_size
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLargeError(f"{key!r} in {self.uri} is {size} bytes, over the {max_bytes}-byte cap")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _open_regular(self, key: str) -> int:
        """A descriptor of the regular file ``key`` names, reached without following any symbolic link
        below the root (each folder opened relative to the last with ``O_NOFOLLOW``); FIFOs, devices
        and sockets are refused before they are opened, and checked again on the open descriptor."""
        *folders, name = check_key(key).split("/")
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise KeyNotFoundError(f"no object {key!r} in {self.uri}") from err
        try:
            for folder in folders:
                self._check_entry(key, folder, fd, directory=True)
                inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = inner
            self._check_entry(key, name, fd, directory=False)
            try:
                file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise UnsafeObjectError(f"{key!r} in {self.uri} is a symbolic link; it is not read") from err
                raise
        finally:
            os.close(fd)
        mode = os.fstat(file_fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(file_fd)
            raise UnsafeObjectError(f"{key!r} in {self.uri} is a {_kind(mode)}, not a regular file; it is not read")
        return file_fd

    def _check_entry(self, key: str, name: str, dir_fd: int, *, directory: bool) -> None:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except (FileNotFoundError, NotADirectoryError) as err:
            raise KeyNotFoundError(f"no object {key!r} in {self.uri}") from err
        if stat.S_ISLNK(mode):
            where = f"passes through the symbolic link {name!r}" if directory else "is a symbolic link"
            raise UnsafeObjectError(f"{key!r} in {self.uri} {where}; it is not read")
        if directory and not stat.S_ISDIR(mode):
            raise KeyNotFoundError(f"no object {key!r} in {self.uri}")
        if not directory and not stat.S_ISREG(mode):
            raise UnsafeObjectError(f"{key!r} in {self.uri} is a {_kind(mode)}, not a regular file; it is not read")

    def _temp_path(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")

    def _write_temp(self, target: Path, fill: Callable[[IO[bytes]], object]) -> Path:
        """A synced temp file beside ``target``, filled by ``fill``; removed again if filling fails.
        A full disk or a read-only store raises ``StorageError`` naming the key."""
        with self._write_errors(target):
            temp = self._temp_path(target)
            try:
                with temp.open("wb") as out:
                    fill(out)
                    out.flush()
                    os.fsync(out.fileno())
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        return temp

    @contextlib.contextmanager
    def _write_errors(self, target: Path) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            key = target.relative_to(self.root).as_posix()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(f"no space left on the device writing {key!r} in {self.uri}") from err
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StorageError(f"cannot write {key!r} in {self.uri}: {err.strerror}") from err
            raise

    def _replace(self, key: str, fill: Callable[[IO[bytes]], object]) -> None:
        target = self.path(key)
        temp = self._write_temp(target, fill)
        try:
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._replace(key, lambda out: out.write(data))

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> None:
        with open(path, "rb") as source:
            self._replace(key, lambda out: shutil.copyfileobj(source, out, 1 << 20))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a regular file (a symbolic link, FIFO or device is not an object)."""
        try:
            return stat.S_ISREG(os.stat(self.path(key), follow_symlinks=False).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        # os.link fails if the target exists, like O_CREAT|O_EXCL, but the object appears
        # with its whole content at once instead of growing while it is written.
        target = self.path(key)
        temp = self._write_temp(target, lambda out: out.write(data))
        try:
            os.link(temp, target)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        return True

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def replace_if(self, key: str, data: bytes, tag: str | None) -> bool:
        if tag is None:
            return self.create_if_absent(key, data)
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Writers of this store serialise on an exclusive lock of the key's directory: check, then swap.
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            try:
                current = hashlib.sha256(target.read_bytes()).hexdigest()
            except FileNotFoundError:
                return False
            if current != tag:
                return False
            self.write_bytes(key, data)
            return True
        finally:
            os.close(directory)  # closing the descriptor releases the lock


class S3Store(Store):
    """A bucket (and optional key prefix) on AWS S3, MinIO or any S3-compatible server."""

    def __init__(self, bucket: str, prefix: str = "", config: S3Config | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        cfg = config or S3Config()
        self._transfer = TransferConfig(multipart_threshold=cfg.multipart_threshold)
        self._multipart_threshold = cfg.multipart_threshold
        self.client = boto3.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region_name,
            aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None,
            aws_session_token=cfg.session_token.get_secret_value() if cfg.session_token else None,
            config=Config(
                retries={"mode": "standard", "max_attempts": cfg.max_attempts},
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
            ),
        )

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn botocore's exceptions into ones that name this store and key."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise KeyNotFoundError(f"no object {key!r} in {self.uri}") from err
            if code in ("AccessDenied", "403"):  # "403": a HEAD answer has no body to name the code
                raise AccessDeniedError(f"access denied to {key!r} in {self.uri} (S3 {code}): {err}") from err
            raise StorageError(f"S3 {code or 'error'} for {key!r} in {self.uri}: {err}") from err
        except BotoCoreError as err:
            raise StorageError(f"cannot reach {self.uri} (key {key!r}): {err}") from err

    def root_exists(self) -> bool:
        try:
            with self._errors(""):
                self.client.head_bucket(Bucket=self.bucket)
        except KeyNotFoundError:
            return False
        return True

    def is_empty(self) -> bool:
        with self._errors(""):
            page = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1
            )
        return not page.get("Contents")

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def open_stream(self, key: str, max_bytes: int | None = None) -> IO[bytes]:
        with self._errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        body = response["Body"]
        size = int(response.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            body.close()  # the headers told the size: no byte of the body is read
            raise ObjectTooLargeError(f"{key!r} in {self.uri} is {size} bytes, over the {max_bytes}-byte cap")
        return cast(IO[bytes], body)  # botocore's StreamingBody reads like a binary file

    def write_bytes(self, key: str, data: bytes) -> None:
        if len(data) >= self._multipart_threshold:
            with self._errors(key):
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._full(key), Config=self._transfer)
            return
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> None:
        with self._errors(key):
            self.client.upload_file(os.fspath(path), self.bucket, self._full(key), Config=self._transfer)

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except KeyNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            return response["Body"].read(), response["ETag"]

    def replace_if(self, key: str, data: bytes, tag: str | None) -> bool:
        return self._put_conditionally(key, data, if_match=tag)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_conditionally(key, data, if_match=None)

    def _put_conditionally(self, key: str, data: bytes, if_match: str | None) -> bool:
        """``put_object`` with ``IfMatch`` (that version only) or, for ``None``, ``IfNoneMatch="*"``."""
        from botocore.exceptions import ClientError

        try:
            with self._errors(key):
                if if_match is None:
                    self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, IfNoneMatch="*")
                else:
                    self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, IfMatch=if_match)
        except KeyNotFoundError:  # IfMatch on an object that has gone
            return False
        except StorageError as err:
            cause = err.__cause__
            # 412: the condition failed; 409: a concurrent conditional write to the key is in flight.
            if isinstance(cause, ClientError) and (
                cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)
                or cause.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")
            ):
                return self._holds(key, data)
            raise
        return True

    def _holds(self, key: str, data: bytes) -> bool:
        """After a refused conditional write: whether the object is exactly ``data``. It is when an
        earlier attempt of this same write landed and only its response was lost (botocore retried
        and the retry saw its own object); that is this call's write, not a conflict."""
        try:
            return self.read_bytes(key) == data
        except KeyNotFoundError:
            return False


def open_store(uri: str | os.PathLike[str], s3: S3Config | None = None) -> Store:
    """The store at ``uri``: ``s3://bucket[/prefix]``, ``file:///path`` or a plain local path."""
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"S3 store URI {text!r} names no bucket")
        return S3Store(parsed.netloc, parsed.path, s3)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise ValueError(f"unsupported store URI {text!r}: use a local path, file:// or s3://")
    return LocalStore(text)


def require_store(uri: str | os.PathLike[str], s3: S3Config | None = None) -> Store:
    """``open_store``, refusing a store that does not exist or is empty.

    Raises:
        StoreNotFoundError: saying which of the two.
    """
    store = open_store(uri, s3)
    if not store.root_exists():
        raise StoreNotFoundError(f"store {os.fspath(uri)!r} does not exist ({store.uri})")
    if store.is_empty():
        raise StoreNotFoundError(f"store {os.fspath(uri)!r} is empty (nothing under {store.uri})")
    return store


def split_uri(uri: str | os.PathLike[str]) -> tuple[str, str]:
    """Split an object URI into (store URI, key): ``s3://b/p/x.csv`` -> (``s3://b/p``, ``x.csv``)."""
    text = os.fspath(uri).rstrip("/")
    if "/" not in text:
        return ".", check_key(text)
    parent, _, name = text.rpartition("/")
    if parent in ("s3:/", "s3:", "file:/"):
        raise ValueError(f"URI {text!r} names no object")
    return parent or "/", check_key(name)


def read_uri(uri: str | os.PathLike[str], s3: S3Config | None = None) -> bytes:
    """The bytes of one object named by a full URI or local path."""
    store_uri, key = split_uri(uri)
    return open_store(store_uri, s3).read_bytes(key)
