"""The benchmark suite: training speed, hardware efficiency, generation speed, serving speed,
evaluation speed and quality per minute, measured side by side in one run on this machine.

    charloom bench [--quick] [--json] [--data tinyshakespeare.txt]

The quality runs train on the text given with ``--data``, else on the file named by the
environment variable ``CHARLOOM_BENCH_DATA``, else on the built-in python-docs corpus; the
results say which.

Every speed is a ratio against a reference measured in the same process: the lecture's per-step
training loop, the lecture's per-character sampling loop, square matrix multiplications for
the machine's arithmetic peak, ``sample(num_samples=64)`` for the server's 64 streaming
requests, and for the held-out loss the plain PyTorch loop of ``plainrecipe.py`` trained with
charloom's own choice for the same budget. Nothing here passes or fails: it reports what it
measured.
"""

from __future__ import annotations

import json
import os
import platform
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import fastgen, plainrecipe
from .batches import make_batches
from .config import BENCH_DATA_ENV as DATA_ENV
from .config import TrainConfig, parse_duration
from .corpus import read_text
from .data import encode_text
from .device import cpu_has_bf16_lstm, resolve_precision
from .errors import CharloomError
from .model import CharRNN
from .modelconfig import ModelConfig
from .presets import preset_config
from .sample import SampleSettings, engine_in_use, sample
from .serve.throughput import NO_SERVER, server_available, server_chars_per_s, server_rows
from .step import TrainStep
from .vocab import Vocab

# The lecture's model size, used for the like-for-like comparisons.
SEED_SIZE: dict[str, Any] = dict(kind="lstm", layers=1, hidden=128, embed=100)
CPU = torch.device("cpu")
NO_BF16 = "- (no bf16 LSTM kernel on this CPU)"
EFFICIENCY_SIZE: dict[str, Any] = dict(kind="lstm", layers=2, hidden=512, embed=128)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _timed(fn, min_time: float, min_reps: int = 3) -> float:
    """Seconds per call of ``fn``, after one warm-up call (which builds kernels for the shape)."""
    fn()
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_time:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def matmul_peak(dtype: torch.dtype, n: int = 2048, min_time: float = 1.0) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matrix multiplication in ``dtype`` (``n`` smaller
    where one product would take over 0.2 s: a CPU without native bf16 multiplies bf16 about a
    hundred times slower than fp32, and a 2048 product would take tens of seconds)."""
    probe = torch.randn(256, 256).to(dtype)
    start = time.perf_counter()
    probe @ probe
    rate = 2 * 256**3 / max(time.perf_counter() - start, 1e-9)
    n = min(n, max(256, int((0.2 * rate / 2) ** (1 / 3))))
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / _timed(lambda: a @ b, min_time)


def flops_per_char(cfg: ModelConfig, training: bool = True) -> float:
    """Model FLOPs per character: each layer's gates are ``G*h*(in+h)`` multiply-adds (G = 4 for
    an LSTM) and the head ``h*V``; a multiply-add is 2 FLOPs; training is x3 (forward, and the
    two products of the backward pass)."""
    gates = cfg.gates
    macs = cfg.hidden * cfg.vocab_size
    for layer in range(cfg.layers):
        inp = cfg.embed if layer == 0 else cfg.hidden
        macs += gates * cfg.hidden * (inp + cfg.hidden)
    return 2 * macs * (3 if training else 1)


def train_chars_per_s(
    config: TrainConfig, text: str, min_time: float, steps_per_call: int = 1
) -> float:
    """Training characters per second of ``config``'s loop (batches, forward, backward, step)."""
    data = encode_text(config, text)
    step = TrainStep.build(config, data.vocab.size)
    batches = make_batches(config.batching, data.train, config.batch_size, config.seq_len, seed=1)

    def run():
        for _ in range(steps_per_call):
            step.take(batches)

    seconds = _timed(run, min_time)
    return config.batch_size * config.seq_len * steps_per_call / seconds


@dataclass
class _Lecture:
    """The lecture's sampling loop, as it was written: LSTMCell one character at a time,
    ``exp(logits / t)``, ``torch.multinomial``, the character appended to the text and turned
    back into an input tensor - the reference for generation speed."""

    model: CharRNN

    @torch.no_grad()
    def generate(self, n: int, temperature: float = 0.8) -> str:
        m = self.model
        cell = torch.nn.LSTMCell(m.config.embed, m.config.hidden)
        cell.weight_ih.data, cell.weight_hh.data = m.rnn.weight_ih_l0, m.rnn.weight_hh_l0
        cell.bias_ih.data, cell.bias_hh.data = m.rnn.bias_ih_l0, m.rnn.bias_hh_l0
        h = torch.zeros(1, m.config.hidden)
        c = torch.zeros(1, m.config.hidden)
        predicted = "T"
        x = torch.tensor([string.printable.index(ch) for ch in predicted]).long()
        for _ in range(n):
            h, c = cell(m.embedding(x), (h, c))
            dist = m.head(h).view(-1).div(temperature).exp()
            top_i = torch.multinomial(dist, 1)[0]
            char = string.printable[top_i]
            predicted += char
            x = torch.tensor([string.printable.index(ch) for ch in char]).long()
        return predicted


