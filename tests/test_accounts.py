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

from pipeline.people.accounts import AccountError, Authenticator, LoginThrottle, UsersFile

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


def test_an_attacker_cannot_lock_the_owner_out(tmp_path: Path) -> None:
    """Issue 32: 4 wrong logins a second for alice made her right password fail 29 of 30 times. Now the lock falls
    on the attacker's address; spread over many addresses it falls on the name, but not for her own computer."""
    users = UsersFile(tmp_path / "users.json")
    users.add("alice", "correct horse")
    login = Authenticator(users.accounts, LoginThrottle(free=5, client_free=20, name_free=30,
                                                        first_delay=60.0))
    home, attacker = "198.51.100.7", "203.0.113.66"
    assert login.check("alice", "correct horse", home)  # she signed in from home before: a known address
    assert not any(login.check("alice", f"guess {i}", attacker) for i in range(200))
    assert login.checked == 1 + 5  # the attacker's address got five tries, the other 195 were refused unread
    assert login.throttle.lock("alice", attacker).reason == "client and name"
    # Alice is not locked out, from home or from a café she never used.
    assert login.check("alice", "correct horse", home)
    assert login.check("alice", "correct horse", "192.0.2.10")
    # The same guessing spread over 40 addresses (5 each, under every per-address limit) locks the name after 30
    # failures, for addresses that never signed in as alice: her home still gets in.
    for i in range(40):
        for j in range(5):
            login.check("alice", f"spread {i}-{j}", f"203.0.113.{100 + i}")
    assert login.throttle.lock("alice", "192.0.2.99").reason == "name"
    assert not login.check("alice", "correct horse", "192.0.2.99")
    assert login.check("alice", "correct horse", home)
    # Failures for alice do not lock bob.
    users.add("bob", "battery staple")
    assert login.check("bob", "battery staple", "192.0.2.99")


def test_one_password_sprayed_over_many_names_is_slowed(tmp_path: Path) -> None:
    """Issue 32: one password tried on 60 names was not slowed (11–14 names/s, each a full scrypt check)."""
    users = UsersFile(tmp_path / "users.json")
    names = [f"user{i}" for i in range(60)]
    for name in names[:3]:
        users.add(name, "their own password")
    login = Authenticator(users.accounts, LoginThrottle(client_free=20, first_delay=60.0))
    office = "203.0.113.66"  # the sprayer shares its address with user2, who signed in from there before
    assert login.check("user2", "their own password", office)
    login.checked = 0
    started = time.monotonic()
    results = [login.check(name, "Summer2026!", "203.0.113.66") for name in names]
    elapsed = time.monotonic() - started
    assert not any(results)
    assert login.checked == 20, login.checked  # the address is locked after 20 failures, whichever names
    assert login.throttle.lock("user59", "203.0.113.66").reason == "client"
    assert login.check("user1", "their own password", "198.51.100.7")  # others are not
    assert not login.check("user1", "their own password", office)  # nor is user1 from the locked address…
    assert login.check("user2", "their own password", office)  # …but user2, known there, gets in
    print(json.dumps({"names": 60, "seconds": round(elapsed, 3), "passwords_checked": login.checked}))


@pytest.mark.parametrize("password", ["password", "Password123", " " * 8, "        password  ", "aaaaaaaa",
                                      "abababab12", "12345678", "qwertyuiop", "alice2026"])
def test_weak_passwords_are_refused_on_every_way_in(tmp_path: Path, password: str) -> None:
    import app

    users = UsersFile(tmp_path / "users.json")
    with pytest.raises(AccountError):
        users.add("alice", password)
    with pytest.raises(SystemExit):
        app.parse_args(["--auth", f"alice:{password}"])
    assert not users.path.exists()


def test_weak_passwords_and_a_readable_users_file_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "users.json"

    def cli(*args: str, password: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "users", *args, "--users-file", str(path),
                               "--password-stdin"], input=password + "\n", capture_output=True, text=True, cwd=ROOT,
                              timeout=120)

    for weak in ("password", " " * 8, "a:b"):
        refused = cli("add", "alice", password=weak)
        assert refused.returncode == 2 and "password" in refused.stderr, refused
    assert cli("add", "alice", password="correct horse").returncode == 0
    assert "can be read" not in cli("list").stderr
    path.chmod(0o644)  # copied by hand, say
    listed = cli("list")
    assert "can be read or changed by other users" in listed.stderr and "chmod 600" in listed.stderr
    assert UsersFile(path).exposure() is not None


def test_a_full_table_forgets_stale_counters_but_not_a_guessing_run_under_way() -> None:
    """Filling the counters' table (random names and addresses) must not reset a run of failures that has not
    locked yet: only counters with no lock and no failure within ``forget_after`` are dropped."""
    throttle = LoginThrottle(free=5, first_delay=60.0, forget_after=900.0, max_entries=6)
    throttle.failed("old", "192.0.2.1", now=10.0)  # three stale counters (pair, client, name)
    attacker = "203.0.113.66"
    for i in range(5):  # the table is full from the second failure on
        throttle.failed("alice", attacker, now=1000.0 + i)
    assert throttle.lock("alice", attacker, now=1004.5).reason == "client and name"
    assert len(throttle._failures) <= 6  # the stale ones went
