"""A library call leaves the caller's world as it found it: matplotlib backend, torch threads,
torch's random generator, and the config object passed in."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import torch
from conftest import tiny_overrides

import charloom


def test_plotting_keeps_the_callers_matplotlib_backend(tmp_path):
    # A fresh interpreter, so that the backend chosen is really the caller's first choice.
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import charloom
from charloom.plot import plot_run, plot_runs
open_before = plt.get_fignums()
records = [{{"iter": 1, "train_loss": 2.0, "lr": 0.1}}, {{"iter": 2, "val_loss": 1.9}}]
fig = plot_run(records, [r"{tmp_path / 'a.png'}"])
plot_runs({{"a": records}}, [r"{tmp_path / 'b.png'}"])
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == open_before  # nothing left open in pyplot
assert fig.axes  # the figure comes back to the caller, drawn
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").exists()


def test_training_keeps_threads_random_state_and_the_config(tmp_path, small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(threads=1, dropout=0.0, iters=4))
    before_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model))
    threads = torch.get_num_threads()
    torch.manual_seed(12345)
    rng = torch.get_rng_state()
    charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's generator, untouched
    assert torch.get_num_threads() == threads
    assert cfg == before_cfg  # not mutated: vocab size and precision live in the run's copy
    assert cfg.model.vocab_size == 0 and cfg.precision == "auto"


def test_a_resumed_run_also_leaves_the_random_state(tmp_path, small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=4))
    charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False, stop_at=2)
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    trainer = charloom.load_trainer(tmp_path / "r", text=small_text, console=False)
    trainer.run()
    assert trainer.iteration == 4
    assert torch.equal(torch.get_rng_state(), rng)
