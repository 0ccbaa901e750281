"""Named configurations: overrides applied on top of the ``TrainConfig`` defaults.

``seed`` is the lecture's system exactly; the others use the fast fused path at growing sizes.
Flags given by the user override a preset's values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .config import TrainConfig
from .errors import CharloomError
from .modelconfig import ModelConfig

#: Used when no preset is named.
DEFAULT_PRESET = "small"

PRESETS: dict[str, dict] = {
    # The lecture: string.printable with unidecode, random 200-character portions from a zero
    # state, Embedding(100) -> LSTMCell(128) -> Linear stepped one character at a time, Adam at
    # 0.005 for 5000 iterations, no clipping, no validation split; every 200 iterations the time,
    # the loss and a 200-character sample primed with "Th" at temperature 0.8.
    "seed": dict(
        vocab="printable",
        ascii=True,
        val_fraction=0.0,
        batching="portions",
        batch_size=1,
        seq_len=200,
        path="cell",
        kind="lstm",
        layers=1,
        embed=100,
        hidden=128,
        dropout=0.0,
        head_bias="torch",
        optimizer="adam",
        lr=0.005,
        weight_decay=0.0,
        grad_clip=None,
        schedule="constant",
        warmup=0,
        iters=5000,
        eval_every=200,
        sample_every=200,
        log_every=200,
        sample_prime="Th",
        sample_length=200,
        sample_temperature=0.8,
        log_style="lecture",
        precision="fp32",
    ),
    "tiny": dict(layers=1, hidden=128, embed=64, dropout=0.0, batch_size=32, seq_len=64, lr=3e-3),
    "small": dict(layers=2, hidden=256, embed=64, dropout=0.1, batch_size=32, seq_len=100, lr=3e-3),
    "medium": dict(
        layers=2, hidden=512, embed=128, dropout=0.2, batch_size=64, seq_len=128, lr=2e-3
    ),
    "large": dict(
        layers=3,
        hidden=1024,
        embed=256,
        dropout=0.25,
        batch_size=64,
        seq_len=128,
        lr=1e-3,
        iters=5000,
    ),
}


#: What a fine-tuning run (``init_from``) changes on top of the preset, unless the user gives
#: them: a short warm-up (the weights are already trained), batches of 32 x 64 and a peak
#: learning rate of 6e-3. Measured with the built-in base (LSTM 1x384, bytes) fine-tuned for
#: 60 s on the COVID-19 FAQ: 32 x 100 at 3e-3 (the preset's batch) 1.157 nats/char held out,
#: 16 x 64 at 3e-3 1.081, 16 x 64 at 6e-3 1.076, 32 x 64 at 6e-3 1.072, 32 x 64 at 1e-2 1.075;
#: on a tiny shakespeare slice 32 x 100 at 3e-3 and 32 x 64 at 6e-3 were alike (1.571, 1.570).
#: Shorter sequences give more updates a minute; see docs/finetune.md.
FINETUNE: dict = dict(lr=6e-3, warmup=20, batch_size=32, seq_len=64)


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_config(name: str | None = None, **overrides) -> TrainConfig:
    """The configuration of preset ``name`` (default: ``small``) with ``overrides`` on top; with
    ``init_from`` among them, the fine-tuning defaults :data:`FINETUNE` come between the two."""
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise CharloomError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    config = TrainConfig().replace(**PRESETS[name])
    if overrides.get("init_from"):
        config = config.replace(**FINETUNE)
    return config.replace(**overrides)


# --- sizing for a time budget ------------------------------------------------------------------
#: The matrix-multiply rate (GFLOP/s, bf16, the ``machine_rate`` probe) of the machine the ladder
#: below was measured on: 2 cores of an AMD EPYC with AVX-512 bf16, torch 2.13 CPU. Another
#: machine scales its budget by its own rate in the precision it will train in.
REFERENCE_GFLOPS = 840.0

#: Models for a --time budget with no size flags, smallest first: (the budget, in seconds of the
#: reference machine, from which the entry is chosen; its settings; the characters per second it
#: trained at there). Measured with bench/budget_sweep.py on tiny shakespeare: see
#: bench/RESULTS.md, "Training for a budget".
BUDGET_LADDER: list[tuple[float, dict, float]] = [
    (0, dict(layers=1, hidden=256, embed=64, batch_size=32, seq_len=64, lr=4e-3), 180_000),
    (30, dict(layers=1, hidden=512, embed=64, batch_size=32, seq_len=64, lr=3e-3), 51_000),
    (180, dict(layers=2, hidden=512, embed=64, batch_size=32, seq_len=64, lr=3e-3), 20_000),
    (1800, dict(layers=2, hidden=768, embed=128, batch_size=64, seq_len=100, lr=2e-3), 9_000),
    (7200, dict(layers=3, hidden=1024, embed=128, batch_size=64, seq_len=128, lr=1e-3), 2_500),
]


#: How a one-layer model picked for a budget is trained: at this many times its ladder entry's
#: learning rate (the rate measured for a slowly decaying schedule, and good at a constant one),
#: decaying linearly to zero at the deadline. Measured on tiny shakespeare, LSTM 1x256, batch 32 x
#: 64, 90 s (bench/RESULTS.md, "Sixth session: the budget's schedule"): 4e-3 on a cosine to 0.1 x
#: 1.553, 1e-2 decaying linearly to zero 1.501 and 1.520, 1.2e-2 1.517, 1e-2 on a cosine to zero
#: 1.511. On a small text read many times the high peak hurts (the last 100 KB of tiny
#: shakespeare, 60 s, ~15 passes: 1.708 at 4e-3 on the cosine, 1.800 at 1e-2 decaying to zero),
#: so it applies up to ``DECAY_MAX_PASSES`` passes over the text (tiny shakespeare at 90 s and
#: 5 minutes: about 2 and 6). Deeper entries keep their rate and the default schedule: not
#: measured yet.
PEAK_LR_SCALE = 2.5
#: With it, the output layer's bias starts at the text's character frequencies: 90 s on tiny
#: shakespeare 1.510 and 1.486 against 1.518 and 1.520 (bench/RESULTS.md, "Eighth session"); on
#: the 100 KB slice read ~30 times in 60 s it did worse (1.871 against 1.729), so only here.
DECAY: dict = dict(schedule="linear", min_lr_ratio=0.0, head_bias="unigram")
DECAY_MAX_PASSES = 8

#: Settings that fix the model's size or its training speed: given any of them, a --time budget
#: does not pick the model (the user has chosen part of what the ladder would choose). The
#: schedule is among them: the rule's learning rate goes with its schedule, and so is the output
#: layer's starting bias, which the rule picks with it.
SIZE_SETTINGS = frozenset(
    {
        "schedule",
        "min_lr_ratio",
        "head_bias",
        "kind",
        "layers",
        "hidden",
        "embed",
        "dropout",
        "batch_size",
        "seq_len",
        "lr",
        "precision",
        "path",
        "batching",
    }
)


def sizes_for_budget(overrides: Mapping[str, object], preset: str | None) -> bool:
    """Whether a run given ``overrides`` on top of ``preset`` should have its model sized for its
    time budget (:func:`budget_overrides`): only with a ``time`` budget, no named preset and
    none of :data:`SIZE_SETTINGS` - a preset or a size setting is a choice the budget respects.
    A fine-tuning run (``init_from``) has its parent's size; the budget then picks its dropout
    and precision unless the user gave those (:func:`parent_budget_overrides`)."""
    if overrides.get("init_from"):  # the parent fixed the size: the rule picks only these two
        return "time" in overrides and not (set(overrides) & {"dropout", "precision"})
    return "time" in overrides and not preset and not (set(overrides) & SIZE_SETTINGS)


def machine_rate(device: str = "cpu", seconds: float = 0.15) -> dict[str, float]:
    """This machine's matrix-multiply rate (GFLOP/s) in fp32 and bf16, measured in about
    ``2 * seconds``."""
    import time

    import torch

    n = 512 if device == "cpu" else 4096
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
        rates[name] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
    return rates


#: For a text the budget would read many times: a two-layer model that dropout can regularise
#: (a one-layer model has nowhere to put it), with its reference speed in chars/s. Measured on
#: the 77 KB COVID-19 FAQ: see bench/RESULTS.md, "Small texts".
SMALL_TEXT_MODEL: tuple[dict, float] = (
    dict(layers=2, hidden=384, embed=64, batch_size=32, seq_len=64, lr=3e-3),
    28_000,
)
#: A one-layer ladder entry that would read the text more than this many times is replaced by
#: SMALL_TEXT_MODEL (budgets of 30 reference seconds and more: below, too few steps).
SMALL_TEXT_PASSES = 10
#: Dropout of a model of two layers or more by the passes over the text it will make: the
#: largest value whose threshold the passes exceed.
DROPOUT_BY_PASSES: list[tuple[float, float]] = [(4, 0.1), (10, 0.2), (20, 0.3), (30, 0.5)]


#: Seconds the speed probe times one candidate model for (after a warm-up step).
PROBE_SECONDS = 0.3

#: ``speed(settings, precision)``: characters per second a ladder entry trains at on this machine.
Speed = Callable[[dict, str], float]


def training_speed(
    settings: dict,
    precision: str,
    device: str = "cpu",
    vocab_size: int = 96,
    seconds: float = PROBE_SECONDS,
) -> float:
    """Characters per second this machine trains the LSTM of ``settings`` at (its ``layers``,
    ``hidden``, ``embed``, ``batch_size`` and ``seq_len``) in ``precision``: a real training
    step (forward, loss, backward, Adam) on random characters, timed after one warm-up step for
    ``seconds`` and at least two steps. Weights and characters come from a private generator:
    the caller's random state is left as it was."""
    import time

    import torch
    import torch.nn.functional as F

    from .device import PrivateRng, autocast, resolve_device
    from .model import CharRNN

    dev = resolve_device(device)
    batch, steps = settings["batch_size"], settings["seq_len"]
    with PrivateRng(dev, 0).active():
        model = CharRNN(ModelConfig(kind="lstm", vocab_size=vocab_size, **_shape(settings)))
        model = model.to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        ids = torch.randint(vocab_size, (batch, steps + 1), device=dev)
        x, y = ids[:, :-1], ids[:, 1:]

        def step() -> None:
            with autocast(dev, precision):
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # the first step allocates and picks kernels: not timed
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        done, start = 0, time.perf_counter()
        while done < 2 or time.perf_counter() - start < seconds:
            step()
            done += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return done * batch * steps / (time.perf_counter() - start)


