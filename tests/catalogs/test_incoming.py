"""Survey batches under incoming/: listing, images, and the two ways a named batch can be missing."""

from __future__ import annotations

import pytest

from galaxy_models.catalogs.incoming import (
    BatchNotFoundError,
    batch_images,
    list_batches,
    pending_batches,
    require_images,
    scan_batches,
)
from galaxy_models.storage import Store


def test_batches_and_their_images(store: Store) -> None:
    store.write_bytes("incoming/b1/100.jpg", b"x")
    store.write_bytes("incoming/b1/101.PNG", b"x")
    store.write_bytes("incoming/b1/notes.txt", b"x")
    store.write_bytes("incoming/b1/sub/102.jpg", b"x")
    store.write_bytes("incoming/b2/readme.md", b"x")
    assert list_batches(store) == ["b1", "b2"]
    assert batch_images(store, "b1") == ["incoming/b1/100.jpg", "incoming/b1/101.PNG"]
    assert require_images(store, "b1") == batch_images(store, "b1")
    with pytest.raises(BatchNotFoundError, match="batch 'b2' has no images"):
        require_images(store, "b2")
    with pytest.raises(BatchNotFoundError, match=r"batch 'b9' does not exist: .* \(batches: b1, b2\)"):
        require_images(store, "b9")
    with pytest.raises(ValueError, match="invalid batch id 'a/b'"):
        batch_images(store, "a/b")


def test_an_odd_folder_is_skipped_not_fatal(store: Store) -> None:
    store.write_bytes("incoming/b1/100.jpg", b"x")
    store.write_bytes("incoming/bad batch/101.jpg", b"x")
    store.write_bytes("incoming/-rf/102.jpg", b"x")
    batches, skipped = scan_batches(store)
    assert batches == list_batches(store) == ["b1"]
    assert {s.folder for s in skipped} == {"bad batch", "-rf"}
    assert all("is not a valid batch id" in s.reason for s in skipped)
    assert pending_batches(store, "v1") == ["b1"]
