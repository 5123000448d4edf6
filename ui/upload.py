"""Upload tab: add photos in batches or one by one, see the guidelines, review and remove photos."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from pipeline.events import ignore
from pipeline.intake.classify import REASONS
from pipeline.workflow import Workflow
from ui.files import served
from ui.handlers import for_person
from ui.people import People
from ui.progress import progress_events
from ui.text import plain

GUIDELINES = Path(__file__).resolve().parent.parent / "assets" / "guidelines.md"


def _verdicts(workflow: Workflow) -> dict[str, str]:
    """Each photo's verdict in a few plain words, from the last check of the current set ({} when there is none)."""
    result = workflow.last_classification
    if result is None or {r.file for r in result.records} != {p.name for p in workflow.list_photos()}:
        return {}
    words = {}
    for r in result.records:
        if r.verdict == "keep":
            words[r.file] = "✅ good" if not r.reasons else f"✅ kept by you ({REASONS[r.reasons[0]][0]})"
        elif r.verdict == "duplicate":
            words[r.file] = f"↺ near-copy of {r.duplicate_of}" if r.duplicate_of else "↺ near-copy"
        else:
            words[r.file] = "❌ " + "; ".join(REASONS[c][0] for c in r.reasons if c in REASONS)
    return words


def _check(workflow: Workflow, progress: gr.Progress | None = None) -> str:
    """Classify the current set (seconds: each photo is analysed once and cached) so every thumbnail shows its
    verdict at once; returns the set's one-line summary."""
    try:
        result = workflow.classify(on_event=progress_events(progress, "checking the photos") if progress else
                                   ignore)
    except ValueError:  # no photos left
        workflow.last_classification = None
        return ""
    workflow.last_classification = result
    return result.report.summary


def _gallery(workflow: Workflow) -> tuple[list[tuple[str, str]], list[str]]:
    """The thumbnails and the photo ids in the same order (a thumbnail's × gives only its place)."""
    verdicts = _verdicts(workflow)
    photos = workflow.list_photos()
    # The verdict first: it is what the person looks for (the caption shows in full, see assets/style.css).
    items = [(served(p.path), " · ".join(filter(None, (verdicts.get(p.name), p.name, f"id {p.id[:8]}"))))
             for p in photos]
    return items, [p.id for p in photos]


def _status(workflow: Workflow, news: str = "", rejected: list[str] | None = None, summary: str = "") -> str:
    count = len(workflow.list_photos())
    lines = [f"**{count} photo(s) uploaded.** Aim for 15–20 of one person; each photo's verdict is under it, and "
             "the Review tab explains them."]
    if summary:
        lines.append(f"**{plain(summary)}**")
    if news:
        lines.append(news)
    for reason in rejected or []:
        lines.append(f"- ❌ {reason}")
    return "\n".join(lines)


@dataclass
class UploadTab:
    tab: gr.Tab
    files: gr.File
    upload: gr.Button
    status: gr.Markdown
    gallery: gr.Gallery
    photo_ids: gr.State
    selected: gr.Textbox
    remove: gr.Button


def layout() -> UploadTab:
    with gr.Tab("1 · Upload", id="upload") as tab:
        with gr.Row():
            with gr.Column(scale=3):
                files = gr.File(label="Photos (JPEG, PNG, WebP, HEIC) — drop several at once or one by one; "
                                      "they are added as soon as they arrive",
                                file_count="multiple", file_types=["image"], type="filepath", height=160,
                                elem_id="photo-files")
                # Dropping files adds them; the button stays for the API (upload_photos) only.
                upload = gr.Button("Add photos", variant="primary", visible=False)
                status = gr.Markdown()
                # Interactive for each thumbnail's ×; photos dropped onto it are added like any others.
                gallery = gr.Gallery(label="Your photos — × on a photo removes it", columns=6, height="auto",
                                     allow_preview=True, interactive=True, file_types=["image"],
                                     elem_id="photo-gallery")
                photo_ids = gr.State([])
                with gr.Row():
                    selected = gr.Textbox(label="Selected photo id (click a photo above)", interactive=False,
                                          scale=3)
                    remove = gr.Button("Remove selected photo", variant="stop", scale=1)
            with gr.Column(scale=2):
                gr.Markdown(GUIDELINES.read_text() if GUIDELINES.exists() else "")
    return UploadTab(tab, files, upload, status, gallery, photo_ids, selected, remove)


