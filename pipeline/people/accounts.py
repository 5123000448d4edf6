"""The app's own accounts: a users file with scrypt-hashed passwords, and login throttling.

``python -m pipeline users add NAME`` manages the file; ``python app.py --users FILE`` asks for a login and gives
each account its own workspace. Passwords are never stored or logged: only a random salt and the scrypt hash
(``hashlib.scrypt``, n=2^14, r=8, p=1: ~50 ms and 16 MB per check, which is what makes guessing slow).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8
MIN_DISTINCT = 5  # "aaaaaaaa" and "abababab" are eight characters, and guessed first
# The passwords every guessing list starts with (lower-cased, spaces removed): refused on every way in.
COMMON_PASSWORDS = frozenset({
    "password", "password1", "password12", "password123", "passw0rd", "p@ssw0rd", "p@ssword", "12345678",
    "123456789", "1234567890", "0123456789", "87654321", "11111111", "00000000", "qwertyui", "qwertyuiop",
    "qwerty123", "1q2w3e4r", "1qaz2wsx", "abcdefgh", "abcd1234", "iloveyou", "sunshine", "princess", "football",
    "baseball", "welcome1", "letmein1", "trustno1", "superman", "starwars", "dragon12", "admin123", "administrator",
    "changeme", "likeness", "likeness1", "huggingface",
})


class AccountError(ValueError):
    """A bad user name or password, or a users file that cannot be read; the message says which."""


def check_password(name: str, password: str) -> None:
    """Refuse a password a guessing list would try early, whichever way it comes in (``users add``/``passwd``,
    ``--auth``): the throttle slows guessing down, it cannot save a password that is guessed in ten tries."""
    squeezed = "".join(password.split()).lower()
    if len(password) < MIN_PASSWORD or len(squeezed) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters besides spaces")
    if len(set(squeezed)) < MIN_DISTINCT:
        raise AccountError(f"the password must use at least {MIN_DISTINCT} different characters")
    if squeezed in COMMON_PASSWORDS or squeezed.rstrip("0123456789!.") in COMMON_PASSWORDS:
        raise AccountError("that password is on every guessing list; choose another")
    if name and squeezed.rstrip("0123456789!.") in (name.lower(), name.lower()[::-1]):
        raise AccountError("the password must not be the user name")


def _hash(password: str, salt: bytes, params: dict[str, int]) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=params["n"], r=params["r"], p=params["p"],
                          maxmem=64 * 1024 * 1024, dklen=32)


@dataclass(frozen=True)
class Account:
    name: str
    salt: str  # base64
    hash: str  # base64 of scrypt(password, salt)
    admin: bool = False
    n: int = SCRYPT["n"]
    r: int = SCRYPT["r"]
    p: int = SCRYPT["p"]


def make_account(name: str, password: str, *, admin: bool = False) -> Account:
    """An account whose hash is computed now from a random salt (the password itself is not kept)."""
    salt = secrets.token_bytes(16)
    return Account(name, base64.b64encode(salt).decode(), base64.b64encode(_hash(password, salt, SCRYPT)).decode(),
                   admin=admin)


class UsersFile:
    """``{"users": {name: {salt, hash, admin, n, r, p}}}`` in a JSON file written atomically, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def accounts(self) -> dict[str, Account]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {name: Account(name=name, **fields) for name, fields in data["users"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise AccountError(f"{self.path} is not a Likeness users file ({exc}); fix or remove it") from None

    def add(self, name: str, password: str, *, admin: bool = False, replace: bool = False) -> Account:
        if not NAME.match(name):
            raise AccountError(f"user name {name!r}: use 1–64 letters, digits, '_', '.', '@' or '-'")
        check_password(name, password)
        accounts = self.accounts()
        if name in accounts and not replace:
            raise AccountError(f"user {name!r} already exists (use 'passwd' to change the password)")
        account = make_account(name, password, admin=admin or (name in accounts and accounts[name].admin))
        accounts[name] = account
        self._write(accounts)
        return account

    def exposure(self) -> str | None:
        """A warning when others on this machine can read (or change) the file: its hashes are what offline
        guessing needs, and whoever can write it can add an account; ``None`` when only its owner can."""
        try:
            mode = self.path.stat().st_mode & 0o777
        except OSError:
            return None
        if not mode & 0o077:
            return None
        return (f"the users file {self.path} can be read or changed by other users of this machine (mode "
                f"{mode:03o}): its password hashes can be guessed offline there; run: chmod 600 {self.path}")

    def remove(self, name: str) -> None:
        accounts = self.accounts()
        if accounts.pop(name, None) is None:
            raise AccountError(f"no user {name!r} in {self.path}")
        self._write(accounts)

    def first(self) -> str | None:
        """The account listed first (the file keeps the order users were added): the owner of a data dir that was
        used before accounts existed."""
        return next(iter(self.accounts()), None)

    def _write(self, accounts: dict[str, Account]) -> None:
        data = {"users": {a.name: {k: v for k, v in a.__dict__.items() if k != "name"} for a in accounts.values()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        tmp.replace(self.path)


# A fixed account to check unknown names against, so that a wrong name costs as long as a wrong password.
_DECOY = Account("", base64.b64encode(b"\0" * 16).decode(), base64.b64encode(b"\0" * 32).decode())


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0


@dataclass(frozen=True)
class Lock:
    """What a throttled login is waiting for: ``seconds`` left, and which counter locked it."""

    seconds: float
    reason: str  # "client and name", "client" or "name"


# The client address of the login being checked, set by the web layer for the request (Gradio's ``auth=`` is
# called with the name and password only). "" where no address is known (the tests, the CLI).
LOGIN_CLIENT: ContextVar[str] = ContextVar("likeness_login_client", default="")


@dataclass
class LoginThrottle:
    """Slows guessing down without handing the attacker a way to lock the owner out (as Django-axes locks a
    client-and-name pair, fail2ban a client, and GitHub trusts a device that signed in before):

    - **client and name**: after ``free`` wrong passwords for one name from one client address, that pair is locked
      for ``first_delay``, doubling with each further failure up to ``max_delay``. Someone guessing at Alice's
      password locks only their own address out of her account.
    - **client**: after ``client_free`` wrong passwords from one address, whatever the names, the address is locked
      the same way: one password sprayed over many names is slowed as much as many passwords on one name.
    - **name**: after ``name_free`` wrong passwords for a name from all addresses together (guessing spread over
      many addresses), the name is locked for every address except those that signed in as it before: the owner's
      own computer still gets in.
    - An address that signed in as a name before (``known_for``) is held to that pair's lock only: neither guessing
      spread elsewhere nor someone spraying names from the same address (an office, a shared NAT) keeps the owner
      out, and guessing that name's password from there is still slowed by the pair's lock.

    Attempts while locked are refused without checking the password (no scrypt time spent, nothing learnt).
    Counts are forgotten ``forget_after`` seconds after their last failure once no lock runs; a right password
    clears its own pair only (not the address's count: one account of one's own must not reset a spraying run).
    """

    free: int = 5
    first_delay: float = 1.0
    max_delay: float = 300.0
    client_free: int = 20
    name_free: int = 100
    forget_after: float = 900.0
    known_for: float = 30 * 86400.0  # a successful login keeps its address "known" for the name this long
    max_entries: int = 10_000  # counters kept at once: random names and addresses must not grow the tables forever
    _failures: dict[tuple[str, str, str], _Failures] = field(default_factory=dict)
    _known: dict[tuple[str, str], float] = field(default_factory=dict)  # (name, client) -> last success
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _keys(self, name: str, client: str) -> list[tuple[tuple[str, str, str], int, str]]:
        return [(("pair", client, name), self.free, "client and name"),
                (("client", client, ""), self.client_free, "client"),
                (("name", "", name), self.name_free, "name")]

    def lock(self, name: str, client: str = "", now: float | None = None) -> Lock | None:
        """Why ``name`` may not try from ``client`` now, or ``None`` when it may."""
        now = now or time.monotonic()
        with self._lock:
            known = now - self._known.get((name, client), -self.known_for - 1) <= self.known_for
            for key, _free, reason in self._keys(name, client):
                entry = self._failures.get(key)
                if entry is None or entry.locked_until <= now or (known and reason != "client and name"):
                    continue
                return Lock(entry.locked_until - now, reason)
        return None

    def locked(self, name: str, client: str = "", now: float | None = None) -> float:
        """Seconds until ``name`` may try again from ``client`` (0: now)."""
        found = self.lock(name, client, now)
        return found.seconds if found else 0.0

    def failed(self, name: str, client: str = "", now: float | None = None) -> None:
        now = now or time.monotonic()
        with self._lock:
            if len(self._failures) >= self.max_entries:  # forget only stale counters: no lock, no recent failure
                self._failures = {k: f for k, f in self._failures.items()
                                  if f.locked_until > now or now - f.last <= self.forget_after}
            for key, free, _reason in self._keys(name, client):
                entry = self._failures.setdefault(key, _Failures())
                if entry.locked_until <= now and now - entry.last > self.forget_after:
                    entry.count = 0  # an old run of failures, long over: start again
                entry.count += 1
                entry.last = now
                if entry.count >= free:
                    entry.locked_until = now + min(self.max_delay, self.first_delay * 2 ** (entry.count - free))

    def succeeded(self, name: str, client: str = "", now: float | None = None) -> None:
        now = now or time.monotonic()
        with self._lock:
            self._failures.pop(("pair", client, name), None)
            if len(self._known) >= self.max_entries:
                self._known = {k: t for k, t in self._known.items() if now - t <= self.known_for}
            self._known[(name, client)] = now


class Authenticator:
    """Checks logins, throttled, against ``accounts()``: a users file's (re-read on each login, so that
    ``users add`` works without a restart) or the one ``--auth`` account's."""

    def __init__(self, accounts: Callable[[], dict[str, Account]], throttle: LoginThrottle | None = None) -> None:
        self.accounts = accounts
        self.throttle = throttle or LoginThrottle()
        self.checked = 0  # passwords actually compared (the bench and tests measure the throttle by it)

    def check(self, name: str, password: str, client: str = "") -> bool:
        """Whether ``password`` is ``name``'s, asked from the address ``client``."""
        if self.throttle.lock(name, client):
            return False
        try:
            account = self.accounts().get(name)
        except AccountError:
            return False
        target = account or _DECOY
        params = {"n": target.n, "r": target.r, "p": target.p}
        self.checked += 1
        ok = hmac.compare_digest(_hash(password, base64.b64decode(target.salt), params),
                                 base64.b64decode(target.hash)) and account is not None
        if ok:
            self.throttle.succeeded(name, client)
        else:
            self.throttle.failed(name, client)
        return ok

    def is_admin(self, name: str) -> bool:
        try:
            account = self.accounts().get(name)
        except AccountError:
            return False
        return bool(account and account.admin)

    async def login(self, name: str, password: str) -> bool:
        """Gradio's ``auth=``: a coroutine function (Gradio awaits only those: an object with an async
        ``__call__`` would hand it a coroutine, which is truthy); the hash runs in a thread, not on the loop."""
        return await asyncio.to_thread(self.check, name, password, LOGIN_CLIENT.get())
