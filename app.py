"""Likeness: turn 15–20 photos of one person into a personal FLUX LoRA. Parses flags, builds the UI, launches."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # after the environment above: gradio reads it at import

from pipeline.library.notify import smtp_settings_from_env
from pipeline.models.base_model import default_base_model, is_micro, is_tiny, quiet_library_logs
from pipeline.models.families import family_of
from pipeline.people.accounts import (
    AccountError,
    Authenticator,
    LoginThrottle,
    UsersFile,
    check_password,
    make_account,
)
from pipeline.people.workspaces import CreationLimits, WorkspaceMode, Workspaces
from pipeline.settings import AppSettings
from ui import admin, models, playground, review, settings, steps, training, upload
from ui.people import ClientAddress, People, WorkspaceCookie, trusted_proxies
from ui.text import plain

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
    parser.add_argument("--users", type=Path, default=os.environ.get("LIKENESS_USERS"), metavar="FILE",
                        help="ask for a login from this users file (python -m pipeline users add NAME); each "
                             "account gets its own workspace")
    parser.add_argument("--workspaces", choices=[m.value for m in WorkspaceMode],
                        default=os.environ.get("LIKENESS_WORKSPACES", WorkspaceMode.AUTO.value),
                        help="auto: one shared workspace on 127.0.0.1 without a login, otherwise one per person "
                             "(login, Hugging Face account or browser)")
    parser.add_argument("--trainings-per-person", type=int, default=None, metavar="N",
                        help="trainings one person may have waiting or running (default 1 with workspaces per "
                             "person, no limit otherwise)")
    parser.add_argument("--new-workspaces-per-hour", type=int, metavar="N",
                        default=int(os.environ.get("LIKENESS_NEW_WORKSPACES_PER_HOUR") or CreationLimits.per_client),
                        help="anonymous workspaces one client address may make per hour (a workspace is made by the "
                             "first photo, generation or settings change, never by a visit)")
    parser.add_argument("--disk-per-person-gb", type=float, default=0.0, metavar="GB",
                        help="disk each person's workspace may use (default: no limit)")
    parser.add_argument("--base-model", default=os.environ.get("LIKENESS_BASE_MODEL"),
                        help="'auto' (default with CUDA): by the GPU's free memory, FLUX.1-dev where it trains in "
                             "bf16 or fp8 (from 20 GB), else FLUX.2 [klein] base 4B (bf16 from 14 GB, down to 2.5 GB "
                             "in offload), else micro; 'micro' (default without CUDA), 'tiny', 'tiny-klein', a hub id "
                             "such as black-forest-labs/FLUX.1-dev or black-forest-labs/FLUX.2-klein-base-4B, or a "
                             "local diffusers folder of a FLUX.1 or FLUX.2 [klein] model")
    parser.add_argument("--video-model", default=os.environ.get("LIKENESS_VIDEO_MODEL", "auto"),
                        help="the Playground's videos: 'auto' (default): by the GPU's free memory, Wan 2.2 TI2V-5B "
                             "from 13.4 GB, LTX-Video 2B from 11.5 GB, else (and on a CPU) a morph between stills; "
                             "'morph'; 'tiny': the tiny random image-to-video model (proves the path on a CPU, its "
                             "frames are noise); or a Wan 2.2 TI2V-5B / Wan I2V / LTX-Video 0.9.0-0.9.1 hub id or "
                             "local diffusers folder, which animates a still of the person")
    parser.add_argument("--ray", default=os.environ.get("LIKENESS_RAY_ADDRESS", ""), metavar="auto|ADDRESS",
                        help="run trainings as tasks on a Ray cluster: 'auto' (the cluster this machine joined with "
                             "`ray start`) or the head's address; nodes that do not see the data dir get each "
                             "job's files through Ray's object store")
    return _checked(parser, parser.parse_args(argv))


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The login flags refused with the fix when they would leave the app open or cannot work."""
    if args.auth is not None:
        user, colon, password = args.auth.partition(":")
        if not (colon and user.strip() and password):
            # A value without a colon used to turn login off without a word: refuse to start instead.
            parser.error("--auth (or LIKENESS_AUTH) must be USER:PASSWORD with both parts non-empty; "
                         "without a valid login the app would be open to anyone who has the link")
        try:  # the same rules as `users add`: the one login of a shared link is the first thing guessed
            check_password(user.strip(), password)
        except AccountError as exc:
            parser.error(f"--auth (or LIKENESS_AUTH): {exc}")
        args.auth = (user.strip(), password)
    if args.auth and args.users:
        parser.error("give either --auth (one login) or --users (a users file), not both")
    if args.users and not Path(args.users).is_file():
        parser.error(f"--users {args.users}: no such file; create it with: python -m pipeline users add NAME "
                     f"--users-file {args.users}")
    return args


