"""Held-out loss in nats per character, bits per character and perplexity.

A batch-1 pass over a long text is slow: every step is a tiny matrix-vector product. Instead the
text is cut into up to ``max_chunks`` contiguous chunks read in parallel, each carrying its state
from window to window. Every character after the first is predicted exactly once; each chunk
starts from the zero state, which costs a negligible amount of context when chunks are long
(``min_chunk`` characters at least).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .loss import LOGITS_BUDGET, head_loss_sum
from .model import CharRNN

LN2 = math.log(2.0)


@dataclass
class EvalResult:
    """Mean loss over ``chars`` predicted characters (``skipped``: characters of the text that
    were outside the vocabulary and left out, with ``unknown="skip"``; ``end_symbols``: in
    documents mode, the end-of-document symbols among the ``chars``, each predicted as a
    character is)."""

    loss: float  # nats per character
    chars: int
    skipped: int = 0
    #: Documents mode: how many of the ``chars`` predicted symbols are end-of-document symbols.
    end_symbols: int = 0

    @property
    def bpc(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self) -> dict:
        """The result as JSON-ready numbers; ``end_symbols`` only in documents mode."""
        d = {
            "loss": self.loss,
            "bpc": self.bpc,
            "perplexity": self.perplexity,
            "chars": self.chars,
            "skipped": self.skipped,
        }
        if self.end_symbols:
            d["end_symbols"] = self.end_symbols
        return d


def chunk_layout(n_targets: int, max_chunks: int, min_chunk: int) -> tuple[int, int]:
    """``(chunks, chunk_len)`` covering ``n_targets`` predictions."""
    chunks = max(1, min(max_chunks, n_targets // max(1, min_chunk)))
    return chunks, math.ceil(n_targets / chunks)


@torch.no_grad()
def evaluate_ids(
    model: CharRNN,
    ids: torch.Tensor,
    max_chunks: int = 64,
    min_chunk: int = 2048,
    window: int = 512,
    autocast_dtype: torch.dtype | None = None,
    logits_budget: int = LOGITS_BUDGET,
) -> EvalResult:
    """Mean next-character loss of ``model`` over ``ids (N,)``, state carried along the text."""
    n = len(ids) - 1
    if n < 1:
        return EvalResult(loss=float("nan"), chars=0)
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    chunks, length = chunk_layout(n, max_chunks, min_chunk)
    ids = ids.long()
    # Pad with -1 so chunk c covers inputs ids[c*L : c*L+L] and targets ids[c*L+1 : c*L+L+1].
    padded = torch.full((chunks * length + 1,), -1, dtype=torch.long)
    padded[: n + 1] = ids
    x = padded[:-1].view(chunks, length)
    y = padded[1:].view(chunks, length)
    total, count, state = 0.0, 0, None
    try:
        for start in range(0, length, window):
            xb = x[:, start : start + window].clamp(min=0).to(device)
            yb = y[:, start : start + window].to(device)
            with torch.autocast(
                device_type=device.type,
                dtype=autocast_dtype or torch.bfloat16,
                enabled=autocast_dtype is not None,
            ):
                out, state = model(xb, state, with_head=False)
                # The head a slice of rows at a time: (chunks * window, V) logits of a large
                # vocabulary would take gigabytes (loss.py).
                loss, scored = head_loss_sum(
                    out.reshape(-1, out.shape[-1]), model.head, yb.reshape(-1), -1, logits_budget
                )
            total += float(loss)
            count += scored
    finally:
        model.train(was_training)
    return EvalResult(loss=total / count, chars=count)
