"""The Review tab through the running app: verdicts in words, and bulk decisions instead of one photo at a time."""

from __future__ import annotations

from pathlib import Path

import photo_factory
from app_runner import RunningApp
from gradio_client import Client, handle_file


def test_bulk_decisions_on_review(tmp_path: Path) -> None:
    good = photo_factory.portrait_set(tmp_path / "upload", 6)
    blurred = []
    for i, image in enumerate(photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE,
                                                              2, seed=5)):
        path = tmp_path / "upload" / f"soft_{i}.jpg"
        path.write_bytes(photo_factory.jpeg_bytes(photo_factory.blurred(image, 6)))
        blurred.append(path)
    app = RunningApp(tmp_path / "data")
    try:
        client = Client(app.url, verbose=False)
        _gallery, status, _ = client.predict([handle_file(str(p)) for p in [*good, *blurred]],
                                             api_name="/upload_photos")
        assert "8 photo(s) uploaded" in status

        _report, table, cards, data = client.predict(api_name="/classify")
        verdicts = {r["file"]: r for r in data["records"]}
        assert {verdicts[p.name]["verdict"] for p in blurred} == {"reject"}
        assert all("blurry" in verdicts[p.name]["reasons"] for p in blurred)
        # The table says why in words (the JSON keeps the stable codes); every photo has a card.
        why = {row[0]: row[4] for row in table["data"]}
        assert "blurry" in why["soft_0.jpg"] and "_" not in why["soft_0.jpg"]
        assert len(cards) == 8

        # One click lets every blurry photo in; another puts all back to automatic.
        _report, _table, _cards, data = client.predict("blurry", api_name="/include_all")
        verdicts = {r["file"]: r for r in data["records"]}
        assert {verdicts[p.name]["verdict"] for p in blurred} == {"keep"}
        assert {verdicts[p.name]["override"] for p in blurred} == {"include"}
        _report, _table, _cards, data = client.predict("blurry", api_name="/exclude_all")
        assert {r["verdict"] for r in data["records"] if r["file"].startswith("soft_")} == {"reject"}
        _report, _table, _cards, data = client.predict(None, api_name="/reset_choices")
        assert {r["override"] for r in data["records"]} == {None}
        assert {r["file"] for r in data["records"] if r["verdict"] == "keep"} == {p.name for p in good}
    finally:
        app.stop()
