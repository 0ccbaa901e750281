"""The Python API made for cells: charloom.train and charloom.load give a Run that samples,
evaluates, plots, shows its history and the visualiser; an interrupt returns the run, and the
run resumes exactly."""

from __future__ import annotations

import inspect
import math
import signal
import sys

import pytest
import torch
from conftest import tiny_overrides

import charloom
from charloom import checkpoint as ckpt
from charloom.signals import StopRequest, stop_on_signals


def _config(**kw):
    return charloom.preset_config("tiny", **tiny_overrides(**kw))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_text):
    out = tmp_path_factory.mktemp("run") / "r"
    return charloom.train(_config(), text=small_text, out=out, console=False)


def _weights(run_dir):
    return ckpt.load_checkpoint(run_dir / "latest").weights


def test_train_returns_a_run_with_the_figures_of_its_last_checkpoint(trained):
    run = trained
    assert isinstance(run, charloom.Run) and isinstance(run, charloom.CharModel)
    assert run.iterations == 10 and run.chars_seen == 10 * 4 * 16
    assert run.best_val_loss is not None and math.isfinite(run.best_val_loss)
    assert run.best_iteration in (5, 10) and math.isfinite(run.train_loss)
    assert run.elapsed > 0 and run.note is None and not run.interrupted
    assert run.run_dir is not None and run.path == run.run_dir / "best"
    assert repr(run).startswith("<charloom.Run ") and "10 iterations" in repr(run)


def test_a_run_samples_and_evaluates(trained, small_text):
    text = trained.sample("Th", 30, seed=3)[0]
    assert text.startswith("Th") and len(text) == 32
    assert trained.sample("Th", 30, seed=3)[0] == text
    result = trained.eval(small_text[:400])
    assert result.chars == 399 and result.bpc == pytest.approx(result.loss / math.log(2))
    with pytest.raises(charloom.CharloomError, match="not in the model's vocabulary|unknown"):
        trained.eval("Th\u263a")


def test_history_is_the_metrics_file_as_a_list_of_dicts(trained):
    history = trained.history
    assert isinstance(history, list) and all(isinstance(r, dict) for r in history)
    assert [r["iter"] for r in history if "val_loss" in r] == [5, 10]
    assert [r["iter"] for r in history if "train_loss" in r] == [5, 10]
    best = min(r["val_loss"] for r in history if "val_loss" in r)
    assert best == pytest.approx(trained.best_val_loss)


def test_history_frame_needs_pandas_and_says_so(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(charloom.CharloomError, match="needs pandas"):
        trained.history_frame()


def test_history_frame_with_pandas(trained):
    pytest.importorskip("pandas")
    frame = trained.history_frame()
    assert len(frame) == len(trained.history)
    assert list(frame["iter"]) == [r["iter"] for r in trained.history]


def test_plot_returns_a_figure_a_notebook_shows_as_png(trained):
    fig = trained.plot()
    assert fig.axes and fig.axes[0].get_lines()
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG")
    both = trained.plot(trained, x="time", metric="val")
    labels = [line.get_label() for line in both.axes[0].get_lines()]
    assert sum("validation" in label for label in labels) == 2  # a name given twice is kept apart
    with pytest.raises(charloom.CharloomError, match="unknown x axis"):
        trained.plot(x="wall")


def test_viz_shows_the_page_inline_in_a_frame(trained, small_text, tmp_path):
    page = trained.viz(small_text[:300], layer=1, state="h")
    assert page.chars == 300 and page.units > 0 and math.isfinite(page.mean_bits)
    shown = page._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "sandbox=" in shown
    assert "<script" not in shown  # the page is escaped into the attribute, not run in place
    saved = page.save(tmp_path / "page.html")
    assert saved.read_text(encoding="utf-8") == page.html
    with pytest.raises(charloom.CharloomError, match="is a folder"):
        page.save(tmp_path)
    with pytest.raises(charloom.CharloomError, match="layer 3 does not exist"):
        trained.viz(small_text[:300], layer=3)


def test_load_gives_the_same_run(trained):
    run = charloom.load(trained.run_dir)
    assert isinstance(run, charloom.Run)
    assert run.run_dir == trained.run_dir and run.iterations == trained.iterations
    assert run.best_val_loss == trained.best_val_loss and run.history == trained.history
    assert run.sample("Th", 20, seed=1) == trained.sample("Th", 20, seed=1)
    info = run.info()
    assert info["run_dir"] == str(trained.run_dir) and info["training"]["iterations"] == 10
    assert info["parameters"] == run.model.num_parameters() and info["note"] is None
    inside = charloom.load(trained.run_dir / "latest")
    assert inside.run_dir == trained.run_dir and inside.iterations == 10


def test_a_checkpoint_outside_a_run_is_a_run_without_history(trained, tmp_path):
    import shutil

    alone = tmp_path / "alone"
    shutil.copytree(trained.run_dir / "best", alone)
    run = charloom.load(alone)
    assert run.run_dir is None and run.history == []
    assert run.sample("Th", 10, seed=0) == trained.sample("Th", 10, seed=0)
    with pytest.raises(charloom.CharloomError, match="no metrics to plot"):
        run.plot()
    with pytest.raises(charloom.CharloomError, match="not inside a run directory"):
        run.resume()
    with pytest.raises(charloom.CharloomError, match="no such run"):
        charloom.load(tmp_path / "missing")


def _interrupt_at(n, how):
    def hook(t):
        if t.iteration == n:
            if how == "raise":
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)  # as the notebook's stop button does

    return hook


