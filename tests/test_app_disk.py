"""The running app when its disk refuses a write: the API answers what failed and what to free.

The app's file-size limit (RLIMIT_FSIZE, set from outside with prlimit) is lowered below the size of the image a
generation saves, as a full data disk would refuse it, then raised again.
"""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from app_runner import RunningApp
from gradio_client import Client

LIMIT = 100_000  # bytes: below a 512 px PNG of the tiny model's noise (~0.5 MB), above the app's log and state files


@pytest.mark.slow
def test_the_api_says_what_failed_and_what_to_free_when_the_disk_refuses_a_write(tmp_path: Path) -> None:
    app = RunningApp(tmp_path / "data")
    try:
        client = Client(app.url, verbose=False)
        request = (None, "a portrait", "", 3, 4, 3.5, 1.0, 512, 512, 1)
        client.predict(*request, api_name="/generate")  # builds the tiny base model while the disk has room
        resource.prlimit(app.proc.pid, resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        with pytest.raises(Exception) as refused:  # gradio_client's AppError carries the page's text
            client.predict(*request, api_name="/generate")
        resource.prlimit(app.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        images = client.predict(*request, api_name="/generate")
    finally:
        app.stop()
    answer = str(refused.value)
    print(answer)
    # Not {"error": null}: what failed, why, and what to free, without the server's paths.
    assert "could not save the images: a file is larger than the app may write" in answer
    assert "free some space" in answer and str(tmp_path) not in answer
    assert len(images) == 1  # the same request once the disk takes writes again
