"""Run a model over a text one character at a time and keep what it computed at every step.

For every character ``t`` of the text the trace holds, after the model has read it:

- ``states[(layer, kind)]``: ``(N, H)`` - the hidden state ``h`` of each layer, and for an LSTM
  also its cell state ``c`` (layers counted from 1, as the page shows them);
- ``top_ids``, ``top_probs``: ``(N, K)`` - the K likeliest next characters and their probabilities;
- ``surprisal``: ``(N,)`` - ``-log2 p(char t | chars before it)`` in bits; ``nan`` for the first
  character, which nothing predicts.

The pass starts from the zero state and carries it through the whole text, which is what
``charloom eval`` does for a text shorter than two of its chunks (4096 characters), so the mean
of ``surprisal`` over characters 1..N-1 equals the eval's bits per character.

The states come from :meth:`CharRNN.forward_with_states` (the model's per-step cell path),
because the fused ``nn.LSTM`` returns only the top layer's outputs and never the cell states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..model import CharRNN

#: State kinds and their names on the page.
STATE_NAMES = {"h": "hidden state", "c": "cell state"}


def state_kinds(model_kind: str) -> tuple[str, ...]:
    """The states of a ``model_kind`` layer: ``("h", "c")`` for an LSTM, else ``("h",)``."""
    return ("h", "c") if model_kind == "lstm" else ("h",)


@dataclass
class Trace:
    """What the model computed at every character of a text (see the module docstring)."""

    ids: np.ndarray  # (N,) character ids
    states: dict[tuple[int, str], np.ndarray]  # (layer, "h"|"c") -> (N, H) float32
    top_ids: np.ndarray  # (N, K) int
    top_probs: np.ndarray  # (N, K) float32
    surprisal: np.ndarray  # (N,) float64 bits; surprisal[0] is nan

    @property
    def mean_bits(self) -> float:
        """Mean surprisal over the predicted characters (all but the first), bits per char."""
        s = self.surprisal[1:]
        return float(s.mean()) if len(s) else float("nan")


@torch.no_grad()
def trace_ids(model: CharRNN, ids: np.ndarray, top_k: int = 5) -> Trace:
    """Step ``model`` over ``ids (N,)`` from the zero state; see :class:`Trace`."""
    if len(ids) < 1:
        raise ValueError("nothing to trace")
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    try:
        x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device).unsqueeze(0)
        # One step per character: slow for long texts, but a page shows a few thousand.
        logits, every = model.forward_with_states(x)  # (1, N, V); each (L, 1, N, H)
        states: dict[tuple[int, str], np.ndarray] = {}
        for layer in range(model.config.layers):
            for kind, per_layer in zip(state_kinds(model.config.kind), every):
                states[(layer + 1, kind)] = per_layer[layer, 0].float().cpu().numpy()  # (N, H)
        logp = F.log_softmax(logits[0].float(), dim=-1)  # (N, V): next-char predictions
    finally:
        model.train(was_training)
    k = min(top_k, logp.shape[1])
    top_lp, top_ids = logp.topk(k, dim=-1)
    targets = torch.as_tensor(np.asarray(ids[1:], dtype=np.int64), device=logp.device)
    seen = -logp[:-1].gather(1, targets[:, None])[:, 0] / math.log(2.0)
    surprisal = np.concatenate([[np.nan], seen.double().cpu().numpy()])
    return Trace(
        ids=np.asarray(ids),
        states=states,
        top_ids=top_ids.cpu().numpy(),
        top_probs=top_lp.exp().cpu().numpy(),
        surprisal=surprisal,
    )
