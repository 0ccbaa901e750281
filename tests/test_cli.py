"""The command line as a user runs it: train, sample, eval, info, resume."""

import json
import subprocess
import sys

import pytest
from conftest import TINY_FLAGS

from charloom.commands import main

TINY = [
    *TINY_FLAGS,
    "--log-every",
    "2",
    "--sample-every",
    "100",
    "--quiet",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import make_text

    d = tmp_path_factory.mktemp("cli")
    (d / "text.txt").write_text(make_text(), encoding="utf-8")
    rc = main(
        [
            "train",
            str(d / "text.txt"),
            "--iters",
            "8",
            "--eval-every",
            "4",
            "--out",
            str(d / "run"),
            *TINY,
        ]
    )
    assert rc == 0
    return d / "run"


def test_sample_starts_with_the_prime_and_is_repeatable(run, capsys):
    assert main(["sample", str(run), "--prime", "The", "--length", "40", "--seed", "5"]) == 0
    a = capsys.readouterr().out
    assert (
        main(["sample", str(run / "best"), "--prime", "The", "--length", "40", "--seed", "5"]) == 0
    )
    b = capsys.readouterr().out
    assert a == b
    assert a.startswith("The") and len(a.rstrip("\n")) == 43


def test_sample_options(run, capsys):
    argv = [
        "sample",
        str(run),
        "--length",
        "25",
        "--num-samples",
        "3",
        "--top-k",
        "3",
        "--top-p",
        "0.9",
        "--temperature",
        "1.2",
        "--seed",
        "1",
    ]
    assert main(argv) == 0
    texts = capsys.readouterr().out.strip("\n").split("\n\n")
    assert len(texts) == 3 and all(t.startswith("Th") for t in texts)
    assert main(["sample", str(run), "--greedy", "--length", "10"]) == 0
    g1 = capsys.readouterr().out
    assert main(["sample", str(run), "--greedy", "--length", "10", "--checkpoint", "latest"]) == 0
    assert len(g1) == len(capsys.readouterr().out) == 2 + 10 + 1


def test_eval_json(run, capsys):
    text = run.parent / "text.txt"
    assert main(["eval", str(run), str(text), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"loss", "bpc", "perplexity", "chars", "skipped"} and r["skipped"] == 0
    assert r["chars"] == len(text.read_text()) - 1
    assert r["bpc"] > 0 and r["perplexity"] > 1


def test_info(run, capsys):
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "lstm 1x32" in out and "parameters" in out and "8 iterations" in out
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["training"]["iterations"] == 8 and info["training"]["best_val_loss"] > 0


def test_resume_continues_exactly(tmp_path, capsys):
    from conftest import make_text

    text = tmp_path / "t.txt"
    text.write_text(make_text(), encoding="utf-8")
    common = [str(text), *TINY, "--schedule", "constant", "--warmup", "0", "--eval-every", "3"]
    assert main(["train", *common, "--iters", "12", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *common, "--iters", "6", "--out", str(tmp_path / "part")]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--iters", "12", "--quiet"]) == 0

    def losses(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["iter"], r.get("train_loss"), r.get("val_loss")) for r in map(json.loads, lines)]

    assert losses("whole") == losses("part")


def test_python_dash_m_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "charloom", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("charloom ")


def test_tensorboard_without_the_package_is_one_clear_line(tmp_path, capsys):
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    from conftest import make_text

    text = tmp_path / "t.txt"
    text.write_text(make_text(), encoding="utf-8")
    rc = main(
        ["train", str(text), *TINY, "--iters", "2", "--tensorboard", "--out", str(tmp_path / "tb")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("charloom: error: ") and "charloom[tensorboard]" in err
    assert not (tmp_path / "tb").exists()


def test_sample_into_a_closed_pipe_is_not_an_error(run):
    proc = subprocess.run(
        f"{sys.executable} -m charloom sample {run} --length 20000 --engine torch | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert len(proc.stdout) == 10
    assert "error" not in proc.stderr and "Traceback" not in proc.stderr


def test_bench_with_a_missing_text_is_one_line(capsys):
    assert main(["bench", "--quick", "--data", "no-such-file.txt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: ") and err.count("\n") == 1
