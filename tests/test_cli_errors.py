"""Every bad input of the ``charloom`` command: exit status 2, one line on stderr that starts
with ``charloom: error: ``, no traceback, and nothing written.

The commands run in-process through :func:`charloom.commands.main`; one test runs the real
``python -m charloom`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from charloom import __version__
from charloom.commands import main

PREFIX = "charloom: error: "

# Made-up sentences for a small training text (a few KB). None of them holds '#', 'é' or '€',
# which the prime tests rely on being outside the vocabulary.
_SUBJECTS = ["The miller", "A heron", "Our neighbour", "The old clock", "This lantern", "Tomas"]
_VERBS = ["watched", "carried", "painted", "forgot", "mended", "counted"]
_OBJECTS = [
    "the blue boats",
    "seven copper bells",
    "a basket of pears",
    "the long shadows",
    "her brother's kite",
    "the quiet harbour",
]
_ENDINGS = ["before dawn.", "in the rain.", "all afternoon.", "without a word.", "again, twice."]


def make_text(n: int = 120, seed: int = 7) -> str:
    rng = random.Random(seed)
    lines = [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
        f"{rng.choice(_ENDINGS)}"
        for _ in range(n)
    ]
    return "\n".join(lines) + "\n"


def tiny_train_args(text: str | Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(text),
        "--preset",
        "tiny",
        "--iters",
        "6",
        "--eval-every",
        "3",
        "--sample-every",
        "100",
        "--log-every",
        "3",
        "--hidden",
        "32",
        "--embed",
        "16",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]


# --- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text(make_text(), encoding="utf-8")
    assert 4_000 < path.stat().st_size < 20_000
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, text_file) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(tiny_train_args(text_file, run, "--quiet")) == 0
    for name in ("config.json", "model.safetensors", "state.json", "state.safetensors"):
        assert (run / "latest" / name).is_file()
    assert (run / "best" / "model.safetensors").is_file()
    return run


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Run every test from its own temporary folder, so a default ``runs/`` never lands in the
    repository (and so the tests can check that none was created)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run, free to damage."""
    dst = tmp_path / "copy"
    shutil.copytree(trained_run, dst)
    return dst


def snapshot(root: Path) -> dict:
    """Every entry under ``root`` with its content hash and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        if p.is_file():
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
        else:
            out[rel] = ("dir", st.st_mtime_ns)
    return out


def expect_error(capsys, argv: list[str], *needles: str) -> str:
    """Run ``charloom argv``; assert it failed cleanly; return the message (without prefix)."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    assert rc == 2, (rc, out, err)
    assert err.endswith("\n"), repr(err)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(PREFIX), lines[0]
    assert out == "", f"nothing should reach stdout on an error, got {out!r}"
    msg = lines[0][len(PREFIX) :]
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def assert_nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists(), f"{out} was created despite the error"
    assert not (tmp_path / "runs").exists(), "a default runs/ folder was created"


def write_manifest(ckpt: Path) -> None:
    """Rewrite ``ckpt/manifest.json`` to match the files as they are now."""
    manifest_path = ckpt / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["files"]:
        data = (ckpt / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))


def edit_config(ckpt: Path, edit, manifest: str = "remove") -> None:
    """Change ``ckpt/config.json`` with ``edit(dict)``; then remove or refresh the manifest."""
    path = ckpt / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))
    if manifest == "remove":
        (ckpt / "manifest.json").unlink()
    else:
        write_manifest(ckpt)


