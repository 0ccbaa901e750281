"""Many processes: two CPU processes (torchrun, gloo on this machine) train exactly as one
process does - the same losses and weights - and a checkpoint moves between the two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import charloom
from charloom.checkpoint import load_checkpoint
from charloom.commands import main

# Same global batch, seed and data order for every run; a constant schedule (after warm-up)
# so that a run stopped at iteration 3 and extended to 6 follows the 6-iteration schedule.
# fp32: bf16 autocast rounds a half batch's products differently from a whole one's.
SETTINGS = dict(
    precision="fp32",
    layers=2,
    hidden=32,
    embed=16,
    dropout=0.0,
    batch_size=4,
    seq_len=16,
    iters=6,
    log_every=1,
    eval_every=3,
    warmup=2,
    schedule="constant",
    device="cpu",
    sample_every=1000,
)
CLI_SETTINGS = ["--preset", "tiny", "--quiet"] + [
    arg
    for name, value in SETTINGS.items()
    if name != "iters"
    for arg in ("--" + name.replace("_", "-"), str(value))
]

# Run by each torchrun process: train or resume through the Python API, then write this
# rank's final weights so the test can compare the ranks.
WORKER = textwrap.dedent(
    """
    import json, sys
    import charloom
    from charloom import distributed
    from safetensors.torch import save_file

    job = json.loads(sys.argv[1])

    def dump(trainer):
        weights = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(weights, f"{job['dump']}/rank{trainer.dist.rank}.safetensors")

    try:
        if job.get("resume"):
            trainer = charloom.load_trainer(job["out"], job.get("overrides"), console=False)
            trainer.add_callback("end", dump)
            trainer.run()
        else:
            config = charloom.preset_config("tiny", **job["settings"])
            charloom.train(
                config, paths=[job["text"]], out=job["out"], console=False,
                callbacks={"end": [dump]},
            )
    finally:
        distributed.leave()
    """
)


def _torchrun(args: list[str], cwd) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _worker(tmp_path, **job) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _torchrun([str(script), json.dumps(job)], tmp_path)


def _losses(run) -> list[tuple[int, float, float | None]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r.get("train_loss"), r.get("val_loss")) for r in rows]


def _assert_same_run(got, want) -> None:
    assert [r[0] for r in got] == [r[0] for r in want]
    for (it, train, val), (_, train1, val1) in zip(got, want):
        if train1 is not None:
            assert train == pytest.approx(train1, rel=1e-5), it
        if val1 is not None:  # each rank evaluates its share of the held-out text
            assert val == pytest.approx(val1, rel=1e-4), it


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The text, and the reference: the 6 iterations run by one process."""
    d = tmp_path_factory.mktemp("ddp")
    from conftest import make_text

    (d / "text.txt").write_text(make_text(400), encoding="utf-8")
    config = charloom.preset_config("tiny", **SETTINGS)
    charloom.train(config, paths=[str(d / "text.txt")], out=d / "one", console=False)
    return d


def test_two_processes_train_exactly_as_one(setup, tmp_path):
    (tmp_path / "dump").mkdir()
    _worker(
        tmp_path,
        settings=SETTINGS,
        text=str(setup / "text.txt"),
        out=str(tmp_path / "two"),
        dump=str(tmp_path / "dump"),
    )
    _assert_same_run(_losses(tmp_path / "two"), _losses(setup / "one"))
    rank0 = load_file(tmp_path / "dump" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "dump" / "rank1.safetensors")
    one = load_checkpoint(setup / "one" / "latest").weights
    saved = load_checkpoint(tmp_path / "two" / "latest").weights
    for k in one:
        assert torch.equal(rank0[k], rank1[k]), k  # both ranks hold the same weights
        assert torch.equal(rank0[k], saved[k]), k  # and rank 0 wrote them
        torch.testing.assert_close(rank0[k], one[k], rtol=1e-4, atol=1e-5)
    state = json.loads((tmp_path / "two" / "latest" / "state.json").read_text())
    assert state["processes"] == 2


def test_a_checkpoint_moves_between_two_processes_and_one(setup, tmp_path, capsys):
    text = str(setup / "text.txt")
    # Two processes, started by `charloom train --nproc 2`, stop at 3; one process resumes.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "charloom",
            "train",
            text,
            "--nproc",
            "2",
            "--iters",
            "3",
            "--out",
            str(tmp_path / "a"),
            *CLI_SETTINGS,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert main(["train", "--resume", str(tmp_path / "a"), "--iters", "6", "--quiet"]) == 0
    _assert_same_run(_losses(tmp_path / "a"), _losses(setup / "one"))
    # One process stops at 3; two resume.
    assert main(["train", text, "--iters", "3", "--out", str(tmp_path / "b"), *CLI_SETTINGS]) == 0
    (tmp_path / "dump").mkdir()
    _worker(
        tmp_path,
        resume=True,
        out=str(tmp_path / "b"),
        overrides={"iters": 6},
        dump=str(tmp_path / "dump"),
    )
    _assert_same_run(_losses(tmp_path / "b"), _losses(setup / "one"))


def test_nproc_mistakes_are_one_line_errors(tmp_path, text_file, capsys, monkeypatch):
    argv = ["train", str(text_file), "--out", str(tmp_path / "r"), *CLI_SETTINGS]
    assert main([*argv, "--nproc", "3"]) == 2  # 4 rows do not split into 3 equal shares
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: --batch-size 4 must be a multiple of --nproc 3"), err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*argv, "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
