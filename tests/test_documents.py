"""Documents mode: the end-of-document symbol through every vocabulary, prepare and
checkpoints; samples that stop at it with either engine; --novel; eval counting end symbols."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS, tiny_overrides

import charloom
from charloom.charmodel import CharModel
from charloom.commands import main
from charloom.config import TrainConfig
from charloom.data import encode_text, map_prepared
from charloom.documents import (
    HASHES_FILE,
    fingerprint,
    fingerprints,
    portion_starts,
    split_text,
    write_fingerprints,
)
from charloom.model import CharRNN, ModelConfig
from charloom.prepared import prepare
from charloom.sample import SampleSettings, sample_documents
from charloom.vocab import Vocab

PREFIX = "charloom: error: "


def _names(n: int = 300, seed: int = 0) -> list[str]:
    """A generated names-style list: capitalised runs of syllables, no duplicates."""
    rng = random.Random(seed)
    syllables = ["ka", "ri", "na", "mo", "le", "sa", "ti", "ro", "an", "el", "us"]
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize())
    names = sorted(out)
    rng.shuffle(names)
    return names


# --- the end symbol ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["corpus", "printable", "bytes"])
def test_end_symbol_is_an_id_past_every_character(kind):
    text = "ab\x00c\n" if kind != "printable" else "ab c\n"
    plain = Vocab.build(kind, text)
    vocab = Vocab.build(kind, text, documents=True)
    assert vocab.end == plain.size and vocab.size == plain.size + 1
    if kind == "bytes":
        assert vocab.end == 256
    ids = vocab.encode_documents(["ab", "c"])
    assert ids[0] == ids[3] == ids[-1] == vocab.end and (ids != vocab.end).sum() == 3
    # No text encodes to the end symbol, not even one holding NUL or any odd character.
    assert vocab.end not in vocab.encode(text).tolist()
    assert vocab.decode(ids) == "abc"
    back = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert back == vocab and back.end == vocab.end


def test_a_vocabulary_saved_before_documents_mode_still_loads():
    old = {"kind": "corpus", "size": 3, "chars": "abc"}
    vocab = Vocab.from_dict(old)
    assert vocab.end is None and vocab.size == 3 and vocab.to_dict() == old
    with pytest.raises(charloom.CharloomError, match="end symbol"):
        Vocab.from_dict({"kind": "corpus", "size": 4, "chars": "abc", "end": 1})


# --- splitting -----------------------------------------------------------------------------------
def test_lines_paragraphs_and_empty_documents():
    docs, counts = split_text("anna\n\n  \nbob\ncarl\n", "lines")
    assert docs == ["anna", "bob", "carl"] and counts.empty == 2
    assert any("skipped 2 empty" in n for n in counts.notes("lines"))
    docs, counts = split_text("a b\nc\n\n\n\nd\n \n\ne\n", "paragraphs")
    assert docs == ["a b\nc", "d", "e"] and counts.empty == 0
    docs, counts = split_text("one long line, no break", "lines")
    assert docs == ["one long line, no break"]
    assert any("no line break, so it is one document" in n for n in counts.notes("lines"))


def test_a_document_longer_than_a_sequence_is_split_with_a_note():
    config = TrainConfig(documents="lines", seq_len=8, val_fraction=0.0)
    data = encode_text(config, "short\n" + "x" * 30 + "\nend\n")
    assert any("longer than one training sequence" in n for n in data.notes)
    ids = data.train.numpy()
    starts = portion_starts(ids, data.vocab.end, 8)
    # Every document start, and pieces of 8 inside the long one; all with a whole portion.
    marks = [int(m) for m in np.flatnonzero(ids == data.vocab.end) if m + 9 <= len(ids)]
    assert set(marks) <= set(starts.tolist()) and len(marks) == 2
    assert len(starts) > 3 and all(s + 9 <= len(ids) for s in starts)


def test_validation_starts_at_a_document():
    config = TrainConfig(documents="lines", val_fraction=0.3)
    data = encode_text(config, "\n".join(_names(40)) + "\n")
    end = data.vocab.end
    assert data.train[0] == end and data.train[-1] == end
    assert data.val[0] == end and data.val[-1] == end


# --- prepare -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["corpus", "printable", "bytes"])
@pytest.mark.parametrize("mode", ["lines", "paragraphs", "files"])
def test_prepare_keeps_document_boundaries(tmp_path, kind, mode):
    names = _names(60)
    files = []
    for i in range(3):
        f = tmp_path / f"part{i}.txt"
        body = "\n".join(names[i * 20 : (i + 1) * 20])
        f.write_text(body.replace("\n", "\n\n", 3) + ("\n" if i else ""), encoding="utf-8")
        files.append(str(f))
    config = TrainConfig(documents=mode, vocab=kind)
    folder = tmp_path / "data"
    prepare(files, folder, vocab=kind, documents=mode, chunk_bytes=64)
    config_p, from_folder = map_prepared(TrainConfig(), folder)
    assert config_p.documents == mode
    _, from_text = charloom.data.load_data(config, paths=files)
    assert from_folder.vocab == from_text.vocab and from_folder.vocab.end is not None
    assert torch.equal(from_folder.train.long(), from_text.train.long())
    assert torch.equal(from_folder.val.long(), from_text.val.long())
    n_docs = {"lines": 60, "paragraphs": 3 * 4, "files": 3}[mode]
    all_ids = torch.cat([from_folder.train, from_folder.val[1:]]).numpy()
    assert (all_ids == from_folder.vocab.end).sum() == n_docs + 1


def test_prepared_documents_refuse_other_settings(tmp_path, capsys):
    f = tmp_path / "n.txt"
    f.write_text("\n".join(_names(50)), encoding="utf-8")
    prepare([str(f)], tmp_path / "data", documents="lines")
    rc = main(["train", str(tmp_path / "data"), "--documents", "paragraphs", *TINY_FLAGS])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(PREFIX) and "--documents lines" in err


# --- sampling ------------------------------------------------------------------------------------
def _model(vocab: Vocab, seed: int = 0, kind: str = "lstm") -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(kind=kind, vocab_size=vocab.size, embed=8, hidden=24, layers=2))
    with torch.no_grad():  # make the end symbol likely, so documents end soon
        model.head.bias[vocab.end] += 2.0
    return model.eval()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_engines_stop_at_the_end_symbol_and_agree(kind):
    pytest.importorskip("charloom.kernels", reason="numba is not installed")
    vocab = Vocab.build("corpus", "abcdefg ", documents=True)
    model = _model(vocab, kind=kind)
    for settings in (SampleSettings(), SampleSettings(temperature=1.2, top_k=4)):
        for prime in ("", "ab"):
            args = (model, vocab, prime, 60, settings, 13, 5)
            ref = sample_documents(*args, engine="torch")
            fast = sample_documents(*args, engine="numba")
            assert fast == ref
            assert all(text.startswith(prime) for text, _, _ in ref)
            # Most end by themselves, far before the cap; those that do not are cut at it.
            assert sum(ended for _, ended, _ in ref) >= 8
            for text, ended, ids in ref:
                assert ended or len(text) == len(prime) + 60
                assert vocab.end not in ids and vocab.decode(ids) == text


def test_bytes_documents_stop_and_agree():
    pytest.importorskip("charloom.kernels", reason="numba is not installed")
    vocab = Vocab.build("bytes", documents=True)
    model = _model(vocab, seed=2)
    with torch.no_grad():
        model.head.bias[vocab.end] += 3.0
    ref = sample_documents(model, vocab, "é", 30, SampleSettings(), 6, 9, engine="torch")
    fast = sample_documents(model, vocab, "é", 30, SampleSettings(), 6, 9, engine="numba")
    assert fast == ref and any(ended for _, ended, _ in ref)


def test_a_document_is_cut_at_the_length_cap():
    vocab = Vocab.build("corpus", "abc", documents=True)
    model = _model(vocab)
    with torch.no_grad():
        model.head.bias[vocab.end] -= 50.0  # the end is never drawn
    out = sample_documents(model, vocab, "", 25, SampleSettings(), 3, 1, engine="torch")
    assert [len(t) for t, _, _ in out] == [25, 25, 25] and not any(e for _, e, _ in out)


def _char_model(tmp_path, vocab: Vocab, model: CharRNN, known: set[str]) -> CharModel:
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    write_fingerprints(run / HASHES_FILE, known)
    return CharModel(model, vocab, False, {"text": {"documents": "lines"}}, run / "best")


def test_novel_drops_known_documents_and_draws_more(tmp_path):
    vocab = Vocab.build("corpus", "abcdef", documents=True)
    model = _model(vocab, seed=3)
    first = sample_documents(model, vocab, "", 40, SampleSettings(), 20, 7, engine="torch")
    # Say the training text holds every other distinct document the first round drew.
    known_texts = set(sorted({text for text, e, _ in first if e})[::2])
    known = {fingerprint(ids) for t, e, ids in first if e and t in known_texts}
    cm = _char_model(tmp_path, vocab, model, known)
    got = cm.documents(None, 40, num_samples=20, seed=7, engine="torch", novel=True)
    in_first = sum(1 for t, e, _ in first if e and t in known_texts)
    assert got.dropped >= in_first > 0
    assert len(got.texts) == 20 and not set(got.texts) & known_texts
    # The same rounds drawn by hand: round r draws twice what is missing (at least 8) with
    # seed 7 + r; known documents are dropped, the rest kept until 20 are there.
    kept, dropped, drawn, r = [], 0, 0, 0
    while len(kept) < 20:
        n = 20 if r == 0 else max(2 * (20 - len(kept)), 8)
        drawn += n
        for text, e, ids in sample_documents(
            model, vocab, "", 40, SampleSettings(), n, 7 + r, engine="torch"
        ):
            if e and fingerprint(ids) in known:
                dropped += 1
            elif len(kept) < 20:
                kept.append(text)
        r += 1
    assert (got.texts, got.dropped, got.drawn, got.rounds) == (kept, dropped, drawn, r)
    plain = cm.documents(None, 40, num_samples=20, seed=7, engine="torch")
    assert plain.dropped == 0 and plain.texts == [t for t, _, _ in first]


def test_novel_says_when_it_cannot_deliver(tmp_path):
    vocab = Vocab.build("corpus", "a", documents=True)
    model = _model(vocab)
    with torch.no_grad():
        model.head.bias[vocab.end] += 50.0  # every document is empty...
    cm = _char_model(tmp_path, vocab, model, {fingerprint([])})  # ...and "in the text"
    got = cm.documents(None, 10, num_samples=5, seed=1, engine="torch", novel=True)
    assert got.texts == [] and got.dropped == got.drawn and got.rounds == 10


def test_fingerprints_are_per_document():
    vocab = Vocab.build("corpus", "abc", documents=True)
    ids = vocab.encode_documents(["ab", "c", "ab"])
    assert fingerprints(ids, vocab.end) == {
        fingerprint(vocab.encode("ab")),
        fingerprint(vocab.encode("c")),
    }


# --- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def names_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("names")
    names = _names(300)
    f = tmp / "names.txt"
    f.write_text("\n".join(names) + "\n", encoding="utf-8")
    config = charloom.preset_config(
        "tiny", **tiny_overrides(documents="lines", iters=60, sample_every=30, lr=1e-2)
    )
    charloom.train(config, paths=[str(f)], out=tmp / "run", console=False)
    return tmp / "run", f, names


def test_documents_run_records_the_mode_and_samples_documents(names_run, capsys):
    run, _, names = names_run
    config = json.loads((run / "best" / "config.json").read_text())
    assert (
        config["text"]["documents"] == "lines"
        and config["vocab"]["end"] == config["vocab"]["size"] - 1
    )
    assert (run / HASHES_FILE).is_file()
    model = charloom.load(run)
    texts = model.sample(num_samples=8, length=40, seed=1, engine="torch")
    assert len(texts) == 8 and all("\n" not in t for t in texts)
    assert main(["sample", str(run), "--num-samples", "6", "--seed", "2", "--length", "40"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 6


def test_novel_from_the_command_line(names_run, capsys):
    run, _, names = names_run
    rc = main(["sample", str(run), "--num-samples", "10", "--seed", "3", "--novel"])
    out, err = capsys.readouterr()
    assert rc == 0 and "--novel dropped" in err
    assert not set(out.splitlines()) & set(names)


def test_eval_counts_the_end_symbols(names_run, capsys):
    run, f, names = names_run
    assert main(["eval", str(run), str(f), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["end_symbols"] == len(names)
    assert result["chars"] == sum(map(len, names)) + len(names)
    assert main(["eval", str(run), str(f)]) == 0
    assert "300 end-of-document symbols" in capsys.readouterr().out


def test_invalid_documents_value_is_one_line(tmp_path, capsys):
    f = tmp_path / "n.txt"
    f.write_text("a\nb\n", encoding="utf-8")
    rc = main(["train", str(f), "--documents", "sentences", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "--documents" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_novel_on_a_stream_run_is_refused(tmp_path, capsys):
    vocab = Vocab.build("corpus", "abc")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=3, embed=4, hidden=8, layers=1))
    cm = CharModel(model, vocab, False, {}, tmp_path)
    with pytest.raises(charloom.CharloomError, match="documents mode"):
        cm.documents(num_samples=2)
