"""The users file and login throttling: passwords are stored only as scrypt hashes, guessing is slowed down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.accounts import AccountError, Authenticator, LoginThrottle, UsersFile

ROOT = Path(__file__).resolve().parent.parent


def test_the_users_file_keeps_hashes_not_passwords(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.json")
    users.add("alice", "correct horse", admin=True)
    users.add("bob", "battery staple")
    text = users.path.read_text()
    assert "correct horse" not in text and "battery staple" not in text
    assert os.stat(users.path).st_mode & 0o777 == 0o600  # readable by the app's user only
    assert users.first() == "alice"
    stored = json.loads(text)["users"]
    assert stored["alice"]["salt"] != stored["bob"]["salt"] and stored["alice"]["n"] >= 2**14

    login = Authenticator(users.accounts)
    assert login.check("alice", "correct horse") and login.check("bob", "battery staple")
    assert not login.check("alice", "battery staple") and not login.check("nobody", "correct horse")
    assert login.is_admin("alice") and not login.is_admin("bob")
    # Gradio awaits auth only when it is a coroutine function: a bound async method is one.
    assert asyncio.run(login.login("alice", "correct horse")) is True
    assert asyncio.run(login.login("alice", "wrong password")) is False

    for bad_name, password in (("../x", "long enough"), ("", "long enough"), ("carol", "short")):
        with pytest.raises(AccountError):
            users.add(bad_name, password)
    with pytest.raises(AccountError, match="already exists"):
        users.add("alice", "another password")
    users.add("alice", "a new password", replace=True)
    assert login.check("alice", "a new password") and login.is_admin("alice")  # passwd keeps the role
    users.remove("bob")
    assert not login.check("bob", "battery staple")


def test_wrong_passwords_are_throttled(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.json")
    users.add("alice", "correct horse")
    login = Authenticator(users.accounts, LoginThrottle(free=5, first_delay=1.0))
    started = time.monotonic()
    results = [login.check("alice", f"guess {i}") for i in range(50)]
    elapsed = time.monotonic() - started
    assert not any(results)
    # Only the first five guesses were compared; the other 45 were refused unread, so the right password is
    # refused too while the name is locked.
    assert login.checked == 5, login.checked
    assert not login.check("alice", "correct horse")
    assert login.checked == 5
    print(json.dumps({"attempts": 50, "seconds": round(elapsed, 3), "passwords_checked": login.checked}))
    # The lock lasts first_delay * 2^(failures - free): 1 s after the 5th failure. Wait it out: the next try is
    # checked, and a right password clears the count.
    time.sleep(login.throttle.locked("alice") + 0.05)
    assert login.check("alice", "correct horse")
    assert login.throttle.locked("alice") == 0
    # Another name is not locked by alice's failures.
    users.add("bob", "battery staple")
    assert login.check("bob", "battery staple")


def test_users_are_managed_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "users.json"

    def cli(*args: str, password: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "users", *args, "--users-file", str(path),
                               "--password-stdin"], input=password + "\n", capture_output=True, text=True, cwd=ROOT,
                              timeout=120)

    added = cli("add", "alice", "--admin", password="correct horse")
    assert added.returncode == 0, added.stderr
    assert "correct horse" not in added.stdout + added.stderr + path.read_text()
    assert cli("add", "bob", password="short").returncode == 2  # refused with the reason, nothing written
    assert "at least 8" in cli("add", "bob", password="short").stderr
    listed = subprocess.run([sys.executable, "-m", "pipeline", "users", "list", "--users-file", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert listed.stdout.strip() == "alice (admin)"
