"""Training through the Python API: outputs, determinism, resume, presets, precisions."""

import json
import math

import pytest
import torch
from conftest import tiny_overrides

import charloom
from charloom.checkpoint import load_checkpoint
from charloom.data import load_data
from charloom.schedule import learning_rate
from charloom.train import Trainer, load_trainer


def _metrics(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def _losses(run):
    return [(r["iter"], r.get("train_loss"), r.get("val_loss")) for r in _metrics(run)]


def test_a_run_writes_its_outputs(tmp_path, small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(sample_every=5))
    result = charloom.train(cfg, text=small_text, out=tmp_path / "run", console=False)
    run = tmp_path / "run"
    for name in ("metrics.jsonl", "samples.txt", "loss.png", "loss.pdf"):
        assert (run / name).stat().st_size > 0, name
    for name in ("config.json", "model.safetensors", "state.json", "state.safetensors"):
        assert (run / "latest" / name).is_file()
    assert (run / "best" / "model.safetensors").is_file()
    assert result.iterations == 10
    assert result.best_val_loss is not None and math.isfinite(result.best_val_loss)
    evals = [r for r in _metrics(run) if "val_loss" in r]
    assert [r["iter"] for r in evals] == [5, 10]
    assert all(abs(r["val_bpc"] - r["val_loss"] / math.log(2)) < 1e-9 for r in evals)
    assert "--- iteration 5 ---\nTh" in (run / "samples.txt").read_text()
    config = json.loads((run / "latest" / "config.json").read_text())
    assert config["charloom_version"] == charloom.__version__
    assert config["vocab"]["kind"] == "corpus"
    assert config["model"]["hidden"] == 32


def test_same_seed_same_run(tmp_path, small_text):
    runs = []
    for name in ("a", "b"):
        cfg = charloom.preset_config("tiny", **tiny_overrides(layers=2, dropout=0.2))
        charloom.train(cfg, text=small_text, out=tmp_path / name, console=False)
        runs.append(_losses(tmp_path / name))
    assert runs[0] == runs[1]


def test_the_output_bias_starts_at_the_characters_log_frequencies(small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(head_bias="unigram"))
    cfg, data = load_data(cfg, text=small_text)
    ids = data.train
    counts = torch.bincount(ids.long(), minlength=data.vocab.size).double() + 1
    want = (counts / counts.sum()).log().float()
    assert torch.allclose(data.log_frequencies(), want, atol=1e-6)
    trainer = Trainer(cfg, data, "unused")
    assert torch.equal(trainer.model.head.bias.detach(), data.log_frequencies())
    # a symbol the training part lacks is rare, not impossible
    assert bool(torch.isfinite(want).all())
    # past `most` ids, 16 evenly spaced pieces are counted: the first and the last included
    most = 16 * 4
    sampled = data.log_frequencies(most=most)
    starts = torch.linspace(0, len(ids) - 4, 16).long().tolist()
    seen = torch.cat([ids[s : s + 4] for s in starts])
    counts = torch.bincount(seen.long(), minlength=data.vocab.size).double() + 1
    assert torch.allclose(sampled, (counts / counts.sum()).log().float(), atol=1e-6)
    assert starts[0] == 0 and starts[-1] == len(ids) - 4
    # torch: PyTorch's own start, drawn from the seed
    torch_cfg = cfg.replace(head_bias="torch")
    other = Trainer(torch_cfg, data, "unused").model.head.bias.detach()
    assert not torch.allclose(other, data.log_frequencies(), atol=0.1)


@pytest.mark.parametrize("batching", ["stream", "portions"])
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, small_text, batching):
    over = tiny_overrides(layers=2, dropout=0.2, iters=20, batching=batching, log_every=2)
    charloom.train(
        charloom.preset_config("tiny", **over),
        text=small_text,
        out=tmp_path / "whole",
        console=False,
    )
    charloom.train(
        charloom.preset_config("tiny", **over),
        text=small_text,
        out=tmp_path / "split",
        console=False,
        stop_at=10,
    )
    trainer = load_trainer(tmp_path / "split", text=small_text, console=False)
    assert trainer.iteration == 10
    trainer.run()
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")
    a = load_checkpoint(tmp_path / "whole" / "latest").weights
    b = load_checkpoint(tmp_path / "split" / "latest").weights
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_seed_preset_is_the_lecture(tmp_path, capsys):
    cfg = charloom.preset_config("seed")
    assert (cfg.vocab, cfg.ascii, cfg.batching, cfg.seq_len, cfg.batch_size) == (
        "printable",
        True,
        "portions",
        200,
        1,
    )
    assert (cfg.model.kind, cfg.model.layers, cfg.model.embed, cfg.model.hidden) == (
        "lstm",
        1,
        100,
        128,
    )
    assert cfg.head_bias == "torch"  # the lecture's nn.Linear starts as PyTorch starts it
    assert (cfg.path, cfg.optimizer, cfg.lr, cfg.iters, cfg.grad_clip) == (
        "cell",
        "adam",
        0.005,
        5000,
        None,
    )
    assert (cfg.sample_every, cfg.sample_prime, cfg.sample_length, cfg.sample_temperature) == (
        200,
        "Th",
        200,
        0.8,
    )
    text = "Curly “quotes” and café   spaces. " * 30
    short = charloom.preset_config("seed", iters=4, log_every=2, sample_every=4)
    charloom.train(short, text=text, out=tmp_path / "seed", console=True)
    err = capsys.readouterr().err
    assert "Time elapsed:" in err and "Iteration 2 | Loss" in err
    assert "\nTh" in err
    assert (tmp_path / "seed" / "loss.pdf").stat().st_size > 0
    model = charloom.load(tmp_path / "seed")
    assert model.vocab.size == 100 and model.ascii


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_other_cells_train(tmp_path, small_text, kind):
    cfg = charloom.preset_config("tiny", **tiny_overrides(kind=kind, layers=2))
    r = charloom.train(cfg, text=small_text, out=tmp_path / kind, console=False)
    assert math.isfinite(r.train_loss)
    assert len(charloom.load(tmp_path / kind).sample("Th", 10, seed=0)[0]) == 12


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bf16_precision_trains(tmp_path, small_text, kind):
    from charloom.device import cpu_has_bf16_lstm

    cfg = charloom.preset_config("tiny", **tiny_overrides(precision="bf16", kind=kind))
    if kind == "lstm" and not cpu_has_bf16_lstm():
        # A CPU without AVX-512 has no bf16 LSTM kernel: refused up front, nothing written.
        with pytest.raises(charloom.CharloomError, match="--precision bf16 needs a CPU"):
            charloom.train(cfg, text=small_text, out=tmp_path / "bf16", console=False)
        assert not (tmp_path / "bf16").exists()
        return
    r = charloom.train(cfg, text=small_text, out=tmp_path / "bf16", console=False)
    assert math.isfinite(r.train_loss) and math.isfinite(r.best_val_loss)


