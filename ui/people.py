"""Who is asking: every request resolved to one person's workspace, never to an id or path the client sends.

- the app's own login (``--auth``/``--users``): the logged-in name;
- "Sign in with Hugging Face" on a Space: the account name;
- otherwise, when the app serves others: each browser gets a private workspace named by an unguessable token in an
  HttpOnly cookie (set on the first page load, so it is there before any event and survives reloads and
  restarts); an API caller may send its own token in the ``X-Likeness-Workspace`` header, or gets a workspace for
  its session;
- one person on their own machine (127.0.0.1, no login): the local workspace, shared with the CLI.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable

import gradio as gr

from pipeline.workflow import Workflow
from pipeline.workspaces import LOCAL_PERSON, Person, Workspaces

COOKIE = "likeness_workspace"
HEADER = "x-likeness-workspace"
MIN_TOKEN_LENGTH = 24  # a caller-chosen token shorter than this could be guessed


class People:
    """``people(request)`` → the workflow of the person who sent ``request``."""

    def __init__(self, workspaces: Workspaces, *, per_person: bool, admins: Callable[[str], bool] | None = None):
        self.workspaces = workspaces
        self.per_person = per_person
        self._is_admin = admins or (lambda _name: False)

    def person(self, request: gr.Request | None) -> Person:
        if not self.per_person:
            return LOCAL_PERSON
        if request is None:  # no request to tell people apart by: refuse rather than guess
            raise gr.Error("This action needs a browser or API session.")
        if request.username:
            return self.workspaces.login(request.username, admin=self._is_admin(request.username))
        name = _hf_username(request)
        if name:
            return self.workspaces.hf_account(name)
        token = (request.headers.get(HEADER) or "").strip()
        if len(token) >= MIN_TOKEN_LENGTH:
            return self.workspaces.browser(token)
        token = request.cookies.get(COOKIE, "")
        if len(token) >= MIN_TOKEN_LENGTH:
            return self.workspaces.browser(token)
        if not request.session_hash:
            raise gr.Error("This action needs a browser or API session.")
        return self.workspaces.browser("session:" + request.session_hash)

    def __call__(self, request: gr.Request | None) -> Workflow:
        return self.workspaces.get(self.person(request))


def _hf_username(request: gr.Request) -> str | None:
    """The Hugging Face account signed in with ``gr.LoginButton`` (only where the app enables HF OAuth)."""
    with contextlib.suppress(AssertionError, AttributeError, KeyError, TypeError):
        info = request.request.session.get("oauth_info")  # no session middleware: AssertionError
        if info:
            return info["userinfo"]["preferred_username"]
    return None


class WorkspaceCookie:
    """ASGI middleware: a browser without the workspace cookie gets one, on the page load that precedes its events.

    On https (a Space, embedded in huggingface.co) the cookie is ``SameSite=None; Secure; Partitioned`` so that it
    works inside the cross-site iframe; on plain http it is ``SameSite=Lax``.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or _has_cookie(scope):
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https" or _header(scope, b"x-forwarded-proto") == "https"
        attributes = "SameSite=None; Secure; Partitioned" if secure else "SameSite=Lax"
        cookie = (f"{COOKIE}={secrets.token_urlsafe(32)}; Path=/; Max-Age=31536000; HttpOnly; {attributes}").encode()

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _has_cookie(scope) -> bool:
    return f"{COOKIE}=".encode() in _header(scope, b"cookie").encode("latin-1")