#: Timed runs of each generation figure; the best counts.
GEN_REPEATS = 3


def generation_chars_per_s(
    model: CharRNN, streams: int, n: int, engine: str = "auto", repeats: int = GEN_REPEATS
) -> float:
    """New characters per second (all streams together) of ``sample``: text out, as a user gets
    it from ``charloom sample`` or ``CharModel.sample``; the best of ``repeats`` runs."""
    vocab = Vocab.build("printable")
    settings = SampleSettings()
    if engine in ("auto", "numba"):  # the steady state: the compiled engine ready, as after
        fastgen.prepare(wait=True)  # a first run
    sample(model, vocab, "T", 64, settings, streams, seed=0, engine=engine)  # warm up
    best = 0.0
    for rep in range(repeats):  # the best of a few: a busy moment on a small machine is
        start = time.perf_counter()  # not the engine's speed
        texts = sample(model, vocab, "T", n, settings, streams, seed=1 + rep, engine=engine)
        elapsed = time.perf_counter() - start
        best = max(best, sum(len(t) - 1 for t in texts) / elapsed)
    return best


def _quality_run(data: Path, seconds: str, workdir: Path) -> dict:
    """``charloom train DATA --time T`` with no size flags, then ``charloom eval`` on the held-out
    last 10% of the text (``plainrecipe.held_out_start``); both as a user runs them."""
    out = workdir / f"run-{seconds}"
    exe = [sys.executable, "-m", "charloom"]
    t0 = time.perf_counter()
    subprocess.run(
        [*exe, "train", str(data), "--time", seconds, "--out", str(out), "--quiet"], check=True
    )
    wall = time.perf_counter() - t0
    text, _ = read_text([str(data)])  # as `charloom train` read it
    held = workdir / "held-out.txt"
    held.write_text(text[plainrecipe.held_out_start(len(text)) :], encoding="utf-8")
    t1 = time.perf_counter()
    res = subprocess.run(
        [*exe, "eval", str(out), str(held), "--json"], check=True, capture_output=True, text=True
    )
    eval_s = time.perf_counter() - t1
    result = json.loads(res.stdout)
    info = json.loads((out / "best" / "config.json").read_text())
    summary = info["training"]
    return {
        "val_loss": result["loss"],
        "val_bpc": result["bpc"],
        "chars": result["chars"],
        "train_wall_s": wall,
        "eval_wall_s": eval_s,
        "model": info["model"],
        "iterations": summary["iterations"],
        "chars_per_s": summary["chars_seen"] / max(summary["elapsed_s"], 1e-9),
        "choice": asdict(plainrecipe.choice_of_run(out)),  # what the budget rule picked
    }


#: The environment variable naming the quality runs' text when ``--data`` is not given.
#: What ``results["data"]`` says when the quality runs used the built-in corpus.
BUILTIN_DATA = "the built-in python-docs corpus"


