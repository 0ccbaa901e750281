"""The plain recipe: the hand-written PyTorch loop that charloom's quality per minute is measured
against (issue 15, "Quality per minute").

What it is. The training loop a competent PyTorch user writes in ~50 lines once told which model
to train: a character vocabulary, ``nn.Embedding -> nn.LSTM -> nn.Linear``, ``B`` contiguous
streams through the training text read ``T`` characters at a time with the recurrent state
carried (detached) from batch to batch, Adam at a constant learning rate, gradient-norm
clipping, bf16 autocast where the choice says bf16, for a wall-clock budget. Nothing of
charloom's runs inside the loop (:func:`train_plain`).

Why. ``charloom train --time BUDGET`` does two things: it picks a model for the budget and the
machine, and it trains it. A user who copies the pick into a plain loop gets the first for free,
so charloom's worth is the distance between the two held-out losses at the same budget. The
loop is therefore given exactly charloom's choice - size, dropout, precision, batch, sequence
length, learning rate, clipping norm and seed, all from :func:`presets.size_for_budget`
(:func:`plain_choice`), or as recorded by the run being compared (:func:`choice_of_run`) - and
nothing in it is tuned but the budget. One exception, in the loop's favour: charloom trains a
one-layer model at a peak rate that decays to zero (``presets.PEAK_LR_SCALE``), and a constant
rate that high does far worse, so the loop is given the ladder entry's own rate instead, the one
it was measured at (:func:`presets.constant_rate`).

What is measured, and how it matches ``charloom bench``'s ``val_loss_90s``/``val_loss_5m``:

- The text is read as ``charloom train FILE`` reads it (``corpus.read_text``: UTF-8, byte-order
  mark dropped, CRLF -> LF).
- The split is the one :func:`held_out_start` gives, which is ``charloom train``'s own cut
  (``data.validation_size`` of the default ``val_fraction``, 10%): the loop trains on the first
  part; the bench's ``charloom eval`` and this module both score the last part, whole (not a
  sample or a cap of it).
- The vocabulary is the sorted distinct characters of the whole text, as charloom's default
  ``corpus`` vocabulary is, so both models have the same ``V`` and the same ids, and a character
  that occurs only in the held-out part is scored by both (neither was trained to predict it).
- The held-out loss is in nats per character, the mean over every held-out character after the
  first, computed by ``evaluate.evaluate_ids`` - the code behind ``charloom eval`` (up to 64
  chunks read side by side, each from the zero state, state carried within a chunk, fp32) - on
  the loop's weights loaded into a ``CharRNN``, which is the same network with the same
  parameter names (:func:`held_out_loss`).
- The budget is wall-clock time from the first training step: set-up (process start, reading and
  encoding the text, building the model) is outside it, as it is outside charloom's
  ``BudgetClock``; the final held-out evaluation is outside it for both. Within its budget
  charloom also evaluates (about 5% of the time), checkpoints and samples, and stops early enough
  for its last evaluation to end by the deadline; the plain loop only trains, and stops at the
  first step that ends past the budget (a hand-written loop evaluates afterwards). Charloom's
  figure is its ``best/`` checkpoint, chosen on the first characters of the same held-out part;
  the loop's is its last weights.
- In ``charloom bench`` the loop runs in a fresh process (:func:`run_file_fresh`), as
  ``charloom train`` does, so that neither inherits the other's thread pools or caches.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .checkpoint import STATE_FILE
from .config import TrainConfig
from .corpus import read_text
from .data import validation_size
from .device import PrivateRng, check_precision, resolve_device
from .errors import CharloomError
from .evaluate import EvalResult, evaluate_ids
from .model import CharRNN
from .modelconfig import ModelConfig
from .presets import constant_rate, preset_config, size_for_budget
from .rundir import LATEST

#: The issue's target for charloom against this loop: ``val_loss - plain_val_loss`` at most this.
TARGET_MARGIN = -0.06


def held_out_start(n_chars: int) -> int:
    """Where the held-out part of an ``n_chars``-character text starts: ``charloom train``'s
    own cut (the last ``val_fraction`` of the text, by default 10%). Both the bench's
    ``charloom eval`` and :func:`train_plain` score the characters from here on."""
    return n_chars - validation_size(n_chars, TrainConfig().val_fraction)


@dataclass(frozen=True)
class PlainChoice:
    """What the loop is told: charloom's choice for the budget, nothing else."""

    layers: int
    hidden: int
    embed: int
    dropout: float  # between LSTM layers (nn.LSTM's own), as charloom's
    batch_size: int  # B streams
    seq_len: int  # T characters per batch and stream
    lr: float  # Adam, constant
    precision: str  # "bf16" (autocast) or "fp32"
    grad_clip: float | None  # max gradient norm
    seed: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> PlainChoice:
        m = config.model
        return cls(
            layers=m.layers,
            hidden=m.hidden,
            embed=m.embed,
            dropout=m.dropout,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            lr=constant_rate(config),
            precision=config.precision,
            grad_clip=config.grad_clip,
            seed=config.seed,
        )

    def describe(self) -> str:
        """``lstm 1x512 (embed 64), bf16, batch 32x64, lr 0.003``; dropout when not 0."""
        drop = f", dropout {self.dropout:g}" if self.dropout else ""
        return (
            f"lstm {self.layers}x{self.hidden} (embed {self.embed}){drop}, {self.precision}, "
            f"batch {self.batch_size}x{self.seq_len}, lr {self.lr:g}"
        )


