"""Choosing the sampling engine: auto starts on torch while numba compiles and switches between
blocks without changing the text; numba missing or failing falls back to torch with one line;
the torch engine is the cell path's arithmetic."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charloom import fastgen
from charloom.errors import CharloomError
from charloom.model import CharRNN, ModelConfig
from charloom.npgen import NumpyGenerator
from charloom.sample import (
    SampleSettings,
    TorchGenerator,
    engine_in_use,
    next_token_distribution,
    pick,
    sample,
)
from charloom.vocab import Vocab

SRC = Path(__file__).resolve().parents[1] / "src"
needs_numba = pytest.mark.skipif(not fastgen.available(), reason="numba is not installed")


@pytest.fixture
def fresh_engine_state(monkeypatch):
    """fastgen's per-process state with nothing said and nothing failed; all of it (the
    compiled kernels too, which a failure drops) restored afterwards."""
    for name, value in (("_failure", None), ("_said", set())):
        monkeypatch.setattr(fastgen, name, value)
    for name in ("_kernels", "_thread"):
        monkeypatch.setattr(fastgen, name, getattr(fastgen, name))


def _model(kind: str, layers: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(kind=kind, vocab_size=100, embed=12, hidden=24, layers=layers))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_torch_engine_is_the_cell_path(kind, layers):
    # Three streams, eight steps: the ids, state and logits are the cell path's, bit for bit.
    model = _model(kind, layers).eval()
    state, logits = model.zero_state(3), torch.randn(3, 100)
    u = torch.rand(8, 3, generator=torch.Generator().manual_seed(1))
    settings = SampleSettings(temperature=1.1)
    ids, got_state, got_logits = TorchGenerator(model).run(state, logits, u, settings)
    with torch.no_grad():
        for t in range(8):
            nxt = pick(logits, settings, u[t])
            assert torch.equal(nxt, ids[t])
            logits, state = model.step(nxt, state, path="cell")
    assert all(torch.equal(a, b) for a, b in zip(got_state, state))
    assert torch.equal(got_logits, logits)
    fused, _ = model.step(ids[-1], None)  # and close to the fused module, which training uses
    assert fused.shape == (3, 100)


@pytest.mark.parametrize("temperature", [1e-6, 0.5, 0.8, 1.3])
def test_the_plain_draw_is_the_general_one(temperature):
    # Temperature alone takes a shorter path through pick (softmax, then searchsorted); it
    # draws what the general path (the distribution, cumsum, counting) draws, and a tiny
    # temperature is the greedy choice, without NaN.
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 100, generator=gen) * 4
    u = torch.rand(64, generator=gen)
    settings = SampleSettings(temperature=temperature)
    probs = next_token_distribution(logits, settings)
    cdf = torch.cumsum(probs, dim=-1)
    want = (cdf < u.unsqueeze(1) * cdf[:, -1:]).sum(dim=-1).clamp(max=99)
    got = pick(logits, settings, u)
    assert torch.equal(got, want)
    if temperature < 1e-3:
        assert torch.equal(got, logits.argmax(dim=-1))
    # top-p of 1 keeps everything: the plain path too
    assert torch.equal(pick(logits, SampleSettings(temperature, top_p=1.0), u), got)


@needs_numba
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_a_stream_that_switches_to_numba_midway_writes_the_same_text(kind, layers, monkeypatch):
    fastgen.prepare(wait=True)
    model, vocab = _model(kind, layers, seed=layers), Vocab.build("printable")
    for settings in (SampleSettings(), SampleSettings(temperature=1.2, top_k=7, top_p=0.9)):
        want = sample(model, vocab, "Th", 120, settings, num_samples=2, seed=3, engine="torch")
        assert sample(model, vocab, "Th", 120, settings, 2, seed=3, engine="numba") == want
        for switch_after in (1, 3):  # after 1 step, or after blocks of 1, 4 and 16 steps
            runs: dict[str, int] = {"numpy": 0, "numba": 0}

            def counted(run, name, runs=runs):
                def wrapped(self, *args):
                    runs[name] += 1
                    return run(self, *args)

                return wrapped

            monkeypatch.setattr(NumpyGenerator, "run", counted(NumpyGenerator.run, "numpy"))
            monkeypatch.setattr(
                fastgen.FastGenerator, "run", counted(fastgen.FastGenerator.run, "numba")
            )
            monkeypatch.setattr(
                fastgen, "ready", lambda runs=runs, k=switch_after: runs["numpy"] >= k
            )
            got = sample(model, vocab, "Th", 120, settings, num_samples=2, seed=3, engine="auto")
            assert runs["numpy"] == switch_after and runs["numba"] > 0  # switched part-way
            assert got == want, (settings, switch_after)
            monkeypatch.undo()


@needs_numba
def test_numba_failing_at_run_time_falls_back_to_numpy_once(
    monkeypatch, caplog, fresh_engine_state
):
    fastgen.prepare(wait=True)
    model, vocab = _model("lstm", 2), Vocab.build("printable")
    want = sample(model, vocab, "Th", 90, seed=4, engine="torch")

    def broken(self, *args):
        raise RuntimeError("illegal instruction\nwith a second line")

    monkeypatch.setattr(fastgen.FastGenerator, "run", broken)
    with caplog.at_level(logging.WARNING, logger="charloom"):
        assert sample(model, vocab, "Th", 90, seed=4, engine="auto") == want
        assert sample(model, vocab, "Th", 90, seed=4, engine="auto") == want
    lines = [r.getMessage() for r in caplog.records if r.name == "charloom"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "compiled engine failed (RuntimeError: illegal instruction)" in lines[0]
    assert engine_in_use().startswith("numpy (numba failed")
    with pytest.raises(CharloomError, match="numba engine"):  # asked for by name: an error
        sample(model, vocab, "Th", 9, seed=4, engine="numba")


@needs_numba
def test_a_compiled_engine_that_cannot_be_built_is_tried_once(monkeypatch, fresh_engine_state):
    fastgen.prepare(wait=True)
    model, vocab = _model("rnn", 2), Vocab.build("printable")
    want = sample(model, vocab, "Th", 100, seed=6, engine="torch")
    tries = []

    def unbuildable(self, model):
        tries.append(1)
        raise MemoryError("no room for the weights")

    monkeypatch.setattr(fastgen.FastGenerator, "__init__", unbuildable)
    assert sample(model, vocab, "Th", 100, seed=6, engine="auto") == want
    assert tries == [1]  # not once per block
    assert fastgen.status().startswith("failed: MemoryError")


@needs_numba
def test_a_compiler_error_falls_back_to_numpy(monkeypatch, caplog, fresh_engine_state):
    # The background load fails (as on a CPU numba cannot compile for): one line, the same text.
    model, vocab = _model("gru", 1), Vocab.build("printable")
    want = sample(model, vocab, "Th", 40, seed=5, engine="torch")

    def fail(*args):
        raise RuntimeError("LLVM ERROR: unsupported target")

    monkeypatch.setattr(fastgen, "_thread", None)
    monkeypatch.setattr(fastgen, "_kernels", None)
    monkeypatch.setattr(fastgen, "_example_args", fail)
    with caplog.at_level(logging.WARNING, logger="charloom"):
        assert fastgen.prepare(wait=True) is False
        assert sample(model, vocab, "Th", 40, seed=5, engine="auto") == want
    lines = [r.getMessage() for r in caplog.records if r.name == "charloom"]
    assert len(lines) == 1 and "unsupported target" in lines[0], lines
    assert fastgen.status().startswith("failed")
    with pytest.raises(CharloomError, match="cannot run here"):
        sample(model, vocab, "Th", 9, seed=5, engine="numba")


def test_engine_in_use_says_what_auto_runs(monkeypatch):
    monkeypatch.setattr(fastgen, "status", lambda: "ready")
    assert engine_in_use() == "numba"
    assert engine_in_use("meta") == "torch (not on the CPU)"
    monkeypatch.setattr(fastgen, "status", lambda: "compiling")
    assert engine_in_use() == "numpy (compiling)"
    monkeypatch.setattr(fastgen, "status", lambda: "not installed")
    assert engine_in_use() == "numpy (numba not installed)"


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(SRC), **env}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=full, timeout=600
    )


def test_without_numba_auto_uses_numpy_and_says_so_once():
    script = """
