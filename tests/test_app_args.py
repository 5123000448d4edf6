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


def test_a_data_dir_that_cannot_be_written_stops_the_start_with_one_line(tmp_path) -> None:
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a data dir below a file cannot be created, even by root
    result = subprocess.run([sys.executable, str(app.Path(app.__file__)), "--data-dir", str(blocker / "data")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "cannot write to the data dir" in result.stderr and "--data-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_stops_the_start_at_once_naming_the_flag(tmp_path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, str(app.Path(app.__file__)), "--port", str(port), "--data-dir",
                                 str(tmp_path / "data")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_app_gets_to_serving_without_importing_torch_where_no_gpu_can_be(tmp_path) -> None:
    """Importing torch (and diffusers) was 3 s of the first page on a busy 2-core machine; where no GPU device
    exists the start needs neither: everything up to the server, then stop before it listens."""
    import socket
    import subprocess
    import sys

    from pipeline.models.hardware import gpu_may_be_present

    if gpu_may_be_present():
        pytest.skip("this machine may have a GPU: the start asks torch, as it should")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import sys, gradio\n"
            "def launch(self, *args, **kwargs):\n"
            "    print('torch imported:', 'torch' in sys.modules, 'diffusers imported:', 'diffusers' in sys.modules)\n"
            "    raise SystemExit(0)\n"
            "gradio.Blocks.launch = launch\n"
            "import app\n"
            f"app.main(['--data-dir', {str(tmp_path / 'data')!r}, '--port', '{port}'])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=app.ASSETS.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torch imported: False diffusers imported: False" in run.stdout
