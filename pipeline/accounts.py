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
from dataclasses import dataclass, field
from pathlib import Path

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8


class AccountError(ValueError):
    """A bad user name or password, or a users file that cannot be read; the message says which."""


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
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
        accounts = self.accounts()
        if name in accounts and not replace:
            raise AccountError(f"user {name!r} already exists (use 'passwd' to change the password)")
        account = make_account(name, password, admin=admin or (name in accounts and accounts[name].admin))
        accounts[name] = account
        self._write(accounts)
        return account

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


@dataclass
class LoginThrottle:
    """After ``free`` wrong passwords for a name, that name is locked for a delay that doubles with each further
    failure (up to ``max_delay``); attempts while locked are refused without checking the password, so guessing
    gets a few tries per minute whatever the attacker's speed. A right password clears the count."""

    free: int = 5
    first_delay: float = 1.0
    max_delay: float = 300.0
    _failures: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def locked(self, name: str, now: float | None = None) -> float:
        """Seconds until ``name`` may try again (0: now)."""
        with self._lock:
            entry = self._failures.get(name)
            return max(0.0, entry.locked_until - (now or time.monotonic())) if entry else 0.0

    max_names: int = 10_000  # names tracked at once: random names must not grow the table without bound

    def failed(self, name: str, now: float | None = None) -> None:
        now = now or time.monotonic()
        with self._lock:
            if len(self._failures) >= self.max_names:  # forget names whose lock has run out (or never started)
                self._failures = {n: f for n, f in self._failures.items() if f.locked_until > now}
            entry = self._failures.setdefault(name, _Failures())
            entry.count += 1
            if entry.count >= self.free:
                delay = min(self.max_delay, self.first_delay * 2 ** (entry.count - self.free))
                entry.locked_until = now + delay

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


class Authenticator:
    """Checks logins, throttled, against ``accounts()``: a users file's (re-read on each login, so that
    ``users add`` works without a restart) or the one ``--auth`` account's."""

    def __init__(self, accounts: Callable[[], dict[str, Account]], throttle: LoginThrottle | None = None) -> None:
        self.accounts = accounts
        self.throttle = throttle or LoginThrottle()
        self.checked = 0  # passwords actually compared (the bench and tests measure the throttle by it)

    def check(self, name: str, password: str) -> bool:
        if self.throttle.locked(name):
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
            self.throttle.succeeded(name)
        else:
            self.throttle.failed(name)
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
        return await asyncio.to_thread(self.check, name, password)
