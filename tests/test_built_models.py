"""Models built by code on first use: built once, rebuilt whole on a new version, never left half-saved."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline.models.built_models import ensure_built, stored_version


class _Saved:
    """Stands for a pipeline: what ``save_pretrained`` writes is one file."""

    def __init__(self, text: str, fail: bool = False) -> None:
        self.text, self.fail = text, fail

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / "weights.txt").write_text(self.text)
        if self.fail:
            raise OSError("disk full")


def test_built_once_then_rebuilt_whole_when_the_version_moves_on(tmp_path: Path) -> None:
    folder = tmp_path / "base_models" / "toy"
    builds: list[str] = []

    def build(text: str) -> _Saved:
        builds.append(text)
        return _Saved(text)

    threads = [threading.Thread(target=ensure_built, args=(folder,),
                                kwargs=dict(version="1", version_file="v.txt", build=lambda: build("one"), what="toy"))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == ["one"] and stored_version(folder, "v.txt") == "1"
    assert ensure_built(folder, version="2", version_file="v.txt", build=lambda: build("two"), what="toy") == folder
    assert builds == ["one", "two"] and (folder / "weights.txt").read_text() == "two"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["toy"]  # no build folder left beside it


def test_a_failed_build_keeps_the_old_model_and_leaves_nothing_half_saved(tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    ensure_built(folder, version="1", version_file="v.txt", build=lambda: _Saved("one"), what="toy")
    with pytest.raises(OSError, match="disk full"):
        ensure_built(folder, version="2", version_file="v.txt", build=lambda: _Saved("two", fail=True), what="toy")
    assert stored_version(folder, "v.txt") == "1" and (folder / "weights.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]
