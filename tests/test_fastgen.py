"""The compiled generation loop against the reference sampler: same seed, same text."""

import numpy as np
import pytest
import torch

from charloom import fastgen
from charloom.errors import CharloomError
from charloom.model import CharRNN, ModelConfig
from charloom.sample import SampleSettings, SampleStream, generate_blocks, sample
from charloom.vocab import Vocab

kernels = pytest.importorskip("charloom.kernels", reason="numba is not installed")

SETTINGS = [
    SampleSettings(),
    SampleSettings(temperature=1.3, top_k=5),
    SampleSettings(temperature=0.9, top_p=0.7),
    SampleSettings(greedy=True),
]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_numba_engine_writes_the_reference_text(kind, layers):
    torch.manual_seed(0)
    vocab = Vocab.build("printable")
    model = CharRNN(ModelConfig(kind=kind, vocab_size=100, embed=16, hidden=32, layers=layers))
    for settings in SETTINGS:
        ref = sample(model, vocab, "Th", 150, settings, num_samples=3, seed=11, engine="torch")
        fast = sample(model, vocab, "Th", 150, settings, num_samples=3, seed=11, engine="numba")
        assert fast == ref, settings


def test_numba_engine_in_bytes_mode_counts_characters():
    torch.manual_seed(1)
    vocab = Vocab.build("bytes")
    model = CharRNN(ModelConfig(vocab_size=256, embed=8, hidden=16, layers=1))
    ref = sample(model, vocab, "é", 40, SampleSettings(temperature=1.5), seed=2, engine="torch")
    fast = sample(model, vocab, "é", 40, SampleSettings(temperature=1.5), seed=2, engine="numba")
    assert fast == ref and len(fast[0]) == 41


def test_draws_follow_the_distribution():
    # Many streams of one step from a known distribution: the frequencies match it.
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=4, embed=4, hidden=4, layers=1))
    gen = fastgen.FastGenerator(model)
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).repeat(20000, 1)
    u = torch.rand(1, 20000)
    ids, _, _ = gen.run(model.zero_state(20000), logits, u, SampleSettings(temperature=1.0))
    freq = torch.bincount(ids[0], minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015, rtol=0)


def test_unknown_engine_is_refused():
    model = CharRNN(ModelConfig(vocab_size=4, embed=4, hidden=4, layers=1))
    with pytest.raises(CharloomError, match="engine"):
        sample(model, Vocab("corpus", tuple("abcT")), "T", 3, engine="warp")


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_numba_engine_odd_sizes_and_many_streams(kind):
    # Sizes that are not multiples of the vector width or of the 4-row/4-stream blocking, and
    # enough streams for the threaded path (a block of streams per thread).
    torch.manual_seed(3)
    vocab = Vocab.build("printable")
    model = CharRNN(ModelConfig(kind=kind, vocab_size=100, embed=7, hidden=37, layers=2))
    for streams in (1, 7, 13):
        ref = sample(model, vocab, "Th", 90, SampleSettings(), streams, seed=5, engine="torch")
        fast = sample(model, vocab, "Th", 90, SampleSettings(), streams, seed=5, engine="numba")
        assert fast == ref, streams


def test_run_in_pieces_equals_one_run():
    # Block boundaries carry state and logits exactly: 3 + 61 steps == 64 steps.
    torch.manual_seed(4)
    model = CharRNN(ModelConfig(vocab_size=30, embed=8, hidden=20, layers=2))
    gen = fastgen.FastGenerator(model)
    u = torch.rand(64, 6, generator=torch.Generator().manual_seed(0))
    start = (model.zero_state(6), torch.randn(6, 30))
    settings = SampleSettings(temperature=0.9)
    whole, state_w, logits_w = gen.run(*start, u, settings)
    a, state, logits = gen.run(*start, u[:3], settings)
    b, state, logits = gen.run(state, logits, u[3:], settings)
    assert torch.equal(torch.cat([a, b]), whole)
    assert all(torch.equal(x, y) for x, y in zip(state, state_w))
    assert torch.equal(logits, logits_w)


def test_exp_polynomial_is_accurate():
    x = np.concatenate([np.linspace(-90, 0, 5001), np.linspace(0, 88, 5001), [-np.inf]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    kernels.exp_into(x, out, np.empty(len(x), np.int32), len(x))
    want = np.exp(x.astype(np.float64))
    normal = x >= -87
    rel = np.abs(out[normal] / want[normal] - 1)
    assert rel.max() < 4e-7  # within a few float32 ulp
    assert np.all(out[~normal] == 0)  # -inf (masked by top-k) and below -87: exactly 0


def test_tanh_and_sigmoid_are_accurate():
    x = np.linspace(-12, 12, 4001).astype(np.float32)
    e = np.empty_like(x)
    bits = np.empty(len(x), np.int32)
    kernels.exp_into((2 * np.abs(x)).astype(np.float32), e, bits, len(x))
    got = np.array([kernels.tanh_from(ei, xi) for ei, xi in zip(e, x)])
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), rtol=0, atol=3e-7)
    kernels.exp_into(-x, e, bits, len(x))
    np.testing.assert_allclose(1 / (1 + e), 1 / (1 + np.exp(-x.astype(np.float64))), atol=2e-7)


def test_blocks_stop_at_the_expected_length_then_go_on():
    torch.manual_seed(5)
    model = CharRNN(ModelConfig(vocab_size=12, embed=4, hidden=8, layers=1))
    vocab = Vocab("corpus", tuple("abcdefghijkl"))

    def blocks(engine):
        stream = SampleStream(vocab, [1], 30, SampleSettings(), num_samples=2, seed=9)
        return generate_blocks(model, stream, engine)

    for engine in ("numba", "torch"):  # both engines: the same block sizes
        gen = blocks(engine)
        sizes = [len(next(gen)) for _ in range(6)]
        assert sizes == [1, 4, 16, 9, 64, 64], engine
    ref, fast = blocks("torch"), blocks("numba")
    want = torch.cat([next(ref) for _ in range(6)])  # 1 + 4 + 16 + 9 + 64 + 64
    got = torch.cat([next(fast) for _ in range(6)])
    assert want.shape == (158, 2) and torch.equal(got, want)
