"""The real app, end to end: launch app.py on a loopback port and drive it with gradio_client.

upload → classify → train → assess → generate, on the embedded tiny FLUX; then assert on the files, the
tinydb record and the returned image, and that the model survives a restart of the app.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import photo_factory
import pytest
from app_runner import RunningApp
from gradio_client import Client, handle_file
from PIL import Image
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    good = photo_factory.portrait_set(tmp_path / "upload", 16)
    bad = tmp_path / "upload" / "broken.jpg"
    bad.write_bytes(photo_factory.text_named_jpg())
    return [*good, bad]


def test_whole_flow_through_the_running_app(tmp_path: Path, photos: list[Path]) -> None:
    data_dir = tmp_path / "data"
    app = RunningApp(data_dir)
    try:
        client = Client(app.url, verbose=False)

        # Upload: the good photos are kept, the text file named .jpg is refused with a reason.
        _gallery, status, _cleared = client.predict([handle_file(str(p)) for p in photos], api_name="/upload_photos")
        assert "16 photo(s) uploaded" in status
        assert "broken.jpg" in status

        # Classify: one record per stored photo, the contract's fields, a selection.
        _report, _table, _gallery, classification = client.predict(api_name="/classify")
        assert len(classification["records"]) == 16
        assert {"file", "verdict", "reasons", "score"} <= set(classification["records"][0])
        assert len(classification["selected"]) >= 10

        # A missing value names its field (it used to be a bare "upstream exception").
        with pytest.raises(Exception, match="steps: must be given"):
            client.predict("e2e-model", None, 1e-3, 0, 64, 0, "", 4, 4.0, 42, "auto", "adamw", 15, 15, 0.05, "",
                           api_name="/train")

        # Train the tiny model: the generator endpoint returns its last update when the model is ready.
        status_md, log, _plot, likeness_curve, _samples, model_id = client.predict(
            "e2e-model", 30, 1e-3, 0, 64, 0, "", 4, 4.0, 42, "auto", "adamw", 15, 15, 0.05, "", api_name="/train")
        assert model_id, status_md
        assert "ready" in status_md, status_md + log
        assert "step 30/30" in log
        # Checkpoints at 15 and 30 were measured as they landed: the likeness curve has both steps.
        assert {row[0] for row in likeness_curve["data"]} >= {15, 30}, likeness_curve

        # Files and the tinydb record.
        library = json.loads((data_dir / "library.json").read_text())
        records = [r for table in library.values() for r in table.values()]
        record = next(r for r in records if r["id"] == model_id)
        assert record["status"] == "ready"
        lora = data_dir / record["lora_path"]
        assert lora.is_file()
        with safe_open(str(lora), "pt") as f:
            assert any("lora" in key for key in f.keys())
        assert record["trigger_word"]
        assert record["scores"]["verdict"]

        # Generate with the new model: an image of the asked size comes back.
        images = client.predict(model_id, "a portrait of {trigger}", "", 3, 4, 3.5, 1.0, 64, 64, 1,
                                api_name="/generate")
        assert len(images) == 1
        path = images[0]["image"] if isinstance(images[0], dict) else images[0]
        image_path = path.get("path") if isinstance(path, dict) else path
        with Image.open(image_path) as img:
            assert img.size == (64, 64)
            assert record["trigger_word"] in img.info["prompt"]

        # Compare the model at two LoRA scales: one side-by-side sheet, twice as wide as one image plus labels.
        sheet = client.predict(model_id, "{trigger}", "", 3, 4, 3.5, 1.0, 64, 64, 1, model_id, 0.0,
                               api_name="/compare")
        with Image.open(sheet) as img:
            assert img.width >= 128

        # A short video: an MP4 with the asked number of frames, named a morph, and every frame's likeness.
        video, summary, _curve, likeness = client.predict(model_id, "{trigger}", "", 6, 6, 1, api_name="/video")
        video_path = video["video"] if isinstance(video, dict) else video
        import imageio.v3 as iio

        assert iio.imread(video_path if isinstance(video_path, str) else video_path["path"]).shape[0] == 6
        assert likeness["kind"] == "morph" and "no image-to-video model" in likeness["why"]
        assert len(likeness["frames"]) == 6 and likeness["recognised_share"] == 0  # the tiny model draws noise
        assert "morph" in summary and "Recognised in 0 of 6 frames" in summary

        # No file of the data dir is served by its path: not the library's index, not a photo, not the LoRA.
        photo = next(p for p in (data_dir / "photos").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for secret in (data_dir / "library.json", photo, lora):
            url = f"{app.url}gradio_api/file={secret.resolve()}"
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=10)
            assert refused.value.code in (403, 404), (secret, refused.value.code)

        # Remove a photo by name; an unknown one is a clear error and removes nothing.
        _gallery, status, _selected = client.predict("portrait_00.jpg", api_name="/remove_photo")
        assert "Removed portrait_00.jpg" in status and "15 photo(s) uploaded" in status
        with pytest.raises(Exception, match="no uploaded photo matches"):
            client.predict("nope", api_name="/remove_photo")
    finally:
        app.stop()

    # The model survives a restart of the app.
    app = RunningApp(data_dir)
    try:
        client = Client(app.url, verbose=False)
        table = client.predict(api_name="/list_models")
        assert model_id in json.dumps(table)

        # Download: a zip with both LoRA formats and the model card; then delete removes files and record.
        import zipfile

        archive = client.predict(model_id, api_name="/download_model")
        names = zipfile.ZipFile(archive).namelist()
        assert any(n.startswith("diffusers/") for n in names) and any(n.startswith("comfyui/") for n in names)
        assert "README.md" in names
        # Hub push without a token is refused with the fix (no network is tried).
        with pytest.raises(Exception, match="token"):
            client.predict(model_id, "me/likeness-test", "", True, api_name="/push_to_hub")
        client.predict(model_id, api_name="/delete_model")
        assert not (data_dir / "models" / model_id).exists()
        assert model_id not in json.dumps(client.predict(api_name="/list_models"))
    finally:
        app.stop()