def on_a_space() -> bool:
    """Running as a Hugging Face Space (as Gradio itself tells: its OAuth is real only there; elsewhere its mocked
    login asks the Hub for the machine's token, which fails offline)."""
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def per_person(args: argparse.Namespace) -> bool:
    """Whether each person gets their own workspace: forced by --workspaces, else whenever the app serves others
    (a login, a public link, a non-loopback host, a Space)."""
    if args.workspaces != WorkspaceMode.AUTO:
        return args.workspaces == WorkspaceMode.PER_PERSON
    return bool(args.auth or args.users or args.share or on_a_space()
                or args.host not in ("127.0.0.1", "localhost", "::1"))


def build_app(people: People, *, hf_login: bool = False) -> gr.Blocks:
    workflow = people.workspaces.local  # the base model and its defaults: the same for everyone
    with gr.Blocks(title="Likeness") as demo:
        with gr.Row():
            gr.Markdown("# Likeness\nYour photos → a personal FLUX LoRA that really looks like you.")
            if hf_login:
                gr.LoginButton(scale=0)
        whose = gr.Markdown(elem_classes=["notice"], visible=False)
        if is_tiny(workflow.base_model):
            architecture = family_of(workflow.base_model).title  # FLUX.1 for 'tiny', FLUX.2 [klein] for 'tiny-klein'
            gr.Markdown(f"ℹ️ Running on the embedded **tiny** {architecture}-architecture model (random weights): "
                        "every step runs for real on a CPU in seconds, but its images are noise. For real pictures "
                        "start on a GPU with `--base-model black-forest-labs/FLUX.1-dev` (or "
                        "`black-forest-labs/FLUX.2-klein-base-4B` on 12 GB).", elem_classes=["notice"])
        elif is_micro(workflow.base_model):
            # Measured (README; bench/results/micro_likeness_cpu_rescored.json, estimate_micro_default_cpu.json): 0-3 of
            # 8 recognised; a default run 19 min on a quiet machine, 35 on a busy one.
            gr.Markdown("ℹ️ Running on the embedded **micro** FLUX-architecture model (96 px, 2.4 M parameters, "
                        "pretrained on a dozen faces from open-source packages) so that every step runs on a CPU. It "
                        "proves the pipeline, not the pictures: a LoRA on it learns a person's look, but its small, "
                        "smeared faces are mostly generic — the likeness check recognises the person in 0 to 3 of "
                        "8 test images, so expect \"not recognisable\" — and it barely follows prompts. A training "
                        "with the defaults takes about 20 minutes, 35 on a busy machine. FLUX.1-dev on a GPU makes "
                        "the real pictures "
                        "(`--base-model black-forest-labs/FLUX.1-dev`).", elem_classes=["notice"])
        notices = gr.Markdown(elem_classes=["notice"], visible=False)
        steps.build(people, demo)
        upload.build(people, demo)
        train_inputs = settings.build(people, demo)
        review.build(people)
        training.build(people, train_inputs)
        playground.build(people)
        models.build(people)
        admin_tab = admin.build(people)

        def who(request: gr.Request) -> tuple:
            person = people.person(request)
            repaired = [*people.workspaces.notices, *people(request).notices] if person.admin else \
                people(request).notices  # what start-up repaired (may name a model: text, not markup)
            text = "\n\n".join(f"⚠️ {plain(n)}" for n in repaired)
            whose_text = _whose(people, person)
            return (gr.update(value=whose_text, visible=bool(whose_text)), gr.update(value=text, visible=bool(text)),
                    gr.update(visible=people.per_person and person.admin))

        def whoami(request: gr.Request) -> str:
            """Whose workspace this session acts on (for API callers)."""
            return _whose(people, people.person(request)) or "the local workspace (one person, no login)"

        demo.load(who, None, [whose, notices, admin_tab], api_name=False)
        gr.api(whoami, api_name="whoami")
    demo.queue(max_size=64, default_concurrency_limit=4)
    return demo


