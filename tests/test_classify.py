"""Classification of a realistic upload: each photo gets the right verdict and reason, none crashes; overrides win."""

from __future__ import annotations

import json
from pathlib import Path

import photo_factory
import pytest
from PIL import Image

from pipeline import events as ev
from pipeline.intake.classify import REASONS, ClassificationResult, classify_photos, readiness_verdict
from pipeline.settings import ClassifySettings, IntakeSettings


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("upload")
    expected = photo_factory.review_set(folder)
    # a valid photo over a 1 MB size limit
    big = folder / "huge_file.jpg"
    big.write_bytes((folder / "portrait_01.jpg").read_bytes() + b"\0" * 1_200_000)
    expected[big.name] = "too_large"
    return folder, expected


@pytest.fixture(scope="module")
def classified(upload) -> tuple[ClassificationResult, list[ev.Event]]:
    folder, expected = upload
    seen: list[ev.Event] = []
    result = classify_photos(sorted(folder / name for name in expected), on_event=seen.append,
                             intake=IntakeSettings(max_file_mb=1.0))
    return result, seen


def test_every_file_gets_its_reason(classified, upload):
    result, _ = classified
    _, expected = upload
    assert [r.file for r in result.records] == sorted(expected)
    for record in result.records:
        want = expected[record.file]
        if want == "":
            assert record.verdict == "keep" and record.reasons == (), (record.file, record.reasons)
        else:
            assert want in record.reasons, (record.file, record.reasons)
            assert record.verdict == ("duplicate" if want == "duplicate" else "reject"), record.file
        assert set(record.reasons) <= set(REASONS)
        assert len(record.messages) == len(record.reasons)


def test_unreadable_files_have_no_score_and_readable_ones_do(classified, upload):
    result, _ = classified
    _, expected = upload
    for record in result.records:
        if expected[record.file] in ("unreadable", "too_large"):
            assert record.score is None and record.face_box is None and record.path is None
        else:
            assert 0 <= record.score <= 100


def test_details_of_specific_verdicts(classified):
    result, _ = classified
    assert result.record("copy_of_00.jpg").duplicate_of == "portrait_00.jpg"
    assert "portrait_00.jpg" in result.record("copy_of_00.jpg").messages[0]
    rotated = result.record("rotated_exif.jpg")
    width, height = rotated.size
    assert width < height  # upright: a portrait, as taken
    x0, y0, x1, y1 = rotated.face_box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    grace = result.record("grace_hopper.jpg")
    assert grace.identity == "different" and grace.identity_distance > 0.55
    assert all(r.identity_distance < 0.4 for r in result.records if r.file.startswith("portrait_"))
    assert result.record("two_people.jpg").face_count == 2
    assert abs(result.record("cameraman.jpg").yaw) > 45
    assert "bomb.png" in [r.file for r in result.records if "too_large" in r.reasons]
    clean = [r for r in result.records if r.verdict == "keep"]
    assert min(r.score for r in clean) > max(result.record(f).score for f in ("blurry.jpg", "dark.jpg"))


def test_selection_and_report(classified, upload):
    result, _ = classified
    _, expected = upload
    keeps = {f for f, want in expected.items() if want == ""}
    assert set(result.selected) == keeps  # fewer than target_max: all the keeps
    report = result.report
    assert report.total == len(expected)
    assert report.counts["keep"] + report.counts["reject"] + report.counts["duplicate"] == report.total
    assert report.counts["selected"] == len(keeps)
    assert report.reasons["unreadable"] == 3 and report.reasons["too_large"] == 2
    assert report.readiness == "not_ready"  # 9 good photos: below the ~10 a likeness needs
    assert f"Add at least {15 - len(keeps)} more" in report.summary
    assert any("someone else" in tip for tip in report.advice)
    assert any("head angles" in tip for tip in report.advice)  # every portrait faces the camera


def test_json_contract(classified, upload):
    result, expected = classified[0], upload[1]
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data) == {"records", "selected", "report"}
    for record in data["records"]:
        assert {"file", "verdict", "reasons", "score", "face_box", "duplicate_of"} <= set(record)
        assert record["verdict"] in ("keep", "reject", "duplicate")
        assert record["face_box"] is None or len(record["face_box"]) == 4
    assert {r["file"] for r in data["records"]} == set(expected)
    assert {"counts", "readiness", "summary", "advice", "reasons"} <= set(data["report"])


def test_progress_events(classified, upload):
    _, seen = classified
    progress = [e for e in seen if isinstance(e, ev.Progress)]
    assert all(e.stage == "classify" for e in progress)
    assert [e.done for e in progress] == sorted(e.done for e in progress)
    assert progress[-1].done == progress[-1].total == len(upload[1])


