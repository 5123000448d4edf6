"""Face identity with dlib's ResNet, offline: the same person is close to the set's consensus, another is far."""

from __future__ import annotations

import numpy as np
import photo_factory
import pytest

from pipeline.intake.faces import detect_faces
from pipeline.intake.identity import FaceIdentity, consensus, face_identity, judge_distance, similarity


@pytest.fixture(scope="module")
def identity() -> FaceIdentity:
    return face_identity()


@pytest.fixture(scope="module")
def astronaut_embeddings(identity):
    photos = photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 6)
    return [identity.embed_faces(photo)[0] for photo in photos]


def test_loader_is_cached(identity):
    assert face_identity() is identity


def test_embedding_shape_and_box(identity):
    image = photo_factory.astronaut()
    embeddings = identity.embed_faces(image)
    assert len(embeddings) == 1
    assert embeddings[0].vector.shape == (128,)
    assert embeddings[0].box == detect_faces(image)[0].box
    # a loose box gives nearly the same embedding: dlib re-aligns on its own landmarks
    x0, y0, x1, y1 = embeddings[0].box
    loose = identity.embed(image, (x0 - 8, y0 - 8, x1 + 8, y1 + 8))
    assert FaceIdentity.distance(loose, embeddings[0]) < 0.15


def test_same_person_is_near_consensus_and_another_is_far(identity, astronaut_embeddings):
    centre = consensus(astronaut_embeddings)
    same = [FaceIdentity.distance(e, centre) for e in astronaut_embeddings]
    hopper = identity.embed_faces(photo_factory.grace_hopper())[0]
    other = FaceIdentity.distance(hopper, centre)
    assert max(same) < 0.4
    assert other > 0.55
    assert judge_distance(max(same)) == "same" and judge_distance(other) == "different"
    assert similarity(max(same)) > 0.9 > 0.1 > similarity(other)


def test_consensus_resists_an_intruder(identity, astronaut_embeddings):
    hopper = identity.embed_faces(photo_factory.grace_hopper())[0]
    centre = consensus([*astronaut_embeddings, hopper])
    assert FaceIdentity.distance(hopper, centre) > 0.55
    assert all(FaceIdentity.distance(e, centre) < 0.4 for e in astronaut_embeddings)


def test_two_faces_give_two_embeddings(identity):
    pair = photo_factory.side_by_side(photo_factory.astronaut(), photo_factory.grace_hopper())
    embeddings = identity.embed_faces(pair)
    assert len(embeddings) == 2
    assert FaceIdentity.distance(*embeddings) > 0.55


def test_no_face_no_embedding_and_consensus_needs_input(identity):
    assert identity.embed_faces(photo_factory.no_face()) == []
    with pytest.raises(ValueError, match="embeddings"):
        consensus([])
    assert np.allclose(consensus([np.ones(128)]), 1.0)
