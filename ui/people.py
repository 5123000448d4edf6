"""Who is asking: every request resolved to one person's workspace, never to an id or path the client sends.

- the app's own login (``--auth``/``--users``): the logged-in name;
- "Sign in with Hugging Face" on a Space: the account name; an API caller there may send its Hugging Face token
  instead (``gradio_client.Client(…, token=…)``), whose account the Hub names;
- otherwise, when the app serves others: each browser gets a private workspace named by an unguessable token in an
  HttpOnly cookie (set on the first page load, so it is there before any event and survives reloads and
  restarts); an API caller may send its own token in the ``X-Likeness-Workspace`` header (refused when it could be
  guessed), or gets a workspace for its session;
- one person on their own machine (127.0.0.1, no login): the local workspace, shared with the CLI.

``people(request)`` is what a handler reads: a person who has stored nothing yet reads the blank view, and no
folder is made. ``people.storing(request)`` is for a handler about to store something: it makes the workspace,
within the creation rate of the client's address (``client_address``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable

import gradio as gr

from pipeline.library.hub import HubError, account_of_token
from pipeline.people.accounts import LOGIN_CLIENT
from pipeline.people.workspaces import LOCAL_PERSON, Person, WorkspaceLimit, Workspaces, check_token
from pipeline.workflow import Workflow

COOKIE = "likeness_workspace"
# On https the cookie carries the __Host- prefix: browsers then refuse it from any other site or subdomain (a
# sibling app on the same parent domain cannot plant its own token in a visitor's browser).
SECURE_COOKIE = "__Host-" + COOKIE
HEADER = "x-likeness-workspace"
TRUSTED_PROXIES = "LIKENESS_TRUSTED_PROXIES"
_ISSUED_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # what WorkspaceCookie sets: secrets.token_urlsafe(32)
NEEDS_SESSION = "This action needs a browser or API session."


class People:
    """``people(request)`` → the workflow of the person who sent ``request``."""

    def __init__(self, workspaces: Workspaces, *, per_person: bool, admins: Callable[[str], bool] | None = None,
                 hf_accounts: bool = False, proxies: int = 0):
        self.workspaces = workspaces
        self.proxies = proxies  # trusted proxies in front of the app (client_address)
        self.per_person = per_person
        self._is_admin = admins or (lambda _name: False)
        self.hf_accounts = hf_accounts  # on a Space: signed-in accounts, and API callers by their token

    def person(self, request: gr.Request | None) -> Person:
        if not self.per_person:
            return LOCAL_PERSON
        if request is None:  # no request to tell people apart by: refuse rather than guess
            raise gr.Error(NEEDS_SESSION)
        if request.username:
            return self.workspaces.login(request.username, admin=self._is_admin(request.username))
        name = _hf_username(request)
        if name:
            return self.workspaces.hf_account(name)
        return self._by_token(request) or self._browser(request)

    def _by_token(self, request: gr.Request) -> Person | None:
        """An API caller's own workspace token, else (on a Space) its Hugging Face token's account."""
        token = (request.headers.get(HEADER) or "").strip()
        if token:  # asked for explicitly: before a token gradio_client may send by itself
            try:
                check_token(token, "X-Likeness-Workspace")
            except ValueError as exc:  # refused, not ignored: the caller means to come back to this workspace
                raise gr.Error(str(exc)) from None
            return self.workspaces.browser(token)
        bearer = _hf_token(request.headers) if self.hf_accounts else None
        if not bearer:
            return None
        try:
            return self.workspaces.hf_account(account_of_token(bearer))
        except HubError as exc:
            raise gr.Error(f"{exc}. Send your own access token, or an {HEADER} header for a private workspace "
                           "of your own.") from None

    def _browser(self, request: gr.Request) -> Person:
        """The browser's workspace cookie, else the session's own workspace."""
        token = request.cookies.get(SECURE_COOKIE if _is_https(request.headers, request.url.scheme) else COOKIE, "")
        if _ISSUED_TOKEN.match(token):
            return self.workspaces.browser(token)
        if not request.session_hash:
            raise gr.Error(NEEDS_SESSION)
        return self.workspaces.browser("session:" + request.session_hash)

    def __call__(self, request: gr.Request | None) -> Workflow:
        """What the person who sent ``request`` reads: their workspace, or the blank view (nothing is made)."""
        return self.workspaces.view(self.person(request))

    def existing(self, request: gr.Request | None) -> Workflow | None:
        """The person's workspace, ``None`` when they have stored nothing yet."""
        return self.workspaces.find(self.person(request))

    def storing(self, request: gr.Request | None) -> Workflow:
        """The person's workspace for a handler about to store something: made now if need be, within the
        creation limits of the client's address."""
        person = self.person(request)
        client = client_address(request.client.host if request and request.client else "",
                                request.headers.get("x-forwarded-for") if request else None, self.proxies)
        try:
            return self.workspaces.get(person, client)
        except WorkspaceLimit as exc:
            raise gr.Error(str(exc)) from exc


def trusted_proxies(on_a_space: bool) -> int:
    """How many proxies in front of the app add to ``X-Forwarded-For``: ``LIKENESS_TRUSTED_PROXIES``, else one on
    a Hugging Face Space (its proxy connects from its own address, so without the header every visitor would look
    like one client), else none."""
    value = os.environ.get(TRUSTED_PROXIES, "").strip()
    if value:
        if not value.isdigit():
            raise ValueError(f"{TRUSTED_PROXIES}={value!r}: give the number of proxies in front of the app (0, 1, …)")
        return int(value)
    return 1 if on_a_space else 0


def client_address(peer: str, forwarded_for: str | None, proxies: int) -> str:
    """The address a request comes from, for rate limits and login throttling.

    ``peer`` is what the server saw: uvicorn already replaces a loopback peer (a reverse proxy on this machine)
    by the rightmost address of its ``X-Forwarded-For``, and trusts that header from nowhere else, so a client that
    connects directly cannot pick its own address. Behind ``proxies`` proxies that connect from elsewhere (a
    Space's), each appends the address it saw: the ``proxies``-th entry from the right is the one the outermost
    proxy saw, what a client writes into the header itself stays to its left and is never read.
    """
    if proxies and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if hops:
            return hops[-min(proxies, len(hops))]
    return peer or "unknown"


class ClientAddress:
    """ASGI middleware: tells the login check which address a ``/login`` comes from (Gradio's ``auth=`` gets the
    name and password only), through ``pipeline.people.accounts.LOGIN_CLIENT`` for the request's own task."""

    def __init__(self, app, proxies: int = 0) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        forwarded = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-forwarded-for"),
                         None)
        peer = (scope.get("client") or ("", 0))[0]
        token = LOGIN_CLIENT.set(client_address(peer, forwarded, self.proxies))
        try:
            await self.app(scope, receive, send)
        finally:
            LOGIN_CLIENT.reset(token)


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