@pytest.mark.parametrize("how", ["raise", "signal"])
def test_an_interrupt_returns_the_run_and_its_checkpoint_resumes_exactly(
    tmp_path, small_text, how, capsys
):
    over = dict(iters=12, log_every=1, eval_every=4)
    whole = charloom.train(_config(**over), text=small_text, out=tmp_path / "w", console=False)
    run = charloom.train(
        _config(**over),
        text=small_text,
        out=tmp_path / "i",
        console=False,
        callbacks={"log": [_interrupt_at(6, how)]},
    )
    assert run.interrupted and "interrupted at iteration 6" in (run.note or "")
    assert run.iterations == 6
    assert ckpt.load_checkpoint(tmp_path / "i" / "latest", with_state=True).state["iteration"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back
    resumed = run.resume(console=False)  # the text given as a string is remembered
    assert resumed.iterations == 12 and not resumed.interrupted
    for key, value in _weights(whole.run_dir).items():
        assert torch.equal(value, _weights(resumed.run_dir)[key]), key
    losses = [(r["iter"], r.get("train_loss"), r.get("val_loss")) for r in resumed.history]
    assert losses == [(r["iter"], r.get("train_loss"), r.get("val_loss")) for r in whole.history]


def test_a_loaded_run_resumes_with_its_text_given_again(tmp_path, small_text):
    charloom.train(_config(iters=8), text=small_text, out=tmp_path / "r", console=False, stop_at=4)
    run = charloom.load(tmp_path / "r")
    with pytest.raises(charloom.CharloomError, match="pass it again"):
        run.resume(console=False)
    with pytest.raises(charloom.CharloomError):
        run.resume(small_text, console=False, hidden=64)  # not a setting a resume may change
    assert run.resume(small_text, console=False).iterations == 8
    assert run.resume(small_text, console=False, iters=10).iterations == 10


def test_an_interrupt_the_loop_cannot_defer_returns_the_last_checkpoint(tmp_path, small_text):
    # A KeyboardInterrupt that tears through the loop (a second Ctrl-C): the checkpoint written
    # last stands, and the run comes back as of it.
    def raw(t):
        if t.iteration == 9:
            raise KeyboardInterrupt

    def attach(t):
        t.add_callback("log", raw)  # not wrapped by charloom.train: reaches the loop as is

    run = charloom.train(
        _config(iters=12, log_every=1, eval_every=4),
        text=small_text,
        out=tmp_path / "r",
        console=False,
        callbacks={"start": [attach]},
    )
    assert run.iterations == 8 and "interrupted twice" in (run.note or "")


def test_an_interrupt_before_any_checkpoint_is_raised(tmp_path, small_text):
    def raw(t):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        charloom.train(
            _config(iters=4),
            text=small_text,
            out=tmp_path / "r",
            console=False,
            callbacks={"start": [lambda t: t.add_callback("log", raw)]},
        )


def test_train_takes_the_parameters_of_the_loops_train():
    # charloom.train passes its arguments on to charloom.train.train, where each parameter and
    # its default are written once; help() and inspect show them, returning a Run.
    from charloom.train import train as loop_train

    ours, theirs = inspect.signature(charloom.train), inspect.signature(loop_train)
    assert list(ours.parameters.values()) == list(theirs.parameters.values())
    assert ours.return_annotation == "Run" and theirs.return_annotation == "TrainResult"
    assert "given" in ours.parameters and ours.parameters["console"].default is True
    assert charloom.train.__doc__.startswith("Train a new model and return the :class:`Run`")


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((), {"bogus": 1}, "bogus"),
        ((None, "some text"), {}, "positional"),
        ((None,), {"config": None}, "multiple values"),
    ],
)
def test_train_refuses_arguments_it_does_not_take_and_writes_nothing(
    tmp_path, args, kwargs, message
):
    out = tmp_path / "r"
    with pytest.raises(TypeError, match=message):
        charloom.train(*args, out=out, console=False, **kwargs)
    assert not out.exists()


def test_a_second_signal_raises_when_asked_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    request = StopRequest(second="raise")
    with pytest.raises(KeyboardInterrupt), stop_on_signals(request, False):
        signal.raise_signal(signal.SIGINT)
        assert request.signum == signal.SIGINT
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(ValueError, match="second"), stop_on_signals(StopRequest(second="no")):
        pass
