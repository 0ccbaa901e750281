"""Characters outside the vocabulary in a text to read: ``unknown="error"`` (the default) names
them and the way on; ``unknown="skip"`` reads the text without them, in ``charloom eval``,
``charloom viz`` and the server's ``/v1/next`` (tested in test_serve.py) alike."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import make_text, tiny_overrides

import charloom
from charloom.commands import main
from charloom.errors import CharloomError
from charloom.viz import page_data

CLEAN = make_text(40)  # every character in the model's vocabulary
# Five characters the training text never holds, one at the very start.
DIRTY = "€" + CLEAN[:100] + "éé" + CLEAN[100:700] + "😀" + CLEAN[700:] + "€"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unknown") / "run"
    cfg = charloom.preset_config("tiny", **tiny_overrides())
    charloom.train(cfg, text=make_text(), out=out, console=False)
    return out


@pytest.fixture(scope="module")
def model(run_dir):
    return charloom.load(run_dir)


def test_skip_scores_the_text_without_the_unknown_characters(model):
    assert len(model.vocab.unknown(DIRTY)) == 3 and not model.vocab.unknown(CLEAN)
    skipped = model.evaluate(DIRTY, unknown="skip")
    clean = model.evaluate(CLEAN)
    assert skipped.skipped == 5 and clean.skipped == 0
    assert skipped.chars == clean.chars == len(CLEAN) - 1
    assert math.isclose(skipped.loss, clean.loss, rel_tol=1e-6)
    assert skipped.to_dict()["skipped"] == 5


def test_error_is_the_default_and_says_how_to_go_on(model):
    with pytest.raises(CharloomError, match=r"3 character\(s\) outside.*unknown=\"skip\""):
        model.evaluate(DIRTY)
    with pytest.raises(CharloomError, match="unknown must be one of error, skip"):
        model.evaluate(CLEAN, unknown="drop")


def test_eval_command_skips_and_reports_the_count(run_dir, tmp_path, capsys):
    dirty, clean = tmp_path / "dirty.txt", tmp_path / "clean.txt"
    dirty.write_text(DIRTY, encoding="utf-8")
    clean.write_text(CLEAN, encoding="utf-8")
    assert main(["eval", str(run_dir), str(dirty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: ") and err.count("\n") == 1
    assert "'€'" in err and "--unknown skip" in err
    assert main(["eval", str(run_dir), str(dirty), "--unknown", "skip", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run_dir), str(clean), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["skipped"] == 5 and want["skipped"] == 0
    assert got["chars"] == want["chars"] and math.isclose(got["loss"], want["loss"], rel_tol=1e-6)
    assert main(["eval", str(run_dir), str(dirty), "--unknown", "skip"]) == 0
    assert "(5 unknown chars skipped)" in capsys.readouterr().out


def test_eval_command_refuses_a_bad_unknown_value(run_dir, tmp_path, capsys):
    text = tmp_path / "clean.txt"
    text.write_text(CLEAN, encoding="utf-8")
    assert main(["eval", str(run_dir), str(text), "--unknown", "drop"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: argument --unknown: invalid choice")
    assert err.count("\n") == 1


def test_viz_skips_them_and_counts_only_those_it_covers(model, run_dir, tmp_path, capsys):
    with pytest.raises(CharloomError, match="--unknown skip"):
        page_data(model, DIRTY)
    got = page_data(model, DIRTY, unknown="skip", max_chars=1000)
    want = page_data(model, CLEAN, max_chars=1000)
    assert got["text"]["skipped"] == 4  # the last one lies beyond the 1000 characters shown
    assert got["ids"] == want["ids"] and got["labels"] == want["labels"]
    assert math.isclose(got["mean_bits"], want["mean_bits"], rel_tol=1e-6)
    assert got["text"]["shown"] == want["text"]["shown"] + 4
    page = tmp_path / "page.html"
    text = tmp_path / "dirty.txt"
    text.write_text(DIRTY, encoding="utf-8")
    args = ["viz", str(run_dir), str(text), "--out", str(page), "--unknown", "skip"]
    assert main(args) == 0
    assert "(5 unknown chars skipped)" in capsys.readouterr().out