# --- sanity: the trained run works, so the failures below are the inputs' fault ---------------
def test_trained_run_samples_evaluates_and_reports(trained_run, text_file, capsys):
    assert (
        main(["sample", str(trained_run), "--prime", "The", "--length", "20", "--seed", "1"]) == 0
    )
    out, err = capsys.readouterr()
    assert out.startswith("The") and len(out) == len("The") + 20 + 1
    assert err == ""
    assert main(["eval", str(trained_run), str(text_file), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["chars"] > 1000
    assert main(["info", str(trained_run)]) == 0
    out, err = capsys.readouterr()
    assert "lstm 1x32" in out and err == ""


# --- train: text problems -------------------------------------------------------------------
def test_train_missing_file(tmp_path, capsys):
    missing = tmp_path / "no-such-file.txt"
    out = tmp_path / "out"
    expect_error(capsys, tiny_train_args(missing, out), "no such file or folder", str(missing))
    assert_nothing_written(tmp_path, out)


def test_train_missing_file_without_out(tmp_path, capsys):
    expect_error(capsys, ["train", "nothing-here.txt", "--preset", "tiny"], "nothing-here.txt")
    assert not (tmp_path / "runs").exists()


def test_train_empty_file(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    expect_error(capsys, tiny_train_args(empty, out), "empty", str(empty))
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("batching", ["stream", "portions"])
def test_train_text_shorter_than_one_sequence(tmp_path, capsys, batching):
    short = tmp_path / "short.txt"
    short.write_text("The heron left.\n", encoding="utf-8")  # 16 chars, seq-len 64
    out = tmp_path / "out"
    argv = ["train", str(short), "--preset", "tiny", "--seq-len", "64", "--batching", batching]
    msg = expect_error(capsys, [*argv, "--out", str(out)], "fewer than one training")
    assert "--seq-len" in msg
    assert_nothing_written(tmp_path, out)


def test_train_binary_file(tmp_path, capsys):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 40)
    out = tmp_path / "out"
    expect_error(capsys, tiny_train_args(binary, out), "binary", str(binary))
    assert_nothing_written(tmp_path, out)


def test_train_undecodable_bytes_then_errors_replace(tmp_path, capsys):
    good = make_text(60).encode("utf-8")
    bad = tmp_path / "latin.txt"
    bad.write_bytes(good + b"caf\xe9\n" + good)
    offset = len(good) + 3
    out = tmp_path / "out"
    expect_error(capsys, tiny_train_args(bad, out), str(bad), f"byte {offset}", "0xe9")
    assert_nothing_written(tmp_path, out)

    rc = main(tiny_train_args(bad, out, "--errors", "replace", "--quiet"))
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    assert (out / "latest" / "model.safetensors").is_file()
    vocab = json.loads((out / "latest" / "config.json").read_text())["vocab"]["chars"]
    assert "\ufffd" in vocab


def test_train_undecodable_with_latin1_encoding_works(tmp_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(make_text(60).encode() + b"caf\xe9\n")
    out = tmp_path / "out"
    assert main(tiny_train_args(latin, out, "--encoding", "latin-1", "--quiet")) == 0
    capsys.readouterr()
    vocab = json.loads((out / "best" / "config.json").read_text())["vocab"]["chars"]
    assert "\u00e9" in vocab


def test_train_unknown_encoding(tmp_path, text_file, capsys):
    out = tmp_path / "out"
    expect_error(capsys, tiny_train_args(text_file, out, "--encoding", "klingon"), "klingon")
    assert_nothing_written(tmp_path, out)


def test_train_encoding_with_a_nul_character(tmp_path, text_file, capsys):
    out = tmp_path / "out"
    args = tiny_train_args(text_file, out, "--encoding", "utf\x008")
    expect_error(capsys, args, "unknown encoding")
    assert_nothing_written(tmp_path, out)


def test_train_unknown_corpus(tmp_path, capsys):
    out = tmp_path / "out"
    msg = expect_error(
        capsys,
        ["train", "--corpus", "shakespeare", "--preset", "tiny", "--out", str(out)],
        "unknown corpus 'shakespeare'",
    )
    assert "python-docs" in msg
    assert_nothing_written(tmp_path, out)


def test_train_unknown_preset(tmp_path, text_file, capsys):
    out = tmp_path / "out"
    msg = expect_error(
        capsys,
        ["train", str(text_file), "--preset", "gigantic", "--out", str(out)],
        "unknown preset 'gigantic'",
    )
    assert "tiny" in msg and "small" in msg
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--hidden", "0"], "--hidden"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "-1"], "--lr"),
        (["--iters", "many"], "--iters"),
        (["--time", "forever"], "--time"),
        (["--val-fraction", "0.95"], "--val-fraction"),
        (["--model", "transformer"], "--model"),
        (["--head-bias", "zero"], "--head-bias"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_train_bad_settings(tmp_path, text_file, capsys, flags, needle):
    out = tmp_path / "out"
    expect_error(capsys, ["train", str(text_file), "--out", str(out), *flags], needle)
    assert_nothing_written(tmp_path, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available here")
def test_train_on_missing_cuda_device(tmp_path, text_file, capsys):
    out = tmp_path / "out"
    expect_error(capsys, tiny_train_args(text_file, out, "--device", "cuda"), "cuda")
    assert_nothing_written(tmp_path, out)


# --- train: the run directory ---------------------------------------------------------------
def test_train_existing_out_is_refused_and_untouched(run_copy, text_file, tmp_path, capsys):
    before = snapshot(run_copy)
    expect_error(
        capsys, tiny_train_args(text_file, run_copy), "already exists", "--overwrite", "--resume"
    )
    assert snapshot(run_copy) == before


def test_train_existing_non_run_folder_is_refused(tmp_path, text_file, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious\n")
    before = snapshot(out)
    expect_error(capsys, tiny_train_args(text_file, out), "already exists")
    assert snapshot(out) == before


def test_train_overwrite_of_a_non_run_folder_is_refused(tmp_path, text_file, capsys):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("precious\n")
    (out / "sub" / "data.csv").write_text("1,2,3\n")
    before = snapshot(out)
    expect_error(
        capsys, tiny_train_args(text_file, out, "--overwrite"), "not a charloom run", str(out)
    )
    assert snapshot(out) == before


def test_train_out_is_a_file(tmp_path, text_file, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me\n")
    expect_error(capsys, tiny_train_args(text_file, out, "--overwrite"), "is a file")
    assert out.read_text() == "keep me\n"


@pytest.mark.parametrize("problem", ["missing", "short"])
def test_train_overwrite_with_bad_text_keeps_the_old_run(run_copy, tmp_path, capsys, problem):
    if problem == "missing":
        text = tmp_path / "missing.txt"
    else:
        text = tmp_path / "short.txt"
        text.write_text("Too short.\n")
    before = snapshot(run_copy)
    expect_error(capsys, tiny_train_args(text, run_copy, "--overwrite"))
    assert snapshot(run_copy) == before


# --- train --resume ---------------------------------------------------------------------------
def test_resume_of_empty_folder(tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    expect_error(capsys, ["train", "--resume", str(empty)], "no complete checkpoint", str(empty))
    assert list(empty.iterdir()) == []


def test_resume_of_missing_folder(tmp_path, capsys):
    missing = tmp_path / "no-run"
    expect_error(capsys, ["train", "--resume", str(missing)], str(missing))
    assert not missing.exists()


def test_resume_of_run_without_latest(run_copy, capsys):
    shutil.rmtree(run_copy / "latest")  # best/ holds no training state
    before = snapshot(run_copy)
    expect_error(capsys, ["train", "--resume", str(run_copy)], str(run_copy))
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--hidden", "64"], "--hidden"),
        (["--lr", "0.1"], "--lr"),
        (["--model", "gru"], "--model cannot"),  # named as the user spelled it
        (["--preset", "tiny"], "--preset"),
        (["--out", "elsewhere"], "--out"),
    ],
)
def test_resume_with_fixed_settings_is_refused(run_copy, tmp_path, capsys, flags, needle):
    before = snapshot(run_copy)
    msg = expect_error(capsys, ["train", "--resume", str(run_copy), *flags], needle)
    assert "--resume" in msg
    assert snapshot(run_copy) == before
    assert not (tmp_path / "elsewhere").exists()


def _point_state_at(run: Path, text: Path) -> None:
    latest = run / "latest"
    state = json.loads((latest / "state.json").read_text())
    state["source"]["paths"] = [str(text)]
    (latest / "state.json").write_text(json.dumps(state))
    write_manifest(latest)


def test_resume_when_the_text_is_gone(run_copy, tmp_path, capsys):
    gone = tmp_path / "deleted.txt"
    _point_state_at(run_copy, gone)
    before = snapshot(run_copy)
    expect_error(capsys, ["train", "--resume", str(run_copy)], "no such file", str(gone))
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("change", ["same-chars", "new-chars"])
def test_resume_when_the_text_changed(run_copy, tmp_path, capsys, change):
    other = tmp_path / "edited.txt"
    text = make_text(seed=99)  # other sentences from the same characters
    other.write_text(text if change == "same-chars" else text + "Zebra #9!\n", encoding="utf-8")
    _point_state_at(run_copy, other)
    before = snapshot(run_copy)
    needle = "differs" if change == "same-chars" else "vocabulary"
    expect_error(capsys, ["train", "--resume", str(run_copy)], needle)
    assert snapshot(run_copy) == before


def test_resume_with_text_is_refused(run_copy, text_file, capsys):
    before = snapshot(run_copy)
    expect_error(capsys, ["train", str(text_file), "--resume", str(run_copy)], "--resume")
    assert snapshot(run_copy) == before


# --- sample: bad settings ---------------------------------------------------------------------
def test_sample_prime_outside_vocabulary(trained_run, capsys):
    msg = expect_error(
        capsys,
        ["sample", str(trained_run), "--prime", "The #1 caf\u00e9 \u20ac", "--length", "5"],
        "prime",
        "vocabulary",
    )
    for ch in ("#", "1", "\u00e9", "\u20ac"):
        assert repr(ch) in msg, f"{ch!r} not listed in {msg!r}"
    for ch in ("T", "h", "e"):
        assert repr(ch) not in msg  # only the unknown ones are listed


def test_sample_empty_prime(trained_run, capsys):
    expect_error(capsys, ["sample", str(trained_run), "--prime", ""], "prime")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--temperature", "0"], "temperature"),
        (["--temperature", "-1"], "temperature"),
        (["--temperature=-1"], "temperature"),
        (["--temperature", "nan"], "nan"),
        (["--temperature", "inf"], "inf"),
        (["--temperature", "abc"], "abc"),
        (["--top-k", "0"], "top-k"),
        (["--top-k", "-3"], "top-k"),
        (["--top-k", "many"], "many"),
        (["--top-p", "0"], "top-p"),
        (["--top-p", "1.5"], "top-p"),
        (["--top-p", "-0.5"], "top-p"),
        (["--top-p", "nan"], "nan"),
        (["--length", "-1"], "length"),
        (["--length", "ten"], "ten"),
        (["--num-samples", "0"], "num-samples"),
        (["--seed", "-1"], "seed"),
        (["--checkpoint", "worst"], "worst"),
    ],
)
def test_sample_bad_settings(trained_run, capsys, flags, needle):
    expect_error(capsys, ["sample", str(trained_run), "--prime", "The", *flags], needle)


def test_sample_bad_settings_with_several_samples(trained_run, capsys):
    argv = ["sample", str(trained_run), "--num-samples", "3", "--prime", "The"]
    expect_error(capsys, [*argv, "--temperature", "0"], "temperature")
    expect_error(capsys, [*argv, "--length", "-1"], "length")
    expect_error(capsys, [*argv, "--prime", "\u20ac"], "vocabulary")


def test_sample_without_run(capsys):
    expect_error(capsys, ["sample"], "RUN")


def test_no_command_and_unknown_command(capsys):
    expect_error(capsys, ["explode"], "explode")


# --- sample / eval / info: the run path --------------------------------------------------------
def _argv(cmd: str, run: Path, text_file: Path) -> list[str]:
    if cmd == "sample":
        return ["sample", str(run), "--prime", "The", "--length", "5"]
    if cmd == "eval":
        return ["eval", str(run), str(text_file)]
    return ["info", str(run)]


COMMANDS = ["sample", "eval", "info"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_missing_run_path(tmp_path, text_file, capsys, cmd):
    missing = tmp_path / "no-such-run"
    expect_error(capsys, _argv(cmd, missing, text_file), "no such run", str(missing))
    assert not missing.exists()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_run_path_is_an_unrelated_file(tmp_path, text_file, capsys, cmd):
    expect_error(capsys, _argv(cmd, text_file, text_file), "not a charloom run")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_folder_that_is_not_a_run(tmp_path, text_file, capsys, cmd):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    before = snapshot(folder)
    expect_error(capsys, _argv(cmd, folder, text_file), "not a charloom run")
    assert snapshot(folder) == before


# --- damaged checkpoints ----------------------------------------------------------------------
def _truncate(path: Path, size: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])


@pytest.mark.parametrize("cmd", COMMANDS)
def test_truncated_weights_in_run(run_copy, text_file, capsys, cmd):
    for name in ("best", "latest"):
        _truncate(run_copy / name / "model.safetensors")
    before = snapshot(run_copy)
    expect_error(capsys, _argv(cmd, run_copy, text_file), "model.safetensors")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("cmd", COMMANDS)
def test_truncated_weights_in_checkpoint_folder(run_copy, text_file, capsys, cmd):
    _truncate(run_copy / "best" / "model.safetensors")
    expect_error(capsys, _argv(cmd, run_copy / "best", text_file), "model.safetensors", "manifest")


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("size", [None, 100, 9, 4, 0])
def test_truncated_weights_without_manifest(run_copy, text_file, capsys, cmd, size):
    ckpt = run_copy / "best"
    (ckpt / "manifest.json").unlink()
    _truncate(ckpt / "model.safetensors", size)
    expect_error(capsys, _argv(cmd, ckpt, text_file), "model.safetensors")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_truncated_config_json(run_copy, text_file, capsys, cmd):
    ckpt = run_copy / "best"
    (ckpt / "manifest.json").unlink()
    _truncate(ckpt / "config.json")
    expect_error(capsys, _argv(cmd, ckpt, text_file), "config.json")


def test_truncated_manifest(run_copy, text_file, capsys):
    _truncate(run_copy / "best" / "manifest.json")
    expect_error(capsys, _argv("sample", run_copy / "best", text_file), "manifest.json")


# --- foreign folders --------------------------------------------------------------------------
def _random_bytes(n: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(n)


def _foreign_json_config(folder: Path) -> None:
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["BertForMaskedLM"],
                "model_type": "bert",
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "vocab_size": 30522,
            }
        )
    )
    save_file({"embeddings.weight": torch.zeros(4, 4)}, str(folder / "model.safetensors"))


def _package_json(folder: Path) -> None:
    (folder / "config.json").write_text('{"name": "left-pad", "version": "1.3.0"}')


def _json_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2, 3]")


def _not_json(folder: Path) -> None:
    (folder / "config.json").write_text("[section]\nkey = value\n")


def _binary_config(folder: Path) -> None:
    (folder / "config.json").write_bytes(_random_bytes(512))


def _config_is_a_folder(folder: Path) -> None:
    (folder / "config.json").mkdir()


def _random_weights_only(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(_random_bytes(4096))


FOREIGN = {
    "hf-config": _foreign_json_config,
    "package-json": _package_json,
    "json-list": _json_list,
    "not-json": _not_json,
    "binary-config": _binary_config,
    "config-folder": _config_is_a_folder,
    "random-weights-only": _random_weights_only,
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_checkpoint_folder(tmp_path, text_file, capsys, cmd, kind):
    folder = tmp_path / "foreign"
    folder.mkdir()
    FOREIGN[kind](folder)
    before = snapshot(folder)
    expect_error(capsys, _argv(cmd, folder, text_file))
    assert snapshot(folder) == before


def _random_weights(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(_random_bytes(4096))


def _crafted_bad_header(ckpt: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}'
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)


def _other_tensors(ckpt: Path) -> None:
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(ckpt / "model.safetensors"))


def _wrong_shapes(ckpt: Path) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "model.safetensors"))
    weights = {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in weights.items()}
    save_file(weights, str(ckpt / "model.safetensors"))


