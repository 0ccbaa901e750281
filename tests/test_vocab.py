import string

import pytest

from charloom.errors import CharloomError
from charloom.vocab import Vocab

MIXED = "Hello, мир! 你好世界 — naïve café 🙂🚀 عربى\n\tend"


def test_bytes_vocab_round_trips_any_text():
    v = Vocab.build("bytes")
    ids = v.encode(MIXED)
    assert v.size == 256
    assert len(ids) == len(MIXED.encode("utf-8"))
    assert v.decode(ids) == MIXED


def test_bytes_stream_decoder_waits_for_whole_characters():
    v = Vocab.build("bytes")
    dec = v.decoder()
    pieces = [dec.feed([int(i)]) for i in v.encode("🙂a")]
    assert pieces == ["", "", "", "🙂", "a"]


def test_corpus_vocab_is_the_sorted_characters_of_the_text():
    v = Vocab.build("corpus", MIXED)
    assert list(v.chars) == sorted(set(MIXED))
    assert v.decode(v.encode(MIXED)) == MIXED


def test_corpus_vocab_refuses_unknown_characters_and_lists_them():
    v = Vocab.build("corpus", "abc")
    with pytest.raises(CharloomError, match=r"2 character\(s\).*'x', 'z'"):
        v.encode("abxz", what="prime")


def test_printable_vocab_is_the_lectures():
    v = Vocab.build("printable")
    assert v.size == 100
    assert "".join(v.chars) == string.printable
    text = "The lecture, 2021!"
    assert v.decode(v.encode(text)) == text
    with pytest.raises(CharloomError, match="try --ascii"):
        v.encode("café")


@pytest.mark.parametrize("kind", ["corpus", "printable", "bytes"])
def test_vocab_saves_and_loads(kind):
    v = Vocab.build(kind, MIXED if kind == "corpus" else "")
    again = Vocab.from_dict(v.to_dict())
    assert again == v
    assert again.size == v.size


def test_saved_vocab_with_duplicates_or_wrong_size_is_refused():
    with pytest.raises(CharloomError, match="twice"):
        Vocab.from_dict({"kind": "corpus", "chars": "abca"})
    with pytest.raises(CharloomError, match="size"):
        Vocab.from_dict({"kind": "corpus", "chars": "abc", "size": 4})
    with pytest.raises(CharloomError):
        Vocab.from_dict({"kind": "klingon"})


@pytest.mark.parametrize("kind", ["bytes", "corpus"])
def test_decoding_blocks_equals_decoding_one_by_one(kind):
    text = "naïve 日本 ok"
    v = Vocab.build(kind, text)
    ids = [int(i) for i in v.encode(text)]
    one = v.decoder()
    expected = [one.feed([t]) for t in ids]
    many = v.decoder()
    # blocks that cut multi-byte characters in the middle
    pieces = [many.feed(ids[i : i + 3]) for i in range(0, len(ids), 3)]
    assert "".join(pieces) == "".join(expected) == text
