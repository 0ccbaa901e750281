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


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_step_by_step_equals_the_whole_sequence(kind, layers):
    # What a generator does (one character at a time) gives what forward gives, on both paths.
    torch.manual_seed(2)
    model = CharRNN(ModelConfig(kind=kind, vocab_size=19, embed=6, hidden=12, layers=layers))
    model.eval()
    ids = torch.randint(0, 19, (3, 9))
    start = tuple(torch.randn_like(s) for s in model.zero_state(3))
    with torch.no_grad():
        for path in ("fused", "cell"):
            state, steps = start, []
            for t in range(ids.shape[1]):
                logits, state = model.step(ids[:, t], state, path=path)
                assert logits.shape == (3, 19)
                steps.append(logits)
            for whole_path in ("fused", "cell"):
                whole, final = model(ids, start, path=whole_path)
                torch.testing.assert_close(torch.stack(steps, dim=1), whole, rtol=1e-5, atol=1e-5)
                for a, b in zip(state, final):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_every_state_at_every_step(kind):
    torch.manual_seed(3)
    model = CharRNN(ModelConfig(kind=kind, vocab_size=11, embed=5, hidden=7, layers=2))
    ids = torch.randint(0, 11, (2, 6))
    start = tuple(torch.randn_like(s) for s in model.zero_state(2))
    with torch.no_grad():
        logits, states = model.forward_with_states(ids, start)
        whole, final = model(ids, start)
        _, after_three = model(ids[:, :3], start)
    assert len(states) == (2 if kind == "lstm" else 1)
    assert all(s.shape == (2, 2, 6, 7) for s in states)  # (L, B, T, H)
    torch.testing.assert_close(logits, whole, rtol=1e-5, atol=1e-5)
    for every, last, third in zip(states, final, after_three):
        torch.testing.assert_close(every[:, :, -1], last, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(every[:, :, 2], third, rtol=1e-5, atol=1e-5)


def test_layer_weights_are_the_live_parameters():
    model = CharRNN(ModelConfig(kind="gru", vocab_size=10, embed=4, hidden=8, layers=2))
    w = model.layer_weights(1)
    assert sorted(w) == ["bias_hh", "bias_ih", "weight_hh", "weight_ih"]
    assert w["weight_ih"].shape == (3 * 8, 8) and w["bias_hh"].shape == (3 * 8,)
    assert w["weight_hh"] is model.rnn.weight_hh_l1
    assert model.layer_weights(0)["weight_ih"].shape == (3 * 8, 4)
    with pytest.raises(IndexError):
        model.layer_weights(2)


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
