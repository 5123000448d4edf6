"""The model library on a real tinydb file: create, survive reopening, update, rename, delete, export."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pipeline.intake.trigger import is_known_word
from pipeline.library.catalog import Library, ModelNotFound
from pipeline.library.export import complete_loras, export_zip
from pipeline.settings import TINY_MODEL, TrainSettings, to_json


def _settings() -> dict:
    return json.loads(to_json(TrainSettings.quick(name="anna")))


def _finished_model(library: Library, name: str = "anna"):
    record = library.create(name, TINY_MODEL, _settings())
    lora = record.folder / "pytorch_lora_weights.safetensors"
    save_file({"transformer.x.lora_A.weight": torch.randn(4, 8), "transformer.x.lora_B.weight": torch.randn(8, 4)},
              str(lora))
    kohya = record.folder / "kohya.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.randn(4, 8), "lora_unet_x.lora_up.weight": torch.randn(8, 4)},
              str(kohya))
    grid = record.folder / "sample_grid.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(grid)
    return library.update(record.id, status="ready", lora_path=lora, kohya_path=kohya, sample_grid=grid,
                          scores={"likeness": 0.81, "overall": 77.0}, dataset={"photos_used": 16},
                          checkpoints=[{"step": 25, "path": record.folder / "checkpoint-25",
                                        "scores": {"likeness": 0.7}}],
                          best_checkpoint_step=25, best_lora_scale=0.9)


def test_create_generates_a_unique_trigger_word_and_makes_the_folder(tmp_path):
    library = Library(tmp_path)
    first = library.create("Anna", TINY_MODEL, _settings())
    second = library.create("Ben", TINY_MODEL, _settings())
    assert first.folder == tmp_path / "models" / first.id and first.folder.is_dir()
    assert first.status == "queued" and first.finished_at is None
    assert first.trigger_word != second.trigger_word
    assert not is_known_word(first.trigger_word)
    assert first.settings["trigger_word"] == first.trigger_word  # training reads it from the settings


def test_create_validates_a_given_trigger_word_against_the_library(tmp_path):
    library = Library(tmp_path)
    assert library.create("Anna", TINY_MODEL, {}, trigger_word="Zorvik").trigger_word == "zorvik"
    with pytest.raises(ValueError, match="already used"):
        library.create("Anna again", TINY_MODEL, {}, trigger_word="zorvik")
    with pytest.raises(ValueError, match="name"):
        library.create("  ", TINY_MODEL, {})
    assert len(library.list()) == 1


def test_records_survive_reopening_with_paths_and_checkpoints(tmp_path):
    record = _finished_model(Library(tmp_path))
    reopened = Library(tmp_path).get(record.id)
    assert reopened == record
    assert reopened.lora_path.is_file() and reopened.checkpoints[0]["path"] == record.folder / "checkpoint-25"
    assert reopened.finished_at is not None and reopened.is_ready
    # stored relative to the data dir, so the folder can move
    # the training workflow passes str paths; they are stored relative too
    library = Library(tmp_path)
    library.update(record.id, lora_path=str(record.lora_path),
                   checkpoints=[{"step": 25, "path": str(record.folder / "checkpoint-25"), "scores": {}}])
    raw = (tmp_path / "library.json").read_text()
    assert str(tmp_path) not in raw
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    assert Library(moved).get(record.id).lora_path == moved / "models" / record.id / "pytorch_lora_weights.safetensors"


def test_get_find_and_list(tmp_path):
    library = Library(tmp_path)
    a = library.create("anna", TINY_MODEL, {})
    b = library.create("ben", TINY_MODEL, {})
    c = library.create("Ben", TINY_MODEL, {})
    library.update(a.id, status="ready")
    assert [r.id for r in library.list()] == [c.id, b.id, a.id]  # newest first
    assert [r.id for r in library.list("ready")] == [a.id]
    assert library.find("ANNA").id == a.id and library.find(b.id).id == b.id
    # Names stay unique (case-insensitive), so a name always finds one model.
    assert c.name == "Ben (2)"
    assert library.find("ben").id == b.id and library.find("BEN (2)").id == c.id
    with pytest.raises(ValueError, match="already called"):
        library.rename(a.id, "BEN")
    with pytest.raises(ModelNotFound, match="nobody"):
        library.find("nobody")
    with pytest.raises(ModelNotFound, match="no model 'missing'"):
        library.get("missing")
    with pytest.raises(ValueError, match="status"):
        library.list("done")


def test_update_rename_and_trigger_word(tmp_path):
    library = Library(tmp_path)
    a = library.create("anna", TINY_MODEL, {})
    b = library.create("ben", TINY_MODEL, {})
    assert library.rename(a.id, "  Anna   2025 ").name == "Anna 2025"
    assert library.set_trigger_word(a.id, "Kalumo").trigger_word == "kalumo"
    assert library.get(a.id).settings["trigger_word"] == "kalumo"
    with pytest.raises(ValueError, match="already used"):
        library.set_trigger_word(b.id, "kalumo")
    assert library.set_trigger_word(a.id, "kalumo").trigger_word == "kalumo"  # its own word is not a clash
    with pytest.raises(ValueError, match="status"):
        library.update(a.id, status="done")
    with pytest.raises(ValueError, match="not a field"):
        library.update(a.id, colour="red")
    with pytest.raises(ValueError, match="cannot be changed"):
        library.update(a.id, id="x")
    with pytest.raises(ModelNotFound):
        library.update("missing", status="ready")
    running = library.update(a.id, status="training")
    assert running.finished_at is None
    assert library.update(a.id, status="failed", error="out of memory").finished_at is not None


def test_delete_removes_files_export_and_record(tmp_path):
    library = Library(tmp_path)
    record = _finished_model(library)
    other = library.create("other", TINY_MODEL, {})
    export = export_zip(library, record.id)
    library.delete(record.id)
    assert not record.folder.exists() and not export.exists()
    assert [r.id for r in Library(tmp_path).list()] == [other.id]
    assert other.folder.is_dir()
    with pytest.raises(ModelNotFound):
        library.get(record.id)


def test_delete_refuses_a_model_that_is_training_unless_forced(tmp_path):
    library = Library(tmp_path)
    record = library.update(library.create("anna", TINY_MODEL, {}).id, status="training")
    with pytest.raises(ValueError, match="cancel"):
        library.delete(record.id)
    library.delete(record.id, force=True)
    assert library.list() == []


def test_export_zip_holds_both_loras_card_and_grid(tmp_path):
    library = Library(tmp_path)
    record = _finished_model(library, "Anna Smith")
    path = export_zip(library, record.id)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert {"README.md", "diffusers/pytorch_lora_weights.safetensors", "comfyui/anna-smith.safetensors",
                "samples/sample_grid.png", "likeness.json"} <= names
        readme = archive.read("README.md").decode()
        archive.extract("diffusers/pytorch_lora_weights.safetensors", tmp_path / "out")
        meta = json.loads(archive.read("likeness.json"))
    assert record.trigger_word in readme and "load_lora_weights" in readme
    weights = load_file(tmp_path / "out" / "diffusers" / "pytorch_lora_weights.safetensors")
    original = load_file(record.lora_path)
    assert torch.equal(weights["transformer.x.lora_A.weight"], original["transformer.x.lora_A.weight"])
    assert meta["trigger_word"] == record.trigger_word and meta["scores"]["likeness"] == 0.81


def test_export_of_an_unfinished_model_says_why(tmp_path):
    library = Library(tmp_path)
    record = library.create("anna", TINY_MODEL, {})
    with pytest.raises(ValueError, match="no trained LoRA yet"):
        export_zip(library, record.id)


@pytest.mark.parametrize("which", ["lora_path", "kohya_path"])
def test_a_half_written_lora_is_not_zipped(tmp_path, which):
    library = Library(tmp_path)
    record = _finished_model(library)
    path = getattr(record, which)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # as a full disk or a kill mid-save leaves it
    with pytest.raises(ValueError, match="damaged or incomplete"):
        export_zip(library, record.id)
    assert not list(library.exports_dir.glob("*.zip"))
    offered = complete_loras(library, record.id)  # the one-click downloads leave out the cut file only
    assert path not in offered.values() and len(offered) == 1
    path.write_bytes(data)
    assert export_zip(library, record.id).is_file()
    assert set(complete_loras(library, record.id).values()) == {record.lora_path, record.kohya_path}


def test_concurrent_creates_from_two_instances_keep_every_record_and_unique_words(tmp_path):
    libraries = [Library(tmp_path), Library(tmp_path)]
    errors: list[BaseException] = []

    def create_many(library: Library, prefix: str) -> None:
        try:
            for i in range(15):
                library.create(f"{prefix}{i}", TINY_MODEL, {})
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=create_many, args=(lib, p)) for lib, p in zip(libraries, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    records = Library(tmp_path).list()
    assert len(records) == 30
    assert len({r.trigger_word for r in records}) == 30


def test_a_trainings_end_the_disk_refuses_is_kept_shown_and_saved_once_there_is_room(tmp_path):
    """record_end while the process may write no file past 200 bytes (RLIMIT_FSIZE, as a full disk refuses
    library.json): get() and list() say "failed" with the reason at once; the next look once the limit is lifted
    writes it."""
    script = textwrap.dedent(
        f"""
        import json, resource
        from pathlib import Path
        from pipeline.library.catalog import Library

        library = Library(Path({str(tmp_path)!r}))
        model = library.create("anna", "tiny", {{}})
        library.update(model.id, status="training")

        def stored():
            rows = json.loads(Path({str(tmp_path)!r}, "library.json").read_text())["models"].values()
            return next(row["status"] for row in rows if row["id"] == model.id)

        resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.RLIM_INFINITY))
        ended = library.record_end(model.id, status="failed", error="the data disk is full")
        full = [ended.status, library.get(model.id).status, library.list()[0].error, stored()]
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        library.get(model.id)
        print(json.dumps({{"while_full": full, "once_room": [stored(), list(library.unsaved_ends)]}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["while_full"] == ["failed", "failed", "the data disk is full", "training"]
    assert facts["once_room"] == ["failed", []]
