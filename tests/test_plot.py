"""Training pictures: a run's own loss plot, and ``charloom plot`` comparing runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import charloom
from charloom.commands import main
from charloom.errors import CharloomError
from charloom.plot import figure_outputs, plot_run, plot_runs
from charloom.rundir import read_metrics

PREFIX = "charloom: error: "


def _records(n: int = 40, lr_schedule: bool = True, offset: float = 0.0) -> list[dict]:
    recs = []
    for i in range(1, n + 1):
        lr = 3e-3 * (min(1.0, i / 5) if lr_schedule else 1.0)
        recs.append({"iter": i * 10, "time": i * 0.5, "train_loss": 4 / i + 1 + offset, "lr": lr})
        if i % 5 == 0:
            recs.append({"iter": i * 10, "time": i * 0.5, "val_loss": 4 / i + 1.2 + offset})
    return recs


def assert_picture(path: Path) -> None:
    """A PNG with something drawn on it, or a PDF with a page."""
    assert path.is_file() and path.stat().st_size > 5000, path
    data = path.read_bytes()
    if path.suffix == ".png":
        import matplotlib.image

        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500
        assert pixels[..., :3].std() > 0.05  # not a blank image
    else:
        assert data[:5] == b"%PDF-" and b"/Page" in data


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import make_text

    root = tmp_path_factory.mktemp("plot-runs")
    out = []
    for name, kind in (("lstm-run", "lstm"), ("gru-run", "gru")):
        config = charloom.preset_config(
            "tiny",
            iters=10,
            hidden=32,
            embed=16,
            layers=1,
            seq_len=16,
            batch_size=4,
            eval_every=5,
            log_every=2,
            sample_every=1000,
            kind=kind,
        )
        charloom.train(config, text=make_text(), out=root / name, console=False)
        out.append(root / name)
    return out[0], out[1]


def test_training_draws_its_loss_plot(two_runs):
    run = two_runs[0]
    for name in ("loss.png", "loss.pdf"):
        assert_picture(run / name)
    recs = read_metrics(run / "metrics.jsonl")
    assert any("val_loss" in r for r in recs) and any("lr" in r for r in recs)


def test_plot_run_draws_train_validation_and_learning_rate(tmp_path):
    outputs = [tmp_path / "loss.png", tmp_path / "loss.pdf"]
    plot_run(_records(), outputs, title="a run")
    for p in outputs:
        assert_picture(p)
    # A constant learning rate, no validation (the seed preset), a resumed run's repeated
    # iterations and a torn last line of metrics.jsonl are all drawn without trouble.
    recs = [r for r in _records(lr_schedule=False) if "val_loss" not in r]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "".join(json.dumps(r) + "\n" for r in recs + recs[:5]) + '{"iter": 4', encoding="utf-8"
    )
    assert len(read_metrics(metrics)) == len(recs) + 5
    plot_run(read_metrics(metrics), [tmp_path / "seed.png"])
    assert_picture(tmp_path / "seed.png")
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no leftovers


@pytest.mark.parametrize("metric", ["both", "val", "train"])
@pytest.mark.parametrize("x_axis", ["iter", "time"])
def test_plot_runs_draws_several_runs(tmp_path, metric, x_axis):
    no_val = [r for r in _records(20) if "val_loss" not in r]
    runs = {"a": _records(), "b": _records(offset=0.3), "no-val": no_val}
    outputs = [tmp_path / "cmp.png", tmp_path / "cmp.pdf"]
    plot_runs(runs, outputs, metric=metric, x_axis=x_axis, title="compare")
    for p in outputs:
        assert_picture(p)


def test_plot_runs_refuses_nothing_to_draw(tmp_path):
    with pytest.raises(CharloomError, match="no runs"):
        plot_runs({}, [tmp_path / "x.png"])
    with pytest.raises(CharloomError, match="any loss"):
        plot_runs({"a": [{"iter": 1, "lr": 0.1}]}, [tmp_path / "x.png"])
    assert not (tmp_path / "x.png").exists()


def test_figure_outputs(tmp_path):
    assert figure_outputs(tmp_path / "a.png") == [tmp_path / "a.png", tmp_path / "a.pdf"]
    assert figure_outputs(tmp_path / "a.pdf") == [tmp_path / "a.pdf", tmp_path / "a.png"]
    assert figure_outputs(tmp_path / "a") == [tmp_path / "a.png", tmp_path / "a.pdf"]


def test_cli_plot_compares_runs(two_runs, tmp_path, capsys):
    out = tmp_path / "compare.png"
    assert main(["plot", str(two_runs[0]), str(two_runs[1] / "best"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "compare.png" in said and "compare.pdf" in said
    assert_picture(out)
    assert_picture(tmp_path / "compare.pdf")
    stem = tmp_path / "by-time"
    assert main(["plot", *map(str, two_runs), "--out", str(stem), "--x", "time"]) == 0
    assert_picture(tmp_path / "by-time.png")
    assert_picture(tmp_path / "by-time.pdf")


def test_cli_plot_bad_inputs(two_runs, tmp_path, capsys):
    def fails(argv: list[str], message: str) -> None:
        assert main(["plot", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(PREFIX) and message in err, err
        assert err.count("\n") == 1

    out = ["--out", str(tmp_path / "c.png")]
    fails([str(tmp_path / "missing"), *out], "no such run")
    (tmp_path / "empty-dir").mkdir()
    fails([str(tmp_path / "empty-dir"), *out], "no metrics.jsonl")
    fails([str(two_runs[0]), "--out", str(tmp_path / "c.svg")], ".png and .pdf")
    fails([str(two_runs[0]), "--out", str(tmp_path / "no" / "c.png")], "does not exist")
    fails(["--out", str(tmp_path / "c.png")], "the following arguments are required")
    assert not list(tmp_path.glob("c.*"))