def test_auto_precision_is_resolved_and_recorded(tmp_path, small_text, monkeypatch):
    from charloom import device

    cpu = torch.device("cpu")
    assert charloom.preset_config("tiny").precision == "auto"
    assert charloom.preset_config("seed").precision == "fp32"  # the lecture's arithmetic
    assert device.resolve_precision("fp32", cpu) == "fp32"
    for fast, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "fast_bf16", lambda dev, fast=fast: fast)
        assert device.resolve_precision("auto", cpu) == want
        # (a GRU: it has a bf16 kernel on every CPU, the LSTM only with AVX-512)
        cfg = charloom.preset_config("tiny", **tiny_overrides(iters=2, kind="gru"))
        out = tmp_path / want
        charloom.train(cfg, text=small_text, out=out, console=False)
        saved = json.loads((out / "latest" / "state.json").read_text())
        assert saved["config"]["precision"] == want


def test_bytes_vocab_trains_on_any_script(tmp_path):
    text = "Grüße aus Köln! 東京は晴れ。 Привет, мир 🙂\n" * 60
    cfg = charloom.preset_config("tiny", **tiny_overrides(vocab="bytes"))
    charloom.train(cfg, text=text, out=tmp_path / "b", console=False)
    model = charloom.load(tmp_path / "b")
    (s,) = model.sample("東京", 30, seed=1)
    assert s.startswith("東京") and len(s) == 32


def test_time_budget_ends_the_run_and_the_schedule(tmp_path, small_text):
    # One-off costs of a first run in a process (imports of the optimiser's compiler and of
    # matplotlib: seconds on a busy machine) would eat a 1.5 s budget: pay them first.
    warm = charloom.preset_config("tiny", **tiny_overrides(iters=5))
    charloom.train(warm, text=small_text, out=tmp_path / "warm", console=False)
    over = tiny_overrides(time=1.5, iters=10**6, warmup=0, log_every=1)
    cfg = charloom.preset_config("tiny", **over)
    r = charloom.train(cfg, text=small_text, out=tmp_path / "t", console=False)
    assert 1.5 * 0.9 <= r.elapsed < 5
    records = [m for m in _metrics(tmp_path / "t") if "lr" in m]
    lrs = [m["lr"] for m in records]
    # The cosine follows the clock: the rate falls step by step, and each step's rate is the
    # cosine at the time before that step (which is at most the time logged after it).
    assert lrs and lrs == sorted(lrs, reverse=True)
    for m in records:
        assert m["lr"] >= learning_rate(cfg, 0, min(1.0, m["time"] / 1.5)) - 1e-12