def _whose(people: People, person) -> str:
    if not people.per_person:
        return ""
    if person.key.startswith("anon-"):
        return ("🔒 **Your private workspace in this browser.** Your photos and models are visible only here; "
                "another browser (or clearing this one's cookies) starts an empty one.")
    return f"🔒 Signed in as **{plain(person.label)}**: your photos and models are yours alone."


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
    _check_writable(args.data_dir)
    _check_port_free(args.host, args.port)
    shared = per_person(args)
    auth = None
    try:
        proxies = trusted_proxies(on_a_space())
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        authenticator, owner = _login(args)
        auth = authenticator.login if authenticator else None
        limit = args.trainings_per_person if args.trainings_per_person is not None else (1 if shared else 0)
        app_settings = AppSettings(data_dir=args.data_dir, base_model=args.base_model or default_base_model(),
                                   smtp=smtp_settings_from_env(), trainings_per_person=limit,
                                   disk_per_person_gb=args.disk_per_person_gb, ray_address=args.ray.strip(),
                                   video_model=args.video_model.strip())
        app_settings.validate()
        workspaces = Workspaces(app_settings, start_worker=False,
                                limits=CreationLimits(per_client=args.new_workspaces_per_hour))
        if shared and owner:  # a data dir used before accounts: its photos and models become the first account's
            moved = workspaces.adopt_local_data(workspaces.login(owner))
            if moved:
                logging.info("the existing photos and models now belong to the account %r", owner)
        workspaces.start()
        people = People(workspaces, per_person=shared, admins=authenticator.is_admin if authenticator else None,
                        hf_accounts=on_a_space() and shared, proxies=proxies)
        # The sign-in button only where the Space turned OAuth on (`hf_oauth: true`): Gradio refuses to start without.
        demo = build_app(people, hf_login=on_a_space() and shared and bool(os.environ.get("OAUTH_CLIENT_ID")))
    except ValueError as exc:  # BaseModelError, settings and LIKENESS_SMTP_* errors carry the fix in their message
        logging.error("%s", exc)
        demo = build_error_app(str(exc))
    if args.share and not (args.auth or args.users):
        logging.warning("--share without --auth or --users: anyone who has the link can upload photos, train and "
                        "generate on this machine's GPU; each visitor gets a private workspace, but nobody is asked "
                        "who they are. Add --users FILE to require a login.")
    if not shared and (args.share or args.host not in ("127.0.0.1", "localhost", "::1")):
        logging.warning("--workspaces single while serving others: everyone who reaches the app sees, downloads "
                        "and deletes the same photos and models.")
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                css_paths=[ASSETS / "style.css"], app_kwargs=_middleware(shared, bool(auth), proxies))


def _login(args: argparse.Namespace) -> tuple[Authenticator | None, str | None]:
    """Who may log in (``--users`` or ``--auth``), and the account that owns a data dir used before accounts."""
    # The first lock after repeated wrong passwords (doubling from there); the tests set a long one.
    throttle = LoginThrottle(first_delay=float(os.environ.get("LIKENESS_LOGIN_FIRST_DELAY_S")
                                               or LoginThrottle.first_delay))
    if args.users:
        exposed = UsersFile(args.users).exposure()
        if exposed:
            logging.warning("%s", exposed)
        return Authenticator(UsersFile(args.users).accounts, throttle), UsersFile(args.users).first()
    if args.auth:
        only = make_account(args.auth[0], args.auth[1], admin=True)
        return Authenticator(lambda: {only.name: only}, throttle), only.name
    return None, None


def _check_port_free(host: str, port: int) -> None:
    """A busy port used to cost ~30 s of start-up and end in Gradio's OSError traceback: say so at once."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no clash
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"error: cannot serve on {host}:{port} ({exc.strerror or exc}): another program (or "
                             "another Likeness) uses it; choose a free one with --port N (or LIKENESS_PORT)") from None


def _check_writable(data_dir: Path) -> None:
    """Stop with one line, not a traceback, when the data dir cannot be written: nothing could be saved."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(f"error: cannot write to the data dir {data_dir} ({exc.strerror or exc}): choose a "
                         "writable folder with --data-dir (or LIKENESS_DATA_DIR)") from None


def _middleware(shared: bool, login: bool, proxies: int) -> dict:
    """The workspace cookie where the app serves several people; the client's address for the login throttle
    where there is a login."""
    from starlette.middleware import Middleware

    middleware = [Middleware(WorkspaceCookie)] if shared else []
    if login:
        middleware.append(Middleware(ClientAddress, proxies=proxies))
    return {"middleware": middleware} if middleware else {}


if __name__ == "__main__":
    main()
