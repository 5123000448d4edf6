"""Face detection on real photos: one face, two faces, none, a tiny one found on the second look; yaw geometry."""

from __future__ import annotations

import math

import photo_factory
import pytest
from PIL import ImageOps

from pipeline.intake.faces import Face, detect_faces, estimate_yaw


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_one_face_with_landmarks_inside_the_box():
    faces = detect_faces(photo_factory.astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert face.probability > 0.95
    assert _iou(face.box, photo_factory.ASTRONAUT_FACE) > 0.8
    assert len(face.landmarks) == 5
    for x, y in face.landmarks:
        assert face.box[0] <= x <= face.box[2] and face.box[1] <= y <= face.box[3]
    left_eye, right_eye, nose = face.landmarks[:3]
    assert left_eye[0] < nose[0] < right_eye[0]
    assert abs(face.yaw) < 20  # she faces the camera


def test_large_photo_is_detected_on_a_downscaled_copy_in_original_coordinates():
    big = photo_factory.astronaut().resize((2048, 2048))
    faces = detect_faces(big, max_side=640)
    assert len(faces) == 1
    expected = tuple(v * 4 for v in photo_factory.ASTRONAUT_FACE)
    assert _iou(faces[0].box, expected) > 0.75


def test_two_people_side_by_side():
    faces = detect_faces(photo_factory.side_by_side(photo_factory.astronaut(), photo_factory.grace_hopper()))
    assert len(faces) == 2
    assert faces[0].area >= faces[1].area  # largest first


def test_no_face_in_a_landscape():
    assert detect_faces(photo_factory.no_face()) == []


def test_tiny_face_in_a_big_canvas_is_found_on_the_second_look():
    canvas = photo_factory.tiny_face_in_big_canvas(photo_factory.astronaut())
    assert detect_faces(canvas, fallback_side=0) == []  # invisible at 640 px
    faces = detect_faces(canvas)
    assert len(faces) == 1
    assert faces[0].area / (canvas.width * canvas.height) < 0.001
    # where the factory pasted it: centre column, a third down
    cx, cy = faces[0].center
    assert 1500 < cx < 1620 and 1000 < cy < 1120


def test_mirrored_face_mirrors_the_box():
    image = photo_factory.grace_hopper()
    face = detect_faces(image)[0]
    mirrored = detect_faces(ImageOps.mirror(image))[0]
    expected = (image.width - face.box[2], face.box[1], image.width - face.box[0], face.box[3])
    assert _iou(mirrored.box, expected) > 0.85


def test_yaw_geometry():
    frontal = ((40.0, 50.0), (80.0, 50.0), (60.0, 70.0), (45.0, 90.0), (75.0, 90.0))
    assert estimate_yaw(frontal) == pytest.approx(0.0, abs=1e-6)
    # nose shifted by 0.7 half-widths toward image right: 45 degrees by the model in estimate_yaw
    turned = ((40.0, 50.0), (80.0, 50.0), (74.0, 70.0), (45.0, 90.0), (75.0, 90.0))
    assert estimate_yaw(turned) == pytest.approx(45.0, abs=0.5)
    mirrored = tuple((120.0 - x, y) for x, y in turned)
    mirrored = (mirrored[1], mirrored[0], mirrored[2], mirrored[4], mirrored[3])
    assert estimate_yaw(mirrored) == pytest.approx(-45.0, abs=0.5)
    # a tilted head (roll 30 degrees) has the same yaw
    angle = math.radians(30)
    rolled = tuple((x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle))
                   for x, y in turned)
    face = Face(box=(0, 0, 200, 200), probability=1.0, landmarks=rolled)
    assert face.yaw == pytest.approx(45.0, abs=0.5)
    assert face.roll == pytest.approx(30.0, abs=0.5)


def test_cameraman_in_three_quarter_view_is_turned():
    faces = detect_faces(photo_factory.camera())
    assert len(faces) == 1
    assert abs(faces[0].yaw) > 45


def test_border_margin_and_scaling():
    face = Face(box=(10, 20, 110, 120), probability=0.99, landmarks=((0, 0),) * 5)
    assert face.border_margin((200, 200)) == pytest.approx(0.1)
    assert face.border_margin((100, 200)) < 0  # cut by the right border
    assert face.scaled(2.0).box == (20, 40, 220, 240)