def test_the_budget_clock_ends_the_schedule_at_the_deadline(monkeypatch):
    from charloom import schedule

    now = [100.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: now[0])
    cfg = charloom.preset_config("tiny", time=10.0, warmup=0)
    clock = schedule.BudgetClock(cfg, has_validation=True)
    clock.start()
    rates = []
    while not clock.done():
        rates.append(clock.learning_rate())
        clock.iteration += 1
        now[0] += 0.5  # every step takes half a second of a 10 s budget
        clock.tick()
    assert clock.iteration == 20 and clock.elapsed == 10.0
    assert rates[0] == cfg.lr and rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(learning_rate(cfg, 19, 0.95))
    assert learning_rate(cfg, 20, 1.0) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    # An evaluation that costs 0.2 s is spaced so evaluations take about 5% of the time,
    # and the reserve for the final one ends training early enough.
    clock.eval_cost = clock.save_cost = 0.2
    assert clock.done()
    clock.evaluated(0.2)
    assert clock.next_eval_at == pytest.approx(10.0 + 0.2 * 0.95 / 0.05)


def test_cosine_schedule_with_warmup():
    cfg = charloom.TrainConfig(lr=1.0, warmup=10, iters=110, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 0) == pytest.approx(1.0)
    assert learning_rate(cfg, 60, 0) == pytest.approx(0.55)
    assert learning_rate(cfg, 110, 0) == pytest.approx(0.1)


def test_linear_schedule_with_warmup_and_under_a_time_budget():
    cfg = charloom.TrainConfig(lr=1.0, warmup=10, iters=110, min_lr_ratio=0.0, schedule="linear")
    assert learning_rate(cfg, 9, 0) == pytest.approx(1.0)
    assert learning_rate(cfg, 35, 0) == pytest.approx(0.75)
    assert learning_rate(cfg, 110, 0) == pytest.approx(0.0)
    timed = cfg.replace(time=60.0, min_lr_ratio=0.2)  # progress is the budget's, not iterations'
    assert learning_rate(timed, 500, 0.5) == pytest.approx(0.6)
    assert learning_rate(timed, 500, 1.0) == pytest.approx(0.2)


def test_default_run_directory_never_replaces_a_run(tmp_path, small_text, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=2))
    a = charloom.train(cfg, text=small_text, name="demo", console=False)
    b = charloom.train(cfg, text=small_text, name="demo", console=False)
    assert a.run_dir.name == "demo" and b.run_dir.name == "demo-2"


def test_overwrite_replaces_a_run(tmp_path, small_text):
    cfg = charloom.preset_config("tiny", **tiny_overrides(iters=2))
    charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False)
    with pytest.raises(charloom.CharloomError, match="already exists"):
        charloom.train(cfg, text=small_text, out=tmp_path / "r", console=False)
    charloom.train(cfg, text=small_text, out=tmp_path / "r", overwrite=True, console=False)
    assert len([r for r in _metrics(tmp_path / "r") if "train_loss" in r]) == 1


def test_budget_sizing_grows_with_the_budget_and_the_machine():
    from charloom.presets import REFERENCE_GFLOPS, budget_overrides

    sizes = [
        budget_overrides(s, 1_000_000)["hidden"] * budget_overrides(s, 1_000_000)["layers"]
        for s in (10, 90, 300, 3600, 36000)
    ]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    slow = budget_overrides(300, 1_000_000, {"fp32": 10.0, "bf16": 5.0})
    fast = budget_overrides(300, 1_000_000, {"fp32": 1e4, "bf16": REFERENCE_GFLOPS * 200})
    assert slow["hidden"] * slow["layers"] < fast["hidden"] * fast["layers"]
    assert (slow["precision"], fast["precision"]) == ("fp32", "bf16")
    # Long budgets on a small text: dropout against overfitting.
    assert budget_overrides(3600, 50_000)["dropout"] > 0


def test_budget_rule_on_small_texts():
    from charloom.presets import REFERENCE_GFLOPS, SMALL_TEXT_MODEL, budget_overrides

    rates = {"fp32": REFERENCE_GFLOPS / 4, "bf16": REFERENCE_GFLOPS}
    # tiny shakespeare (1 MB): one layer for 90 s, two with light dropout for 5 minutes
    big90, big5m = budget_overrides(90, 1_000_000, rates), budget_overrides(300, 1_000_000, rates)
    assert (big90["layers"], big90["hidden"], big90["dropout"]) == (1, 512, 0.0)
    assert (big5m["layers"], big5m["hidden"], big5m["dropout"]) == (2, 512, 0.1)
    # a 77 KB text for 90 s: the one-layer entry would read it ~60 times -> the small-text model
    small90 = budget_overrides(90, 77_000, rates)
    assert small90["layers"] == SMALL_TEXT_MODEL[0]["layers"] == 2 and small90["dropout"] == 0.5
    assert budget_overrides(300, 77_000, rates)["dropout"] == 0.5
    # too short a budget for a two-layer model to get enough steps: stays small, no dropout
    assert budget_overrides(10, 77_000, rates)["layers"] == 1


