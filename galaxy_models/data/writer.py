"""Writing a split's samples into WebDataset shards (webdataset's ``ShardWriter``), each uploaded to
the store as soon as it is closed and described for the manifest."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import webdataset as wds

from galaxy_models.data.manifest import ShardInfo
from galaxy_models.data.shards import sha256_file, summarize_shard
from galaxy_models.storage import Store


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
                sha256=sha256_file(path),
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
