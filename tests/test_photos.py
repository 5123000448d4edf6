"""The photo store: content-addressed originals; each bad file refused with a code; nothing stored is ever lost."""

from __future__ import annotations

from pathlib import Path

import photo_factory
import pytest

from pipeline.intake.photos import PhotoNotFound, PhotoRejected, PhotoStore
from pipeline.settings import IntakeSettings


@pytest.fixture(scope="module")
def good_bytes() -> list[bytes]:
    return [photo_factory.jpeg_bytes(img) for img in photo_factory.variants(photo_factory.astronaut(), 3)]


def test_same_bytes_are_stored_once(tmp_path: Path, good_bytes):
    store = PhotoStore(tmp_path)
    first = store.add("me.jpg", good_bytes[0])
    again = store.add("me-copy.jpg", good_bytes[0])
    assert again == first
    assert first.name == "me.jpg"
    assert len(store.list()) == 1
    assert len(list(tmp_path.glob("*.jpg"))) == 1
    assert first.path.read_bytes() == good_bytes[0]
    assert first.id in first.path.name and len(first.id) == 16


def test_a_different_photo_with_a_taken_name_is_renamed(tmp_path: Path, good_bytes):
    store = PhotoStore(tmp_path)
    names = [store.add("IMG_0001.jpg", data).name for data in good_bytes]
    assert names == ["IMG_0001.jpg", "IMG_0001 (2).jpg", "IMG_0001 (3).jpg"]


def test_store_survives_a_restart_and_remove(tmp_path: Path, good_bytes):
    store = PhotoStore(tmp_path)
    added = [store.add(f"p{i}.jpg", data) for i, data in enumerate(good_bytes)]
    reopened = PhotoStore(tmp_path)
    assert reopened.list() == added
    reopened.remove(added[1].id)
    assert not added[1].path.exists()
    assert [p.id for p in PhotoStore(tmp_path).list()] == [added[0].id, added[2].id]
    reopened.remove("not-an-id")  # already gone: nothing to do


def test_rotated_photo_is_stored_with_upright_size(tmp_path: Path):
    img = photo_factory.astronaut().resize((600, 400))
    photo = PhotoStore(tmp_path).add("turned.jpg", photo_factory.with_exif_rotation(img, 6))
    assert (photo.width, photo.height) == (600, 400)


def test_each_bad_file_gets_its_code_and_the_batch_goes_on(tmp_path: Path, good_bytes):
    src = tmp_path / "upload"
    src.mkdir()
    files = {
        "good0.jpg": good_bytes[0],
        "truncated.jpg": photo_factory.truncated_jpeg(),
        "notes.jpg": photo_factory.text_named_jpg(),
        "empty.jpg": b"",
        "bomb.png": photo_factory.decompression_bomb_png(),
        "good1.jpg": good_bytes[1],
        "big.jpg": good_bytes[2] + b"\0" * 2_200_000,  # a valid JPEG padded over the size limit
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
    store = PhotoStore(tmp_path / "store", IntakeSettings(max_file_mb=2.0))
    result = store.add_files([src / name for name in files] + [src / "missing.jpg"])
    assert [p.name for p in result.accepted] == ["good0.jpg", "good1.jpg"]
    codes = {r.name: r.code for r in result.rejected}
    assert codes == {"truncated.jpg": "unreadable", "notes.jpg": "unreadable", "empty.jpg": "unreadable",
                     "bomb.png": "too_large", "big.jpg": "too_large", "missing.jpg": "unreadable"}
    assert all(r.message for r in result.rejected)
    assert len(PhotoStore(tmp_path / "store").list()) == 2  # nothing half-written, nothing lost


def test_photo_count_limit(tmp_path: Path, good_bytes):
    store = PhotoStore(tmp_path, IntakeSettings(max_photos=2))
    store.add("a.jpg", good_bytes[0])
    store.add("b.jpg", good_bytes[1])
    with pytest.raises(PhotoRejected) as info:
        store.add("c.jpg", good_bytes[2])
    assert info.value.code == "limit_reached"
    assert "limit is 2" in str(info.value)
    assert store.add("a-again.jpg", good_bytes[0]).name == "a.jpg"  # a re-upload is not a new photo
    assert [p.name for p in store.list()] == ["a.jpg", "b.jpg"]


def test_corrupt_index_is_rebuilt_from_the_files(tmp_path: Path, good_bytes):
    stored = PhotoStore(tmp_path).add("a.jpg", good_bytes[0])
    (tmp_path / "index.json").write_text("{not json")
    store = PhotoStore(tmp_path)
    assert [(p.id, p.path, p.width) for p in store.list()] == [(stored.id, stored.path, stored.width)]
    assert store.add("b.jpg", good_bytes[1]).name == "b.jpg"
    assert len(PhotoStore(tmp_path).list()) == 2


def test_a_batch_says_which_files_were_already_stored(tmp_path: Path):
    store = PhotoStore(tmp_path / "photos")
    first, second = photo_factory.portrait_set(tmp_path / "a", 2)
    assert store.add_files([first]).added == 1
    copy = tmp_path / "copy_of_first.jpg"
    copy.write_bytes(first.read_bytes())
    result = store.add_files([second, copy, second])
    assert result.added == 1
    assert result.already_stored == ("copy_of_first.jpg", second.name)
    assert len(store) == 2


def test_find_by_id_prefix_or_name(tmp_path: Path):
    store = PhotoStore(tmp_path / "photos")
    photo = store.add_files(photo_factory.portrait_set(tmp_path / "a", 1)).accepted[0]
    assert store.find(photo.id) == photo
    assert store.find(photo.id[:8]) == photo
    assert store.find(photo.name) == photo
    with pytest.raises(PhotoNotFound, match="no uploaded photo matches 'nope'"):
        store.find("nope")
    with pytest.raises(PhotoNotFound):
        store.find(photo.id[:2])  # too short to be taken as an id