def test_budget_rule_schedule_and_the_constant_rate():
    from charloom.presets import BUDGET_LADDER, PEAK_LR_SCALE, budget_overrides, constant_rate

    slow, fast = {"fp32": 84.0, "bf16": 1.0}, {"fp32": 1e4, "bf16": 1.0}
    one = budget_overrides(10, 1_000_000, slow)  # 1 reference second: the first entry
    assert one["layers"] == 1 and (one["schedule"], one["min_lr_ratio"]) == ("linear", 0.0)
    assert one["lr"] == pytest.approx(BUDGET_LADDER[0][1]["lr"] * PEAK_LR_SCALE)
    small = budget_overrides(60, 77_000, slow)  # one layer, but ~14 passes: no DECAY
    assert small["layers"] == 1 and "schedule" not in small
    assert small["lr"] == BUDGET_LADDER[0][1]["lr"]
    deep = budget_overrides(600, 1_000_000, fast)  # two layers: its entry's rate, no DECAY
    assert deep["layers"] == 2 and "schedule" not in deep
    cfg = charloom.TrainConfig().replace(**one)
    assert constant_rate(cfg) == BUDGET_LADDER[0][1]["lr"]
    assert constant_rate(cfg.replace(schedule="cosine")) == cfg.lr  # not the rule's: as given
    assert constant_rate(charloom.TrainConfig().replace(**deep)) == deep["lr"]


def test_budget_rule_times_the_candidates_smallest_first():
    from charloom.presets import BUDGET_LADDER, budget_overrides

    timed = []

    def speed(factor):
        def measure(settings, precision):
            timed.append(settings["hidden"] * settings["layers"])
            reference = next(c for _, e, c in BUDGET_LADDER if e is settings)
            return reference * factor

        return measure

    fp32 = {"fp32": 100.0, "bf16": 1.0}
    # At the reference machine's speeds (factor 1) 90 s reach the 30 s entry, not the 180 s one:
    # the timing stops at the first entry out of reach.
    assert budget_overrides(90, 1_000_000, fp32, speed(1.0))["hidden"] == 512
    assert timed == [256, 512, 1024]
    # Half the speed: 45 reference seconds; a tenth: 9, the smallest entry.
    assert budget_overrides(90, 1_000_000, fp32, speed(0.5))["hidden"] == 512
    timed.clear()
    small = budget_overrides(90, 1_000_000, fp32, speed(0.1))
    assert (small["hidden"], small["precision"], timed) == (256, "fp32", [256, 512])
    # Three times the speed: 270 reference seconds, two layers.
    assert budget_overrides(90, 1_000_000, fp32, speed(3.0))["layers"] == 2
    # The passes come from the measured speed: 1x256 at 180,000 chars/s for 10 s on 200 KB is
    # 9 passes (no decaying peak); at a tenth of that speed, 0.9 (the decaying peak).
    assert "schedule" not in budget_overrides(10, 200_000, fp32, speed(1.0))
    assert budget_overrides(10, 200_000, fp32, speed(0.1))["schedule"] == "linear"


def test_training_speed_probe_is_real_and_leaves_the_random_state():
    from charloom.presets import training_speed

    torch.manual_seed(123)
    before = torch.get_rng_state()
    settings = dict(layers=1, hidden=32, embed=16, batch_size=8, seq_len=16)
    fast = training_speed(settings, "fp32", seconds=0.05)
    assert torch.equal(torch.get_rng_state(), before)
    slow = training_speed(dict(settings, hidden=512), "fp32", seconds=0.05)
    assert 0 < slow < fast  # 16x wider, ~200x the arithmetic per character: slower


def test_time_without_size_flags_sizes_the_model(tmp_path, small_text, capsys):
    from charloom.commands import main

    text = tmp_path / "t.txt"
    text.write_text(small_text * 5, encoding="utf-8")
    assert main(["train", str(text), "--time", "2s", "--out", str(tmp_path / "a"), "--no-bar"]) == 0
    assert "sized for a 2 s budget" in capsys.readouterr().err
    argv = [
        "train",
        str(text),
        "--time",
        "2s",
        "--hidden",
        "32",
        "--embed",
        "8",
        "--layers",
        "1",
        "--out",
        str(tmp_path / "b"),
        "--no-bar",
    ]
    assert main(argv) == 0
    assert "sized for" not in capsys.readouterr().err
    assert charloom.load(tmp_path / "b").config.hidden == 32