def plain_choice(seconds: float, n_chars: int) -> PlainChoice:
    """What ``charloom train TEXT --time SECONDS`` (no preset, no size flags) picks for a text of
    ``n_chars`` characters on this machine: the same call, ``presets.size_for_budget`` (which
    measures the machine's matrix-multiply rate)."""
    config, _ = size_for_budget(preset_config(time=seconds), n_chars)
    return PlainChoice.from_config(config)


def choice_of_run(run_dir: str | os.PathLike) -> PlainChoice:
    """The choice a finished ``charloom train`` run trained with, from its ``latest/`` state."""
    path = Path(run_dir) / LATEST / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CharloomError(f"cannot read the training settings of {run_dir}: {e}") from None
    return PlainChoice.from_config(TrainConfig.from_dict(state.get("config")))


class PlainLSTM(nn.Module):
    """``ids (B, T)`` -> ``logits (B, T, V)``, state ``(h, c)`` of ``(L, B, H)`` each. Named as
    ``CharRNN``'s parts are, so its weights load into one for evaluation."""

    def __init__(self, vocab_size: int, choice: PlainChoice) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, choice.embed)
        dropout = choice.dropout if choice.layers > 1 else 0.0
        self.rnn = nn.LSTM(
            choice.embed, choice.hidden, choice.layers, batch_first=True, dropout=dropout
        )
        self.head = nn.Linear(choice.hidden, vocab_size)

    def forward(
        self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out, state = self.rnn(self.embedding(ids), state)
        return self.head(out), state


@dataclass
class PlainResult:
    """What one run of the loop gives (JSON-ready through ``asdict``)."""

    val_loss: float  # nats per held-out character
    val_bpc: float
    chars: int  # held-out characters predicted
    iterations: int
    train_s: float  # seconds the loop ran: the budget and the last step's overrun
    chars_per_s: float  # characters trained per second of the loop
    train_loss: float  # of the last batch
    vocab_size: int
    choice: dict


def train_plain(
    text: str, choice: PlainChoice, seconds: float, device: str = "auto"
) -> PlainResult:
    """Train the plain loop on the first part of ``text`` for ``seconds`` of wall-clock time,
    then score the held-out part (see the module docstring for what is counted)."""
    if not seconds > 0:
        raise CharloomError(f"the plain recipe's budget must be more than zero, not {seconds!r}")
    dev = resolve_device(device)
    check_precision(choice.precision, dev, "lstm")
    chars = sorted(set(text))  # the vocabulary: every character of the text, sorted
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    cut = held_out_start(len(ids))
    train, held = ids[:cut], ids[cut:]
    B, T, V = choice.batch_size, choice.seq_len, len(chars)
    # B contiguous streams: row b reads train[b*n : (b+1)*n], targets one character ahead.
    n = (len(train) - 1) // B
    if n < T:
        raise CharloomError(
            f"the training part has {len(train):,} characters, fewer than one batch of "
            f"{B} streams x {T} (+1); use a longer text"
        )
    x_all, y_all = train[: B * n].view(B, n), train[1 : B * n + 1].view(B, n)
    rng = PrivateRng(dev, choice.seed)  # seeded here without touching the caller's generator
    with rng.active():
        model = PlainLSTM(V, choice).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=choice.lr)
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        pos, iterations, loss = 0, 0, torch.tensor(float("nan"))
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if pos + T > n:  # the end of the text: every stream starts again, from zero state
                pos, state = 0, None
            x, y = x_all[:, pos : pos + T].to(dev), y_all[:, pos : pos + T].to(dev)
            pos += T
            with torch.autocast(dev.type, torch.bfloat16, enabled=choice.precision == "bf16"):
                logits, state = model(x, state)
                loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            # Carry the state into the next batch, but back-propagate through this one only.
            state = (state[0].detach(), state[1].detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if choice.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), choice.grad_clip)
            opt.step()
            iterations += 1
        train_loss = loss.item()  # waits for the last step (on a GPU)
        train_s = time.perf_counter() - start
        result = held_out_loss(model, held)  # (building the CharRNN draws initial weights)
    return PlainResult(
        val_loss=result.loss,
        val_bpc=result.bpc,
        chars=result.chars,
        iterations=iterations,
        train_s=train_s,
        chars_per_s=iterations * B * T / train_s,
        train_loss=train_loss,
        vocab_size=V,
        choice=asdict(choice),
    )


