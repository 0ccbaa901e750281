"""A library call leaves the caller's world as it found it: matplotlib backend, torch threads,
torch's random generator, and the config object passed in."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import torch
from conftest import tiny_overrides

import charloom
from charloom.device import cpu_has_bf16_lstm


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


_WORLD = """
import logging, random, warnings
import matplotlib
import numpy as np
import torch
def world():
    root = logging.getLogger()
    named = logging.getLogger("charloom")
    return {
        "backend": matplotlib.get_backend(),
        "threads": torch.get_num_threads(),
        "torch_rng": torch.get_rng_state().tolist(),
        "numpy_rng": repr(np.random.get_state()),
        "random": random.getstate(),
        "warnings": [repr(f) for f in warnings.filters],
        "logging": (root.level, list(root.handlers), named.level, list(named.handlers),
                    named.propagate, logging.root.manager.disable),
    }
"""


def test_the_notebook_api_leaves_the_callers_world_as_it_found_it(tmp_path, small_text):
    # A fresh interpreter: charloom's first import, training, sampling (with the compiled
    # engine's background compilation), evaluation, plotting and the visualiser all happen
    # after the caller has set things up, and change none of it.
    script = (
        _WORLD
        + f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_text, tiny_overrides
matplotlib.use("svg")
torch.set_num_threads(1)
torch.manual_seed(5); np.random.seed(6); random.seed(7)
warnings.simplefilter("ignore", DeprecationWarning)
warnings.filterwarnings("error", message="a filter of the caller's")
logging.getLogger().setLevel(logging.CRITICAL)
before = world()
import charloom
from charloom import fastgen
text = make_text()
cfg = charloom.preset_config("tiny", **tiny_overrides(iters=4, eval_every=2, sample_every=2))
run = charloom.train(cfg, text=text, out={str(tmp_path / "r")!r})
run.sample("Th", 20, seed=0)
fastgen.prepare(wait=True)
run.sample("Th", 20, seed=0, engine="auto")
run.eval(text[:300])
run.plot()
run.plot(run, x="time")._repr_png_()
run.viz(text[:200])._repr_html_()
charloom.load({str(tmp_path / "r")!r}).history
after = world()
changed = [key for key in before if before[key] != after[key]]
assert not changed, changed
print("ok")
"""
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_probing_the_cpu_for_a_bf16_lstm_draws_nothing_from_the_callers_generator():
    # The probe builds a small LSTM (weights drawn at random) on any CPU; a run with precision
    # `auto` asks it where bf16 is fast, so a caller's seeded stream must not move.
    torch.manual_seed(3)
    before = torch.get_rng_state()
    cpu_has_bf16_lstm.__wrapped__()  # uncached: the probe itself, every time
    assert torch.equal(torch.get_rng_state(), before)
