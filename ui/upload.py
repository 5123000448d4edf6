"""Upload tab: add photos in batches or one by one, see the guidelines, review and remove photos."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipeline.workflow import Workflow
from ui.people import People
from ui.text import escaped, plain

GUIDELINES = Path(__file__).resolve().parent.parent / "assets" / "guidelines.md"


def _gallery(workflow: Workflow) -> list[tuple[str, str]]:
    return [(str(p.path), f"{p.name} · {p.width}×{p.height} · id {p.id[:8]}") for p in workflow.list_photos()]


def _status(workflow: Workflow, news: str = "", rejected: list[str] | None = None) -> str:
    count = len(workflow.list_photos())
    lines = [f"**{count} photo(s) uploaded.** Aim for 15–20 of one person, then check them on the Review tab."]
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
                                file_count="multiple", file_types=["image"], type="filepath", height=160)
                # Dropping files adds them; the button stays for the API (upload_photos) only.
                upload = gr.Button("Add photos", variant="primary", visible=False)
                status = gr.Markdown()
                gallery = gr.Gallery(label="Your photos", columns=6, height="auto",
                                     allow_preview=True, interactive=False)
                with gr.Row():
                    selected = gr.Textbox(label="Selected photo id (click a photo above)", interactive=False,
                                          scale=3)
                    remove = gr.Button("Remove selected photo", variant="stop", scale=1)
            with gr.Column(scale=2):
                gr.Markdown(GUIDELINES.read_text() if GUIDELINES.exists() else "")

        def add(paths: list[str] | None, request: gr.Request) -> tuple[list, str, None]:
            if not paths:
                raise gr.Error("Choose one or more photos first.")
            workflow = people(request)
            try:
                result = workflow.add_photos(paths)
            except ValueError as exc:  # e.g. the person's disk quota
                raise gr.Error(escaped(exc)) from exc
            rejected = [f"{plain(r.name)}: {plain(r.message)}" for r in result.rejected]
            news = f"Added {result.added} photo(s)."
            if result.already_stored:  # the store keeps one copy of the same bytes
                news += (f" {len(result.already_stored)} file(s) were already uploaded and kept once: "
                         f"{plain(', '.join(result.already_stored))}.")
            return _gallery(workflow), _status(workflow, news, rejected), None

        def pick(evt: gr.SelectData, request: gr.Request) -> str:
            photos = people(request).list_photos()
            return photos[evt.index].id if 0 <= evt.index < len(photos) else ""

        def drop(photo_id: str, request: gr.Request) -> tuple[list, str, str]:
            if not photo_id:
                raise gr.Error("Click a photo in the gallery to select it, then remove it.")
            workflow = people(request)
            try:
                removed = workflow.remove_photo(photo_id)
            except ValueError as exc:
                raise gr.Error(escaped(exc)) from exc
            return _gallery(workflow), _status(workflow, f"Removed {plain(removed.name)}."), ""

        upload.click(add, files, [gallery, status, files], api_name="upload_photos")
        files.upload(add, files, [gallery, status, files], api_name=False)  # dropping files is enough
        gallery.select(pick, None, selected)
        remove.click(drop, selected, [gallery, status, selected], api_name="remove_photo")
        def show(request: gr.Request) -> tuple[list, str]:
            workflow = people(request)
            return _gallery(workflow), _status(workflow)

        tab.select(show, None, [gallery, status], api_name=False)
        demo.load(show, None, [gallery, status], api_name=False)  # this person's photos, not anyone else's
    return tab
