"""Loss in slices (loss.py): the same loss and gradients as the plain cross-entropy, with the
logits of a few rows at a time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from charloom.config import TrainConfig
from charloom.evaluate import evaluate_ids
from charloom.loss import head_loss_sum, rows_per_slice, sliced_head_loss, slices_needed
from charloom.model import CharRNN, ModelConfig
from charloom.step import TrainStep

V = 3000


def _head_and_rows(n: int = 257, h: int = 24) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(h, V)
    x = torch.randn(n, h, generator=g)
    y = torch.randint(0, V, (n,), generator=g)
    return head, x, y


def test_slice_size_follows_the_vocabulary():
    assert rows_per_slice(100) == 32 * 2**20 // 400
    assert slices_needed(32 * 100, 100) == 1  # the common case: one slice, no slicing
    assert slices_needed(32 * 100, 65_536) == 25
    assert rows_per_slice(10**9) == 1


def test_sliced_loss_and_gradients_equal_the_plain_ones():
    head, x, y = _head_and_rows()
    budget = 40 * 4 * V  # 40 rows a slice: 7 slices, the last one short
    assert slices_needed(len(x), V, budget) == 7
    x1 = x.clone().requires_grad_()
    plain = F.cross_entropy(head(x1), y)
    plain.backward()
    want = (x1.grad, head.weight.grad.clone(), head.bias.grad.clone())
    head.zero_grad()
    x2 = x.clone().requires_grad_()
    sliced = sliced_head_loss(x2, head, y, budget)
    (2.0 * sliced).backward()  # the backward pass scales by the incoming gradient
    assert math.isclose(float(sliced.detach()), float(plain.detach()), rel_tol=1e-5)
    got = (x2.grad, head.weight.grad, head.bias.grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, 2.0 * b, rtol=1e-5, atol=1e-7)


def test_summed_loss_skips_ignored_targets():
    head, x, y = _head_and_rows()
    y[::5] = -1
    total, count = head_loss_sum(x, head, y, budget=16 * 4 * V)
    with torch.no_grad():
        want = F.cross_entropy(head(x), y, ignore_index=-1, reduction="sum")
    assert count == int((y >= 0).sum())
    assert math.isclose(float(total), float(want), rel_tol=1e-5)


def test_evaluation_in_slices_equals_one_slice():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=V, embed=8, hidden=16, layers=1)).eval()
    ids = torch.randint(0, V, (5000,))
    whole = evaluate_ids(model, ids, max_chunks=4, min_chunk=500, window=128, logits_budget=2**40)
    sliced = evaluate_ids(model, ids, max_chunks=4, min_chunk=500, window=128, logits_budget=2**16)
    assert sliced.chars == whole.chars == 4999
    assert math.isclose(sliced.loss, whole.loss, rel_tol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_train_step_in_slices_matches_the_plain_step(kind):
    config = TrainConfig().replace(
        kind=kind,
        layers=2,
        hidden=16,
        embed=8,
        dropout=0.0,
        batch_size=4,
        seq_len=16,
        precision="fp32",
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (4, 16), generator=g)
    y = torch.randint(0, V, (4, 16), generator=g)
    steps = [TrainStep.build(config, V) for _ in range(2)]
    steps[1].logits_budget = 8 * 4 * V  # 8 rows a slice: 8 slices
    losses = [float(s(x, y, 1e-3, 0, carry=True)) for s in steps]
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5)
    for (name, a), b in zip(steps[0].model.named_parameters(), steps[1].model.parameters()):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # The carried state is the same too, so the next batch starts alike.
    for a, b in zip(steps[0].carry, steps[1].carry):
        torch.testing.assert_close(a, b)