# The handlers. Those with a workflow first act for one person (``for_person`` finds their workflow): their
# parameters after it are the API's (``/upload_photos(paths)``, ``/remove_photo(photo_id)``).

def _add(workflow: Workflow, paths: list[str] | None, progress: gr.Progress = gr.Progress()) -> tuple[list, str, None]:
    result = workflow.add_photos(paths)  # refused, e.g., beyond the person's disk quota
    rejected = [f"{plain(r.name)}: {plain(r.message)}" for r in result.rejected]
    news = f"Added {result.added} photo(s)."
    if result.already_stored:  # the store keeps one copy of the same bytes
        news += (f" {len(result.already_stored)} file(s) were already uploaded and kept once: "
                 f"{plain(', '.join(result.already_stored))}.")
    summary = _check(workflow, progress)
    return *_gallery(workflow), _status(workflow, news, rejected, summary), None


def _show(workflow: Workflow) -> tuple:
    return *_gallery(workflow), _status(workflow)


def _gallery_drop(add: Callable, show: Callable) -> Callable:
    """Files dropped onto the gallery itself: the new ones are those without our caption; they are added as
    ``add`` adds them (which makes the person's workspace), nothing new only shows the photos again."""

    def dropped_on_gallery(items: list | None, request: gr.Request,
                           progress: gr.Progress = gr.Progress()) -> tuple:
        new = [item[0] for item in items or [] if not (item[1] if isinstance(item, list | tuple) else None)]
        if not new:
            return *show(request), None
        return add(new, request, progress)

    return dropped_on_gallery


def pick(evt: gr.SelectData, ids: list[str]) -> str:
    return ids[evt.index] if 0 <= evt.index < len(ids) else ""


def _drop(workflow: Workflow, photo_id: str) -> tuple:
    removed = workflow.remove_photo(photo_id)
    summary = _check(workflow)
    return *_gallery(workflow), _status(workflow, f"Removed {plain(removed.name)}.", summary=summary), ""


def _drop_clicked(workflow: Workflow, evt: gr.EventData, ids: list[str]) -> tuple:
    """A thumbnail's ×. The photo is named by its file (stored as ``<photo id>.<ext>``, and Gradio keeps the
    name), not by its place: a second × pressed before the first one's answer sees an older order."""
    data = evt._data if isinstance(evt._data, dict) else {}
    stem = Path(str((data.get("file") or {}).get("path", ""))).stem
    if stem in ids:
        return _drop(workflow, stem)
    index = data.get("index", -1)
    if not isinstance(index, int) or not 0 <= index < len(ids):
        raise gr.Error("That photo is no longer there: the gallery has been refreshed.")
    return _drop(workflow, ids[index])


def wire(view: UploadTab, people: People, demo: gr.Blocks) -> None:
    # The first photo makes the person's workspace.
    add = for_person(people, storing=True, missing="Choose one or more photos first.")(_add)
    drop = for_person(people, missing="Click a photo in the gallery to select it, then remove it.")(_drop)
    show = for_person(people)(_show)
    listed = [view.gallery, view.photo_ids, view.status]
    view.upload.click(add, view.files, [*listed, view.files], api_name="upload_photos")
    view.files.upload(add, view.files, [*listed, view.files], api_name=False)  # dropping files is enough
    view.gallery.upload(_gallery_drop(add, show), view.gallery, [*listed, view.files], api_name=False)
    view.gallery.select(pick, view.photo_ids, view.selected)
    view.gallery.delete(for_person(people)(_drop_clicked), view.photo_ids, [*listed, view.selected],
                        api_name=False, show_progress="hidden")
    view.remove.click(drop, view.selected, [*listed, view.selected], api_name="remove_photo",
                      show_progress="hidden")
    view.tab.select(show, None, listed, api_name=False)
    demo.load(show, None, listed, api_name=False)  # this person's photos only


def build(people: People, demo: gr.Blocks) -> gr.Tab:
    view = layout()
    wire(view, people, demo)
    return view.tab