def test_overrides_win_and_selection_is_capped(tmp_path: Path):
    paths = photo_factory.portrait_set(tmp_path, 7)
    blurred = tmp_path / "blurred.jpg"
    blurred.write_bytes(photo_factory.jpeg_bytes(photo_factory.blurred(
        photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 1, seed=5)[0], 6)))
    landscape = tmp_path / "landscape.jpg"
    landscape.write_bytes(photo_factory.jpeg_bytes(photo_factory.no_face()))
    settings = ClassifySettings(target_min=3, target_max=4)
    overrides = {"blurred.jpg": "include", paths[0].name: "exclude", "landscape.jpg": "include"}
    result = classify_photos([*paths, blurred, landscape], settings, overrides=overrides)
    by_file = {r.file: r for r in result.records}
    assert by_file["blurred.jpg"].verdict == "keep" and by_file["blurred.jpg"].auto_verdict == "reject"
    assert by_file["blurred.jpg"].reasons == ("blurry",)  # our reasons stay visible
    assert by_file[paths[0].name].verdict == "reject" and by_file[paths[0].name].override == "exclude"
    assert len(result.selected) == 4
    # nothing to train on without a face: the include cannot apply, and the record says so
    assert by_file["landscape.jpg"].verdict == "reject" and "cannot apply" in by_file["landscape.jpg"].messages[-1]
    assert "blurred.jpg" in result.selected  # the user's include is always selected
    assert paths[0].name not in result.selected
    # the rest of the selection prefers the higher scores
    others = [r for r in result.records if r.verdict == "keep" and r.file != "blurred.jpg"]
    chosen = [r.score for r in others if r.file in result.selected]
    left = [r.score for r in others if r.file not in result.selected]
    assert min(chosen) >= min(left)


def test_bad_arguments_are_named(tmp_path: Path):
    with pytest.raises(ValueError, match="names"):
        classify_photos([tmp_path / "a.jpg"], names=["a", "b"])
    with pytest.raises(ValueError, match="more than once"):
        classify_photos([tmp_path / "a.jpg", tmp_path / "b.jpg"], names=["a", "a"])
    with pytest.raises(ValueError, match="overrides"):
        classify_photos([], overrides={"a.jpg": "maybe"})
    empty = classify_photos([])
    assert empty.records == () and empty.report.readiness == "not_ready"


def test_readiness_levels():
    settings = ClassifySettings()
    assert readiness_verdict(18, 20, {"blurry": 2}, (), settings)[0] == "ready"
    usable, summary = readiness_verdict(12, 20, {"blurry": 8}, (), settings)
    assert usable == "usable" and "add 3 more" in summary
    assert readiness_verdict(18, 20, {}, ("Include different head angles",), settings) == (
        "usable", "Usable, but: Include different head angles (18 photos selected of 20.)")
    not_ready, summary = readiness_verdict(4, 12, {"blurry": 5, "no_face": 3}, (), settings)
    assert not_ready == "not_ready" and "5 blurry" in summary and "11 more" in summary


def test_two_people_in_similar_numbers_are_mixed_subjects(tmp_path: Path):
    astronaut = photo_factory.write_set(tmp_path, photo_factory.portrait_variants(
        photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 4), prefix="astronaut")
    hopper = photo_factory.write_set(tmp_path, photo_factory.portrait_variants(
        photo_factory.grace_hopper(), photo_factory.GRACE_HOPPER_FACE, 3, seed=2), prefix="hopper")
    result = classify_photos([*astronaut, *hopper], ClassifySettings(target_min=3, target_max=20))
    # the larger group is the person; the median of all seven would sit between the two and flag no one
    assert set(result.selected) == {p.name for p in astronaut}
    assert all("different_person" in result.record(p.name).reasons for p in hopper)
    assert min(result.record(p.name).identity_distance for p in hopper) > 0.6
    assert max(result.record(p.name).identity_distance for p in astronaut) < 0.3
    assert result.report.readiness == "not_ready"
    assert "mixed subjects" in result.report.summary and "3 of 7" in result.report.summary


def test_odd_images_do_not_crash(tmp_path: Path):
    odd = {"tiny.png": Image.new("RGB", (16, 16), (200, 100, 50)), "line.png": Image.new("RGB", (1, 3000)),
           "black.png": Image.new("L", (300, 300), 0), "white.png": Image.new("RGB", (300, 300), (255, 255, 255))}
    for name, image in odd.items():
        image.save(tmp_path / name)
    result = classify_photos(sorted(tmp_path / name for name in odd))
    for record in result.records:
        assert record.verdict == "reject" and "no_face" in record.reasons and record.score is not None
        assert "the photo" in " ".join(record.messages)  # no face: the whole frame was judged
    assert "low_resolution" in result.record("tiny.png").reasons
    assert "underexposed" in result.record("black.png").reasons
    assert "overexposed" in result.record("white.png").reasons
    assert result.selected == ()


def test_cache_reuses_measurements_and_an_included_stranger_is_warned_about(tmp_path: Path):
    folder = tmp_path / "photos"
    paths = photo_factory.portrait_set(folder, 5)
    stranger = folder / "grace.jpg"
    stranger.write_bytes(photo_factory.jpeg_bytes(
        photo_factory.portrait_variants(photo_factory.grace_hopper(), photo_factory.GRACE_HOPPER_FACE, 1)[0]))
    paths.append(stranger)
    cache: dict = {}
    first = classify_photos(paths, cache=cache)
    assert len(cache) == len(paths)
    assert "different_person" in first.record("grace.jpg").reasons
    assert "grace.jpg" not in first.selected

    measured = dict(cache)
    second = classify_photos(paths, overrides={"grace.jpg": "include"}, cache=cache)
    # Nothing was measured again: the same analysis objects serve the second call.
    assert cache.keys() == measured.keys() and all(cache[k] is measured[k] for k in cache)
    assert "grace.jpg" in second.selected
    assert any("You included 1 photo" in tip for tip in second.report.advice)
    assert not any("left out" in tip for tip in second.report.advice)