def budget_overrides(
    seconds: float,
    train_chars: int,
    rates: dict[str, float] | None = None,
    speed: Speed | None = None,
) -> dict:
    """Model size, batch, learning rate and precision for a ``seconds`` budget on
    ``train_chars`` characters of training text.

    1. Precision: bf16 where the machine multiplies bf16 matrices at least 1.3x faster than
       fp32 (``rates``: CPUs with AVX-512 bf16 or AMX, recent GPUs), else fp32.
    2. The budget in reference-machine seconds, entry by entry: ``seconds`` times the speed
       the entry trains at here (``speed``: timed by :func:`training_speed` in
       :func:`size_for_budget`; default, extrapolated from ``rates``) over its speed on the
       reference machine. The largest entry whose threshold its budget reaches is taken (the
       entries are timed smallest first, and the timing stops at the first one out of reach).
    3. Passes over the text the run will make (the chosen entry's speed here times the budget,
       over the text's length). A one-layer entry that would read the text more than
       ``SMALL_TEXT_PASSES`` times (from 30 reference seconds) gives way to
       ``SMALL_TEXT_MODEL``; a model of two layers or more gets dropout by its passes
       (``DROPOUT_BY_PASSES``: 0.1 past 4 passes up to 0.5 past 30), against overfitting.
    4. The schedule: a one-layer model that reads the text at most ``DECAY_MAX_PASSES`` times
       trains at ``PEAK_LR_SCALE`` times its entry's learning rate after 100 warm-up
       iterations, decaying linearly to zero at the deadline (``DECAY``); others at their
       entry's rate on the default schedule (a cosine to 0.1 x).
    """
    rates = rates or {"fp32": REFERENCE_GFLOPS / 4, "bf16": REFERENCE_GFLOPS}
    precision = "bf16" if rates["bf16"] >= 1.3 * rates["fp32"] else "fp32"

    def speed_here(settings: dict, reference: float) -> float:
        # Timed, or else extrapolated: the reference speed scaled by the matmul rates.
        if speed is not None:
            return speed(settings, precision)
        return reference * rates[precision] / REFERENCE_GFLOPS

    chosen, here, effective = BUDGET_LADDER[0][1], 0.0, 0.0
    for threshold, settings, reference in BUDGET_LADDER:
        entry_speed = speed_here(settings, reference)
        entry_effective = seconds * entry_speed / reference
        if threshold and entry_effective < threshold:
            break
        chosen, here, effective = settings, entry_speed, entry_effective
    text = max(1, train_chars)
    if chosen["layers"] == 1 and effective >= 30 and seconds * here / text > SMALL_TEXT_PASSES:
        chosen = SMALL_TEXT_MODEL[0]
        here = speed_here(*SMALL_TEXT_MODEL)
    passes = seconds * here / text
    chosen = dict(chosen, precision=precision, dropout=0.0)
    if chosen["layers"] == 1 and passes <= DECAY_MAX_PASSES:
        chosen.update(DECAY, lr=chosen["lr"] * PEAK_LR_SCALE)
    if chosen["layers"] > 1:
        for threshold, dropout in DROPOUT_BY_PASSES:
            if passes > threshold:
                chosen["dropout"] = dropout
    return chosen


