"""Headless command line for the same pipeline: ``python -m pipeline classify|train|assess|generate|video|models``.

Every command takes ``--json`` for machines; without it, it prints lines for people.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.assessment.scores import headline
from pipeline.settings import Group, TrainSettings, declaration, declared_fields

if TYPE_CHECKING:
    from pipeline.workflow import Workflow

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".tif", ".tiff", ".gif"}


def _photos_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a folder of photos")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _workflow(args: argparse.Namespace, start_worker: bool = False) -> Workflow:
    from pipeline.library.notify import smtp_settings_from_env
    from pipeline.models.base_model import default_base_model
    from pipeline.people.workspaces import LOCAL_PERSON, Workspaces
    from pipeline.settings import AppSettings

    settings = AppSettings(data_dir=args.data_dir, base_model=args.base_model or default_base_model(),
                           smtp=smtp_settings_from_env(), ray_address=getattr(args, "ray", "").strip())
    # The local workspace (what `python app.py` on 127.0.0.1 shows), or a login's with --user.
    workspaces = Workspaces(settings, start_worker=start_worker)
    return workspaces.get(workspaces.login(args.user) if args.user else LOCAL_PERSON)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_classify(args: argparse.Namespace) -> int:
    from pipeline.intake.classify import classify_photos

    paths = _photos_in(args.folder)
    result = classify_photos(paths, names=[p.name for p in paths])
    lines = [f"{r.file:40s} {r.verdict:9s} {'' if r.score is None else round(r.score):>4} {', '.join(r.reasons)}"
             for r in result.records]
    lines.append(f"\nselected {len(result.selected)}: {result.report.summary}")
    lines += [f"- {a}" for a in result.report.advice]
    _emit(args, result.to_dict(), "\n".join(lines))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.intake.classify import classify_photos
    from pipeline.status import MODEL_FINISHED, Status

    workflow = _workflow(args, start_worker=True)
    try:
        paths = _photos_in(args.folder)
        classification = classify_photos(paths, names=[p.name for p in paths])
        settings = workflow.default_train_settings(**setting_overrides(args, TrainSettings))
        record = workflow.start_training(settings, classification=classification, anyway=args.anyway)
        shown = 0
        while True:
            view = workflow.training_view(record.id)
            if not args.json:
                for line in view.log[shown:]:
                    print(line, flush=True)
            shown = len(view.log)
            if view.status in MODEL_FINISHED:
                break
            time.sleep(0.5)
        record = workflow.library.get(record.id)
        _emit(args, dataclasses.asdict(record), f"{record.name}: {record.status} (id {record.id}, trigger word "
                                                f"'{record.trigger_word}')")
        return 0 if record.status == Status.READY else 1
    finally:
        workflow.close()


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.settings import GenerateSettings

    workflow = _workflow(args)
    model_id = workflow.library.find(args.model).id if args.model != "base" else None
    defaults = workflow.test_generate_settings(512)
    settings = GenerateSettings(prompt=args.prompt, seed=args.seed, steps=args.steps or defaults.steps,
                                width=args.width or defaults.width, height=args.height or defaults.height,
                                lora_scale=args.scale, guidance=args.guidance)
    paths = workflow.generate(model_id, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    paths[0].replace(args.out)
    _emit(args, {"image": str(args.out), "model": args.model, "prompt": args.prompt}, str(args.out))
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """A clip with a model ('base' for none) and every frame's likeness; the MP4 to --out, its JSON beside it."""
    import shutil

    from pipeline.video.clip_likeness import likeness_path, save_json

    workflow = _workflow(args)
    model_id = workflow.library.find(args.model).id if args.model != "base" else None
    result = workflow.video(model_id, prompt=args.prompt, prompt_b=args.prompt_b, frames=args.frames, fps=args.fps,
                            seed=args.seed, video_model=args.video_model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(result.video, out)  # --out may be on another disk than the data dir
    data = result.to_dict() | {"video": str(out)}
    save_json(likeness_path(out), data)  # beside --out, as beside the workspace's copy
    result.likeness_json.unlink(missing_ok=True)
    lines = [f"{f['index']:4d} {f['time_s']:6.2f}s {f['match']:13s} "
             + ("" if f["likeness"] is None else f"likeness {f['likeness']:.0%}") for f in data["frames"]]
    lines += [f"{result.kind}: {result.why}", data["summary"], f"{out} (likeness: {likeness_path(out)})"]
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_assess(args: argparse.Namespace) -> int:
    record = _workflow(args).library.find(args.model)
    scores = record.scores.to_dict() if record.scores else {}
    _emit(args, {"id": record.id, "name": record.name, "status": record.status,
                 "verdict": record.scores.verdict if record.scores else None,
                 "summary": headline(record.status, record.scores), "scores": scores,
                 "best_checkpoint_step": record.best_checkpoint_step, "best_lora_scale": record.best_lora_scale},
          json.dumps(scores, indent=2, default=str))
    return 0


def _readable(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The paths Pillow can open, and the names of those it cannot (text named .jpg, truncated files)."""
    from PIL import Image

    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
            good.append(path)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(path.name)
    return good, bad


def cmd_likeness(args: argparse.Namespace) -> int:
    """Score any images (a LoRA's, from any trainer) against any person's photos: exit 0 whatever the verdict."""
    from pipeline.assessment.assess import recognised_sentence, reference_embeddings, score_images
    from pipeline.assessment.likeness import Calibration

    references, bad_references = _readable(_photos_in(args.reference))
    images, bad_images = _readable(_photos_in(args.images))
    if not references:
        raise ValueError(f"--reference {args.reference}: no readable photos in it; give a folder of the person's "
                         "photos")
    if not images:
        raise ValueError(f"--images {args.images}: no readable images in it; give a folder of generated images")
    result = score_images(images, reference_embeddings(references))
    calibration = Calibration.load()
    rows = [{"file": i.path.name if i.path else None, "recognised": i.recognised, "match": str(i.match),
             "likeness": i.likeness, "distance": i.distance, "nearest_other": i.nearest_other,
             "other_distance": i.other_distance, "generic_distance": i.generic_distance, "margin": i.margin,
             "faces": i.faces} for i in result.images]
    meaning = recognised_sentence(result.recognised_count, len(images), result.judged_against)
    data = {"images": rows, "recognised": result.recognised_count, "total": len(images),
            "likeness": result.likeness, "verdict": str(result.verdict), "meaning": meaning,
            "judged_against": result.judged_against,
            "operating_point": {"margin": calibration.margin, "max_distance": calibration.max_distance,
                                "false_accept_rate": calibration.false_accept_rate,
                                "genuine_accept_rate": calibration.genuine_accept_rate},
            "unreadable": bad_references + bad_images}
    lines = [f"{r['file']:40s} {r['match']:13s} "
             + ("" if r["distance"] is None else f"distance {r['distance']:.3f}, nearest other {r['nearest_other']} "
                                                 f"{r['other_distance']:.3f}, margin {r['margin']:+.3f}")
             for r in rows]
    lines.append(f"{meaning}; likeness {result.likeness:.0%} ({result.verdict})")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pipeline.models.base_info import base_info

    records = _workflow(args).library.list()
    # The base model's family (flux1, flux2-klein, ...): a LoRA loads only on a pipeline of that family.
    family = {r.id: base_info(r.base_model).family.id.value for r in records}
    lines = [f"{r.id}  {r.name:24s} {r.trigger_word:10s} {r.base_model:12s} {family[r.id]:12s} "
             f"{headline(r.status, r.scores)}" for r in records]
    _emit(args, [dataclasses.asdict(r) | {"family": family[r.id], "verdict": r.scores.verdict if r.scores else None,
                                          "summary": headline(r.status, r.scores)} for r in records],
          "\n".join(lines) or "no models yet")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    import getpass

    from pipeline.people.accounts import UsersFile

    users = UsersFile(args.users_file)
    exposed = users.exposure()
    if exposed:  # a file copied or made by hand; said before add/passwd/remove rewrite it with mode 0600
        logging.getLogger("pipeline.users").warning("%s", exposed)
    if args.action == "list":
        accounts = users.accounts()
        _emit(args, [{"name": a.name, "admin": a.admin} for a in accounts.values()],
              "\n".join(f"{a.name}{' (admin)' if a.admin else ''}" for a in accounts.values()) or "no users yet")
        return 0
    if not args.name:
        raise ValueError(f"users {args.action}: give the user's NAME")
    if args.action == "remove":
        users.remove(args.name)
        _emit(args, {"removed": args.name}, f"removed {args.name} (their workspace stays in the data dir)")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ")
    users.add(args.name, password, admin=args.admin, replace=args.action == "passwd")
    _emit(args, {"user": args.name, "admin": args.admin, "file": str(users.path)},
          f"{'added' if args.action == 'add' else 'changed the password of'} {args.name} in {users.path}; start the "
          f"app with: python app.py --users {users.path}")
    return 0


def cli_flag(settings_field: dataclasses.Field) -> str:
    """The option of a setting: its declared flag, else --the-field-name."""
    return declaration(settings_field).flag or "--" + settings_field.name.replace("_", "-")


def add_setting_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """An option for each setting of ``cls`` the Settings tab shows, in its order, from the fields' declarations
    (their help is FLUX.1-dev's; an option left out keeps the base model's default)."""
    for settings_field in declared_fields(cls, Group.BASIC, Group.ADVANCED):
        setting, default = declaration(settings_field), settings_field.default
        options: dict[str, Any] = {"dest": settings_field.name, "required": setting.cli_required,
                                   "help": (setting.info or setting.label).replace("%", "%%")}
        if isinstance(default, bool):
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            options.update(action="append", help=options["help"] + " (here: the option once for each)")
        else:
            options["type"] = type(default)
            if setting.choices and setting.closed:
                options["choices"] = setting.choices
            if setting.choice_names:
                names = ", ".join(f"{value}: {name}" for value, name in setting.choice_names)
                options["help"] += f" ({names})"
        parser.add_argument(cli_flag(settings_field), **options)


def setting_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` given on the command line (lists as tuples), by field name."""
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()
            if value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for machines")
    common.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LIKENESS_DATA_DIR", "data")))
    common.add_argument("--base-model", default=os.environ.get("LIKENESS_BASE_MODEL"),
                        help="'auto' (default with CUDA: the best base that fits the GPU's free memory), 'micro' "
                             "(default without), 'tiny', 'tiny-klein', a hub id or a local diffusers folder")
    common.add_argument("--user", help="act on this login's workspace (as in `app.py --users`); default: the local "
                                       "one")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", parents=[common], help="classify a folder of photos")
    p.add_argument("folder", type=Path)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("train", parents=[common], help="classify a folder and train a LoRA on the selected photos")
    p.add_argument("folder", type=Path)
    add_setting_options(p, TrainSettings)
    p.add_argument("--anyway", action="store_true", help="train even if the classifier says the set is not ready")
    p.add_argument("--ray", default=os.environ.get("LIKENESS_RAY_ADDRESS", ""), metavar="auto|ADDRESS",
                   help="train as a task on a Ray cluster, as `app.py --ray` does: 'auto' or the head's address")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", parents=[common], help="generate an image with a model ('base' for none)")
    p.add_argument("model")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--guidance", type=float, default=3.5)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("video", parents=[common], help="make a clip with a model ('base' for none) and print every "
                                                       "frame's likeness")
    p.add_argument("model")
    p.add_argument("--prompt", required=True)
    p.add_argument("--prompt-b", help="a morph: a second prompt the clip moves towards; with --video-model: the "
                                      "motion ('turns to the camera and smiles'; default: --prompt)")
    p.add_argument("--video-model", default=os.environ.get("LIKENESS_VIDEO_MODEL", "auto"),
                   help="the image-to-video model that animates the person's still: 'tiny' (the tiny random Wan "
                        "model built in code: proves the path on a CPU, its frames are noise), a hub id such as "
                        "Wan-AI/Wan2.2-TI2V-5B-Diffusers (GPUs of 16-24 GB and more), an LTX-Video "
                        "0.9.0/0.9.1 diffusers model (12 GB), a local diffusers folder, or 'morph'; default: "
                        "'auto', by the GPU's free memory (a morph between stills on a CPU)")
    p.add_argument("--out", type=Path, required=True, help="the MP4 to write; its likeness JSON goes beside it")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_video)

    p = sub.add_parser("assess", parents=[common], help="print a model's assessment scores")
    p.add_argument("model")
    p.set_defaults(func=cmd_assess)

    p = sub.add_parser("likeness", parents=[common],
                       help="score any images against any person's photos (a LoRA from any trainer)")
    p.add_argument("--reference", type=Path, required=True, help="a folder of the person's photos")
    p.add_argument("--images", type=Path, required=True, help="a folder of images to score")
    p.set_defaults(func=cmd_likeness)

    p = sub.add_parser("models", parents=[common], help="list the library")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("users", help="manage the logins of `app.py --users FILE` (passwords stored as scrypt hashes)")
    p.add_argument("action", choices=["add", "passwd", "remove", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("--users-file", type=Path, default=Path(os.environ.get("LIKENESS_USERS", "users.json")))
    p.add_argument("--admin", action="store_true", help="may see every workspace and the queue, and delete a "
                                                        "person's data")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_users)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pipeline.models.base_model import quiet_library_logs

    quiet_library_logs()
    try:
        return args.func(args)
    except ValueError as exc:  # user errors: say what and how to fix, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
