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
        (["--chunk-ms", "0"], "--chunk-ms must be a number in 1..1000"),
        (["--chunk-ms", "nan"], "--chunk-ms"),
        (["--chunk-ms", "5000"], "--chunk-ms must be a number in 1..1000"),
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


# --- keys, TLS and the address they are needed for --------------------------------------------
KEY = "cli-key-0123456789-abcdef"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_an_open_address_without_keys_is_refused_naming_both_ways_out(
    capsys, tmp_path, monkeypatch
):
    pytest.importorskip("uvicorn")
    monkeypatch.delenv("CHARLOOM_API_KEYS", raising=False)
    port = str(_free_port("0.0.0.0"))
    code, err = run_cli(capsys, str(tmp_path / "no-such-run"), "--host", "0.0.0.0", "--port", port)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("charloom: error: refusing to serve 0.0.0.0 without API keys")
    assert "--api-key-file" in err and "--no-auth" in err
    # With --no-auth (or keys) it goes on, to the next check: the run that is not there.
    code, err = run_cli(
        capsys, str(tmp_path / "no-such-run"), "--host", "0.0.0.0", "--port", port, "--no-auth"
    )
    assert code == 2 and "no-such-run" in err and err.count("\n") == 1
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    code, err = run_cli(
        capsys,
        str(tmp_path / "no-such-run"),
        "--host",
        "0.0.0.0",
        "--port",
        port,
        "--api-key-file",
        str(keys),
    )
    assert code == 2 and "no-such-run" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "extra", "says"),
    [
        (None, [], "--api-key-file {keys}: no such file"),
        ("", [], "holds no keys"),
        ("short\n", [], "line 1: a key must be at least 16 characters"),
        (f"{KEY} {KEY}\n", [], "line 1: a key may not contain spaces"),
        (f"{KEY}\n", ["--no-auth"], "--no-auth contradicts the keys given"),
        (f"{KEY}\n", ["--ssl-keyfile", "{keys}"], "--ssl-keyfile needs --ssl-certfile"),
        (f"{KEY}\n", ["--ssl-certfile", "{keys}"], "not a PEM certificate"),
        (f"{KEY}\n", ["--ssl-certfile", "{keys}.pem"], "--ssl-certfile {keys}.pem: no such file"),
    ],
)
def test_bad_keys_and_certificates_are_one_line_errors(capsys, tmp_path, content, extra, says):
    pytest.importorskip("uvicorn")
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
        keys.chmod(0o600)
    extra = [e.replace("{keys}", str(keys)) for e in extra]
    code, err = run_cli(
        capsys,
        str(tmp_path / "run"),
        "--port",
        str(_free_port()),
        "--api-key-file",
        str(keys),
        *extra,
    )
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("charloom: error: ") and says.replace("{keys}", str(keys)) in err
    assert KEY not in err


def test_an_empty_key_variable_is_an_error_not_an_open_server(capsys, tmp_path, monkeypatch):
    pytest.importorskip("uvicorn")
    monkeypatch.setenv("CHARLOOM_API_KEYS", " ")
    code, err = run_cli(capsys, str(tmp_path / "run"), "--port", str(_free_port()))
    assert code == 2 and "CHARLOOM_API_KEYS is set but holds no keys" in err


def test_a_world_readable_key_file_is_a_warning(capsys, tmp_path):
    pytest.importorskip("uvicorn")
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o644)
    code, err = run_cli(
        capsys,
        str(tmp_path / "no-such-run"),
        "--port",
        str(_free_port()),
        "--api-key-file",
        str(keys),
    )
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2 and "no-such-run" in lines[1]
    assert lines[0].startswith("charloom: warning: ") and "chmod 600" in lines[0]
