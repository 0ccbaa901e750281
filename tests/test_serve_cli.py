"""``charloom serve``'s own checks: each bad option is one ``charloom: error:`` line, exit 2."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from charloom.commands import main


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["serve", *args])
    err = capsys.readouterr().err
    return code, err


def test_without_fastapi_it_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    code, err = run_cli(capsys, str(tmp_path))
    assert code == 2
    assert err.startswith("charloom: error: serving needs FastAPI and uvicorn: ")
    assert "pip install 'fastapi" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "70000"], "--port must be an integer in 1..65535"),
        (["--port", "0"], "--port"),
        (["--port", "http"], "--port"),
        (["--max-body", "100"], "--max-body must be at least 1024 bytes"),
        (["--max-length", "0"], "--max-length"),
        (["--host", ""], "--host"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_bad_options_are_one_line_errors(capsys, tmp_path, args, says):
    pytest.importorskip("uvicorn")
    code, err = run_cli(capsys, str(tmp_path / "run"), *args)
    assert code == 2
    assert err.startswith("charloom: error: ") and says in err
    assert err.count("\n") == 1


def test_a_missing_run_names_it(capsys, tmp_path):
    pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = run_cli(capsys, str(tmp_path / "no-such-run"), "--port", str(port))
    assert code == 2 and "no-such-run" in err and err.count("\n") == 1


def test_a_busy_port_is_an_error_before_anything_loads(capsys, tmp_path):
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_cli(capsys, str(tmp_path / "no-such-run"), "--port", str(port))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1
