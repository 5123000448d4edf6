"""Upload tab: add photos in batches or one by one, see the guidelines, review and remove photos."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipeline.classify import REASONS
from pipeline.events import ignore
from pipeline.workflow import Workflow
from ui.files import served
from ui.people import People
from ui.progress import progress_events
from ui.text import escaped, plain

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


def build(people: People, demo: gr.Blocks) -> gr.Tab:
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

        def add(paths: list[str] | None, request: gr.Request,
                progress: gr.Progress = gr.Progress()) -> tuple[list, str, None]:
            if not paths:
                raise gr.Error("Choose one or more photos first.")
            workflow = people.storing(request)  # the first photo makes the person's workspace
            try:
                result = workflow.add_photos(paths)
            except ValueError as exc:  # e.g. the person's disk quota
                raise gr.Error(escaped(exc)) from exc
            rejected = [f"{plain(r.name)}: {plain(r.message)}" for r in result.rejected]
            news = f"Added {result.added} photo(s)."
            if result.already_stored:  # the store keeps one copy of the same bytes
                news += (f" {len(result.already_stored)} file(s) were already uploaded and kept once: "
                         f"{plain(', '.join(result.already_stored))}.")
            summary = _check(workflow, progress)
            return *_gallery(workflow), _status(workflow, news, rejected, summary), None

        def dropped_on_gallery(items: list | None, request: gr.Request,
                               progress: gr.Progress = gr.Progress()) -> tuple:
            """Files dropped onto the gallery itself: the new ones are those without our caption."""
            new = [item[0] for item in items or [] if not (item[1] if isinstance(item, list | tuple) else None)]
            if not new:
                workflow = people(request)
                return *_gallery(workflow), _status(workflow), None
            return add(new, request, progress)

        def pick(evt: gr.SelectData, ids: list[str]) -> str:
            return ids[evt.index] if 0 <= evt.index < len(ids) else ""

        def drop_clicked(evt: gr.EventData, ids: list[str], request: gr.Request) -> tuple:
            """A thumbnail's ×. The photo is named by its file (stored as ``<photo id>.<ext>``, and Gradio keeps the
            name), not by its place: a second × pressed before the first one's answer sees an older order."""
            data = evt._data if isinstance(evt._data, dict) else {}
            stem = Path(str((data.get("file") or {}).get("path", ""))).stem
            if stem in ids:
                return drop(stem, request)
            index = data.get("index", -1)
            if not isinstance(index, int) or not 0 <= index < len(ids):
                raise gr.Error("That photo is no longer there: the gallery has been refreshed.")
            return drop(ids[index], request)

        def drop(photo_id: str, request: gr.Request) -> tuple:
            if not photo_id:
                raise gr.Error("Click a photo in the gallery to select it, then remove it.")
            workflow = people(request)
            try:
                removed = workflow.remove_photo(photo_id)
            except ValueError as exc:
                raise gr.Error(escaped(exc)) from exc
            summary = _check(workflow)
            return *_gallery(workflow), _status(workflow, f"Removed {plain(removed.name)}.", summary=summary), ""

        upload.click(add, files, [gallery, photo_ids, status, files], api_name="upload_photos")
        files.upload(add, files, [gallery, photo_ids, status, files], api_name=False)  # dropping files is enough
        gallery.upload(dropped_on_gallery, gallery, [gallery, photo_ids, status, files], api_name=False)
        gallery.select(pick, photo_ids, selected)
        gallery.delete(drop_clicked, photo_ids, [gallery, photo_ids, status, selected], api_name=False,
                       show_progress="hidden")
        remove.click(drop, selected, [gallery, photo_ids, status, selected], api_name="remove_photo",
                     show_progress="hidden")

        def show(request: gr.Request) -> tuple:
            workflow = people(request)
            return *_gallery(workflow), _status(workflow)

        tab.select(show, None, [gallery, photo_ids, status], api_name=False)
        demo.load(show, None, [gallery, photo_ids, status], api_name=False)  # this person's photos only
    return tab
