"""Never lose a run: signals, kill -9, divergence, full disks, hostile checkpoint files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS, make_text, tiny_overrides

import charloom
from charloom import checkpoint as ckpt
from charloom.commands import main

TINY = [
    *TINY_FLAGS,
    "--sample-every",
    "100000",
    "--no-bar",
]


def _train_cmd(text: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "charloom", "train", str(text), "--out", str(out), *TINY, *extra]


def _iterations_logged(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return len(lines)


def _wait_for(run: Path, lines: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _iterations_logged(run) < lines:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start in time"
        time.sleep(0.02)


def _train_losses(run: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["train_loss"]) for r in recs if "train_loss" in r]


@pytest.fixture
def text(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(make_text(400), encoding="utf-8")
    return p


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_and_says_how_to_resume(tmp_path, text, sig, status):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(text, run, "--iters", "100000", "--log-every", "1", "--eval-every", "100000"),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(run, 5, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert f"charloom train --resume {run}" in err
    state = json.loads((run / "latest" / "state.json").read_text())
    assert state["iteration"] >= 5
    ckpt.verify_manifest(run / "latest")
    # ... and the run continues from there.
    assert (
        main(["train", "--resume", str(run), "--iters", str(state["iteration"] + 3), "--quiet"])
        == 0
    )
    assert json.loads((run / "latest" / "state.json").read_text())["iteration"] == (
        state["iteration"] + 3
    )


def test_a_second_ctrl_c_quits_at_once_and_loses_nothing(tmp_path, text):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(
            text,
            run,
            "--iters",
            "100000",
            "--log-every",
            "1",
            "--eval-every",
            "100000",
            "--checkpoint-every",
            "1",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(run, 5, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 128 + signal.SIGINT)
    assert "Traceback" not in err
    path, _ = ckpt.find_resumable(run)
    ckpt.load_checkpoint(path, with_state=True)


KILL_ARGS = (
    "--iters",
    "30",
    "--log-every",
    "1",
    "--eval-every",
    "100000",
    "--checkpoint-every",
    "1",
    "--schedule",
    "cosine",
    "--warmup",
    "3",
    "--layers",
    "2",
    "--dropout",
    "0.1",
)


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    text = d / "text.txt"
    text.write_text(make_text(400), encoding="utf-8")
    subprocess.run(_train_cmd(text, d / "reference", *KILL_ARGS), check=True, capture_output=True)
    return text, d / "reference"


@pytest.mark.parametrize("trial", range(2))
def test_kill_9_at_any_moment_then_resume_matches_an_uninterrupted_run(
    tmp_path, kill_reference, trial
):
    # Checkpoints every iteration, so kills land in the middle of checkpoint writes too.
    text, reference = kill_reference
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(text, run, *KILL_ARGS), stderr=subprocess.DEVNULL)
    _wait_for(run, 2, proc)
    time.sleep(random.Random(trial).uniform(0.0, 0.3))
    proc.kill()
    proc.wait()
    resumed = subprocess.run(
        [sys.executable, "-m", "charloom", "train", "--resume", str(run), "--no-bar"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _train_losses(run) == _train_losses(reference)
    a = ckpt.load_checkpoint(reference / "latest").weights
    b = ckpt.load_checkpoint(run / "latest").weights
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_falls_back_to_the_previous_complete_checkpoint(tmp_path, small_text, capsys):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=6, eval_every=3))
    charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False)
    run = tmp_path / "r"
    # The state a crash between the two renames of a checkpoint swap leaves behind:
    os.replace(run / "latest", run / "latest.old")
    shutil.copytree(run / "latest.old", run / "latest")
    (run / "latest" / "manifest.json").unlink()
    path, note = ckpt.find_resumable(run)
    assert path == run / "latest.old" and "previous checkpoint" in note


def test_divergence_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=20, log_every=1, eval_every=4))
    run = tmp_path / "r"

    def poison(t):
        if t.iteration == 6:
            with torch.no_grad():
                t.model.head.bias.fill_(float("nan"))

    with pytest.raises(charloom.CharloomError, match=r"non-finite at iteration 7.*--lr"):
        charloom.train(cfg, text=small_text, out=run, console=False, callbacks={"log": [poison]})
    good = ckpt.load_checkpoint(run / "latest", with_state=True)
    assert good.state["iteration"] == 4
    assert all(bool(torch.isfinite(w).all()) for w in good.weights.values())
    assert all(
        bool(torch.isfinite(w).all()) for w in ckpt.load_checkpoint(run / "best").weights.values()
    )


def test_nan_weights_are_never_written(tmp_path, small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=4))
    trainer_box = {}
    charloom.train(
        cfg,
        text=small_text,
        out=tmp_path / "r",
        console=False,
        callbacks={"start": [lambda t: trainer_box.setdefault("t", t)]},
    )
    t = trainer_box["t"]
    before = (tmp_path / "r" / "latest" / "model.safetensors").read_bytes()
    with torch.no_grad():
        t.model.embedding.weight[0, 0] = float("inf")
    with pytest.raises(charloom.CharloomError, match="non-finite"):
        t.save()
    assert (tmp_path / "r" / "latest" / "model.safetensors").read_bytes() == before


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, small_text, monkeypatch):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=4, eval_every=2))
    charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False)
    before = ckpt.load_checkpoint(tmp_path / "r" / "latest", with_state=True)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    import safetensors.torch  # what write_checkpoint writes the weights with

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    trainer = charloom.load_trainer(tmp_path / "r", {"iters": 6}, text=small_text)
    with pytest.raises(
        charloom.CharloomError, match="No space left on device.*previous checkpoint is kept"
    ):
        trainer.run()
    after = ckpt.load_checkpoint(tmp_path / "r" / "latest", with_state=True)
    assert after.state["iteration"] == before.state["iteration"] == 4
    assert not list((tmp_path / "r").glob(".latest.tmp*"))


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_gives_one_line_and_keeps_the_checkpoint(small_disk, text, capsys):
    run = small_disk / "run"
    assert (
        main(
            [
                "train",
                str(text),
                "--out",
                str(run),
                *TINY,
                "--iters",
                "4",
                "--eval-every",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    with open(small_disk / "filler", "wb", buffering=0) as fh:  # fill the disk to the last byte
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    capsys.readouterr()
    rc = main(["train", "--resume", str(run), "--iters", "8", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("charloom: error: ")
    assert "No space left on device" in err
    ckpt.verify_manifest(run / "latest")
    assert json.loads((run / "latest" / "state.json").read_text())["iteration"] == 4


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forge_manifest(folder: Path) -> None:
    """What an attacker would do: make the manifest agree with the replaced file."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, info in manifest["files"].items():
        data = (folder / name).read_bytes()
        info["bytes"] = len(data)
        info["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("target", ["best/model.safetensors", "latest/state.safetensors"])
def test_a_pickle_with_a_payload_is_refused_without_running_it(tmp_path, small_text, target):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=4))
    charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False)
    marker = tmp_path / "pwned"
    bad = tmp_path / "r" / target

    def load():
        if target.startswith("best"):
            charloom.load(tmp_path / "r" / "best")
        else:
            charloom.load_trainer(tmp_path / "r", text=small_text)

    bad.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    _forge_manifest(bad.parent)
    with pytest.raises(charloom.CharloomError, match="not a safetensors file"):
        load()
    torch.save({"x": _Payload(marker)}, bad)  # the zip format torch.load would read
    _forge_manifest(bad.parent)
    with pytest.raises(charloom.CharloomError, match="not a safetensors file"):
        load()
    assert not marker.exists()


def test_a_flipped_bit_is_caught_by_the_manifest(tmp_path, small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=4))
    charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False)
    f = tmp_path / "r" / "best" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(charloom.CharloomError, match="does not match its manifest"):
        ckpt.load_checkpoint(tmp_path / "r" / "best")
