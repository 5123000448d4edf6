"""Face identity: 128-d embeddings from dlib's face-recognition ResNet, which works offline from a pip install.

The model files come with the ``face-recognition-models`` package; importing that package needs pkg_resources,
so its folder is found with ``importlib.util.find_spec`` instead. Embeddings of the same person lie close
(Euclidean distance ~0.06–0.37 on our test photos), of different people far (~0.6–0.8). That margin is thin, so a
set is judged against its consensus (median embedding) rather than pair by pair.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.intake.faces import Box, Face, detect_faces

logger = logging.getLogger(__name__)

SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
# Below SAME_PERSON the faces are the same person for sure on our measurements; above DIFFERENT_PERSON they are
# not; in between we say "unsure" (see judge_distance).
SAME_PERSON = 0.45
DIFFERENT_PERSON = 0.60


class IdentityModelMissing(ValueError):
    """dlib or the face-recognition-models files are not installed."""


@dataclass(frozen=True)
class FaceEmbedding:
    box: Box  # in the pixel coordinates of the image given
    vector: np.ndarray = field(compare=False, repr=False)  # shape (128,), float64
    probability: float = 1.0  # the detector's confidence in the face


def models_dir() -> Path:
    """The folder holding dlib's model files, from the face-recognition-models package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise IdentityModelMissing(
            "face_recognition_models is not installed: pip install face-recognition-models dlib-bin")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class FaceIdentity:
    """dlib's 5-point aligner and face-recognition ResNet, loaded once. Use :func:`face_identity` to share one."""

    def __init__(self, folder: Path | None = None) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise IdentityModelMissing("dlib is not installed: pip install dlib-bin") from exc
        folder = folder or models_dir()
        for name in (SHAPE_MODEL, RECOGNITION_MODEL):
            if not (folder / name).is_file():
                raise IdentityModelMissing(f"folder: {folder} has no {name}; reinstall face-recognition-models")
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(folder / SHAPE_MODEL))
        self._net = dlib.face_recognition_model_v1(str(folder / RECOGNITION_MODEL))
        self._lock = threading.Lock()  # dlib's network keeps buffers between calls

    def embed(self, image: Image.Image, box: Box) -> np.ndarray:
        """The 128-d embedding of the face in ``box`` (aligned on dlib's 5 landmarks, so a loose box is fine)."""
        x0, y0, x1, y1 = box
        # Work on a crop around the face: converting a whole 12 MP photo to an array would cost more than the net.
        pad = 0.6 * max(x1 - x0, y1 - y0)
        left, top = max(0, int(x0 - pad)), max(0, int(y0 - pad))
        right, bottom = min(image.width, int(x1 + pad) + 1), min(image.height, int(y1 + pad) + 1)
        crop = np.ascontiguousarray(image.convert("RGB").crop((left, top, right, bottom)))
        rect = self._dlib.rectangle(int(x0 - left), int(y0 - top), int(x1 - left), int(y1 - top))
        with self._lock:
            shape = self._shape(crop, rect)
            vector = self._net.compute_face_descriptor(crop, shape)
        return np.asarray(vector, dtype=np.float64)

    def embed_faces(self, image: Image.Image, faces: Sequence[Face] | None = None) -> list[FaceEmbedding]:
        """Embeddings of the faces in ``image``, largest first; ``faces`` from :func:`detect_faces` if not given."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if faces is None:
            faces = detect_faces(image)
        return [FaceEmbedding(box=face.box, vector=self.embed(image, face.box), probability=face.probability)
                for face in faces]

    @staticmethod
    def distance(a: np.ndarray | FaceEmbedding, b: np.ndarray | FaceEmbedding) -> float:
        """Euclidean distance between two embeddings: < 0.45 same person, > 0.6 different (see judge_distance)."""
        va = a.vector if isinstance(a, FaceEmbedding) else np.asarray(a, dtype=np.float64)
        vb = b.vector if isinstance(b, FaceEmbedding) else np.asarray(b, dtype=np.float64)
        return float(np.linalg.norm(va - vb))


_load_lock = threading.Lock()  # classification analyses two photos at once: load the models once, not twice


def face_identity() -> FaceIdentity:
    """The shared, lazily loaded identity model (dlib loads in ~0.5 s; do it once per process)."""
    with _load_lock:
        return _shared_identity()


@functools.cache
def _shared_identity() -> FaceIdentity:
    logger.info("loading dlib face-recognition models from %s", models_dir())
    return FaceIdentity()


def _stack(embeddings: Sequence[np.ndarray | FaceEmbedding]) -> np.ndarray:
    if not len(embeddings):
        raise ValueError("embeddings: need at least one embedding to form a consensus")
    return np.stack([np.asarray(e.vector if isinstance(e, FaceEmbedding) else e, dtype=np.float64) for e in embeddings])


def consensus(embeddings: Sequence[np.ndarray | FaceEmbedding]) -> np.ndarray:
    """The element-wise median embedding: the set's 'who', robust to a minority of other people."""
    return np.median(_stack(embeddings), axis=0)


def person_consensus(embeddings: Sequence[np.ndarray | FaceEmbedding], threshold: float) -> np.ndarray:
    """The consensus of the one person a set of faces shows: the median of the face with the most others within
    ``threshold`` and those others (ties go to the tighter face: smaller mean distance to its neighbours), not of
    everyone — with two people in equal numbers the median of all lies between them, close to both, so either
    person's face would pass as "the person"."""
    vectors = _stack(embeddings)
    pairwise = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)
    close = pairwise < threshold  # the diagonal is True: every face is in its own group
    anchor = max(range(len(vectors)), key=lambda i: (close[i].sum(), -pairwise[i][close[i]].mean()))
    return np.median(vectors[close[anchor]], axis=0)


def judge_distance(distance: float, same: float = SAME_PERSON, different: float = DIFFERENT_PERSON) -> str:
    """"same", "unsure" or "different" for a distance to a consensus or reference face."""
    if distance < same:
        return "same"
    if distance > different:
        return "different"
    return "unsure"


def similarity(distance: float) -> float:
    """A 0–1 likeness from a distance: 1 identical, 0.5 at the uncertain middle (0.525), ~0 beyond 0.8."""
    middle = (SAME_PERSON + DIFFERENT_PERSON) / 2
    return float(1.0 / (1.0 + np.exp((distance - middle) / 0.05)))