def _weights_folder(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").mkdir()


def _weights_missing(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()


DAMAGED_WEIGHTS = {
    "random-bytes": _random_weights,
    "bad-header": _crafted_bad_header,
    "other-tensors": _other_tensors,
    "wrong-shapes": _wrong_shapes,
    "folder": _weights_folder,
    "missing": _weights_missing,
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("kind", list(DAMAGED_WEIGHTS))
@pytest.mark.parametrize("manifest", ["remove", "refresh"])
def test_charloom_config_with_foreign_weights(run_copy, text_file, capsys, cmd, kind, manifest):
    ckpt = run_copy / "best"
    DAMAGED_WEIGHTS[kind](ckpt)
    if manifest == "remove":
        (ckpt / "manifest.json").unlink()
    elif kind not in ("folder", "missing"):
        write_manifest(ckpt)
    expect_error(capsys, _argv(cmd, ckpt, text_file), str(ckpt))


_BAD_CONFIG_EDITS = {
    "unknown-model-kind": lambda c: c["model"].__setitem__("kind", "transformer"),
    "unknown-model-key": lambda c: c["model"].__setitem__("attention_heads", 8),
    "model-not-object": lambda c: c.__setitem__("model", "lstm"),
    "huge-model": lambda c: c["model"].update(hidden=65_536, layers=64),
    "vocab-size-mismatch": lambda c: c["model"].__setitem__("vocab_size", 7),
    "vocab-not-object": lambda c: c.__setitem__("vocab", ["a", "b"]),
    "vocab-duplicate": lambda c: c["vocab"].update(chars="aab", size=3),
    "format-string": lambda c: c.__setitem__("format", "1"),
    "format-missing": lambda c: c.pop("format"),
    "dropout-nan": lambda c: c["model"].__setitem__("dropout", float("nan")),
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("kind", list(_BAD_CONFIG_EDITS))
def test_damaged_charloom_config(run_copy, text_file, capsys, cmd, kind):
    ckpt = run_copy / "best"
    edit_config(ckpt, _BAD_CONFIG_EDITS[kind])
    expect_error(capsys, _argv(cmd, ckpt, text_file))


@pytest.mark.parametrize("cmd", COMMANDS)
def test_config_text_not_an_object(run_copy, text_file, capsys, cmd):
    ckpt = run_copy / "best"
    edit_config(ckpt, lambda c: c.__setitem__("text", "ascii"))
    expect_error(capsys, _argv(cmd, ckpt, text_file), "config.json")


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.__setitem__("training", ["not", "an", "object"]),
        lambda c: c["training"].__setitem__("iterations", "many"),
        lambda c: c["training"].__setitem__("best_val_loss", "low"),
        lambda c: c["training"].__setitem__("source", "story.txt"),
    ],
    ids=["training-list", "iterations-str", "best-val-str", "source-str"],
)
def test_info_with_damaged_training_summary(run_copy, text_file, capsys, edit):
    ckpt = run_copy / "best"
    edit_config(ckpt, edit)
    expect_error(capsys, ["info", str(ckpt)])


# --- a checkpoint from the future ------------------------------------------------------------
@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("manifest", ["refresh", "remove"])
def test_future_format_is_refused(run_copy, text_file, capsys, cmd, manifest):
    for name in ("best", "latest"):
        edit_config(run_copy / name, lambda c: c.__setitem__("format", 999), manifest)
    before = snapshot(run_copy)
    msg = expect_error(capsys, _argv(cmd, run_copy, text_file), "newer charloom", "upgrade")
    assert "999" in msg
    assert snapshot(run_copy) == before


def test_future_format_cannot_be_resumed(run_copy, capsys):
    edit_config(run_copy / "latest", lambda c: c.__setitem__("format", 999), "refresh")
    before = snapshot(run_copy)
    expect_error(capsys, ["train", "--resume", str(run_copy)], "newer charloom")
    assert snapshot(run_copy) == before


# --- eval -------------------------------------------------------------------------------------
def test_eval_missing_file(trained_run, tmp_path, capsys):
    missing = tmp_path / "held-out.txt"
    expect_error(capsys, ["eval", str(trained_run), str(missing)], str(missing))


def test_eval_text_outside_vocabulary(trained_run, tmp_path, capsys):
    f = tmp_path / "other.txt"
    f.write_text("Price: 5 \u20ac #tag\n", encoding="utf-8")
    msg = expect_error(capsys, ["eval", str(trained_run), str(f)], "vocabulary")
    assert repr("\u20ac") in msg and repr("#") in msg


def test_eval_text_of_one_character(trained_run, tmp_path, capsys):
    f = tmp_path / "one.txt"
    f.write_text("T", encoding="utf-8")
    expect_error(capsys, ["eval", str(trained_run), str(f)], "too short")


def test_eval_empty_and_binary_and_undecodable(trained_run, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    expect_error(capsys, ["eval", str(trained_run), str(empty)], "empty")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    expect_error(capsys, ["eval", str(trained_run), str(binary)], "binary")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"The heron\xff left.\n")
    expect_error(capsys, ["eval", str(trained_run), str(bad)], str(bad), "byte 9")


def test_eval_unknown_corpus(trained_run, capsys):
    expect_error(capsys, ["eval", str(trained_run), "--corpus", "nope"], "unknown corpus")


# --- the real command -------------------------------------------------------------------------
def test_python_dash_m_in_a_subprocess(tmp_path):
    missing = tmp_path / "missing-run"
    proc = subprocess.run(
        [sys.executable, "-m", "charloom", "sample", str(missing)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(PREFIX) and str(missing) in lines[0]
    assert proc.stdout == ""

    proc = subprocess.run(
        [sys.executable, "-m", "charloom", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"charloom {__version__}"
    assert proc.stderr == ""


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"charloom {__version__}"


def test_an_argument_with_a_line_break_still_gives_one_error_line(capsys):
    assert main(["sample", "no\nsuch\rrun"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("charloom: error: ")
    assert "no\\nsuch\\rrun" in err
