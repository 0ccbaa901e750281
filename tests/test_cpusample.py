"""`charloom sample` on the CPU without torch: the numpy engine and the run read as arrays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import charloom
from charloom import cpusample
from charloom.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, write_checkpoint
from charloom.commands import main
from charloom.config import TrainConfig
from charloom.errors import CharloomError
from charloom.model import CharRNN, ModelConfig
from charloom.nextchar import SampleSettings
from charloom.npgen import GenWeights, NumpyGenerator
from charloom.sample import TorchGenerator, gen_weights
from charloom.train import train
from charloom.vocab import Vocab

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_numpy_engine_steps_as_the_torch_engine(kind):
    # Prime, then ten steps for three streams: state and logits agree to float32 rounding, and
    # with the same uniforms the same ids are drawn.
    torch.manual_seed(2)
    model = CharRNN(ModelConfig(kind=kind, vocab_size=20, embed=6, hidden=10, layers=2)).eval()
    ref, fast = TorchGenerator(model), NumpyGenerator(gen_weights(model))
    state_t, logits_t = ref.start([3, 1, 4], 3)
    state_n, logits_n = fast.start([3, 1, 4], 3)
    np.testing.assert_allclose(logits_n, logits_t.numpy(), atol=1e-5)
    u = np.random.default_rng(0).random((10, 3), dtype=np.float32)
    settings = SampleSettings(temperature=0.9, top_k=8, top_p=0.95)
    ids_t, state_t, logits_t = ref.run(state_t, logits_t, u, settings)
    ids_n, state_n, logits_n = fast.run(state_n, logits_n, u, settings)
    assert np.array_equal(ids_n, ids_t.numpy())
    for a, b in zip(state_n, state_t):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits_n, logits_t.numpy(), atol=1e-5)


def test_numpy_engine_leaves_its_arguments_alone():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=9, embed=4, hidden=5, layers=1))
    gen = NumpyGenerator(gen_weights(model))
    state, logits = gen.start([1, 2], 2)
    copies = [s.copy() for s in state], logits.copy()
    gen.run(state, logits, np.full((4, 2), 0.5, np.float32), SampleSettings())
    assert all(np.array_equal(a, b) for a, b in zip(state, copies[0]))
    assert np.array_equal(logits, copies[1])


def test_weights_of_the_wrong_shape_are_refused():
    model = CharRNN(ModelConfig(vocab_size=9, embed=4, hidden=5, layers=1))
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    arrays["head.bias"] = arrays["head.bias"][:-1]
    with pytest.raises(CharloomError, match=r"head.bias is shape \(8,\), expected \(9,\)"):
        GenWeights.from_arrays(model.config, arrays)
    del arrays["rnn.weight_hh_l0"]
    with pytest.raises(CharloomError, match="rnn.weight_hh_l0 is missing"):
        GenWeights.from_arrays(model.config, arrays)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cpusample")
    text = root / "t.txt"
    text.write_text("The cat sat on the mat. " * 80, encoding="utf-8")
    config = TrainConfig(iters=4, batch_size=4, seq_len=16, eval_every=4, sample_every=100)
    config.model = ModelConfig(embed=8, hidden=16, layers=1)
    train(config, paths=[str(text)], out=str(root / "run"), console=False, progress_bar=False)
    return root / "run"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_engine_of_the_command_writes_the_same_text(run_dir, capsys):
    texts = {}
    for engine in ("auto", "numpy", "numba", "torch"):
        code, out, _ = _cli(
            capsys, "sample", str(run_dir), "--length", "60", "--seed", "5", "--engine", engine
        )
        assert code == 0
        texts[engine] = out
    assert len(set(texts.values())) == 1, texts
    assert texts["auto"].startswith("Th") and len(texts["auto"]) == 2 + 60 + 1

    python = charloom.load(run_dir).sample("Th", 60, seed=5)[0]
    assert texts["auto"] == python + "\n"  # the Python API (torch-loaded) gives it too
    # Without a prime, the command and the Python API start from the same default one.
    assert charloom.load(run_dir).sample(length=60, seed=5)[0] == python


def test_the_command_never_imports_torch_on_the_cpu(run_dir):
    script = f"""
import sys
from charloom.commands import main
code = main(["sample", {str(run_dir)!r}, "--length", "20", "--num-samples", "2", "--seed", "1"])
assert code == 0
print("torch" in sys.modules, file=sys.stderr)
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "False", out.stderr
    assert len(out.stdout.split("\n\n")) == 2  # two samples


