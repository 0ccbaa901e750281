"""The plain recipe (plainrecipe.py): the hand-written loop charloom is measured against. Tiny
models, budgets of a second or two; nothing here depends on how fast this machine is."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch.nn import functional as F

from charloom import plainrecipe, presets
from charloom.config import TrainConfig
from charloom.data import encode_text
from charloom.device import cpu_has_bf16_lstm
from charloom.errors import CharloomError
from charloom.train import train

TINY = plainrecipe.PlainChoice(
    layers=1,
    hidden=32,
    embed=16,
    dropout=0.0,
    batch_size=8,
    seq_len=32,
    lr=1e-2,
    precision="fp32",
    grad_clip=1.0,
    seed=3,
)
TEXT = "the cat sat on the mat. the dog sat on the log. " * 120  # 5,880 chars, 14 distinct


@pytest.mark.parametrize("n", [20, 999, 1000, 1001, 5_880, 1_115_394, 123_456_789])
def test_held_out_part_is_the_one_charloom_train_holds_out(n):
    # charloom trains on ids[:cut] and validates on ids[cut:]; the bench's `charloom eval` and
    # the plain loop score text[held_out_start(n):]: the same characters.
    text = (TEXT * (n // len(TEXT) + 1))[:n] if n < 10**6 else None
    cut = plainrecipe.held_out_start(n)
    if text is not None:
        data = encode_text(TrainConfig(), text)
        assert len(data.train) == cut and len(data.val) == n - cut
        assert data.vocab.decode(data.val.numpy()) == text[cut:]
    assert n - cut == int(n * TrainConfig().val_fraction)  # the last 10%


def test_the_loop_learns_within_its_budget():
    result = plainrecipe.train_plain(TEXT, TINY, seconds=2.0, device="cpu")
    uniform = math.log(len(set(TEXT)))  # a model that knows nothing: ln(V)
    assert result.vocab_size == len(set(TEXT)) == 14
    assert result.iterations > 0 and result.train_s >= 2.0
    assert math.isfinite(result.val_loss) and result.val_loss < uniform
    assert math.isfinite(result.train_loss) and result.train_loss < uniform
    assert result.val_bpc == pytest.approx(result.val_loss / math.log(2))
    # every held-out character after the first is predicted once
    assert result.chars == len(TEXT) - plainrecipe.held_out_start(len(TEXT)) - 1
    assert result.chars_per_s == pytest.approx(result.iterations * 8 * 32 / result.train_s)
    assert result.choice == dataclasses.asdict(TINY)


def test_the_loop_leaves_the_callers_torch_settings_alone():
    torch.manual_seed(123)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    plainrecipe.train_plain(TEXT, TINY, seconds=0.2, device="cpu")
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads


def test_held_out_loss_is_the_mean_cross_entropy_of_the_held_out_characters():
    torch.manual_seed(0)
    model = plainrecipe.PlainLSTM(14, dataclasses.replace(TINY, layers=2, dropout=0.3)).eval()
    held = torch.randint(0, 14, (500,))
    # 499 predictions: one chunk from the zero state, so the whole text in one pass
    with torch.no_grad():
        logits, _ = model(held[None, :-1])
        want = F.cross_entropy(logits[0], held[1:]).item()
    got = plainrecipe.held_out_loss(model, held)
    assert got.chars == 499 and got.loss == pytest.approx(want, rel=1e-5)


@pytest.mark.skipif(not cpu_has_bf16_lstm(), reason="this CPU has no bf16 LSTM kernel")
def test_the_loop_trains_under_bf16_autocast():
    result = plainrecipe.train_plain(TEXT, dataclasses.replace(TINY, precision="bf16"), 1.0, "cpu")
    assert math.isfinite(result.val_loss) and result.iterations > 0


@pytest.mark.skipif(cpu_has_bf16_lstm(), reason="this CPU runs bf16 LSTMs")
def test_bf16_without_a_kernel_is_refused_before_training():
    with pytest.raises(CharloomError, match="bf16 needs a CPU with AVX-512"):
        plainrecipe.train_plain(TEXT, dataclasses.replace(TINY, precision="bf16"), 1.0, "cpu")


def test_bad_input_is_one_clear_error():
    with pytest.raises(CharloomError, match="budget must be more than zero"):
        plainrecipe.train_plain(TEXT, TINY, seconds=0)
    with pytest.raises(CharloomError, match="fewer than one batch of 8 streams x 32"):
        plainrecipe.train_plain(TEXT[:200], TINY, seconds=1.0)


def test_the_choice_is_what_charloom_train_picks(tmp_path, monkeypatch):
    # The machine's rate fixed (fp32 the faster), so the rule picks the same thing twice.
    monkeypatch.setattr(presets, "machine_rate", lambda device="cpu": {"fp32": 300, "bf16": 30})
    # ... and so are the speeds the rule times the candidates at.
    monkeypatch.setattr(presets, "training_speed", lambda s, p, d="cpu": 60_000.0)
    text = TEXT * 2
    config = presets.preset_config(time=0.5)
    train(config, text=text, out=tmp_path / "run", size_for_budget=True, console=False)
    chosen = plainrecipe.choice_of_run(tmp_path / "run")
    assert chosen == plainrecipe.plain_choice(0.5, len(text))
    assert (chosen.layers, chosen.hidden, chosen.precision) == (1, 256, "fp32")
    assert chosen.batch_size * chosen.seq_len > 0 and chosen.grad_clip == 1.0
    assert "lstm 1x256 (embed 64), fp32, batch 32x64" in chosen.describe()
    # charloom trains at PEAK_LR_SCALE x the ladder's rate, decaying to zero; the constant loop
    # is given the ladder's own rate
    run_config = TrainConfig.from_dict(
        json.loads((tmp_path / "run" / "latest" / "state.json").read_text())["config"]
    )
    ladder_lr = presets.BUDGET_LADDER[0][1]["lr"]
    assert run_config.lr == pytest.approx(ladder_lr * presets.PEAK_LR_SCALE)
    assert (run_config.schedule, run_config.min_lr_ratio) == ("linear", 0.0)
    assert chosen.lr == ladder_lr


def test_a_folder_without_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(CharloomError, match="cannot read the training settings of"):
        plainrecipe.choice_of_run(tmp_path)


def test_a_file_is_read_as_charloom_reads_it_in_a_fresh_process(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.replace("\n", "").replace(". ", ".\r\n").encode())
    result = plainrecipe.run_file_fresh(path, TINY, seconds=0.5)
    # the byte-order mark dropped, CRLF read as LF: the characters charloom trains on
    assert result["vocab_size"] == len(set(TEXT.replace(". ", ".\n")))
    assert result["iterations"] > 0 and math.isfinite(result["val_loss"])
