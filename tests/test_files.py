"""Files handed to the browser: a data dir outside the working and temp dirs is never served by its path."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import photo_factory
import pytest
from app_runner import RunningApp
from gradio_client import Client, handle_file

from ui.files import servable, served


@pytest.fixture()
def outside() -> Iterator[Path]:
    """A folder that is neither under the working dir nor under the temp dir (like a Space's /data volume)."""
    for root in (Path("/var/tmp"), Path.home()):
        resolved = root.resolve()
        if root.is_dir() and os.access(root, os.W_OK) and not any(
                resolved.is_relative_to(Path(p).resolve()) for p in (os.getcwd(), tempfile.gettempdir())):
            folder = root / f"likeness-test-{uuid.uuid4().hex[:8]}"
            folder.mkdir()
            yield folder
            shutil.rmtree(folder, ignore_errors=True)
            return
    pytest.skip("no writable folder outside the working and temp dirs")


def test_a_file_outside_is_copied_once_per_version(outside: Path, tmp_path: Path) -> None:
    inside = tmp_path / "a.txt"
    inside.write_text("inside")
    assert servable(inside) and served(inside) == str(inside)
    source = outside / "photo.jpg"
    source.write_bytes(b"first")
    copy = Path(served(source))
    assert not servable(source) and servable(copy) and copy.read_bytes() == b"first" and copy.name == "photo.jpg"
    assert served(source) == str(copy)  # unchanged: the same copy
    source.write_bytes(b"second, longer")
    assert Path(served(source)).read_bytes() == b"second, longer"


def test_the_app_serves_copies_never_the_data_dir(outside: Path, tmp_path: Path) -> None:
    data_dir = outside / "data"
    photos = photo_factory.portrait_set(tmp_path / "upload", 2)
    app = RunningApp(data_dir, "--workspaces", "per-browser")
    try:
        client = Client(app.url, headers={"X-Likeness-Workspace": secrets.token_urlsafe(32)}, verbose=False)
        gallery, status, _ = client.predict([handle_file(str(p)) for p in photos], api_name="/upload_photos")
        assert "2 photo(s) uploaded" in status and len(gallery) == 2  # the photos still reach the page
        stored = [p for p in data_dir.rglob("*") if p.is_file()]
        assert any(p.suffix == ".jpg" for p in stored)
        for secret in stored:
            url = f"{app.url}gradio_api/file={urllib.parse.quote(str(secret.resolve()))}"
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=10)
            assert refused.value.code in (403, 404), secret
    finally:
        app.stop()