def test_bfloat16_weights_go_through_torch(run_dir, tmp_path, capsys):
    # numpy has no bfloat16: such a checkpoint is loaded with torch instead, same text.
    folder = run_dir / "best"
    config = json.loads((folder / "config.json").read_text())
    weights = load_file(str(folder / WEIGHTS_FILE))
    bf16 = {k: v.to(torch.bfloat16) for k, v in weights.items()}
    write_checkpoint(tmp_path, "best", config, bf16)
    assert cpusample.load(tmp_path / "best") is None
    code, out, err = _cli(capsys, "sample", str(tmp_path / "best"), "--length", "30", "--seed", "2")
    assert code == 0 and len(out) == 2 + 30 + 1, err


def test_a_damaged_checkpoint_is_one_line(run_dir, tmp_path, capsys):
    folder = tmp_path / "best"
    folder.mkdir()
    for name in ("config.json", WEIGHTS_FILE, MANIFEST_FILE):
        (folder / name).write_bytes((run_dir / "best" / name).read_bytes())
    with open(folder / WEIGHTS_FILE, "r+b") as fh:
        fh.truncate(100)
    code, out, err = _cli(capsys, "sample", str(folder))
    assert code == 2 and out == ""
    assert err.startswith("charloom: error: ") and err.count("\n") == 1
    # without a manifest, the truncated file itself is reported
    (folder / MANIFEST_FILE).unlink()
    code, out, err = _cli(capsys, "sample", str(folder))
    assert code == 2 and "damaged or not a safetensors file" in err and err.count("\n") == 1


def test_weights_that_do_not_fit_the_settings_are_one_line(run_dir, tmp_path, capsys):
    config = json.loads((run_dir / "best" / "config.json").read_text())
    weights = load_file(str(run_dir / "best" / WEIGHTS_FILE))
    weights["head.bias"] = weights["head.bias"][:-1].clone()
    write_checkpoint(tmp_path, "best", config, weights)
    code, _, err = _cli(capsys, "sample", str(tmp_path / "best"))
    assert code == 2 and "the weights do not match the model settings" in err


def test_bad_requests_print_nothing(run_dir, capsys):
    code, out, err = _cli(capsys, "sample", str(run_dir), "--prime", "Zq\u2603")
    assert code == 2 and out == "" and "prime" in err
    code, out, err = _cli(capsys, "sample", str(run_dir), "--temperature", "0")
    assert code == 2 and out == "" and "temperature" in err


def test_the_array_model_matches_vocab_and_normalisation(run_dir):
    model = cpusample.load(run_dir)
    assert model is not None and isinstance(model.vocab, Vocab)
    texts = model.sample("Th", 25, SampleSettings(), num_samples=3, seed=7, engine="numpy")
    assert len(texts) == 3 and all(len(t) == 27 for t in texts)
    with pytest.raises(CharloomError, match="unknown engine"):
        model.sample("Th", 5, SampleSettings(), engine="torch")


def test_saved_weights_load_as_the_model_has_them(run_dir, tmp_path):
    # A checkpoint written from a model is read back as the same arrays.
    model = CharRNN(ModelConfig(vocab_size=7, embed=3, hidden=4, layers=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w"))
    arrays = {k: v.numpy() for k, v in load_file(str(tmp_path / "w")).items()}
    a, b = GenWeights.from_arrays(model.config, arrays), gen_weights(model)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("table", "w_hh", "head_w"))


BAD_REQUESTS = [
    (dict(prime=None), "the prime must hold at least one character"),
    (dict(prime=""), "the prime must hold at least one character"),
    (dict(prime="Zq\u2603"), "prime"),
    (dict(length=-1), "length must be an integer >= 0"),
    (dict(num_samples=0), "num-samples must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer in"),
    (dict(settings=SampleSettings(temperature=0)), "temperature must be a number > 0"),
]


@pytest.mark.parametrize("bad, message", BAD_REQUESTS)
def test_both_models_refuse_a_bad_request_alike_before_any_block(run_dir, bad, message):
    # The array model (charloom sample on the CPU) and the torch model (the Python API) check a
    # request the same way, when pieces() is called rather than at the first block.
    request = dict(prime="Th", length=5, settings=SampleSettings(), num_samples=1, seed=1)
    request.update(bad)
    errors = []
    for model in (cpusample.load(run_dir), charloom.load(run_dir)):
        with pytest.raises(CharloomError, match=message) as caught:
            model.pieces(engine="numpy", **request)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_both_models_give_the_same_pieces(run_dir):
    request = dict(prime="The", length=70, settings=SampleSettings(top_k=5), num_samples=2, seed=4)
    arrays = list(cpusample.load(run_dir).pieces(engine="numpy", **request))
    loaded = list(charloom.load(run_dir).pieces(engine="numpy", **request))
    assert arrays == loaded and len(arrays) > 1
    assert ["".join(p) for p in zip(*arrays)] == [
        t[3:] for t in cpusample.load(run_dir).sample(engine="numpy", **request)
    ]