def choose_data(data: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The quality runs' text and where it came from: ``data`` (``--data``), else the file
    named by ``$CHARLOOM_BENCH_DATA``, else ``None`` - the built-in corpus. An installed
    package cannot know where a repository keeps its data, so the user says, or gets a text
    that is always there."""
    origin = "--data"
    if data is None and os.environ.get(DATA_ENV):
        data, origin = os.environ[DATA_ENV], DATA_ENV
    if data is None:
        return None, f"{BUILTIN_DATA} (no --data, {DATA_ENV} not set)"
    if not os.path.isfile(data):
        where = f" (from {DATA_ENV})" if origin == DATA_ENV else ""
        raise CharloomError(f"no such file: {str(data)!r}{where}")
    return Path(data), f"{data} (from {origin})"


def run(quick: bool = False, data: Path | None = None, log=print) -> dict:
    """Run the suite; returns the JSON object (see the module docstring). ``data``: the quality
    runs' text (see :func:`choose_data`), ``None`` for the built-in corpus."""
    results: dict = {"machine": machine(), "quick": quick, "data": str(data or BUILTIN_DATA)}
    text = data.read_text(encoding="utf-8") if data else _fallback_text()
    # --quick: shorter timings (noisier ratios), the whole 90 s quality run, no 5 min run.
    min_time = 0.5 if quick else 3.0

    log("matrix-multiply peak ...")
    fp32_peak = matmul_peak(torch.float32, min_time=min_time)
    bf16_peak = matmul_peak(torch.bfloat16, min_time=min_time)
    results["matmul_peak_gflops"] = {"fp32": fp32_peak / 1e9, "bf16": bf16_peak / 1e9}

    log("training speed: the seed loop against the fast path at the same size ...")
    seed_cfg = preset_config("seed")
    seed_cps = train_chars_per_s(seed_cfg, text, min_time)
    # The fast path as charloom runs it by default (precision `auto`), and in fp32 for scale.
    fast_cfg = preset_config("tiny", **SEED_SIZE, vocab="printable", ascii=True)
    fast_cfg = fast_cfg.replace(precision=resolve_precision(fast_cfg.precision, CPU))
    fast_cps = train_chars_per_s(fast_cfg, text, min_time)
    fp32_cfg = preset_config("tiny", **SEED_SIZE, vocab="printable", ascii=True, precision="fp32")
    fp32_cps = train_chars_per_s(fp32_cfg, text, min_time)
    results["train_seed_chars_per_s"] = seed_cps
    results["train_fast_chars_per_s"] = fast_cps
    results["train_fast_batch"] = f"{fast_cfg.batch_size}x{fast_cfg.seq_len}"
    results["train_fast_precision"] = fast_cfg.precision
    results["train_speedup_vs_seed"] = fast_cps / seed_cps
    results["train_fast_fp32_chars_per_s"] = fp32_cps
    results["train_speedup_vs_seed_fp32"] = fp32_cps / seed_cps

    log("hardware efficiency at 2x512 ...")
    eff: dict[str, dict | None] = {}
    # A CPU without AVX-512 has no bf16 LSTM kernel: its bf16 row is left out (None).
    for precision in ("fp32", "bf16") if cpu_has_bf16_lstm() else ("fp32",):
        cfg = preset_config("medium", **EFFICIENCY_SIZE, precision=precision)
        cps = train_chars_per_s(cfg, text, min_time)
        shape = cfg.replace(vocab_size=len(set(text))).model
        eff[precision] = {"chars_per_s": cps, "model_gflops": cps * flops_per_char(shape) / 1e9}
    fp32, bf16 = eff["fp32"], eff.setdefault("bf16", None)
    assert fp32 is not None
    results["efficiency"] = eff
    results["fp32_efficiency"] = fp32["model_gflops"] * 1e9 / fp32_peak
    results["bf16_efficiency_vs_bf16_peak"] = (
        bf16["model_gflops"] * 1e9 / bf16_peak if bf16 else None
    )
    results["bf16_over_fp32"] = bf16["chars_per_s"] / fp32["chars_per_s"] if bf16 else None

    log("generation speed ...")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=100, **SEED_SIZE)).eval()
    n_ref = 1000 if quick else 3000
    # Taken in turns, the best of a few each, so a busy moment slows neither side of a ratio:
    # the lecture's loop and the torch engine alone (what a machine without numba, or a GPU,
    # gets for one stream); one stream and 64 (the steady state, quick or not).
    lecture_cps = torch_one = one = many = 0.0
    for _ in range(GEN_REPEATS):
        lecture_cps = max(lecture_cps, n_ref / _timed(lambda: _Lecture(model).generate(n_ref), 0))
        torch_one = max(torch_one, generation_chars_per_s(model, 1, n_ref, engine="torch"))
        one = max(one, generation_chars_per_s(model, 1, 20000 if quick else 100000, repeats=2))
        many = max(many, generation_chars_per_s(model, 64, 4000, repeats=2))
    # The numpy engine alone: the first characters of every CPU sample, and all of them where
    # numba cannot run.
    numpy_one = generation_chars_per_s(model, 1, n_ref, engine="numpy")
    results["gen_engine"] = engine_in_use(CPU)
    results["gen_lecture_chars_per_s"] = lecture_cps
    results["gen_chars_per_s"] = one
    results["gen_speedup_vs_seed"] = one / lecture_cps
    results["gen_batched_chars_per_s"] = many
    results["gen_batched_over_one_stream"] = many / one
    results["gen_torch_chars_per_s"] = torch_one
    results["gen_torch_speedup_vs_seed"] = torch_one / lecture_cps
    results["gen_numpy_chars_per_s"] = numpy_one
    results["gen_numpy_speedup_vs_seed"] = numpy_one / lecture_cps

    log("serving speed: 64 streaming requests through the server's app ...")
    results["server_chars_per_s"] = results["server_seeded_chars_per_s"] = None
    results["server_over_offline"] = results["server_seeded_over_offline"] = None
    if server_available():
        n_server = 4000 if quick else 16000
        for key, seeded in (("server", False), ("server_seeded", True)):
            cps = server_chars_per_s(model, 64, n_server, seeded)
            results[f"{key}_chars_per_s"] = cps
            results[f"{key}_over_offline"] = cps / many
    else:
        results["server_missing"] = NO_SERVER

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus = data or (workdir / "corpus.txt")
        if data is None:
            corpus.write_text(text, encoding="utf-8")
        runs = [("90s", "90s")] + ([] if quick else [("5m", "5m")])
        for key, budget in runs:
            log(f"quality: charloom train --time {budget}, then charloom eval ...")
            q = _quality_run(corpus, budget, workdir)
            q["budget"] = budget
            results[f"quality_{key}"] = q
            results[f"val_loss_{key}"] = q["val_loss"]
            log(f"quality: the plain PyTorch loop with the same choice, {budget} ...")
            choice = plainrecipe.PlainChoice(**q["choice"])
            p = plainrecipe.run_file_fresh(corpus, choice, parse_duration(budget))
            results[f"plain_recipe_{key}"] = p
            results[f"plain_recipe_val_loss_{key}"] = p["val_loss"]
            results[f"margin_vs_plain_{key}"] = q["val_loss"] - p["val_loss"]
        q = results["quality_90s"]
        results["eval_chars_per_s"] = q["chars"] / q["eval_wall_s"]
    return results


