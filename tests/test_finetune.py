"""Fine-tuning (``--init-from``): the parent's shape and vocabulary, new rows for new characters,
the parent recorded, fresh optimiser, and every bad input as one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS, make_text, tiny_overrides
from safetensors.torch import load_file

import charloom
from charloom import basemodel, finetune
from charloom.checkpoint import file_sha256
from charloom.commands import main
from charloom.model import ModelConfig
from charloom.presets import FINETUNE, parent_budget_overrides, preset_config

PREFIX = "charloom: error: "
# New characters for the child text: none of them is in make_text().
NEW = "#%~"


def tiny(**kw) -> charloom.TrainConfig:
    return charloom.TrainConfig().replace(**tiny_overrides(**kw))


def child_text() -> str:
    # Mostly the parent's characters, plus a few it has never seen, often enough to learn.
    lines = make_text(60).splitlines()
    return "\n".join(f"{line} {NEW[i % 3]}{NEW[(i + 1) % 3]}" for i, line in enumerate(lines))


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parent") / "run"
    charloom.train(tiny(iters=12), text=make_text(), out=out, console=False)
    return out


@pytest.fixture(scope="module")
def bytes_parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bparent") / "run"
    charloom.train(tiny(iters=4, vocab="bytes"), text=make_text(), out=out, console=False)
    return out


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def weights(run: Path, which: str = "best") -> dict[str, torch.Tensor]:
    return load_file(str(run / which / "model.safetensors"))


def config_json(run: Path, which: str = "best") -> dict:
    return json.loads((run / which / "config.json").read_text())


# --- the vocabulary and the weights -----------------------------------------------------------
def test_extension_keeps_every_old_row_bit_identical(parent, tmp_path):
    out = tmp_path / "child"
    # stop_at=0: the checkpoint holds the weights the fine-tuning starts from.
    charloom.train(
        tiny(init_from=str(parent)), text=child_text(), out=out, console=False, stop_at=0
    )
    old, new = weights(parent), weights(out, "latest")
    n = old["head.bias"].shape[0]
    parent_chars = config_json(parent)["vocab"]["chars"]
    chars = config_json(out, "latest")["vocab"]["chars"]
    assert chars == parent_chars + "".join(sorted(NEW))  # old ids kept, new ones appended
    assert new["head.bias"].shape[0] == n + len(NEW)
    for name, tensor in old.items():
        if name in finetune.VOCAB_ROWS:
            assert torch.equal(new[name][:n], tensor), name
        else:
            assert torch.equal(new[name], tensor), name
    # New rows: the mean of the parent's rows, and the parent's lowest output bias.
    assert torch.allclose(
        new["embedding.weight"][n:], old["embedding.weight"].mean(0).expand(3, -1)
    )
    assert torch.allclose(new["head.weight"][n:], old["head.weight"].mean(0).expand(3, -1))
    assert torch.equal(new["head.bias"][n:], old["head.bias"].min().expand(3))


@pytest.mark.parametrize("parent_documents", [True, False])
def test_end_symbol_keeps_its_row_past_new_characters(parent_documents, tmp_path):
    # A documents-mode child of a documents parent: new characters push the end symbol's id
    # back, and its row must follow it. A stream parent's child in documents mode gets a new
    # end row.
    parent = tmp_path / "parent"
    charloom.train(
        tiny(iters=4, documents="lines" if parent_documents else "off"),
        text=make_text(),
        out=parent,
        console=False,
    )
    out = tmp_path / "child"
    charloom.train(
        tiny(init_from=str(parent), documents="lines"),
        text=child_text(),
        out=out,
        console=False,
        stop_at=0,
    )
    old, new = weights(parent), weights(out, "latest")
    old_vocab, new_vocab = config_json(parent)["vocab"], config_json(out, "latest")["vocab"]
    n_chars = len(old_vocab["chars"])
    assert new_vocab["chars"] == old_vocab["chars"] + "".join(sorted(NEW))
    end = new_vocab["end"]
    assert end == n_chars + len(NEW)  # one past the characters, new ones included
    assert old_vocab.get("end") == (n_chars if parent_documents else None)
    for name in finetune.VOCAB_ROWS:
        assert torch.equal(new[name][:n_chars], old[name][:n_chars]), name
        if parent_documents:
            assert torch.equal(new[name][end], old[name][n_chars]), name
        else:
            assert torch.equal(new[name][end], finetune.new_rows(name, old[name], 1)[0]), name


def test_new_rows_receive_gradient_and_the_model_emits_them(parent, tmp_path):
    out = tmp_path / "child"
    result = charloom.train(
        tiny(init_from=str(parent), iters=40, lr=1e-2, eval_every=40),
        text=child_text(),
        out=out,
        console=False,
    )
    assert result.iterations == 40
    start = weights(parent)
    n = start["head.bias"].shape[0]
    trained = weights(out, "latest")
    # Every new row moved away from its initial value: they are trained, not frozen.
    for name in ("embedding.weight", "head.weight", "head.bias"):
        init = finetune.new_rows(name, start[name], len(NEW))
        moved = (trained[name][n:] - init).abs().flatten(1 if init.dim() > 1 else 0)
        assert (moved.amax(-1) if moved.dim() > 1 else moved).min() > 0, name
    model = charloom.load(out, which="latest")
    text = model.sample(prime="The quick brown fox jumps over the lazy dog. ", length=200)[0]
    assert set(text) & set(NEW), text


def test_parent_recorded_with_its_own_parent(parent, tmp_path):
    child, grandchild = tmp_path / "child", tmp_path / "grandchild"
    charloom.train(
        tiny(init_from=str(parent), iters=2), text=child_text(), out=child, console=False
    )
    charloom.train(
        tiny(init_from=str(child / "latest"), iters=2),
        text=child_text(),
        out=grandchild,
        console=False,
    )
    rec = config_json(grandchild)["parent"]
    assert rec["path"] == str((child / "latest").resolve())
    assert rec["weights_sha256"] == file_sha256(child / "latest" / "model.safetensors")
    assert rec["parent"]["path"] == str((parent / "best").resolve())
    assert rec["parent"]["weights_sha256"] == file_sha256(parent / "best" / "model.safetensors")
    assert rec["parent"]["parent"] is None  # the first run was trained from scratch
    assert "parent" not in config_json(parent)
    # A resumed fine-tuning run keeps its parent record.
    trainer = charloom.load_trainer(grandchild, {"iters": 3}, text=child_text(), console=False)
    trainer.run()
    assert config_json(grandchild, "latest")["parent"] == rec


def test_info_shows_the_parent_chain(parent, tmp_path, capsys):
    child = tmp_path / "child"
    charloom.train(
        tiny(init_from=str(parent), iters=2), text=child_text(), out=child, console=False
    )
    assert main(["info", str(child)]) == 0
    out = capsys.readouterr().out
    sha = file_sha256(parent / "best" / "model.safetensors")
    assert f"parent        {(parent / 'best').resolve()}, weights sha256 {sha[:16]}" in out
    assert main(["info", str(child), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parent"]["weights_sha256"] == sha


def test_bytes_parent_needs_no_new_rows(bytes_parent, tmp_path):
    out = tmp_path / "child"
    text = child_text() + "Ünïcödé ✓\n"
    charloom.train(tiny(init_from=str(bytes_parent)), text=text, out=out, console=False, stop_at=0)
    old, new = weights(bytes_parent), weights(out, "latest")
    assert all(torch.equal(old[k], new[k]) for k in old)


def test_shape_comes_from_the_parent(parent, tmp_path):
    out = tmp_path / "child"
    # The default preset is 2x256: the parent's 1x32 wins, and the fine-tuning defaults apply.
    config = preset_config(init_from=str(parent), iters=2, batch_size=4, seq_len=16)
    assert (config.lr, config.warmup) == (FINETUNE["lr"], FINETUNE["warmup"])
    charloom.train(config, text=child_text(), out=out, console=False)
    model = config_json(out)["model"]
    assert (model["layers"], model["hidden"], model["embed"]) == (1, 32, 16)


def test_budget_rule_picks_dropout_by_passes_for_the_parents_size():
    two = ModelConfig(kind="lstm", vocab_size=256, embed=64, hidden=256, layers=2)
    one = ModelConfig(kind="lstm", vocab_size=256, embed=64, hidden=256, layers=1)
    rates = {"fp32": 210.0, "bf16": 840.0}
    short = parent_budget_overrides(1, 1_000_000, two, rates)
    long = parent_budget_overrides(600, 50_000, two, rates)
    assert short["dropout"] == 0.0 and long["dropout"] == 0.5
    assert parent_budget_overrides(600, 50_000, one, rates)["dropout"] == 0.0  # nowhere to put it


def test_cli_fine_tunes_with_time_budget(parent, tmp_path, capsys):
    text = tmp_path / "new.txt"
    text.write_text(child_text(), encoding="utf-8")
    out = tmp_path / "child"
    argv = ["train", str(text), "--init-from", str(parent), "--time", "3s", "--out", str(out)]
    assert main([*argv, "--no-bar", "--batch-size", "4", "--seq-len", "16"]) == 0
    err = capsys.readouterr().err
    assert "fine-tuning from" in err and "3 new symbol(s)" in err
    assert "(the parent's size)" in err
    assert config_json(out, "latest")["model"]["hidden"] == 32


# --- bad input: one line, exit status 2, nothing written ---------------------------------------
def expect_error(capsys, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def text_path(tmp_path) -> Path:
    p = tmp_path / "new.txt"
    p.write_text(child_text(), encoding="utf-8")
    return p


def train_argv(text: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(text), *TINY_FLAGS[:2], "--iters", "2", "--out", str(out), *extra]


def test_error_not_a_run(tmp_path, text_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    expect_error(capsys, train_argv(text_path, out, "--init-from", "nowhere"), "--init-from")
    expect_error(
        capsys,
        train_argv(text_path, out, "--init-from", str(tmp_path / "empty")),
        "not a charloom run",
    )
    expect_error(capsys, train_argv(text_path, out, "--init-from", str(text_path)), "not a")
    assert not out.exists()


def test_error_corrupted_run(parent, tmp_path, text_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(parent, broken)
    for which in ("best", "latest"):
        weights_file = broken / which / "model.safetensors"
        data = bytearray(weights_file.read_bytes())
        data[-5] ^= 0xFF
        weights_file.write_bytes(bytes(data))
    out = tmp_path / "out"
    expect_error(capsys, train_argv(text_path, out, "--init-from", str(broken)), "manifest")
    assert not out.exists()


def test_error_shape_flags_that_disagree(parent, bytes_parent, tmp_path, text_path, capsys):
    out = tmp_path / "out"
    msg = expect_error(
        capsys,
        train_argv(text_path, out, "--init-from", str(parent), "--model", "gru"),
        "--model gru",
        "disagrees",
        "lstm 1x32",
    )
    assert "leave --model out" in msg
    expect_error(
        capsys,
        train_argv(text_path, out, "--init-from", str(parent), "--hidden", "64"),
        "--hidden 64",
    )
    expect_error(
        capsys,
        train_argv(text_path, out, "--init-from", str(bytes_parent), "--vocab", "corpus"),
        "--vocab corpus",
        "vocabulary bytes",
    )
    # Agreeing flags are fine (checked without training: the same messages would be raised).
    assert not out.exists()


def test_error_with_resume(parent, tmp_path, capsys):
    expect_error(
        capsys,
        ["train", "--resume", str(parent), "--init-from", str(parent)],
        "--init-from",
        "--resume",
    )
    with pytest.raises(charloom.CharloomError, match="--init-from"):
        charloom.load_trainer(parent, {"init_from": str(parent)}, console=False)


def test_error_leaves_existing_run_untouched_with_overwrite(parent, tmp_path, text_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    expect_error(
        capsys,
        train_argv(text_path, out, "--init-from", str(parent), "--layers", "3", "--overwrite"),
        "--layers 3",
    )
    assert (out / "keep.txt").read_text() == "mine"


# --- the built-in base model -------------------------------------------------------------------
def test_base_model_samples_and_shows_its_card(capsys):
    assert main(["sample", "base", "--length", "40", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
    assert main(["info", "base"]) == 0
    out = capsys.readouterr().out
    assert "model card" in out and "PSF License" in out and "public domain" in out
    assert "bench/train_base.py" in out
    assert main(["info", "base", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab"]["kind"] == "bytes" and info["card"]["training"]["seed"] == 1337
    card_data = {part["name"].split()[0] for part in info["card"]["data"]}
    assert card_data == {"python-docs", "tinyshakespeare"}


def test_base_model_is_small_and_never_pickled():
    folder = basemodel.base_dir()
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total < 10_000_000
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "card.json"}
    assert not any(p.suffix in (".pt", ".pth", ".pkl", ".bin") for p in folder.iterdir())


def test_a_real_path_named_base_takes_precedence(parent, tmp_path, capsys):
    import shutil

    # tmp_path is the current folder (the autouse fixture): ./base is a run of the user's own.
    shutil.copytree(parent, tmp_path / "base")
    assert main(["info", "base", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab"]["kind"] == "corpus"
    shutil.rmtree(tmp_path / "base")
    (tmp_path / "base").mkdir()  # a folder that is not a run: the error says what it hides
    expect_error(capsys, ["sample", "base"], "hides the built-in base model")


def test_fine_tune_base_records_it(tmp_path):
    out = tmp_path / "child"
    config = preset_config(init_from="base", iters=2, batch_size=4, seq_len=16, eval_every=2)
    charloom.train(config, text=child_text(), out=out, console=False)
    rec = config_json(out)["parent"]
    assert rec["path"] == "base" and rec["builtin"] is True
    assert rec["weights_sha256"] == file_sha256(basemodel.base_dir() / "model.safetensors")
    shape = ("kind", "layers", "hidden", "embed", "vocab_size")
    mine, base = (
        config_json(out)["model"],
        config_json(basemodel.base_dir().parent, "base")["model"],
    )
    assert {k: mine[k] for k in shape} == {k: base[k] for k in shape}
