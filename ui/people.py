"""Who is asking: every request resolved to one person's workspace, never to an id or path the client sends.

- the app's own login (``--auth``/``--users``): the logged-in name;
- "Sign in with Hugging Face" on a Space: the account name; an API caller there may send its Hugging Face token
  instead (``gradio_client.Client(…, token=…)``), whose account the Hub names;
- otherwise, when the app serves others: each browser gets a private workspace named by an unguessable token in an
  HttpOnly cookie (set on the first page load, so it is there before any event and survives reloads and
  restarts); an API caller may send its own token in the ``X-Likeness-Workspace`` header, or gets a workspace for
  its session;
- one person on their own machine (127.0.0.1, no login): the local workspace, shared with the CLI.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable

import gradio as gr

from pipeline.hub import HubError, account_of_token
from pipeline.workflow import Workflow
from pipeline.workspaces import LOCAL_PERSON, Person, WorkspaceLimit, Workspaces

COOKIE = "likeness_workspace"
# On https the cookie carries the __Host- prefix: browsers then refuse it from any other site or subdomain (a
# sibling app on the same parent domain cannot plant its own token in a visitor's browser).
SECURE_COOKIE = "__Host-" + COOKIE
HEADER = "x-likeness-workspace"
MIN_TOKEN_LENGTH = 24  # a caller-chosen token shorter than this could be guessed
_ISSUED_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # what WorkspaceCookie sets: secrets.token_urlsafe(32)


class People:
    """``people(request)`` → the workflow of the person who sent ``request``."""

    def __init__(self, workspaces: Workspaces, *, per_person: bool, admins: Callable[[str], bool] | None = None,
                 hf_accounts: bool = False):
        self.workspaces = workspaces
        self.per_person = per_person
        self._is_admin = admins or (lambda _name: False)
        self.hf_accounts = hf_accounts  # on a Space: signed-in accounts, and API callers by their token

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
        if len(token) >= MIN_TOKEN_LENGTH:  # asked for explicitly: before a token gradio_client may send by itself
            return self.workspaces.browser(token)
        bearer = _hf_token(request.headers) if self.hf_accounts else None
        if bearer:
            try:
                return self.workspaces.hf_account(account_of_token(bearer))
            except HubError as exc:
                raise gr.Error(f"{exc}. Send your own access token, or an {HEADER} header for a private workspace "
                               "of your own.") from None
        token = request.cookies.get(SECURE_COOKIE if _is_https(request.headers, request.url.scheme) else COOKIE, "")
        if _ISSUED_TOKEN.match(token):
            return self.workspaces.browser(token)
        if not request.session_hash:
            raise gr.Error("This action needs a browser or API session.")
        return self.workspaces.browser("session:" + request.session_hash)

    def __call__(self, request: gr.Request | None) -> Workflow:
        try:
            return self.workspaces.get(self.person(request))
        except WorkspaceLimit as exc:
            raise gr.Error(str(exc)) from exc


def _hf_username(request: gr.Request) -> str | None:
    """The Hugging Face account signed in with ``gr.LoginButton`` (only where the app enables HF OAuth)."""
    with contextlib.suppress(AssertionError, AttributeError, KeyError, TypeError):
        info = request.request.session.get("oauth_info")  # no session middleware: AssertionError
        if info:
            return info["userinfo"]["preferred_username"]
    return None


def _hf_token(headers) -> str | None:
    """A Hugging Face token sent by an API caller: gradio_client sends ``token=`` as ``X-HF-Authorization`` (the
    Space's proxy reads it too), other clients as ``Authorization``."""
    for name in ("x-hf-authorization", "authorization"):
        scheme, _, token = (headers.get(name) or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip().startswith("hf_"):
            return token.strip()
    return None


def _is_https(headers, scheme: str) -> bool:
    return scheme == "https" or (headers.get("x-forwarded-proto") or "").split(",")[0].strip() == "https"


class WorkspaceCookie:
    """ASGI middleware for apps that serve several people: refuses requests another website makes with the
    visitor's cookies, and gives a browser without a valid workspace cookie one, on the page load that precedes
    its events.

    - Cross-site: a request a browser marks ``Sec-Fetch-Site: cross-site``/``same-site`` that is not a page
      navigation (so not the Space's own iframe), or whose ``Origin`` is not this host, gets 403: otherwise a
      hostile page could call the API with the visitor's cookie and read or delete their photos.
    - The cookie is an unguessable token, HttpOnly; on https ``__Host-`` prefixed, ``Secure``, ``SameSite=None``
      and ``Partitioned`` (so it works inside a Space's iframe); on plain http ``SameSite=Lax``.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if _cross_site(headers):
            await _forbidden(scope, send)
            return
        https = _is_https(headers, scope.get("scheme", "http"))
        name = SECURE_COOKIE if https else COOKIE
        if scope["type"] != "http" or _ISSUED_TOKEN.match(_cookie(headers.get("cookie", ""), name)):
            await self.app(scope, receive, send)
            return
        attributes = "Secure; SameSite=None; Partitioned" if https else "SameSite=Lax"
        cookie = f"{name}={secrets.token_urlsafe(32)}; Path=/; Max-Age=31536000; HttpOnly; {attributes}".encode()

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cross_site(headers: dict[str, str]) -> bool:
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site") and headers.get("sec-fetch-mode") != "navigate":
        return True
    origin = headers.get("origin")
    if site is None and origin and origin != "null":  # an older browser: compare the Origin with the Host
        return origin.split("://", 1)[-1].rstrip("/") != headers.get("host", "")
    return False


async def _forbidden(scope, send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b"refused: a request from another website"
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _cookie(header: str, name: str) -> str:
    """The value of the cookie called exactly ``name`` ("" when absent)."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""
