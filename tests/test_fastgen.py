"""The compiled generation loop against the reference sampler: same seed, same text."""

import numpy as np
import pytest
import torch

from charloom.errors import CharloomError
from charloom.model import CharRNN, ModelConfig
from charloom.sample import (
    CompiledGenerator,
    SampleSettings,
    SampleStream,
    generate_blocks,
    next_token_distribution,
    sample,
)
from charloom.vocab import Vocab

kernels = pytest.importorskip("charloom.kernels", reason="numba is not installed")

SETTINGS = [
    SampleSettings(),
    SampleSettings(temperature=1.3, top_k=5),
    SampleSettings(temperature=0.9, top_p=0.7),
    SampleSettings(greedy=True),
]


def drawn_ids(model, vocab, prime, steps, settings, rows, seed, engine) -> np.ndarray:
    stream = SampleStream(vocab, prime, steps, settings, rows, seed)
    blocks, n = [], 0
    for block in generate_blocks(model, stream, engine):
        blocks.append(np.asarray(block))
        n += len(block)
        if n >= steps:
            return np.concatenate(blocks)[:steps]
    raise AssertionError("generate_blocks ended")


def assert_same_draws(model, vocab, prime, steps, settings, rows, seed, engine):
    """The engine draws the reference's ids, except where a uniform falls within float32
    rounding of a boundary between two characters (documented): there, and only there, the
    columns may part (checked in float64 on the reference's own path)."""
    ref = drawn_ids(model, vocab, prime, steps, settings, rows, seed, "torch")
    got = drawn_ids(model, vocab, prime, steps, settings, rows, seed, engine)
    uniforms = SampleStream(vocab, prime, steps, settings, rows, seed).uniforms.take(steps)
    for col in range(rows):
        apart = np.flatnonzero(ref[:, col] != got[:, col])
        if not len(apart):
            continue
        t = apart[0]
        ids = torch.tensor([vocab.encode(prime, what="prime").tolist() + ref[:t, col].tolist()])
        with torch.no_grad():
            logits, _ = model(ids)
        probs = next_token_distribution(logits[:, -1], settings)[0].double()
        cdf = torch.cumsum(probs, 0)
        target = float(uniforms[t, col]) * float(cdf[-1])
        gap = float((cdf - target).abs().min())
        assert gap < 1e-6, (engine, settings, col, t, gap)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_cpu_engines_draw_the_reference_ids(kind, layers, engine):
    torch.manual_seed(0)
    vocab = Vocab.build("printable")
    model = CharRNN(ModelConfig(kind=kind, vocab_size=100, embed=16, hidden=32, layers=layers))
    for settings in SETTINGS:
        assert_same_draws(model, vocab, "Th", 150, settings, 3, 11, engine)


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
    gen = CompiledGenerator(model)
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
    gen = CompiledGenerator(model)
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

    for engine in ("numba", "numpy", "torch"):  # every engine: the same block sizes
        gen = blocks(engine)
        sizes = [len(next(gen)) for _ in range(6)]
        assert sizes == [1, 4, 16, 9, 64, 64], engine
    ref = blocks("torch")
    want = np.concatenate([next(ref) for _ in range(6)])  # 1 + 4 + 16 + 9 + 64 + 64
    for engine in ("numba", "numpy"):
        got_blocks = blocks(engine)
        got = np.concatenate([next(got_blocks) for _ in range(6)])
        assert want.shape == (158, 2) and np.array_equal(got, want), engine
