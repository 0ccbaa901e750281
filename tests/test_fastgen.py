"""The compiled generation loop against the reference sampler: same seed, same text."""

import pytest
import torch

from charloom import fastgen
from charloom.errors import CharloomError
from charloom.model import CharRNN, ModelConfig
from charloom.sample import SampleSettings, sample
from charloom.vocab import Vocab

pytestmark = pytest.mark.skipif(not fastgen.available(), reason="numba is not installed")

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
    ids, _, _ = gen.run(model.zero_state(20000), logits, torch.rand(1, 20000), 1.0, 0, 1.0, False)
    freq = torch.bincount(ids[0], minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015, rtol=0)


def test_unknown_engine_is_refused():
    model = CharRNN(ModelConfig(vocab_size=4, embed=4, hidden=4, layers=1))
    with pytest.raises(CharloomError, match="engine"):
        sample(model, Vocab("corpus", tuple("abcT")), "T", 3, engine="warp")
