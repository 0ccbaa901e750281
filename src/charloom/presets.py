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
