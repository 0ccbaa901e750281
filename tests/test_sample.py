import pytest
import torch

from charloom.errors import CharloomError
from charloom.model import CharRNN, ModelConfig
from charloom.nextchar import SampleSettings
from charloom.sample import SampleStream, generate_blocks, next_token_distribution, sample
from charloom.vocab import Vocab


@pytest.fixture(scope="module")
def model_and_vocab():
    torch.manual_seed(0)
    vocab = Vocab.build("corpus", "abcdefgh Th\n")
    model = CharRNN(ModelConfig(vocab_size=vocab.size, embed=8, hidden=16, layers=2))
    return model, vocab


def test_same_seed_same_text(model_and_vocab):
    model, vocab = model_and_vocab
    a = sample(model, vocab, "Th", 50, seed=7)
    b = sample(model, vocab, "Th", 50, seed=7)
    c = sample(model, vocab, "Th", 50, seed=8)
    assert a == b
    assert a != c


def test_output_is_prime_then_exactly_length_characters(model_and_vocab):
    model, vocab = model_and_vocab
    texts = sample(model, vocab, "The", 37, num_samples=4, seed=1)
    assert len(texts) == 4
    for t in texts:
        assert t.startswith("The") and len(t) == 3 + 37


def test_bytes_vocab_counts_characters_not_bytes():
    torch.manual_seed(0)
    vocab = Vocab.build("bytes")
    model = CharRNN(ModelConfig(vocab_size=256, embed=8, hidden=16, layers=1))
    for seed in range(3):
        (t,) = sample(model, vocab, "日本", 25, SampleSettings(temperature=2.0), seed=seed)
        assert t.startswith("日本") and len(t) == 2 + 25


def test_greedy_equals_top_k_1_and_tiny_top_p(model_and_vocab):
    model, vocab = model_and_vocab
    greedy = sample(model, vocab, "Th", 30, SampleSettings(greedy=True))
    assert greedy == sample(model, vocab, "Th", 30, SampleSettings(top_k=1), seed=3)
    assert greedy == sample(model, vocab, "Th", 30, SampleSettings(top_p=1e-6), seed=4)


def test_prime_changes_what_follows(model_and_vocab):
    model, vocab = model_and_vocab
    a = model(torch.from_numpy(vocab.encode("abc")).long()[None])[0][0, -1]
    b = model(torch.from_numpy(vocab.encode("hgc")).long()[None])[0][0, -1]
    assert not torch.allclose(a, b)


def test_top_k_and_top_p_filter_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = next_token_distribution(logits, SampleSettings(temperature=1.0, top_k=2))
    torch.testing.assert_close(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    p = next_token_distribution(logits, SampleSettings(temperature=1.0, top_p=0.8))
    torch.testing.assert_close(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    p = next_token_distribution(logits, SampleSettings(temperature=1.0, top_p=0.81))
    assert (p > 0).sum() == 3


def test_low_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    hot = next_token_distribution(logits, SampleSettings(temperature=2.0))
    cold = next_token_distribution(logits, SampleSettings(temperature=0.5))
    assert cold[0, 0] > hot[0, 0]


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0),
        dict(temperature=-1),
        dict(temperature=float("nan")),
        dict(top_k=0),
        dict(top_p=0),
        dict(top_p=1.5),
    ],
)
def test_bad_settings_are_refused(model_and_vocab, settings):
    model, vocab = model_and_vocab
    with pytest.raises(CharloomError):
        sample(model, vocab, "Th", 5, SampleSettings(**settings))


def test_bad_prime_and_length_are_refused(model_and_vocab):
    model, vocab = model_and_vocab
    with pytest.raises(CharloomError, match="'Z'"):
        sample(model, vocab, "ThZ", 5)
    with pytest.raises(CharloomError):
        sample(model, vocab, "", 5)
    with pytest.raises(CharloomError):
        sample(model, vocab, "Th", -1)


def test_a_tiny_temperature_is_nearly_greedy(model_and_vocab):
    model, vocab = model_and_vocab
    greedy = sample(model, vocab, "Th", 30, SampleSettings(greedy=True))
    assert sample(model, vocab, "Th", 30, SampleSettings(temperature=1e-40), seed=1) == greedy


def test_a_stream_gives_exactly_length_characters_whatever_the_blocks(model_and_vocab):
    model, vocab = model_and_vocab
    ids = next(generate_blocks(model, SampleStream(vocab, "Th", 0), "torch"))
    assert ids.shape == (1, 1)
    drawn = torch.tensor(vocab.encode("abcdefgh" * 3)).long().view(-1, 2)  # (12 steps, 2)
    whole = SampleStream(vocab, "Th", 9, num_samples=2)
    assert whole.take(drawn) == ["acegacega", "bdfhbdfhb"] and whole.done
    stepwise = SampleStream(vocab, "Th", 9, num_samples=2)
    pieces = ["".join(p) for p in zip(*(stepwise.take(drawn[t : t + 1]) for t in range(12)))]
    assert pieces == ["acegacega", "bdfhbdfhb"] and stepwise.done
    assert SampleStream(vocab, [1, 2], 0).done


def test_the_stream_text_is_the_sample_text(model_and_vocab):
    model, vocab = model_and_vocab
    stream = SampleStream(vocab, "Th", 40, SampleSettings(top_k=4), num_samples=2, seed=5)
    texts = ["Th", "Th"]
    for block in generate_blocks(model, stream, "torch"):
        texts = [t + p for t, p in zip(texts, stream.take(block))]
        if stream.done:
            break
    assert texts == sample(model, vocab, "Th", 40, SampleSettings(top_k=4), 2, seed=5)
