"""Likeness: turn 15–20 photos of one person into a personal FLUX LoRA. Parses flags, builds the UI, launches."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402  (after the environment above: gradio reads it at import)

from pipeline.base_model import default_base_model, is_micro, is_tiny, quiet_library_logs  # noqa: E402
from pipeline.notify import smtp_settings_from_env  # noqa: E402
from pipeline.settings import AppSettings  # noqa: E402
from pipeline.workflow import Workflow  # noqa: E402
from ui import models, playground, review, settings, training, upload  # noqa: E402
from ui.text import plain  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    # A Hugging Face Space sets GRADIO_SERVER_NAME/PORT; honour them so the same app.py runs there unchanged.
    parser.add_argument("--host", default=os.environ.get("LIKENESS_HOST")
                        or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("LIKENESS_PORT")
                                                        or os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LIKENESS_DATA_DIR", "data")))
    parser.add_argument("--auth", default=os.environ.get("LIKENESS_AUTH"), metavar="USER:PASSWORD",
                        help="ask for this login before showing the app (use it with --share or on a Space)")
    parser.add_argument("--base-model", default=os.environ.get("LIKENESS_BASE_MODEL"),
                        help="'micro' (default without CUDA), 'tiny', a hub id such as black-forest-labs/FLUX.1-dev "
                             "(default with CUDA), or a local diffusers folder")
    args = parser.parse_args(argv)
    if args.auth is not None:
        user, colon, password = args.auth.partition(":")
        if not (colon and user.strip() and password):
            # A value without a colon used to turn login off without a word: refuse to start instead.
            parser.error("--auth (or LIKENESS_AUTH) must be USER:PASSWORD with both parts non-empty; "
                         "without a valid login the app would be open to anyone who has the link")
        args.auth = (user.strip(), password)
    return args


def build_app(workflow: Workflow) -> gr.Blocks:
    with gr.Blocks(title="Likeness") as demo:
        gr.Markdown("# Likeness\nYour photos → a personal FLUX LoRA that really looks like you.")
        if is_tiny(workflow.base_model):
            gr.Markdown("ℹ️ Running on the embedded **tiny** FLUX-architecture model (random weights): every step "
                        "runs for real on a CPU in seconds, but its images are noise. For real pictures start on a "
                        "GPU with `--base-model black-forest-labs/FLUX.1-dev`.", elem_classes=["notice"])
        elif is_micro(workflow.base_model):
            gr.Markdown("ℹ️ Running on the embedded **micro** FLUX-architecture model (64 px, 2.4 M parameters, "
                        "pretrained on a dozen faces from open-source packages) so that every step runs on a CPU in "
                        "minutes. A LoRA on it learns a person's hair, colours and framing, but it does **not yet "
                        "draw a recognisable face**, so its likeness scores stay near 0 — see the README. FLUX.1-dev "
                        "on a GPU makes the real pictures (`--base-model black-forest-labs/FLUX.1-dev`).",
                        elem_classes=["notice"])
        for notice in workflow.notices:  # what start-up repaired (a damaged state file, an orphaned training)
            gr.Markdown(f"⚠️ {plain(notice)}", elem_classes=["notice"])  # it may name a model: text, not markup
        upload.build(workflow)
        train_inputs = settings.build(workflow)
        review.build(workflow)
        training.build(workflow, train_inputs)
        playground.build(workflow)
        models.build(workflow)
    demo.queue(max_size=64, default_concurrency_limit=4)
    return demo


# The data dir's indexes: they list every photo and model, so they are never served, whatever else is.
STATE_FILES = ("library.json", "jobs.json", "photos/index.json", "photos/choices.json")


def file_access(data_dir: Path) -> dict[str, list[str]]:
    """``launch`` keywords that serve no file of the data dir by its path.

    Gradio copies the files a handler returns into its own cache (under content-hashed names) when they lie in the
    working directory or the temp dir, so the data dir needs no ``allowed_paths`` there — which would serve all of
    it, library.json included, to anyone who types a path. A data dir elsewhere (a Space's /data volume) has to be
    allowed for the copies to be made; then its index files are blocked at least.
    """
    data_dir = data_dir.resolve()
    inside = any(data_dir.is_relative_to(Path(root).resolve()) for root in (os.getcwd(), tempfile.gettempdir()))
    if inside:
        return {}
    logging.warning("the data dir %s lies outside the working directory and the temp dir: Gradio must be allowed "
                    "to read it, so a visitor who knows a file's path can fetch it (its indexes are blocked). "
                    "Put --data-dir under the working directory to serve no file of it by path.", data_dir)
    return {"allowed_paths": [str(data_dir)], "blocked_paths": [str(data_dir / name) for name in STATE_FILES]}


def build_error_app(message: str) -> gr.Blocks:
    """Shown instead of the app when the base model cannot be used: says what failed and how to fix it."""
    with gr.Blocks(title="Likeness — cannot start") as demo:
        gr.Markdown(f"# Likeness cannot start\n\n{message}")
    return demo


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks, one line per request
    args = parse_args(argv)
    quiet_library_logs()
    try:
        app_settings = AppSettings(data_dir=args.data_dir, base_model=args.base_model or default_base_model(),
                                   smtp=smtp_settings_from_env())
        demo = build_app(Workflow(app_settings))
    except ValueError as exc:  # BaseModelError, settings and LIKENESS_SMTP_* errors carry the fix in their message
        logging.error("%s", exc)
        demo = build_error_app(str(exc))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=args.auth,
                css_paths=[ASSETS / "style.css"], **file_access(args.data_dir))


if __name__ == "__main__":
    main()
