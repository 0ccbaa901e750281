"""Named configurations: overrides applied on top of the ``TrainConfig`` defaults.

``seed`` is the lecture's system exactly; the others use the fast fused path at growing sizes.
Flags given by the user override a preset's values.
"""

from __future__ import annotations

from .config import TrainConfig
from .errors import CharloomError

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


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_config(name: str | None = None, **overrides) -> TrainConfig:
    """The configuration of preset ``name`` (default: ``small``) with ``overrides`` on top."""
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise CharloomError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return TrainConfig().replace(**PRESETS[name]).replace(**overrides)


# --- sizing for a time budget ------------------------------------------------------------------
#: The fp32 matrix-multiply rate (GFLOP/s) of the machine the ladder below was measured on (2
#: cores of an AMD EPYC, torch 2.13 CPU). Other machines scale their budget by their own rate.
REFERENCE_GFLOPS = 140.0

#: Models for a --time budget with no size flags: (smallest budget in reference-machine seconds,
#: settings). Measured with bench/budget_sweep.py on tiny shakespeare; see bench/RESULTS.md.
BUDGET_LADDER: list[tuple[float, dict]] = [
    (0, dict(layers=1, hidden=256, embed=64, batch_size=32, seq_len=100, lr=3e-3)),
    (60, dict(layers=1, hidden=512, embed=64, batch_size=32, seq_len=100, lr=3e-3)),
    (240, dict(layers=2, hidden=512, embed=64, batch_size=32, seq_len=100, lr=2e-3)),
    (1800, dict(layers=2, hidden=768, embed=128, batch_size=64, seq_len=128, lr=1.5e-3)),
    (7200, dict(layers=3, hidden=1024, embed=256, batch_size=64, seq_len=128, lr=1e-3)),
]
#: Characters a model should see per parameter before it starts to overfit one pass of a corpus:
#: below this, dropout is switched on (long budgets on small texts).
_PASSES_BEFORE_DROPOUT = 3


def machine_gflops(device: str = "cpu", seconds: float = 0.2) -> float:
    """This machine's fp32 matrix-multiply rate, measured in about ``seconds``."""
    import time

    import torch

    n = 512 if device == "cpu" else 4096
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def budget_overrides(seconds: float, train_chars: int, gflops: float = REFERENCE_GFLOPS) -> dict:
    """Model size, batch and learning rate for a ``seconds`` budget on ``train_chars`` of text.

    The budget is first converted to reference-machine seconds (``gflops`` /
    ``REFERENCE_GFLOPS``); the largest ladder entry it reaches is taken; on a small corpus
    (fewer characters than ~``_PASSES_BEFORE_DROPOUT`` passes of what the model can see) the
    model gets dropout; the schedule is the default: warm-up, then cosine to the deadline.
    """
    effective = seconds * gflops / REFERENCE_GFLOPS
    chosen = BUDGET_LADDER[0][1]
    for threshold, settings in BUDGET_LADDER:
        if effective >= threshold:
            chosen = settings
    chosen = dict(chosen, dropout=0.0, warmup=50)
    # A budget that reads a small corpus many times over: regularise.
    passes = effective * 10_000 / max(1, train_chars)  # ~10k chars/s at these sizes
    if passes > _PASSES_BEFORE_DROPOUT and chosen["layers"] > 1:
        chosen["dropout"] = 0.2
    return chosen
