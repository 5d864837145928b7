"""Issue 11: a malicious WebDataset shard is refused, member by member, before any of its data is read.

Every shard here is built by hand with tarfile, and its manifest entry is made to match it (sha256 and
size), as an attacker who could also edit the manifest would: the member check has to hold on its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from galaxy_models.data.loader import make_loader
from galaxy_models.data.manifest import DatasetManifest, IngestCounts, Normalization, ShardInfo
from galaxy_models.data.shards import (
    MAX_HEADER_BYTES,
    MAX_MEMBER_BYTES,
    UnsafeMemberError,
    iter_shard_members,
    verify_dataset,
)
from galaxy_models.data.writer import write_shards
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.storage import LocalStore

PREFIX = "datasets/evil/v1"
SHARD = f"{PREFIX}/train-000000.tar"
HUGE = 300 << 20  # what the malicious headers claim: 300 MiB


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 80, 120)).save(out, "JPEG")
    return out.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _sample(key: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The three members our writer produces for one galaxy."""
    meta = json.dumps({"galaxy_id": key, "class": 0}).encode()
    return [_file(f"{key}.jpg", _jpeg()), _file(f"{key}.cls", b"0"), _file(f"{key}.json", meta)]


def _special(name: str, kind: bytes, **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for field, value in fields.items():
        setattr(info, field, value)
    return info, b""


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def _huge_header(info: tarfile.TarInfo, present: int) -> bytes:
    """A header claiming ``HUGE`` bytes, followed by only ``present`` of them: a reader that read the
    data would hit the end of the file, so refusing it *by its size* proves nothing was read."""
    info.size = HUGE
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + bytes(present)


def _with_huge(kind: bytes, name: str) -> bytes:
    """A good sample, then a member of type ``kind`` whose header claims ``HUGE`` bytes."""
    good = _tar(_sample("good1"))
    end = _end_of_members(good)
    info = tarfile.TarInfo(name)
    info.type = kind
    return good[:end] + _huge_header(info, 4 << 20)


def _end_of_members(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


# name -> (shard bytes, the member the refusal must name, what it must say)
def _cases() -> dict[str, tuple[bytes, str, str]]:
    escape = f"escape-{uuid.uuid4().hex[:8]}"
    good = _sample("good1")
    return {
        "dotdot": (_tar([*good, _file(f"../{escape}.jpg", _jpeg())]), f"../{escape}.jpg", "is not <GalaxyID>"),
        "absolute": (_tar([*good, _file(f"/tmp/{escape}.jpg", _jpeg())]), f"/tmp/{escape}.jpg", "is not <GalaxyID>"),
        "subdir": (_tar([*good, _file("good2/x.jpg", _jpeg())]), "good2/x.jpg", "is not <GalaxyID>"),
        "extension": (_tar([*good, _file("good2.sh", b"#!/bin/sh\n")]), "good2.sh", "is not <GalaxyID>"),
        "symlink": (
            _tar([*good, _special("good2.jpg", tarfile.SYMTYPE, linkname="/etc/passwd")]),
            "good2.jpg",
            "is a symlink",
        ),
        "hardlink": (
            _tar([*good, _special("good2.jpg", tarfile.LNKTYPE, linkname="good1.jpg")]),
            "good2.jpg",
            "is a hard link",
        ),
        "fifo": (_tar([*good, _special("good2.jpg", tarfile.FIFOTYPE)]), "good2.jpg", "is a FIFO"),
        "chardev": (
            _tar([*good, _special("good2.jpg", tarfile.CHRTYPE, devmajor=1, devminor=3)]),
            "good2.jpg",
            "is a device",
        ),
        "directory": (_tar([*good, _special("good2", tarfile.DIRTYPE)]), "good2", "is a directory"),
        "300MB": (_with_huge(tarfile.REGTYPE, "good2.jpg"), "good2.jpg", f"{HUGE} bytes, over the"),
        "300MB-pax-header": (_with_huge(tarfile.XHDTYPE, "pax"), "good1.json", "tar headers after member"),
    }


CASES = (
    "dotdot", "absolute", "subdir", "extension", "symlink", "hardlink", "fifo", "chardev", "directory", "300MB",
    "300MB-pax-header",
)  # fmt: skip


def _store_with(tmp_path: Path, shard: bytes) -> tuple[LocalStore, DatasetManifest]:
    """A store holding ``shard`` as the only training shard, and a manifest whose entry matches it."""
    store = LocalStore(tmp_path / "store")
    store.write_bytes(SHARD, shard)
    info = ShardInfo(
        key=SHARD,
        split="train",
        samples=2,
        classes={"0": 2},
        sha256=hashlib.sha256(shard).hexdigest(),
        size_bytes=len(shard),
        sample_keys=["good1", "good2"],
    )
    counts = IngestCounts(
        images_listed=2,
        sharded=2,
        quarantined=0,
        without_label=0,
        without_class=0,
        labels_without_image=0,
        converted_to_rgb=0,
    )
    manifest = DatasetManifest(
        name="evil",
        version="v1",
        created_at=datetime.now(UTC),
        images_uri="file:///nowhere",
        labels_uri="file:///nowhere.csv",
        labels_sha256="0" * 64,
        config={},
        class_names=list(CLASS_NAMES),
        crop_size=16,
        normalization=Normalization(mean=[0.5] * 3, std=[0.25] * 3),
        shards=[info],
        totals={"train": {"0": 2}},
        counts=counts,
        quarantine=[],
    )
    return store, manifest


def _files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _refused(read: Any, member: str, reason: str) -> None:
    """``read()`` raises UnsafeMemberError naming the shard, the member and the reason."""
    with pytest.raises(UnsafeMemberError, match=rf"shard \S*{re.escape(SHARD)}: ") as err:
        read()
    assert f"'{member}'" in str(err.value)
    assert reason in str(err.value)


@pytest.mark.parametrize("case", CASES)
def test_verify_and_loaders_refuse_a_malicious_member(case: str, tmp_path: Path) -> None:
    cases = _cases()
    assert sorted(cases) == sorted(CASES)
    shard, member, reason = cases[case]
    store, manifest = _store_with(tmp_path, shard)
    before = _files_under(tmp_path)
    _refused(lambda: verify_dataset(store, manifest), member, reason)
    loaders = [make_loader(store, manifest, "train", batch_size=1, train=train, workers=0) for train in (False, True)]
    # refused even by a lenient loader: a shard with such a member is not ours, not merely damaged
    loaders.append(make_loader(store, manifest, "train", batch_size=1, train=False, workers=0, on_error="warn"))
    for loader in loaders:
        _refused(partial(list, loader), member, reason)
    # nothing was extracted anywhere: not beside the store, not where the member's path points
    assert _files_under(tmp_path) == before
    if member.startswith(("../", "/")):
        assert not (Path.cwd() / member).exists()
        assert not (store.path(SHARD).parent / member).exists()
        assert not Path("/tmp", Path(member).name).exists()


@pytest.mark.parametrize("train", [False, True])
def test_loader_workers_refuse_a_malicious_member(train: bool, tmp_path: Path) -> None:
    """The check runs inside forked DataLoader workers too, and the refusal reaches the caller."""
    shard, member, _ = _cases()["symlink"]
    store, manifest = _store_with(tmp_path, shard)
    with pytest.raises(UnsafeMemberError, match=f"member '{member}' is a symlink"):
        list(make_loader(store, manifest, "train", batch_size=1, train=train, workers=1))


class _CountingReader:
    def __init__(self, data: bytes) -> None:
        self.stream, self.read_bytes = io.BytesIO(data), 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.stream.read(n)
        self.read_bytes += len(chunk)
        return chunk


@pytest.mark.parametrize(("kind", "name"), [(tarfile.REGTYPE, "good2.jpg"), (tarfile.XHDTYPE, "pax")])
def test_a_300mb_header_is_refused_before_its_data_is_read(kind: bytes, name: str) -> None:
    """4 MiB of the claimed 300 follow the header; the reader stops long before reaching their end."""
    data = _with_huge(kind, name)
    reader = _CountingReader(data)
    with pytest.raises(UnsafeMemberError):
        list(iter_shard_members(reader, "evil.tar"))
    assert reader.read_bytes < MAX_HEADER_BYTES + 64 * 1024
    assert reader.read_bytes < len(data) - (2 << 20)


def test_our_own_shards_pass(tmp_path: Path) -> None:
    """What the real writer produces passes every check, and a member at the cap is still accepted."""
    store = LocalStore(tmp_path / "store")
    samples = [
        {"__key__": key, "jpg": _jpeg(), "cls": 3, "json": {"galaxy_id": key, "class": 3}}
        for key in ("100008", "A_1-b", "9" * 64)
    ]
    (tmp_path / "work").mkdir()
    [info] = write_shards(store, PREFIX, "train", samples, samples_per_shard=10, workdir=tmp_path / "work")
    with store.open_read(info.key) as stream:
        names = [name for name, _ in iter_shard_members(stream, info.key)]
    assert names == [f"{s['__key__']}.{ext}" for s in samples for ext in ("cls", "jpg", "json")]
    at_cap = _tar([_file("big.jpg", bytes(MAX_MEMBER_BYTES))])
    assert [len(d) for _, d in iter_shard_members(io.BytesIO(at_cap), "big.tar")] == [MAX_MEMBER_BYTES]
    store, manifest = _store_with(tmp_path / "hand", _tar([*_sample("good1"), *_sample("good2")]))
    assert verify_dataset(store, manifest) == 1
    assert sum(len(y) for _, y in make_loader(store, manifest, "train", batch_size=1, train=False, workers=0)) == 2
