"""Workspaces on the tiny model: each person's photos and models are theirs alone, over one shared queue."""

from __future__ import annotations

import time
from pathlib import Path

import photo_factory
import pytest

from pipeline.export import export_zip
from pipeline.library import ModelNotFound
from pipeline.photos import PhotoNotFound
from pipeline.settings import AppSettings, TrainSettings
from pipeline.workflow import Workflow
from pipeline.workspaces import LOCAL_PERSON, Workspaces


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    return photo_factory.portrait_set(tmp_path / "photos", 6)


def _quick(name: str, steps: int = 4) -> TrainSettings:
    return TrainSettings.quick(name=name, steps=steps, checkpoint_every=steps, sample_every=1000)


def _wait_ready(flow: Workflow, model_id: str) -> None:
    assert flow.wait_for(model_id, timeout=300).status == "ready", flow.library.get(model_id).error


def test_two_people_see_only_their_own_photos_and_models(tmp_path: Path, photos: list[Path]) -> None:
    people = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model="tiny", trainings_per_person=1))
    try:
        alice, bob = people.get(people.login("alice")), people.get(people.browser("b" * 43))
        alice.add_photos(photos)
        assert len(alice.list_photos()) == 6 and bob.list_photos() == []
        photo = alice.list_photos()[0]

        record = alice.start_training(_quick("alice-model"), anyway=True)
        # One waiting or running training per person: Alice's second is refused, Bob may queue his own.
        with pytest.raises(ValueError, match="1 per person"):
            alice.start_training(_quick("again"), anyway=True)
        _wait_ready(alice, record.id)  # the shared queue ran it in Alice's workspace
        assert Path(record.folder).is_relative_to(people.folder(alice.workspace))
        assert [r.id for r in alice.library.list()] == [record.id] and bob.library.list() == []

        # Everything Bob could name of Alice's is "not found", exactly like something that does not exist.
        attempts = [
            lambda: bob.remove_photo(photo.id), lambda: bob.remove_photo(photo.name),
            lambda: bob.library.get(record.id), lambda: bob.library.rename(record.id, "mine"),
            lambda: bob.library.set_trigger_word(record.id, "zzq"), lambda: export_zip(bob.library, record.id),
            lambda: bob.delete_model(record.id), lambda: bob.cancel_training(record.id),
            lambda: bob.resume_training(record.id), lambda: bob.jobs_ahead(record.id),
            lambda: bob.training_view(record.id),
            lambda: bob.generate(record.id, bob.test_generate_settings(64)),
        ]
        for attempt in attempts:
            with pytest.raises((ModelNotFound, PhotoNotFound)):
                attempt()
        assert alice.library.get(record.id).name == "alice-model" and len(alice.list_photos()) == 6
        with pytest.raises(ValueError, match="No photos uploaded"):
            bob.classify()  # Bob's workspace is empty: he classifies nothing of Alice's

        # The operator's view counts each workspace; deleting Bob's leaves Alice's whole.
        bob.add_photos(photos[:2])
        usage = {u.key: u for u in people.usage()}
        assert usage[alice.workspace].models == 1 and usage[alice.workspace].photos == 6
        assert usage[bob.workspace].photos == 2 and usage[bob.workspace].bytes > 0
        people.delete(bob.workspace)
        assert not people.folder(bob.workspace).exists()
        assert alice.library.get(record.id).status == "ready"
    finally:
        people.close()


def test_a_single_user_data_dir_becomes_the_first_accounts_workspace(tmp_path: Path, photos: list[Path]) -> None:
    data_dir = tmp_path / "data"
    before = Workspaces(AppSettings(data_dir=data_dir, base_model="tiny"))
    local = before.get(LOCAL_PERSON)
    local.add_photos(photos)
    record = local.start_training(_quick("before-accounts"), anyway=True)
    _wait_ready(local, record.id)
    queued = local.library.create("waiting", "tiny", {})  # a job left in the queue when the app stopped
    before.jobs.submit(queued.id, {"settings": {}})
    before.close()
    lora = Path(local.library.get(record.id).lora_path).read_bytes()

    after = Workspaces(AppSettings(data_dir=data_dir, base_model="tiny"), start_worker=False)
    moved = after.adopt_local_data(after.login("alice"))
    assert {"photos", "models", "library.json"} <= set(moved)
    alice = after.get(after.login("alice"))
    assert len(alice.list_photos()) == 6
    assert Path(alice.library.get(record.id).lora_path).read_bytes() == lora  # nothing lost, every byte
    assert alice.library.get(record.id).status == "ready"
    assert after.local.list_photos() == [] and after.local.library.list() == []
    assert [j.payload["workspace"] for j in after.jobs.list() if j.model_id == queued.id] == [alice.workspace]
    assert after.adopt_local_data(after.login("bob")) == []  # once only: nothing left to adopt
    after.close()


def test_a_workspace_name_is_never_a_path(tmp_path: Path) -> None:
    people = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    for hostile in ("../x", "user-../../etc", "/etc", "user-a/b"):
        with pytest.raises(ValueError, match="not a workspace"):
            people.get_key(hostile)
    # Login names that are not plain become hashed folder names inside people/.
    for name in ("../../x", "<img src=x>", "a/b", ".."):
        folder = people.folder(people.login(name).key)
        assert folder.parent == people.root / "people" and "/" not in folder.name and ".." not in folder.name
    assert people.browser("t" * 43).key != people.browser("u" * 43).key
    assert people.folder(LOCAL_PERSON.key) == people.root
    # Folder names are keyed by the data dir's own secret: the same name elsewhere gives another folder, and the
    # same data dir gives the same folder after a restart.
    other = Workspaces(AppSettings(data_dir=tmp_path / "other", base_model="tiny"), start_worker=False)
    again = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    assert other.login("alice").key != people.login("alice").key == again.login("alice").key
    assert (people.root / ".workspaces-secret").stat().st_mode & 0o777 == 0o600


def test_workspaces_are_capped_and_empty_anonymous_ones_make_room(tmp_path: Path, photos: list[Path]) -> None:
    import os

    from pipeline.workspaces import WorkspaceLimit

    people = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model="tiny", max_workspaces=2),
                        start_worker=False)
    kept, empty = people.get(people.browser("k" * 43)), people.get(people.browser("e" * 43))
    kept.add_photos(photos[:1])
    with pytest.raises(WorkspaceLimit, match="no room"):
        people.get(people.browser("n" * 43))  # a third visitor while both are in use (and recent)
    an_hour_ago = time.time() - 3700
    for key in people.keys():
        os.utime(people.folder(key), (an_hour_ago, an_hour_ago))
    newcomer = people.get(people.browser("n" * 43))  # the empty, idle workspace made room; the one with photos stays
    assert not people.folder(empty.workspace).exists() and people.folder(newcomer.workspace).exists()
    assert len(kept.list_photos()) == 1
