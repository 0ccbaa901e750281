"""Evaluations during training stay a small share of the run: each reads at most
``eval_chars`` validation characters (by default sized from the training between
evaluations), and no iteration is evaluated twice."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_overrides

import charloom
from charloom.commands import main
from charloom.config import TrainConfig
from charloom.errors import CharloomError
from charloom.evaluate import evaluate_ids
from charloom.schedule import EVAL_SHARE, MAX_EVAL_CHARS, MIN_EVAL_CHARS, eval_chars
from charloom.train import load_trainer


def _evals(run) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["iter"] for r in map(json.loads, lines) if "val_loss" in r]


def test_default_eval_chars_keep_evaluations_near_their_share():
    cfg = TrainConfig()  # 200 iterations of 32 x 100 characters between evaluations
    trained = 200 * 32 * 100
    assert eval_chars(cfg) == int(EVAL_SHARE / (1 - EVAL_SHARE) * 3 * trained)
    assert 100_000 < eval_chars(cfg) < 102_000
    assert eval_chars(cfg.replace(iters=5)) == 2526  # a short run reads little
    assert eval_chars(cfg.replace(iters=1)) == MIN_EVAL_CHARS
    assert eval_chars(cfg.replace(eval_every=100_000)) == MAX_EVAL_CHARS
    assert eval_chars(cfg.replace(time=60.0, iters=5)) == eval_chars(cfg)  # time: eval_every
    assert eval_chars(cfg.replace(eval_chars=5000, iters=5)) == 5000


@pytest.mark.parametrize("value", [0, 1, -3, 2.5, True, "10"])
def test_eval_chars_is_validated(value):
    with pytest.raises(CharloomError, match="--eval-chars must be an integer >= 2"):
        TrainConfig(eval_chars=value).validate()


@pytest.mark.parametrize(("value", "needle"), [("1", "must be >= 2"), ("many", "not an integer")])
def test_eval_chars_flag_refuses_bad_values(tmp_path, value, needle, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello there\n" * 50, encoding="utf-8")
    assert main(["train", str(text), "--eval-chars", value, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: argument --eval-chars:") and needle in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_evaluations_read_the_first_eval_chars_of_the_held_out_text(tmp_path, small_text):
    seen = []

    def check(t) -> None:
        # The same precision as the run's evaluation (bf16 where the CPU runs it natively).
        dtype = torch.bfloat16 if t.config.precision == "bf16" else None
        seen.append((t.last_val, evaluate_ids(t.model, t.data.val[:300], autocast_dtype=dtype)))

    cfg = charloom.preset_config("tiny", **tiny_overrides(eval_chars=300, val_fraction=0.2))
    charloom.train(
        cfg, text=small_text, out=tmp_path / "run", console=False, callbacks={"eval": [check]}
    )
    assert len(seen) == 2
    for got, want in seen:
        assert got.chars == want.chars == 299
        assert math.isclose(got.loss, want.loss, rel_tol=1e-6)


def test_no_iteration_is_evaluated_twice(tmp_path, small_text):
    # The final iteration is due by the budget and by eval_every at once; then a resume that
    # extends the budget starts where the finished run stopped.
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=5, eval_every=5))
    charloom.train(cfg, text=small_text, out=tmp_path / "run", console=False)
    assert _evals(tmp_path / "run") == [5]
    trainer = load_trainer(tmp_path / "run", {"iters": 10}, small_text, console=False)
    trainer.run()
    assert _evals(tmp_path / "run") == [5, 10]
    # A resume with nothing left to do evaluates nothing.
    load_trainer(tmp_path / "run", {"iters": 10}, small_text, console=False).run()
    assert _evals(tmp_path / "run") == [5, 10]


def _large_vocab_text() -> str:
    symbols = "".join(chr(0x4E00 + i) for i in range(1100))  # 1,100 CJK ideographs
    return (symbols + "\n") * 6


def test_a_large_corpus_vocabulary_gets_one_note(tmp_path, capsys):
    text = tmp_path / "many.txt"
    text.write_text(_large_vocab_text(), encoding="utf-8")
    assert main(["prepare", str(text), "--out", str(tmp_path / "data")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: the corpus vocabulary has 1,101 symbols") == 1
    assert "--vocab bytes" in err
    args = ["train", str(tmp_path / "data"), "--preset", "tiny", "--iters", "1", "--no-bar"]
    args += ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: the corpus vocabulary has 1,101 symbols") == 1
    # A small vocabulary, or --vocab bytes, says nothing.
    assert main(["prepare", str(text), "--out", str(tmp_path / "b"), "--vocab", "bytes"]) == 0
    assert "note:" not in capsys.readouterr().err
