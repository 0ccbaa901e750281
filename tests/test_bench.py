"""The benchmark suite's pieces, at toy sizes (the suite itself runs for minutes)."""

import string

import pytest
import torch

from charloom import bench
from charloom.model import CharRNN, ModelConfig


@pytest.fixture(scope="module")
def seed_size_model():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=100, **bench.SEED_SIZE)).eval()


def test_lecture_loop_writes_printable_text(seed_size_model):
    text = bench._Lecture(seed_size_model).generate(40)
    assert len(text) == 41 and text[0] == "T"
    assert set(text) <= set(string.printable)


@pytest.mark.parametrize("streams", [1, 5])
def test_generation_speed_counts_new_characters(seed_size_model, streams):
    assert bench.generation_chars_per_s(seed_size_model, streams, 30, engine="torch") > 0


def test_table_names_every_headline_figure():
    eff = {"chars_per_s": 1000.0, "model_gflops": 10.0}
    quality = {"model": {"kind": "lstm", "layers": 1, "hidden": 512}, "iterations": 9}
    results = {
        "train_seed_chars_per_s": 5000.0,
        "train_fast_chars_per_s": 250000.0,
        "train_fast_batch": "32x64",
        "train_fast_precision": "bf16",
        "train_speedup_vs_seed": 50.0,
        "train_fast_fp32_chars_per_s": 200000.0,
        "train_speedup_vs_seed_fp32": 40.0,
        "matmul_peak_gflops": {"fp32": 200.0, "bf16": 800.0},
        "efficiency": {"fp32": eff, "bf16": eff},
        "fp32_efficiency": 1.2,
        "bf16_over_fp32": 1.7,
        "gen_lecture_chars_per_s": 20000.0,
        "gen_chars_per_s": 250000.0,
        "gen_speedup_vs_seed": 12.5,
        "gen_batched_chars_per_s": 1200000.0,
        "eval_chars_per_s": 50000.0,
        "val_loss_90s": 1.47,
        "quality_90s": dict(quality, budget="45s"),
    }
    out = bench.table(results)
    for figure in ("50.0x", "40.0x", "12.5x", "1,200,000", "1.4700", "--time 45s", "bf16"):
        assert figure in out
    assert "5m" not in out  # no 5-minute run: no row for it
