"""The fused recurrent path against the lecture's per-step cell path, on the same weights."""

import pytest
import torch

from charloom.errors import CharloomError
from charloom.model import CharRNN, ModelConfig


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_fused_and_cell_paths_agree(kind, layers, with_state):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(kind=kind, vocab_size=23, embed=8, hidden=16, layers=layers))
    ids = torch.randint(0, 23, (3, 11))
    targets = torch.randint(0, 23, (3, 11))
    state = None
    if with_state:
        state = tuple(torch.randn_like(s) for s in model.zero_state(3))

    results = {}
    for path in ("fused", "cell"):
        model.zero_grad()
        logits, new_state = model(ids, state, path=path)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 23), targets.reshape(-1))
        loss = loss + sum(s.sum() for s in new_state) * 1e-2  # gradients through the state too
        loss.backward()
        results[path] = (logits.detach(), [s.detach() for s in new_state], _grads(model))

    (lf, sf, gf), (lc, sc, gc) = results["fused"], results["cell"]
    assert lf.shape == (3, 11, 23)
    torch.testing.assert_close(lf, lc, rtol=1e-5, atol=1e-5)
    for a, b in zip(sf, sc):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert gf.keys() == gc.keys()
    for name in gf:
        torch.testing.assert_close(gf[name], gc[name], rtol=1e-4, atol=1e-5, msg=name)


def test_state_carries_across_calls():
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=10, embed=4, hidden=8, layers=2))
    ids = torch.randint(0, 10, (2, 12))
    whole, _ = model(ids)
    first, state = model(ids[:, :5])
    second, _ = model(ids[:, 5:], state)
    torch.testing.assert_close(whole, torch.cat([first, second], dim=1))


def test_parameter_count_matches_the_built_model():
    for kind in ("lstm", "gru", "rnn"):
        cfg = ModelConfig(kind=kind, vocab_size=37, embed=5, hidden=9, layers=3)
        assert cfg.parameter_count() == CharRNN(cfg).num_parameters()


@pytest.mark.parametrize(
    "bad",
    [
        dict(hidden=0),
        dict(layers=-1),
        dict(hidden=10**9),
        dict(kind="transformer"),
        dict(dropout=1.0),
        dict(embed=2.5),
    ],
)
def test_absurd_settings_are_refused_before_allocation(bad):
    cfg = ModelConfig(vocab_size=10, **{"embed": 4, "hidden": 8, **bad})
    with pytest.raises(CharloomError):
        CharRNN(cfg)
