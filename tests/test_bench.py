"""The benchmark suite's pieces, at toy sizes (the suite itself runs for minutes).

No assertion here depends on how fast this machine is: clocks are replaced by fake ones where a
rate is checked, and the suite's derived figures are checked against the components it measured.
"""

import dataclasses
import json
import string
import types

import pytest
import torch

from charloom import bench, plainrecipe
from charloom.model import CharRNN, ModelConfig
from charloom.serve import throughput


@pytest.fixture(scope="module")
def seed_size_model():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=100, **bench.SEED_SIZE)).eval()


def fake_clock(step: float = 1.0):
    """A stand-in for the ``time`` module whose clock advances ``step`` seconds per reading."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += step
        return now[0]

    return types.SimpleNamespace(perf_counter=perf_counter, now=now)


def test_lecture_loop_writes_printable_text(seed_size_model):
    text = bench._Lecture(seed_size_model).generate(40)
    assert len(text) == 41 and text[0] == "T"
    assert set(text) <= set(string.printable)


@pytest.mark.parametrize("streams", [1, 5])
def test_generation_speed_counts_new_characters(seed_size_model, streams, monkeypatch):
    # One clock reading before generating and one after: exactly 1 s apart, so the rate is the
    # number of new characters of all streams together (the prime "T" not counted).
    monkeypatch.setattr(bench, "time", fake_clock(1.0))
    rate = bench.generation_chars_per_s(seed_size_model, streams, 30, engine="torch")
    assert rate == streams * 30


@pytest.mark.parametrize("seeded", [False, True])
def test_server_speed_counts_every_streams_new_characters(seed_size_model, seeded, monkeypatch):
    pytest.importorskip("fastapi", reason="needs the serve extra")
    # As above: the clock is read once before the requests go out and once after all are done.
    monkeypatch.setattr(throughput, "time", fake_clock(1.0))
    assert bench.server_chars_per_s(seed_size_model, 5, 70, seeded) == 5 * 70


def test_timed_is_seconds_per_call_after_a_warm_up(monkeypatch):
    clock = fake_clock(0.0)  # time passes only in the timed function: 0.5 s a call

    def work():
        calls.append(clock.perf_counter())
        clock.now[0] += 0.5

    monkeypatch.setattr(bench, "time", clock)
    calls = []
    assert bench._timed(work, min_time=0.0, min_reps=4) == 0.5
    assert len(calls) == 1 + 4  # a warm-up call, then the timed ones
    calls.clear()
    assert bench._timed(work, min_time=3.0, min_reps=1) == 0.5
    assert len(calls) == 1 + 6  # enough calls to fill min_time


def test_matmul_peak_counts_two_flops_per_multiply_add(monkeypatch):
    monkeypatch.setattr(bench, "_timed", lambda fn, min_time: (fn(), 0.25)[1])
    assert bench.matmul_peak(torch.float32, n=16) == 2 * 16**3 / 0.25


@pytest.mark.parametrize("kind, gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_model_flops_count_by_hand(kind, gates):
    cfg = ModelConfig(kind=kind, vocab_size=65, embed=128, hidden=512, layers=2)
    # Multiply-adds per character: layer 1 reads the embedding, layer 2 the layer below; then
    # the head. Two FLOPs each; training is three times the forward pass.
    macs = gates * 512 * (128 + 512) + gates * 512 * (512 + 512) + 512 * 65
    assert bench.flops_per_char(cfg, training=False) == 2 * macs
    assert bench.flops_per_char(cfg) == 3 * 2 * macs


CHOICE = dict(
    layers=1,
    hidden=256,
    embed=64,
    dropout=0.0,
    batch_size=32,
    seq_len=64,
    lr=4e-3,
    precision="bf16",
    grad_clip=1.0,
    seed=1337,
)


def _fake_suite(monkeypatch, tmp_path, bf16: bool, server: bool = True, quick: bool = True):
    speeds = {"cell": 4_000.0, "fp32": 150_000.0, "bf16": 240_000.0}
    # A machine with native bf16 (where `auto` means bf16), or one without a bf16 LSTM kernel.
    auto = "bf16" if bf16 else "fp32"
    monkeypatch.setattr(bench, "resolve_precision", lambda p, device: auto if p == "auto" else p)
    monkeypatch.setattr(bench, "cpu_has_bf16_lstm", lambda: bf16)

    def train_speed(config, text, min_time):
        assert config.precision != "auto"  # the bench records the precision it ran
        if config.path == "cell":
            return speeds["cell"]
        return speeds[config.precision]

    quality_runs, plain_runs = [], []

    def quality(data, seconds, workdir):
        quality_runs.append((data, seconds))
        model = {"kind": "lstm", "layers": 1, "hidden": 256, "embed": 64, "dropout": 0.0}
        return dict(
            val_loss=1.5 if seconds == "90s" else 1.4,
            val_bpc=2.16,
            chars=10_000,
            train_wall_s=91.0,
            eval_wall_s=0.5,
            model=model,
            iterations=700,
            chars_per_s=49_000.0,
            choice=dict(CHOICE, lr=3e-3 if seconds == "5m" else 4e-3),
        )

    def plain(path, choice, seconds):
        plain_runs.append((path, choice, seconds))
        return dict(
            val_loss=1.53 if seconds == 90 else 1.42,
            val_bpc=2.2,
            chars=10_000,
            iterations=800,
            train_s=seconds + 0.1,
            chars_per_s=52_000.0,
            train_loss=1.4,
            vocab_size=65,
            choice=dataclasses.asdict(choice),
        )

    peaks = {torch.float32: 1e11, torch.bfloat16: 4e11}
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, min_time: peaks[dtype])
    monkeypatch.setattr(bench, "train_chars_per_s", train_speed)
    monkeypatch.setattr(bench, "_timed", lambda fn, min_time, min_reps=3: 0.1)
    monkeypatch.setattr(
        bench,
        "generation_chars_per_s",
        lambda m, streams, n, engine="auto", repeats=3: (
            {"torch": 500.0, "numpy": 700.0}.get(engine, 1000.0) * streams
        ),
    )
    monkeypatch.setattr(bench, "server_available", lambda: server)
    server_speeds = {False: 500.0, True: 300.0}  # per stream, unseeded and seeded
    monkeypatch.setattr(
        bench, "server_chars_per_s", lambda m, streams, n, seeded: server_speeds[seeded] * streams
    )
    monkeypatch.setattr(bench, "_quality_run", quality)
    monkeypatch.setattr(plainrecipe, "run_file_fresh", plain)
    data = tmp_path / "text.txt"
    data.write_text("The quick brown fox jumps over the lazy dog.\n" * 200, encoding="utf-8")
    results = bench.run(quick=quick, data=data, log=lambda msg: None)
    assert [(path, seconds) for path, _, seconds in plain_runs] == [
        (data, 90.0),
        *([] if quick else [(data, 300.0)]),
    ]
    return results, quality_runs, speeds, data


@pytest.fixture
def fake_suite(monkeypatch, tmp_path):
    """``bench.run`` with every measurement replaced by a fixed figure, so the figures it derives
    can be checked exactly. Returns the results and the quality runs that were asked for."""
    return _fake_suite(monkeypatch, tmp_path, bf16=True)


def test_a_cpu_without_bf16_lstm_gets_no_bf16_row(monkeypatch, tmp_path):
    r, _, speeds, _ = _fake_suite(monkeypatch, tmp_path, bf16=False)
    assert r["train_fast_precision"] == "fp32"
    assert r["efficiency"]["bf16"] is None and r["efficiency"]["fp32"]["chars_per_s"] == 150_000
    assert r["bf16_over_fp32"] is None and r["bf16_efficiency_vs_bf16_peak"] is None
    out = bench.table(r)
    assert out.count(bench.NO_BF16) == 3
    assert json.loads(json.dumps(r)) == r


def test_without_fastapi_the_server_rows_say_why(monkeypatch, tmp_path):
    r, _, _, _ = _fake_suite(monkeypatch, tmp_path, bf16=True, server=False)
    for key in ("server", "server_seeded"):
        assert r[f"{key}_chars_per_s"] is None and r[f"{key}_over_offline"] is None
    assert r["server_missing"] == bench.NO_SERVER
    assert bench.table(r).count(bench.NO_SERVER) == 2
    assert json.loads(json.dumps(r)) == r


def test_suite_ratios_are_the_measured_components(fake_suite):
    r, quality_runs, speeds, data = fake_suite
    assert r["train_seed_chars_per_s"] == speeds["cell"]
    assert r["train_speedup_vs_seed"] == r["train_fast_chars_per_s"] / speeds["cell"]
    assert r["train_speedup_vs_seed_fp32"] == speeds["fp32"] / speeds["cell"]
    assert r["matmul_peak_gflops"] == {"fp32": 100.0, "bf16": 400.0}
    eff = r["efficiency"]
    assert eff["fp32"]["chars_per_s"] == speeds["fp32"]
    assert eff["bf16"]["chars_per_s"] == speeds["bf16"]
    cfg = ModelConfig(**bench.EFFICIENCY_SIZE, vocab_size=len(set(data.read_text())))
    assert eff["fp32"]["model_gflops"] == pytest.approx(
        speeds["fp32"] * bench.flops_per_char(cfg) / 1e9
    )
    assert r["fp32_efficiency"] == pytest.approx(eff["fp32"]["model_gflops"] / 100.0)
    assert r["bf16_efficiency_vs_bf16_peak"] == pytest.approx(eff["bf16"]["model_gflops"] / 400)
    assert r["bf16_over_fp32"] == speeds["bf16"] / speeds["fp32"]
    # generation: the lecture loop's 1000 characters (quick) in the fake 0.1 s
    assert r["gen_lecture_chars_per_s"] == pytest.approx(1000 / 0.1)
    assert r["gen_chars_per_s"] == 1000.0 and r["gen_batched_chars_per_s"] == 64_000.0
    assert r["gen_batched_over_one_stream"] == 64.0
    assert r["gen_speedup_vs_seed"] == pytest.approx(1000.0 / r["gen_lecture_chars_per_s"])
    assert r["gen_torch_chars_per_s"] == 500.0  # the torch engine alone, one stream
    assert r["gen_torch_speedup_vs_seed"] == pytest.approx(500.0 / r["gen_lecture_chars_per_s"])
    assert r["gen_numpy_chars_per_s"] == 700.0  # the numpy engine alone, one stream
    assert r["gen_numpy_speedup_vs_seed"] == pytest.approx(700.0 / r["gen_lecture_chars_per_s"])
    assert r["gen_engine"] in ("numba", "numpy (compiling)", "numpy (numba not installed)")
    # serving: 64 streaming requests, against sample(num_samples=64) of the same run
    assert r["server_chars_per_s"] == 32_000.0 and r["server_seeded_chars_per_s"] == 19_200.0
    assert r["server_over_offline"] == 32_000.0 / r["gen_batched_chars_per_s"] == 0.5
    assert r["server_seeded_over_offline"] == 19_200.0 / r["gen_batched_chars_per_s"]
    # --quick: the 90 s quality run only, on the given text; eval speed from its timing
    assert quality_runs == [(data, "90s")]
    assert "quality_5m" not in r and "val_loss_5m" not in r
    assert r["val_loss_90s"] == r["quality_90s"]["val_loss"] == 1.5
    assert r["quality_90s"]["budget"] == "90s"
    assert r["eval_chars_per_s"] == 10_000 / 0.5


def test_suite_results_are_typed_json_that_names_its_text(fake_suite):
    r, _, _, data = fake_suite
    assert json.loads(json.dumps(r)) == r
    assert r["quick"] is True and r["data"] == str(data)
    assert set(r["machine"]) == {"cpu", "cores", "torch_threads", "torch", "python", "date"}
    assert r["train_fast_precision"] == "bf16"  # what `auto` resolved to
    assert r["train_fast_batch"] == "32x64"  # the tiny preset's batch, as run
    for key, value in r.items():
        suffixes = ("_chars_per_s", "_efficiency", "_over_fp32", "_over_offline")
        if key.endswith(suffixes) or "speedup" in key:
            assert isinstance(value, float) and value > 0, key


def test_table_lists_what_the_json_holds(fake_suite):
    r, _, _, data = fake_suite
    out = bench.table(r)
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["quality-run", "text"] and lines[0].endswith(str(data))
    for key in (
        "train_seed_chars_per_s",
        "train_fast_chars_per_s",
        "train_fast_fp32_chars_per_s",
        "gen_lecture_chars_per_s",
        "gen_chars_per_s",
        "gen_batched_chars_per_s",
        "gen_torch_chars_per_s",
        "gen_numpy_chars_per_s",
        "eval_chars_per_s",
    ):
        assert f"{r[key]:,.0f}" in out, key
    for key in ("server", "server_seeded"):
        assert f"{r[key + '_chars_per_s']:,.0f} ({r[key + '_over_offline']:.2f}x offline)" in out
    for key in ("train_speedup_vs_seed", "train_speedup_vs_seed_fp32", "gen_speedup_vs_seed"):
        assert f"{r[key]:.1f}x" in out, key
    assert f"{r['fp32_efficiency']:.2f}" in out and f"{r['bf16_over_fp32']:.2f}x" in out
    engine_rows = [ln for ln in lines if ln.startswith("generation engine (auto)")]
    assert len(engine_rows) == 1 and engine_rows[0].endswith(r["gen_engine"])
    for precision in ("fp32", "bf16"):
        eff = r["efficiency"][precision]
        assert f"{eff['chars_per_s']:,.0f}, {eff['model_gflops']:,.1f}" in out
        assert f"{r['matmul_peak_gflops'][precision]:,.0f}" in out
    assert f"{r['bf16_efficiency_vs_bf16_peak']:.2f}" in out
    rows = [[part.strip() for part in line.split("  ", 1)] for line in lines[-3:]]
    assert rows == [
        ["val loss after --time 90s (nats/char)", "1.5000 (lstm 1x256, 700 its, 49,000 chars/s)"],
        [
            "plain PyTorch loop, same choice, 90s (nats/char)",
            "1.5300 (lstm 1x256 (embed 64), bf16, batch 32x64, lr 0.004; 800 its, 52,000 chars/s)",
        ],
        ["margin vs the plain loop, 90s (target <= -0.06)", "-0.0300"],
    ]
    assert "5m" not in out  # no 5-minute run: no row for it


def test_the_plain_loop_runs_beside_each_quality_run_with_its_choice(monkeypatch, tmp_path):
    # --quick: the 90 s pair only (above); the full suite adds the 5-minute pair.
    r, quality_runs, _, data = _fake_suite(monkeypatch, tmp_path, bf16=True, quick=False)
    assert quality_runs == [(data, "90s"), (data, "5m")]
    for key, seconds, charloom, plain, lr in (
        ("90s", 90, 1.5, 1.53, 4e-3),
        ("5m", 300, 1.4, 1.42, 3e-3),
    ):
        p = r[f"plain_recipe_{key}"]
        assert r[f"val_loss_{key}"] == charloom and r[f"plain_recipe_val_loss_{key}"] == plain
        assert r[f"margin_vs_plain_{key}"] == pytest.approx(charloom - plain)
        # the loop is given exactly the choice charloom's run recorded, for the same budget
        assert p["choice"] == r[f"quality_{key}"]["choice"] == dict(CHOICE, lr=lr)
        assert p["train_s"] == seconds + 0.1
    rows = dict(line.split("  ", 1) for line in bench.table(r).splitlines())
    assert rows["plain PyTorch loop, same choice, 5m (nats/char)"].strip().startswith("1.4200 (")
    assert rows["margin vs the plain loop, 5m (target <= -0.06)"].strip() == "-0.0200"
    assert json.loads(json.dumps(r)) == r


def test_bench_text_comes_from_data_then_environment_then_builtin(tmp_path, monkeypatch):
    from charloom.errors import CharloomError

    given, env = tmp_path / "given.txt", tmp_path / "env.txt"
    given.write_text("x"), env.write_text("y")
    monkeypatch.delenv(bench.DATA_ENV, raising=False)
    path, origin = bench.choose_data(None)
    assert path is None and "built-in" in origin and bench.DATA_ENV in origin
    monkeypatch.setenv(bench.DATA_ENV, str(env))
    assert bench.choose_data(None) == (env, f"{env} (from {bench.DATA_ENV})")
    assert bench.choose_data(str(given)) == (given, f"{given} (from --data)")
    monkeypatch.setenv(bench.DATA_ENV, str(tmp_path / "gone.txt"))
    with pytest.raises(CharloomError, match=f"gone.txt.*{bench.DATA_ENV}"):
        bench.choose_data(None)
    with pytest.raises(CharloomError, match="no such file: 'missing.txt'$"):
        bench.choose_data("missing.txt")


@pytest.mark.parametrize("as_json", [False, True])
def test_bench_command_passes_its_flags_once(tmp_path, monkeypatch, capsys, fake_suite, as_json):
    from charloom.commands import main

    results = fake_suite[0]
    calls = []

    def fake_run(quick, data, log):
        calls.append((quick, data))
        log("phase")
        return dict(results, quick=quick, data=str(data))

    monkeypatch.setattr(bench, "run", fake_run)
    text = tmp_path / "t.txt"
    text.write_text("abc")
    argv = ["bench", "--quick", "--data", str(text), *(["--json"] if as_json else [])]
    assert main(argv) == 0
    assert calls == [(True, text)]
    captured = capsys.readouterr()
    assert f"quality runs on {text} (from --data)" in captured.err and "phase" in captured.err
    if as_json:
        assert json.loads(captured.out)["data"] == str(text)
    else:
        table = bench.table(dict(results, quick=True, data=str(text)))
        assert captured.out.startswith("machine: ") and table in captured.out
