"""Training crops: face-centred squares at the training resolution, aspect crops, captions with the trigger word."""

from __future__ import annotations

from pathlib import Path

import photo_factory
import pytest
from PIL import Image

from pipeline import events as ev
from pipeline.intake.captions import Captioner, CaptionHints, blip_available, template_caption
from pipeline.intake.classify import classify_photos
from pipeline.intake.crops import aspect_crop_box, build_dataset, square_crop_box
from pipeline.intake.dataset import Dataset
from pipeline.intake.faces import detect_faces
from pipeline.settings import ClassifySettings
from pipeline.training.trainer import bucket_for

SETTINGS = ClassifySettings(target_min=2, target_max=3)


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = photo_factory.portrait_set(folder, 3)
    turned = folder / "turned.jpg"  # stored sideways with an EXIF tag: the crop must be upright
    turned.write_bytes(photo_factory.with_exif_rotation(
        photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 1, seed=9)[0]))
    noface = folder / "landscape.jpg"
    noface.write_bytes(photo_factory.jpeg_bytes(photo_factory.no_face()))
    return classify_photos([*paths, turned, noface], ClassifySettings(target_min=2, target_max=20))


def test_dataset_of_the_selected_photos(classified, tmp_path: Path):
    dataset = build_dataset(classified, tmp_path / "ds", "ohwx", 256,
                            captions={"portrait_01.jpg": "a woman in a space suit"})
    assert [item.source for item in dataset.items] == list(classified.selected)
    assert "landscape.jpg" not in [item.source for item in dataset.items]
    assert dataset.captioner == ("blip" if blip_available() else "template")
    for item in dataset.items:
        assert "ohwx" in item.caption
        with Image.open(item.image) as crop:
            assert crop.size == (256, 256) and crop.mode == "RGB"
            faces = detect_faces(crop)
        assert len(faces) == 1
        cx, cy = faces[0].center
        assert abs(cx - 128) < 40 and abs(cy - 128) < 50  # face-centred (a little below centre: room for hair)
        assert 0.25 < faces[0].width / 256 < 0.6
        assert item.aspect_image == item.image.parent / "aspect" / item.image.name
        assert item.training_image == item.aspect_image and item.aspect_image.is_file()
    edited = {item.source: item.caption for item in dataset.items}["portrait_01.jpg"]
    assert edited == "ohwx, a woman in a space suit"  # the user's words, with the trigger word added
    dataset.save(tmp_path / "ds")
    assert Dataset.load(tmp_path / "ds") == dataset


def test_aspect_crop_keeps_the_photo_shape(classified, tmp_path: Path):
    dataset = build_dataset(classified, tmp_path / "ds", "ohwx", 128)
    portrait_buckets = 0
    for item, record in zip(dataset.items, classified.selected_records, strict=True):
        with Image.open(item.image.parent / "aspect" / item.image.name) as aspect:
            width, height = record.size
            assert abs(aspect.width / aspect.height - width / height) < 0.02
            assert min(aspect.size) >= 128 or min(aspect.size) == min(record.size)
            # Training fits it to the bucket of its own shape, not to a square.
            # (the portraits are 1.1–1.3× taller than wide: a portrait bucket such as 112×144)
            bucket = bucket_for(aspect.width, aspect.height, 128)
            if aspect.height >= 1.1 * aspect.width:
                assert bucket[1] > bucket[0], (aspect.size, bucket)
                portrait_buckets += 1
    assert portrait_buckets >= len(dataset.items) // 2  # the check above ran, not skipped for every photo


def test_a_removed_original_is_left_out_with_a_warning(tmp_path: Path):
    paths = photo_factory.portrait_set(tmp_path / "photos", 2)
    result = classify_photos(paths, ClassifySettings(target_min=1, target_max=5))
    paths[0].unlink()
    seen = []
    dataset = build_dataset(result, tmp_path / "ds", "ohwx", 64, on_event=seen.append)
    assert [item.source for item in dataset.items] == [paths[1].name]
    assert any(isinstance(e, ev.Message) and e.level == "warning" and paths[0].name in e.text for e in seen)


def test_nothing_selected_is_a_clear_error(tmp_path: Path):
    (tmp_path / "x.jpg").write_bytes(photo_factory.jpeg_bytes(photo_factory.no_face()))
    result = classify_photos([tmp_path / "x.jpg"])
    with pytest.raises(ValueError, match="no photos are selected"):
        build_dataset(result, tmp_path / "ds", "ohwx", 512)


def test_crop_boxes_stay_inside_the_image():
    size = (400, 300)
    for face in [(0, 0, 80, 100), (330, 200, 400, 300), (150, 100, 250, 220), (10, 10, 390, 290)]:
        for box in (square_crop_box(face, size, 2.2), aspect_crop_box(face, size, 2.2)):
            assert 0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]
        left, top, right, bottom = square_crop_box(face, size, 2.2)
        assert right - left == bottom - top
    # 264 px square around the face, its centre lifted by 0.15 face heights
    assert square_crop_box((150, 100, 250, 220), size, 2.2) == (68, 10, 332, 274)


def test_template_captions():
    assert template_caption("ohwx") == "a photo of ohwx person"
    text = template_caption("ohwx", CaptionHints(smiling=True, yaw=25.0, lighting="soft, neutral, front, normal"))
    assert text == "a photo of ohwx person, smiling, head turned slightly, soft light"
    captioner = Captioner("ohwx", use_blip=False)
    assert captioner.name == "template"
    assert "ohwx" in captioner.caption(photo_factory.astronaut())
    with pytest.raises(ValueError, match="trigger_word"):
        Captioner("  ")
