"""app.py's flags: a login given without a colon stops the start instead of silently turning login off."""

from __future__ import annotations

import pytest

import app


@pytest.mark.parametrize("value", ["alicepw1", ":secret", "alice:", ""])
def test_malformed_auth_refuses_to_start(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        app.parse_args(["--auth", value])
    assert exit_info.value.code == 2
    assert "USER:PASSWORD" in capsys.readouterr().err


def test_auth_from_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert app.parse_args(["--auth", "alice:pw:with:colons"]).auth == ("alice", "pw:with:colons")
    monkeypatch.delenv("LIKENESS_AUTH", raising=False)
    assert app.parse_args([]).auth is None
    monkeypatch.setenv("LIKENESS_AUTH", "bob")
    with pytest.raises(SystemExit):
        app.parse_args([])
