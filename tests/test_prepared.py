"""Prepared data: `charloom prepare` encodes text in pieces exactly as training from the text
would, and training from the prepared folder is training from the text."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

import charloom
from charloom.checkpoint import load_checkpoint
from charloom.commands import main
from charloom.corpus import AsciiNormaliser, iter_text, normalise_ascii, read_files
from charloom.data import encode_text, map_prepared
from charloom.prepared import IDS_FILE, META_FILE, PreparedCorpus, prepare
from charloom.train import load_trainer
from charloom.vocab import Vocab

PREFIX = "charloom: error: "


def _ids(folder) -> np.ndarray:
    meta = json.loads((folder / META_FILE).read_text())
    return np.fromfile(folder / IDS_FILE, dtype=meta["dtype"])


def _tricky_files(tmp_path):
    """Files whose BOMs, CRLFs and multi-byte characters fall on every chunk boundary."""
    rng = random.Random(7)
    pieces = ["ab", "\r\n", "\r", "\n", "é", "€", "😀", "  ", "The ", "\ufeff"]
    files = []
    for i in range(4):
        text = "".join(rng.choice(pieces) for _ in range(300))
        data = text.encode("utf-8")
        if i % 2 == 0:
            data = b"\xef\xbb\xbf" + data
        p = tmp_path / f"f{i}.txt"
        p.write_bytes(data)
        files.append(str(p))
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "tail.txt").write_bytes(b"no newline at the end\r")
    return [*files, str(tmp_path / "empty.txt"), str(tmp_path / "tail.txt")]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_streamed_text_is_the_text_read_whole(tmp_path, chunk):
    files = _tricky_files(tmp_path)
    assert "".join(iter_text(files, chunk_size=chunk)) == read_files(files)


def test_ascii_normalisation_in_pieces_is_the_whole_normalised():
    text = "Grüße  aus   Köln \u00a0\u00a0 東京   " * 3
    for cut in range(1, 12):
        norm = AsciiNormaliser()
        pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
        assert "".join(norm.feed(p) for p in pieces) == normalise_ascii(text), cut


@pytest.mark.parametrize(
    "vocab, ascii", [("corpus", False), ("bytes", False), ("printable", True), ("corpus", True)]
)
def test_prepared_ids_are_the_in_memory_encoding(tmp_path, vocab, ascii):
    files = _tricky_files(tmp_path)
    data = prepare(files, tmp_path / "data", vocab=vocab, ascii=ascii, chunk_bytes=3)
    text = read_files(files)
    config = charloom.TrainConfig(vocab=vocab, ascii=ascii)
    want = encode_text(config, text)
    ids = _ids(tmp_path / "data")
    assert data.vocab == want.vocab and data.length == len(ids)
    assert np.array_equal(ids, torch.cat([want.train, want.val]).numpy())
    assert data.sha256 == want.sha256 == hashlib.sha256(ids.tobytes()).hexdigest()


@pytest.mark.parametrize("size, dtype", [(300, np.int16), (33_000, np.int32)])
def test_a_vocabulary_wider_than_a_byte(tmp_path, size, dtype):
    chars = [chr(c) for c in range(0x100, 0x100 + size - 3)] + ["\U0001f642", "a", "\n"]
    rng = random.Random(1)
    text = "".join(chars) + "".join(rng.choice(chars) for _ in range(5000))
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    data = prepare([str(tmp_path / "wide.txt")], tmp_path / "data", chunk_bytes=10)
    assert data.dtype == dtype and data.vocab.size == size
    ids = _ids(tmp_path / "data")
    assert np.array_equal(ids, Vocab.build("corpus", text).encode(text))
    assert data.sha256 == hashlib.sha256(ids.tobytes()).hexdigest()


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_on_prepared_data_is_training_on_the_text(tmp_path, text_file):
    prepare([str(text_file)], tmp_path / "data")
    over = tiny_overrides(iters=12, log_every=2, eval_every=6)
    charloom.train(
        charloom.preset_config("tiny", **over),
        paths=[str(text_file)],
        out=tmp_path / "a",
        console=False,
    )
    charloom.train(
        charloom.preset_config("tiny", **over),
        paths=[str(tmp_path / "data")],
        out=tmp_path / "b",
        console=False,
        stop_at=6,
    )
    trainer = load_trainer(tmp_path / "b", console=False)  # re-opens the prepared folder
    assert trainer.data.source.prepared
    trainer.run()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "latest")
    b = load_checkpoint(tmp_path / "b" / "latest")
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert b.meta["training"]["source"]["prepared"] is True


def _losses(run):
    return [(m["iter"], m.get("train_loss"), m.get("val_loss")) for m in _metrics(run)]


def test_prepared_data_is_mapped_not_read(tmp_path, text_file):
    prepare([str(text_file)], tmp_path / "data", vocab="bytes")
    config, data = map_prepared(charloom.TrainConfig(), tmp_path / "data")
    assert config.vocab == "bytes"  # the folder's vocabulary, not the default
    mapped = PreparedCorpus.open(tmp_path / "data").ids()
    assert len(data.train) + len(data.val) == len(mapped)
    assert not mapped.numpy().flags.owndata  # a view of the file mapping


def test_prepare_on_the_command_line(tmp_path, text_file, capsys):
    out = tmp_path / "data"
    assert main(["prepare", str(text_file), "--out", str(out)]) == 0
    assert "charloom: prepared" in capsys.readouterr().out
    assert main(["prepare", str(text_file), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "small.txt"]  # no leftovers


def _expect_error(capsys, argv, needle):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err, (rc, out, err)
    assert len(err.splitlines()) == 1 and err.startswith(PREFIX), err
    assert needle in err, err


def test_prepare_errors_are_one_line_and_write_nothing(tmp_path, text_file, capsys):
    out = str(tmp_path / "data")
    _expect_error(capsys, ["prepare", str(tmp_path / "missing.txt"), "--out", out], "no such")
    (tmp_path / "empty.txt").write_bytes(b"\xef\xbb\xbf")
    _expect_error(capsys, ["prepare", str(tmp_path / "empty.txt"), "--out", out], "empty")
    _expect_error(
        capsys, ["prepare", str(tmp_path / "empty.txt"), "--out", out, "--vocab", "bytes"], "empty"
    )
    (tmp_path / "bad.txt").write_bytes(b"fine text\n" * 1000 + b"\xff")
    _expect_error(capsys, ["prepare", str(tmp_path / "bad.txt"), "--out", out], "byte 10000")
    _expect_error(capsys, ["prepare", str(text_file), "--out", str(text_file)], "is a file")
    _expect_error(capsys, ["prepare", str(text_file)], "--out")
    _expect_error(
        capsys, ["prepare", str(text_file), "--out", out, "--vocab", "bytes", "--ascii"], "--ascii"
    )
    _expect_error(capsys, ["prepare", "--out", out], "give the text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "empty.txt", "small.txt"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    _expect_error(capsys, ["prepare", str(text_file), "--out", str(tmp_path / "full")], "not empty")
    assert main(["prepare", str(text_file), "--out", out, "--quiet"]) == 0
    _expect_error(capsys, ["prepare", str(text_file), "--out", out], "--overwrite")


def test_training_refuses_what_the_prepared_data_cannot_give(tmp_path, text_file, capsys):
    prepare([str(text_file)], tmp_path / "data")
    with pytest.raises(charloom.CharloomError, match="prepared with --vocab corpus"):
        map_prepared(charloom.TrainConfig(vocab="bytes"), tmp_path / "data")
    with pytest.raises(charloom.CharloomError, match="alone"):
        charloom.train(paths=[str(tmp_path / "data"), str(text_file)], out=tmp_path / "r")
    (tmp_path / "data" / IDS_FILE).write_bytes(b"short")
    with pytest.raises(charloom.CharloomError, match="prepare the text again"):
        PreparedCorpus.open(tmp_path / "data")