def constant_rate(config: TrainConfig) -> float:
    """The learning rate of ``config`` at a constant schedule: for a model the budget rule
    picked and trains at ``PEAK_LR_SCALE`` times its ladder entry's rate (``DECAY``), that
    entry's rate - what a hand-written loop at a constant rate is given (``plainrecipe``): at
    the peak it would do far worse (1.645 nats/char against 1.556 at the entry's 4e-3, in the
    90 s measurement above). Otherwise ``config.lr``."""
    if (config.schedule, config.min_lr_ratio) != (DECAY["schedule"], DECAY["min_lr_ratio"]):
        return config.lr
    m = config.model
    shape = (m.layers, m.hidden, m.embed, config.batch_size, config.seq_len)
    for _, e, _ in BUDGET_LADDER:  # DECAY is given to one-layer ladder entries only
        same = shape == (e["layers"], e["hidden"], e["embed"], e["batch_size"], e["seq_len"])
        if same and math.isclose(config.lr, e["lr"] * PEAK_LR_SCALE):
            return e["lr"]
    return config.lr


def parent_budget_overrides(
    seconds: float, train_chars: int, model: ModelConfig, rates: dict[str, float] | None = None
) -> dict:
    """For a fine-tuning run, whose size is its parent's (``model``): the precision and the
    dropout that :func:`budget_overrides` would give a model of that size for ``seconds`` on
    ``train_chars`` characters. Its speed is estimated from the ladder's measured speeds, which
    go as one over the parameters each character passes through (within 8% on four of the
    ladder's five entries, 16% on the largest)."""
    rates = rates or {"fp32": REFERENCE_GFLOPS / 4, "bf16": REFERENCE_GFLOPS}
    precision = "bf16" if rates["bf16"] >= 1.3 * rates["fp32"] else "fp32"
    effective = seconds * rates[precision] / REFERENCE_GFLOPS
    passes = effective * _chars_per_second(model) / max(1, train_chars)
    dropout = 0.0
    if model.layers > 1:
        for threshold, value in DROPOUT_BY_PASSES:
            if passes > threshold:
                dropout = value
    return dict(precision=precision, dropout=dropout)


