"""Near-duplicates: resized, recompressed and lightly edited copies group together; different shots do not."""

from __future__ import annotations

import io

import photo_factory
import pytest
from PIL import Image, ImageEnhance, ImageOps

from pipeline.intake.duplicates import group_duplicates, photo_hash


@pytest.fixture(scope="module")
def shots() -> list[Image.Image]:
    return photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 6)


def _recompressed(image: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(photo_factory.jpeg_bytes(image, quality))).convert("RGB")


def test_copies_are_close_and_other_shots_far(shots):
    base = photo_hash(shots[0])
    copies = [shots[0].resize((shots[0].width // 2, shots[0].height // 2)), _recompressed(shots[0], 30),
              ImageEnhance.Brightness(shots[0]).enhance(1.1), ImageEnhance.Color(shots[0]).enhance(0.7)]
    for copy in copies:
        assert base.distance(photo_hash(copy)) <= 6
    for other in shots[1:]:
        assert base.distance(photo_hash(other)) > 6
    assert base.distance(photo_hash(ImageOps.mirror(shots[0]))) > 6  # a mirrored photo is a new pose


def test_groups_keep_the_best_and_say_why(shots):
    hashes = {f"shot{i}.jpg": photo_hash(img) for i, img in enumerate(shots)}
    hashes["shot0_small.jpg"] = photo_hash(shots[0].resize((200, 240)))
    hashes["shot0_q20.jpg"] = photo_hash(_recompressed(shots[0], 20))
    scores = {name: 80.0 for name in hashes} | {"shot0_q20.jpg": 90.0, "shot0_small.jpg": 60.0}
    groups = group_duplicates(hashes, scores)
    assert len(groups) == 1
    group = groups[0]
    assert group.keep == "shot0_q20.jpg"
    assert set(group.duplicates) == {"shot0.jpg", "shot0_small.jpg"}
    assert group.duplicates[0] == "shot0.jpg"  # best first
    assert "90" in group.reason and "shot0_q20.jpg" in group.reason


def test_preferred_photo_wins_over_a_higher_score(shots):
    hashes = {"a.jpg": photo_hash(shots[1]), "b.jpg": photo_hash(_recompressed(shots[1], 40))}
    groups = group_duplicates(hashes, {"a.jpg": 95.0, "b.jpg": 70.0}, preferred=["b.jpg"])
    assert groups[0].keep == "b.jpg" and groups[0].duplicates == ("a.jpg",)
    tie = group_duplicates(hashes, {"a.jpg": 70.0, "b.jpg": 70.0})
    assert tie[0].keep == "a.jpg" and "first" in tie[0].reason


def test_no_duplicates_no_groups(shots):
    assert group_duplicates({f"{i}": photo_hash(img) for i, img in enumerate(shots)}, {}) == []