def held_out_loss(model: PlainLSTM, held: torch.Tensor) -> EvalResult:
    """Mean loss (nats/char) of ``model`` over ``held (N,)``, every id after the first
    predicted: its weights in a ``CharRNN`` scored by ``evaluate_ids``, as ``charloom eval``
    scores charloom's (the same chunks, windows and precision)."""
    lstm = model.rnn
    config = ModelConfig(
        kind="lstm",
        vocab_size=model.head.out_features,
        embed=model.embedding.embedding_dim,
        hidden=lstm.hidden_size,
        layers=lstm.num_layers,
        dropout=lstm.dropout,
    )
    same = CharRNN(config).to(model.head.weight.device)
    same.load_state_dict(model.state_dict())  # strict: the same network, or an error
    return evaluate_ids(same, held)


def run_file(path: str | os.PathLike, choice: PlainChoice, seconds: float) -> dict:
    """:func:`train_plain` on the text of ``path``, read as ``charloom train`` reads a file."""
    text, _ = read_text([str(path)])
    return asdict(train_plain(text, choice, seconds))


def run_file_fresh(path: str | os.PathLike, choice: PlainChoice, seconds: float) -> dict:
    """:func:`run_file` in a new Python process, as ``charloom train`` runs in the bench: the
    loop starts with torch's default threads and no caches from what ran before."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(run_file, str(path), choice, seconds).result()


def side_by_side_rows(results: dict, key: str) -> list[tuple[str, str]]:
    """``charloom bench``'s table rows for budget ``key`` (``90s``, ``5m``): charloom's held-out
    loss, the loop's at the same budget and choice, and the margin against the issue's target
    (rows for what the results hold)."""
    q = results[f"quality_{key}"]
    m, budget = q["model"], q.get("budget", key)
    speed = f", {q['chars_per_s']:,.0f} chars/s" if "chars_per_s" in q else ""
    rows = [
        (
            f"val loss after --time {budget} (nats/char)",
            f"{q['val_loss']:.4f} ({m['kind']} {m['layers']}x{m['hidden']}, "
            f"{q['iterations']} its{speed})",
        )
    ]
    p = results.get(f"plain_recipe_{key}")
    if p is not None:
        choice = PlainChoice(**p["choice"]).describe()
        rows.append(
            (
                f"plain PyTorch loop, same choice, {budget} (nats/char)",
                f"{p['val_loss']:.4f} ({choice}; {p['iterations']} its, "
                f"{p['chars_per_s']:,.0f} chars/s)",
            )
        )
        rows.append(
            (
                f"margin vs the plain loop, {budget} (target <= {TARGET_MARGIN:g})",
                f"{results[f'margin_vs_plain_{key}']:+.4f}",
            )
        )
    return rows