def _chars_per_second(model: ModelConfig) -> float:
    """The reference machine's training speed for ``model``: speed times parameters is about
    constant along :data:`BUDGET_LADDER` (measured with a 65-symbol vocabulary)."""
    products = [
        speed * ModelConfig(**_shape(entry), vocab_size=65).parameter_count()
        for _, entry, speed in BUDGET_LADDER
    ]
    return sum(products) / len(products) / max(1, model.parameter_count())


def _shape(settings: dict) -> dict:
    return {k: settings[k] for k in ("layers", "hidden", "embed")}


def size_for_budget(config: TrainConfig, n_chars: int) -> tuple[TrainConfig, str]:
    """``config`` with the model, batch and learning rate the budget rule picks for
    ``config.time`` seconds on ``n_chars`` characters (for a fine-tuning run: the parent's size
    with the precision and dropout the rule picks for it), and a note saying so. The candidate
    models are timed on this machine (:func:`training_speed`, a fraction of a second each, with
    ``config.threads`` threads)."""
    assert config.time is not None
    from .device import resolve_device, torch_threads  # torch: only when a budget is sized

    device = resolve_device(config.device).type
    timed: dict[str, float] = {}

    def speed(settings: dict, precision: str) -> float:
        chars_per_s = training_speed(settings, precision, device)
        timed[f"{settings['layers']}x{settings['hidden']}"] = chars_per_s
        return chars_per_s

    with torch_threads(config.threads):
        rates = machine_rate(device)
        train_chars = int(n_chars * (1 - config.val_fraction))
        if config.init_from:
            chosen = parent_budget_overrides(config.time, train_chars, config.model, rates)
        else:
            chosen = budget_overrides(config.time, train_chars, rates, speed)
    config = config.replace(**chosen)
    whose = " (the parent's size)" if config.init_from else ""
    measured = ", ".join(f"lstm {k} {v:,.0f} chars/s" for k, v in timed.items())
    note = (
        f"sized for a {config.time:g} s budget on {n_chars:,} chars "
        f"(matmul {rates['fp32']:,.0f} GFLOP/s fp32, {rates['bf16']:,.0f} bf16"
        + (f"; timed here: {measured}" if measured else "")
        + f"): {config.model.kind} {config.model.layers}x{config.model.hidden}{whose}, "
        f"{config.precision}, dropout {config.model.dropout:g}, "
        f"batch {config.batch_size}x{config.seq_len}, lr {config.lr:g}"
    )
    return config, note
