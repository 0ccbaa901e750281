"""Property-based tests: no text, config or command line makes charloom crash with a traceback."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import shutil
from pathlib import Path

import pytest
from conftest import make_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charloom
from charloom.checkpoint import parse_config
from charloom.commands import main
from charloom.config import TrainConfig
from charloom.errors import CharloomError
from charloom.vocab import Vocab

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
@given(st.text())
def test_bytes_vocab_round_trips_any_text(text):
    v = Vocab.build("bytes")
    assert v.decode(v.encode(text)) == text


@FUZZ
@given(st.text(min_size=1), st.text())
def test_corpus_vocab_round_trips_or_refuses_cleanly(train, other):
    v = Vocab.build("corpus", train)
    assert v.decode(v.encode(train)) == train
    unknown = set(other) - set(train)
    if unknown:
        with pytest.raises(CharloomError, match="outside the model's vocabulary"):
            v.encode(other)
    else:
        assert v.decode(v.encode(other)) == other


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory) -> Path:
    """A tiny trained run and its text file."""
    d = tmp_path_factory.mktemp("fuzzrun")
    (d / "text.txt").write_text(make_text(60), encoding="utf-8")
    cfg = charloom.preset_config(
        "tiny",
        iters=2,
        hidden=16,
        embed=8,
        seq_len=8,
        batch_size=2,
        eval_every=1,
        log_every=1,
        sample_every=100,
    )
    charloom.train(cfg, paths=[str(d / "text.txt")], out=d / "run", console=False)
    return d


@pytest.fixture(scope="module")
def valid_config(fuzz_run) -> dict:
    return json.loads((fuzz_run / "run" / "latest" / "config.json").read_text())


def _set_path(d, path, value):
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


@FUZZ
@given(st.data())
def test_config_loading_accepts_or_refuses_cleanly(valid_config, data):
    cfg = json.loads(json.dumps(valid_config))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(sorted(_paths(cfg))))
        _set_path(cfg, path, data.draw(json_values))
    try:
        model_config, vocab, _ = parse_config(cfg, Path("config.json"))
    except CharloomError as exc:
        assert "\n" not in str(exc)
    else:
        assert model_config.vocab_size == vocab.size
        assert model_config.parameter_count() <= 4_000_000_000


@FUZZ
@given(json_values)
def test_config_loading_of_any_json(value):
    with contextlib.suppress(CharloomError):
        parse_config(value, Path("config.json"))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(TrainConfig.__dataclass_fields__)), json_values))
def test_training_settings_loading_accepts_or_refuses_cleanly(d):
    with contextlib.suppress(CharloomError):
        TrainConfig.from_dict(d)


# --- the command line ---------------------------------------------------------------------------
WEIRD = [
    "",
    "0",
    "-1",
    "1",
    "2",
    "0.5",
    "1e309",
    "nan",
    "inf",
    "-inf",
    "abc",
    "🙂",
    "--",
    "10m",
    "-5s",
    "none",
    "9" * 30,
    "Th",
    "é",
    "\t",
    "best",
    "latest",
    "cpu",
    "cuda",
]
TRAIN_FLAGS = [
    "--vocab",
    "--ascii",
    "--model",
    "--layers",
    "--dropout",
    "--path",
    "--batching",
    "--val-fraction",
    "--optimizer",
    "--lr",
    "--weight-decay",
    "--grad-clip",
    "--schedule",
    "--warmup",
    "--min-lr-ratio",
    "--precision",
    "--device",
    "--seed",
    "--eval-every",
    "--sample-every",
    "--log-every",
    "--checkpoint-every",
    "--sample-prime",
    "--sample-length",
    "--sample-temperature",
    "--encoding",
    "--errors",
    "--preset",
    "--corpus",
    "--bogus",
]
SAMPLE_FLAGS = [
    "--prime",
    "--length",
    "--temperature",
    "--top-k",
    "--top-p",
    "--greedy",
    "--num-samples",
    "--seed",
    "--checkpoint",
    "--device",
    "--bogus",
]
EVAL_FLAGS = ["--json", "--checkpoint", "--encoding", "--errors", "--corpus", "--device"]


def _argv(flags):
    return st.lists(
        st.tuples(st.sampled_from(flags), st.sampled_from(WEIRD) | st.text(max_size=6)),
        max_size=4,
    ).map(lambda pairs: list(itertools.chain.from_iterable(pairs)))


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            rc = exc.code
    return rc, err.getvalue()


def _check(rc: int, err: str) -> None:
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err
    if rc == 2:
        lines = err.strip("\n").split("\n")
        assert lines[-1].startswith("charloom: error: ")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(_argv(TRAIN_FLAGS))
def test_train_command_line(fuzz_run, argv):
    out = fuzz_run / "out"
    shutil.rmtree(out, ignore_errors=True)
    # Fuzzed flags first; the tiny sizes and budget last, so every run stays small and quick.
    fixed = [
        "--hidden",
        "8",
        "--embed",
        "4",
        "--layers",
        "1",
        "--iters",
        "1",
        "--batch-size",
        "2",
        "--seq-len",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]
    _check(*_run(["train", str(fuzz_run / "text.txt"), *argv, *fixed]))


@FUZZ
@given(_argv(SAMPLE_FLAGS))
def test_sample_command_line(fuzz_run, argv):
    _check(*_run(["sample", str(fuzz_run / "run"), *argv, "--length", "5"]))


@FUZZ
@given(_argv(EVAL_FLAGS))
def test_eval_command_line(fuzz_run, argv):
    _check(*_run(["eval", str(fuzz_run / "run"), str(fuzz_run / "text.txt"), *argv]))


@FUZZ
@given(
    st.lists(
        st.sampled_from(WEIRD + ["sample", "eval", "info", "--help"]) | st.text(max_size=8),
        max_size=5,
    ).filter(lambda a: not a or a[0] != "train")  # no real training runs
)
def test_any_words(fuzz_run, argv):
    _check(*_run(argv))
