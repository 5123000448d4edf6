"""Near-duplicate photos (resized, recompressed, lightly edited copies) grouped by perceptual hashes.

Two 64-bit hashes from imagehash must both be close: the DCT hash (pHash) survives resizing and recompression,
the gradient hash (dHash) separates different shots that happen to share a layout. Groups are transitive (a
chain of near-copies is one group), and the best photo of each group is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import imagehash
from PIL import Image


@dataclass(frozen=True)
class PhotoHash:
    phash: imagehash.ImageHash
    dhash: imagehash.ImageHash

    def distance(self, other: PhotoHash) -> int:
        """The larger of the two Hamming distances (0–64): both hashes must agree for a near-duplicate."""
        return max(self.phash - other.phash, self.dhash - other.dhash)


@dataclass(frozen=True)
class DuplicateGroup:
    keep: str  # the file kept
    duplicates: tuple[str, ...]  # the others, best first
    reason: str  # why ``keep`` was kept, for the user


def photo_hash(image: Image.Image) -> PhotoHash:
    return PhotoHash(phash=imagehash.phash(image), dhash=imagehash.dhash(image))


def group_duplicates(hashes: Mapping[str, PhotoHash], scores: Mapping[str, float], max_distance: int = 6,
                     preferred: Sequence[str] = ()) -> list[DuplicateGroup]:
    """Groups of near-duplicates among ``hashes`` (file → hash), each keeping its best photo.

    The best is a ``preferred`` file (e.g. one the user chose to include, or one not otherwise rejected) and,
    among those, the highest score; ties go to the first file given.
    """
    names = list(hashes)
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if hashes[a].distance(hashes[b]) <= max_distance:
                parent[root(b)] = root(a)
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(root(name), []).append(name)
    preferred_set = set(preferred)
    order = {name: i for i, name in enumerate(names)}
    groups = []
    for group in members.values():
        if len(group) < 2:
            continue
        ranked = sorted(group, key=lambda n: (n not in preferred_set, -scores.get(n, 0.0), order[n]))
        keep, rest = ranked[0], tuple(ranked[1:])
        groups.append(DuplicateGroup(keep=keep, duplicates=rest, reason=_reason(keep, rest[0], scores,
                                                                              preferred_set)))
    return groups


def _reason(keep: str, runner_up: str, scores: Mapping[str, float], preferred: set[str]) -> str:
    if keep in preferred and runner_up not in preferred:
        return f"kept {keep}: the copies have other problems"
    a, b = scores.get(keep, 0.0), scores.get(runner_up, 0.0)
    if a > b:
        return f"kept {keep}: best quality of the copies (score {a:.0f} vs {b:.0f})"
    return f"kept {keep}: same quality, first uploaded"
