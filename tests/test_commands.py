"""The command package's structure and the library rules it translates: train flags generated
from the configuration fields, and the resume, budget-sizing and processes rules called
directly. Nothing here trains a model."""

import argparse
import dataclasses

import pytest

from charloom import commands, config, presets
from charloom.commands import train as train_command
from charloom.config import BATCHINGS, TrainConfig
from charloom.errors import CharloomError
from charloom.model import PATHS
from charloom.modelconfig import MODEL_KINDS, ModelConfig
from charloom.vocab import VOCAB_KINDS

#: Fields that are not settings a user gives: the nested model, the size the text decides, and
#: the seconds half of --checkpoint-every.
INTERNAL = {"model", "vocab_size", "checkpoint_every_s"}
ALL_FIELDS = [*dataclasses.fields(ModelConfig), *dataclasses.fields(TrainConfig)]


def train_actions() -> dict[str, argparse.Action]:
    parser = commands.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


def test_every_setting_field_has_a_train_flag_with_help():
    actions = train_actions()
    for f in ALL_FIELDS:
        if f.name in INTERNAL:
            assert f.name not in actions, f.name
            continue
        action = actions[f.name]
        assert action.option_strings == [config.flag_for(f.name)]
        assert action.default is argparse.SUPPRESS  # so that a preset's value applies
        assert action.help and f.metadata["help"] in action.help


def test_flag_spellings_are_the_documented_ones():
    assert config.flag_for("kind") == "--model"
    assert config.flag_for("batch_size") == "--batch-size"
    assert config.flag_for("checkpoint_every_s") == "--checkpoint-every"


def test_choices_are_the_constants_the_config_validates_against():
    expected = {
        "vocab": VOCAB_KINDS,
        "batching": BATCHINGS,
        "path": PATHS,
        "kind": MODEL_KINDS,
        "optimizer": config.OPTIMIZERS,
        "schedule": config.SCHEDULES,
        "precision": config.PRECISIONS,
        "device": config.DEVICES,
        "log_style": config.LOG_STYLES,
    }
    actions = train_actions()
    with_choices = {name for name, a in actions.items() if a.choices and name in expected}
    assert with_choices == set(expected)
    for name, constant in expected.items():
        assert actions[name].choices is constant, name
    for name in expected:  # and validation refuses what the flag refuses
        if name == "kind":
            continue  # ModelConfig's own check, with its own message
        with pytest.raises(CharloomError, match=config.flag_for(name)):
            TrainConfig(**{name: "nonsense"}).validate()


def test_train_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        commands.main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in ALL_FIELDS:
        if f.name not in INTERNAL:
            assert config.flag_for(f.name) + " " in out, f.name
    for flag in (
        "--quiet",
        "--no-bar",
        "--nproc",
        "--preset",
        "--resume",
        "--out",
        "--name",
        "--overwrite",
        "--corpus",
        "--encoding",
        "--errors",
    ):
        assert flag in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {}),
        (["--checkpoint-every", "10m"], {"checkpoint_every_s": 600.0}),
        (["--checkpoint-every", "25"], {"checkpoint_every": 25}),
        (["--grad-clip", "none"], {"grad_clip": None}),
        (["--grad-clip", "0.5"], {"grad_clip": 0.5}),
        (["--time", "90s"], {"time": 90.0}),
        (
            ["--model", "gru", "--ascii", "--warmup", "0"],
            {"kind": "gru", "ascii": True, "warmup": 0},
        ),
        (
            ["--log-style", "lecture", "--sample-prime", "Once"],
            {"log_style": "lecture", "sample_prime": "Once"},
        ),
    ],
)
def test_flags_become_the_overrides_given(argv, expected):
    args = commands.build_parser().parse_args(["train", *argv])
    assert train_command.overrides(args) == expected
    presets.preset_config(None, **expected).validate()  # each is a valid setting


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--checkpoint-every", "0"], "must be at least 1"),
        (["--checkpoint-every", "soon"], "as a duration"),
        (["--grad-clip", "-1"], "'none' for no clipping"),
        (["--grad-clip", "inf"], "not a finite number"),
        (["--iters", "0"], "must be >= 1"),
        (["--warmup", "-1"], "must be >= 0"),
        (["--dropout", "nan"], "not a finite number"),
    ],
)
def test_bad_flag_values_say_why(argv, needle, capsys):
    assert commands.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: argument ") and needle in err
    assert err.count("\n") == 1


def test_without_nproc_removes_every_spelling():
    argv = ["t.txt", "--nproc", "2", "--iters", "5", "--nproc=3", "--npr", "4", "--no-bar"]
    assert train_command.without_nproc(argv) == ["t.txt", "--iters", "5", "--no-bar"]


# --- the library rules, called directly ----------------------------------------------------------
def test_resumable_settings_are_settings():
    names = {f.name for f in ALL_FIELDS}
    assert names >= config.RESUMABLE
    assert {"iters", "time", "checkpoint_every", "checkpoint_every_s"} <= config.RESUMABLE
    assert not {"kind", "hidden", "lr", "batch_size", "vocab"} & config.RESUMABLE


def test_check_resume_overrides():
    config.check_resume_overrides({})
    config.check_resume_overrides({"iters": 100, "time": 60.0, "checkpoint_every_s": 30.0})
    with pytest.raises(CharloomError) as exc:
        config.check_resume_overrides({"iters": 100, "lr": 0.1, "kind": "gru"})
    assert str(exc.value) == (
        "--model, --lr cannot be given with --resume: a resumed run keeps its settings "
        "(only the budget and reporting can change)"
    )
    with pytest.raises(CharloomError, match="^text/--preset/--out cannot be given with --resume"):
        config.check_resume_overrides({"iters": 5}, others=["text/--preset/--out"])
    with pytest.raises(CharloomError, match="^--hidden cannot"):  # settings are named first
        config.check_resume_overrides({"hidden": 8}, others=["text/--preset/--out"])


@pytest.mark.parametrize(
    "overrides, preset, sized",
    [
        ({"time": 90.0}, None, True),
        ({"time": 90.0, "eval_every": 10, "seed": 3, "device": "cpu"}, None, True),
        ({"time": 90.0}, "small", False),
        ({}, None, False),
        ({"iters": 100}, None, False),
        ({"time": 90.0, "hidden": 64}, None, False),
        ({"time": 90.0, "precision": "fp32"}, None, False),
        ({"time": 90.0, "batching": "portions"}, None, False),
    ],
)
def test_sizes_for_budget(overrides, preset, sized):
    assert presets.sizes_for_budget(overrides, preset) is sized


def test_size_settings_cover_what_the_budget_chooses():
    chosen = set(presets.budget_overrides(3600, 1_000_000))
    assert chosen <= presets.SIZE_SETTINGS
    assert {f.name for f in ALL_FIELDS} >= presets.SIZE_SETTINGS


def test_check_processes():
    TrainConfig(batch_size=32).check_processes(1)
    TrainConfig(batch_size=32).check_processes(4)
    with pytest.raises(CharloomError) as exc:
        TrainConfig(batch_size=4).check_processes(3)
    assert str(exc.value) == (
        "--batch-size 4 must be a multiple of --nproc 3: each process takes an equal share of "
        "every batch"
    )


def test_every_command_module_registers_and_runs():
    parser = commands.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [
        "train",
        "prepare",
        "sample",
        "eval",
        "bench",
        "info",
        "viz",
        "plot",
        "serve",
    ]
    for module in commands.COMMANDS:
        assert callable(module.register) and callable(module.run)
    for name, p in sub.choices.items():
        assert p.get_default("handler").__module__.startswith("charloom.commands."), name