import sys
sys.modules["numba"] = None  # as if numba were not installed
import torch
from charloom.model import CharRNN, ModelConfig
from charloom.sample import engine_in_use, sample
from charloom.vocab import Vocab
model = CharRNN(ModelConfig(vocab_size=100, embed=4, hidden=8, layers=1))
vocab = Vocab.build("printable")
a = sample(model, vocab, "Th", 30, seed=1)
b = sample(model, vocab, "Th", 30, seed=1)
assert a == b == sample(model, vocab, "Th", 30, seed=1, engine="torch")
print(engine_in_use())
"""
    out = _run(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy (numba not installed)"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "numba is not installed" in lines[0], out.stderr
    assert "pip install" in lines[0]


@needs_numba
def test_the_cache_goes_to_the_user_folder_when_the_package_is_read_only(tmp_path):
    # The package's __pycache__ cannot be created (a file stands in its place, which stops root
    # too): numba caches in $XDG_CACHE_HOME/numba. With that blocked as well, it still runs.
    pkg = tmp_path / "site" / "charloom"
    shutil.copytree(SRC / "charloom", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "__pycache__").write_text("not a folder")
    script = """
import numpy as np
from charloom import kernels
x = np.linspace(-3, 3, 8).astype(np.float32)
out = np.empty_like(x)
kernels.exp_into(x, out, np.empty(8, np.int32), 8)
assert np.allclose(out, np.exp(x), rtol=1e-6)
print("ok")
"""
    env = dict(PYTHONPATH=str(pkg.parent), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env_no_dir = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    full = {**env_no_dir, **env}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert list((tmp_path / "cache" / "numba").rglob("kernels.exp_into*.nbi"))
    (tmp_path / "blocked").write_text("not a folder either")
    full["XDG_CACHE_HOME"] = str(tmp_path / "blocked")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_compile_ahead_starts_one_quiet_process(monkeypatch):
    started = []
    monkeypatch.setattr(fastgen.subprocess, "Popen", lambda *a, **kw: started.append((a, kw)))
    monkeypatch.setattr(fastgen, "_kernels", None)
    monkeypatch.setattr(fastgen, "available", lambda: True)
    fastgen.compile_ahead()
    ((args, kw),) = started
    assert args[0][0] == sys.executable and "prepare(wait=True)" in args[0][-1]
    assert kw["start_new_session"] and kw["stdout"] == kw["stderr"] == subprocess.DEVNULL
    monkeypatch.setattr(fastgen, "available", lambda: False)  # no numba: nothing to start
    assert fastgen.compile_ahead() is None and len(started) == 1


def test_charloom_train_compiles_the_engine_ahead(monkeypatch, tmp_path, capsys):
    from charloom import commands

    calls = []
    monkeypatch.setattr(fastgen, "compile_ahead", lambda: calls.append(1))
    assert commands.main(["train", str(tmp_path / "missing.txt"), "--quiet"]) == 2
    assert calls == [1]
    assert capsys.readouterr().err.startswith("charloom: error:")