def _fallback_text() -> str:
    from .corpus import load_builtin

    return load_builtin("python-docs")


def table(results: dict) -> str:
    r = results
    fp32, bf16 = r["efficiency"]["fp32"], r["efficiency"]["bf16"]
    rows = [
        ("quality-run text", r.get("data", "-")),
        ("training, seed loop (chars/s)", f"{r['train_seed_chars_per_s']:,.0f}"),
        (
            f"training, fast path {r['train_fast_batch']} {r['train_fast_precision']} (chars/s)",
            f"{r['train_fast_chars_per_s']:,.0f}",
        ),
        ("training speed-up vs seed", f"{r['train_speedup_vs_seed']:.1f}x"),
        (
            f"training, fast path {r['train_fast_batch']} fp32 (chars/s)",
            f"{r['train_fast_fp32_chars_per_s']:,.0f} ({r['train_speedup_vs_seed_fp32']:.1f}x)",
        ),
        ("fp32 matmul peak (GFLOP/s)", f"{r['matmul_peak_gflops']['fp32']:,.0f}"),
        ("bf16 matmul peak (GFLOP/s)", f"{r['matmul_peak_gflops']['bf16']:,.0f}"),
        (
            "2x512 fp32 (chars/s, GFLOP/s)",
            f"{fp32['chars_per_s']:,.0f}, {fp32['model_gflops']:,.1f}",
        ),
        (
            "2x512 bf16 (chars/s, GFLOP/s)",
            f"{bf16['chars_per_s']:,.0f}, {bf16['model_gflops']:,.1f}" if bf16 else NO_BF16,
        ),
        ("fp32 efficiency (of fp32 peak)", f"{r['fp32_efficiency']:.2f}"),
        (
            "bf16 efficiency (of bf16 peak)",
            f"{r['bf16_efficiency_vs_bf16_peak']:.2f}" if bf16 else NO_BF16,
        ),
        ("bf16 / fp32 chars/s", f"{r['bf16_over_fp32']:.2f}x" if bf16 else NO_BF16),
        ("generation, lecture loop (chars/s)", f"{r['gen_lecture_chars_per_s']:,.0f}"),
        ("generation, one stream (chars/s)", f"{r['gen_chars_per_s']:,.0f}"),
        ("generation speed-up vs lecture", f"{r['gen_speedup_vs_seed']:.1f}x"),
        (
            "generation, 64 streams (chars/s)",
            f"{r['gen_batched_chars_per_s']:,.0f} ({r['gen_batched_over_one_stream']:.1f}x one)",
        ),
        ("generation engine (auto)", r.get("gen_engine", "-")),
        (
            "generation, torch engine, one stream (chars/s)",
            f"{r['gen_torch_chars_per_s']:,.0f} ({r['gen_torch_speedup_vs_seed']:.1f}x lecture)"
            if "gen_torch_chars_per_s" in r
            else "-",
        ),
        (
            "generation, numpy engine, one stream (chars/s)",
            f"{r['gen_numpy_chars_per_s']:,.0f} ({r['gen_numpy_speedup_vs_seed']:.1f}x lecture)"
            if "gen_numpy_chars_per_s" in r
            else "-",
        ),
        *server_rows(r),
        ("eval (chars/s, whole command)", f"{r['eval_chars_per_s']:,.0f}"),
    ]
    for key in ("90s", "5m"):
        if f"val_loss_{key}" in r:
            rows += plainrecipe.side_by_side_rows(r, key)
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)
