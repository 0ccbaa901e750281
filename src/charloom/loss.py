"""Cross-entropy through the output head, in slices of rows.

The head turns every position's top-layer output ``(N, H)`` into logits ``(N, V)``. With a
vocabulary of thousands of symbols (a corpus vocabulary of source code or of several scripts)
those logits are the largest thing a step or an evaluation holds: 32,768 positions of an
8,782-symbol vocabulary are 1.15 GB in float32, and the softmax and its gradient each as much
again. Here the head and the loss run over slices of at most :func:`rows_per_slice` rows, so
the logits that exist at any moment stay near :data:`LOGITS_BUDGET` bytes whatever ``V``.

- :func:`head_loss_sum` (no gradients; evaluation): the summed loss and the number of scored
  positions.
- :func:`sliced_head_loss` (training): the mean loss, with exact gradients for the outputs,
  the head's weight and its bias. The gradients are computed slice by slice during the forward
  pass, while each slice's logits exist anyway, and kept (they are the size of the outputs and
  of the head, not of the logits); the backward pass only scales them. So it is one ordinary
  autograd node: ``loss.backward()`` and ``DistributedDataParallel`` see a plain loss.

With a small vocabulary everything fits in one slice, and callers use the plain
``F.cross_entropy(head(x))``: the common case pays nothing (see :func:`slices_needed`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Bytes of float32 logits one slice may hold. The softmax and its gradient are of the same
#: size, so a slice's working memory is about three times this: ~100 MB, whatever ``V``.
LOGITS_BUDGET = 32 * 2**20


def rows_per_slice(vocab_size: int, budget: int = LOGITS_BUDGET) -> int:
    """How many rows' float32 logits over ``vocab_size`` symbols fit in ``budget`` bytes (at
    least one)."""
    return max(1, budget // (4 * max(1, vocab_size)))


def slices_needed(rows: int, vocab_size: int, budget: int = LOGITS_BUDGET) -> int:
    """Slices of :func:`rows_per_slice` rows that ``rows`` positions take (1: no slicing)."""
    return max(1, math.ceil(rows / rows_per_slice(vocab_size, budget)))


@torch.no_grad()
def head_loss_sum(
    features: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    ignore_index: int = -1,
    budget: int = LOGITS_BUDGET,
) -> tuple[torch.Tensor, int]:
    """``(sum of the cross-entropy, positions scored)`` of ``head(features (N, H))`` against
    ``targets (N,)``; targets equal to ``ignore_index`` are not scored. The sum is a float32
    scalar on the features' device. Runs under whatever autocast the caller set."""
    step = rows_per_slice(head.out_features, budget)
    total = torch.zeros((), dtype=torch.float32, device=features.device)
    count = 0
    for lo in range(0, len(features), step):
        y = targets[lo : lo + step]
        logits = head(features[lo : lo + step]).float()
        total += F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
        count += int((y != ignore_index).sum())
    return total, count


class _SlicedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of ``features @ weight.T + bias`` against ``targets``, slice by
    slice, with the gradients computed on the way (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        features: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        targets: torch.Tensor,
        step: int,
    ) -> torch.Tensor:
        n = len(features)
        grad_x = torch.empty_like(features)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        total = torch.zeros((), dtype=torch.float32, device=features.device)
        for lo in range(0, n, step):
            x, y = features[lo : lo + step], targets[lo : lo + step]
            logits = F.linear(x, weight, bias).float()  # autocast, if any, applies here
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            total -= logp.gather(1, y[:, None]).sum()
            # d(mean loss)/d(logits) = (softmax - one-hot) / n, computed in place.
            g = logp.exp_()
            g[torch.arange(len(y), device=g.device), y] -= 1.0
            g /= n
            gx = g.to(x.dtype)  # float32, or bf16 outputs under autocast
            grad_x[lo : lo + step] = gx @ weight.to(gx.dtype)
            grad_w += (gx.t() @ x.to(gx.dtype)).float()
            grad_b += g.sum(0)
            del g, gx, logp
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype), grad_b.to(bias.dtype))
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_x, grad_w, grad_b = ctx.saved_tensors
        return grad_x * grad_out, grad_w * grad_out, grad_b * grad_out, None, None


def sliced_head_loss(
    features: torch.Tensor, head: nn.Linear, targets: torch.Tensor, budget: int = LOGITS_BUDGET
) -> torch.Tensor:
    """The mean cross-entropy of ``head(features (N, H))`` against ``targets (N,)``, as
    ``F.cross_entropy`` gives it, with exact gradients for ``features``, ``head.weight`` and
    ``head.bias``, holding the logits of :func:`rows_per_slice` rows at a time."""
    step = rows_per_slice(head.out_features, budget)
    out = _SlicedHeadLoss.apply(features, head.weight, head.bias, targets, step)
    assert isinstance(out, torch.Tensor)
    return out
