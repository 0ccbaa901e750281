"""GPUs: training on CUDA (bf16, the cuDNN path, no host-device sync per step), the lecture's
per-step path that crashed its notebook on a GPU, CUDA checkpoints on the CPU - and, on any
machine, the device choice and the GPU check scripts themselves.

The ``cuda``-marked tests run where ``torch.cuda.is_available()``; ``bench/gpu_check.sh`` runs
them with ``pytest -m cuda``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

import charloom
from charloom.commands import main
from charloom.data import encode_text
from charloom.device import resolve_device
from charloom.errors import CharloomError
from charloom.train import Trainer, load_trainer

BENCH = Path(__file__).resolve().parents[1] / "bench"


def cuda_test(fn):
    """Marked ``cuda``, and skipped where there is no CUDA device."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.cuda(skip(fn))


def _trainer(text: str, tmp_path, **kw) -> Trainer:
    cfg = charloom.preset_config("tiny", **tiny_overrides(device="cuda", **kw))
    return Trainer(cfg, encode_text(cfg, text), tmp_path / "run")


# --- on any machine ---------------------------------------------------------------------------
def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"


def test_asking_for_a_missing_gpu_is_a_one_line_error(tmp_path, text_file, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    argv = ["train", str(text_file), "--device", "cuda", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_gpu_check_script_is_valid_bash():
    script = BENCH / "gpu_check.sh"
    assert script.stat().st_mode & 0o111, "bench/gpu_check.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_gpu_speed_benchmark_runs_on_the_cpu():
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_speed.py"), "--device", "cpu", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[0])
    assert result["bf16_matmul_peak"]["flops"] > 0
    (row,) = result["models"]
    assert row["chars_per_s"] > 0 and row["model_flops"] > 0


# --- on a CUDA device -------------------------------------------------------------------------
@cuda_test
def test_training_steps_never_wait_for_the_device(tmp_path, small_text):
    trainer = _trainer(small_text, tmp_path, precision="bf16")
    assert trainer.model.rnn.weight_hh_l0.is_cuda
    for _ in range(2):  # warm-up: cuDNN plans, memory pools
        trainer.step.take(trainer.batches)
    losses = []
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        for _ in range(5):
            losses.append(trainer.step.take(trainer.batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.is_tensor(x) and x.is_cuda for x in losses)
    assert math.isfinite(trainer.step.mean_loss(losses))


@cuda_test
def test_a_non_finite_loss_on_the_gpu_stops_training_with_its_iteration(tmp_path, small_text):
    trainer = _trainer(small_text, tmp_path)
    trainer.step.take(trainer.batches, iteration=0)
    with torch.no_grad():
        trainer.model.head.bias.fill_(float("nan"))
    loss = trainer.step.take(trainer.batches, iteration=1)
    with pytest.raises(CharloomError, match="non-finite at iteration 2"):
        trainer.step.mean_loss([loss])
    with pytest.raises(CharloomError, match="non-finite at iteration 2"):
        trainer.save()
    assert not (tmp_path / "run" / "latest").exists()


@cuda_test
def test_a_cuda_run_samples_and_loads_on_the_cpu(tmp_path, text_file, capsys):
    run = tmp_path / "gpu"
    argv = ["train", str(text_file), "--preset", "tiny", "--device", "cuda", "--precision"]
    argv += ["bf16", "--iters", "30", "--eval-every", "10", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    assert charloom.load(run, device="cuda").sample("Th", 50, seed=1)[0].startswith("Th")
    on_cpu = charloom.load(run, device="cpu")
    assert not on_cpu.model.head.weight.is_cuda
    assert len(on_cpu.sample("Th", 50, seed=1)[0]) == 52
    capsys.readouterr()
    assert main(["eval", str(run), str(text_file), "--device", "cpu", "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["loss"])
    # and the run continues on the CPU, its carried state moved off the GPU
    trainer = load_trainer(run, {"device": "cpu", "iters": 35})
    trainer.run()
    assert trainer.iteration == 35 and not trainer.step.carry[0].is_cuda


@cuda_test
def test_the_lectures_per_step_path_runs_on_the_gpu(tmp_path):
    # The lecture's notebook segfaulted on a GPU with this setup: one 200-character portion at
    # a time, stepped character by character through an LSTMCell.
    text = "The quick brown fox jumps over the lazy dog. " * 40
    cfg = charloom.preset_config("seed", iters=60, eval_every=30, sample_every=30, device="cuda")
    result = charloom.train(cfg, text=text, out=tmp_path / "seed", console=False)
    assert result.iterations == 60 and math.isfinite(result.train_loss)


@cuda_test
def test_a_resumed_cuda_run_matches_an_uninterrupted_one(tmp_path, small_text):
    over = tiny_overrides(device="cuda", iters=20, log_every=2, layers=2)
    cfg = charloom.preset_config("tiny", **over)
    charloom.train(cfg, text=small_text, out=tmp_path / "whole", console=False)
    cfg = charloom.preset_config("tiny", **over)
    charloom.train(cfg, text=small_text, out=tmp_path / "split", console=False, stop_at=10)
    trainer = load_trainer(tmp_path / "split", text=small_text, console=False)
    trainer.run()

    def losses(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in rows if "train_loss" in r]

    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "whole"), rel=1e-4)


@cuda_test
def test_the_gpu_speed_benchmark_runs_on_cuda():
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_speed.py"), "--device", "cuda", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[0])["models"][0]["chars_per_s"] > 0
