"""``charloom train``: train a model, resume one, or start several processes.

The setting flags are not written here: they are generated from the fields of TrainConfig and
ModelConfig (their ``metadata`` holds the help, choices and value type), so a setting added to
the configuration is a flag at once, spelled, checked and documented the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..errors import CharloomError
from .options import add_text_source, finite_float, from_library, int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and its flags to ``subparsers``."""
    from ..presets import preset_names

    t = subparsers.add_parser(
        "train",
        help="train a model on text",
        description=(
            "Train a character model. TEXT: files, folders or glob patterns (default: the built-in "
            "python-docs corpus). Flags override the preset."
        ),
    )
    t.add_argument("text", nargs="*", metavar="TEXT")
    add_text_source(t)
    t.add_argument("--preset", help=f"named settings: {', '.join(preset_names())} (default small)")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    t.add_argument("--name", help="run name for the default run directory")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR where it stopped")
    t.add_argument("--quiet", action="store_true", help="no console output")
    t.add_argument("--no-bar", action="store_true", help="no progress bar")
    t.add_argument(
        "--nproc", type=int_at_least(1), default=1, metavar="N",
        help="train with N processes on this machine (torchrun; one per GPU on CUDA)",
    )
    add_settings(t.add_argument_group("settings (each overrides the preset's)"))
    t.set_defaults(handler=run)


def setting_fields() -> list[dataclasses.Field]:
    """The configuration fields that have a ``train`` flag, in the order of ``--help``."""
    from ..config import settings

    return [f for f in settings() if f.metadata.get("cli", True)]


def add_settings(group: argparse._ActionsContainer) -> None:
    """One flag per setting field. Each defaults to SUPPRESS, so that only what the user gave
    reaches the overrides and a preset's values apply otherwise."""
    from ..config import ModelConfig, TrainConfig, flag_for
    from ..presets import preset_config

    hints = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(ModelConfig)}
    model_fields = dataclasses.fields(ModelConfig)
    default = preset_config()  # the default preset, for the "(default: ...)" in each help
    for f in setting_fields():
        meta = f.metadata
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS}
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        elif "type" in meta:
            kw["type"] = from_library(meta["type"])
        elif "min" in meta:
            kw["type"] = int_at_least(meta["min"])
        elif hints[f.name] is bool:
            kw["action"] = "store_true"
        elif float in (hints[f.name], *typing.get_args(hints[f.name])):
            kw["type"] = finite_float
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        value = getattr(default.model if f in model_fields else default, f.name)
        shown = "" if value is None or isinstance(value, bool) else f" (default: {value})"
        group.add_argument(flag_for(f.name), help=meta["help"] + shown, **kw)


def overrides(args: argparse.Namespace) -> dict:
    """The settings the user gave, by field name."""
    names = {f.name for f in setting_fields()}
    out = {k: v for k, v in vars(args).items() if k in names}
    out.update(out.pop("checkpoint_every", {}))  # its value names one of two settings
    return out


def run(args: argparse.Namespace) -> int:
    """Train (or resume, or launch ``--nproc`` processes that train). Meanwhile, a process of
    its own compiles the sampling engine into numba's cache (see ``fastgen.compile_ahead``)."""
    from .. import distributed, fastgen

    if not distributed.launched():  # the launcher or a lone process: one compiler per command
        fastgen.compile_ahead()
    if args.nproc > 1:
        if distributed.launched():
            raise CharloomError("--nproc starts the processes itself; under torchrun leave it out")
        _check_before_launch(args)
        return distributed.launch(args.nproc, without_nproc(args.argv))
    try:
        return _train(args)
    finally:
        distributed.leave()


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` (also spelled ``--nproc=N`` or abbreviated)."""
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) > 3 and "--nproc".startswith(name):
            skip = "=" not in arg
        else:
            out.append(arg)
    return out


def _check_before_launch(args: argparse.Namespace) -> None:
    """What a launcher can check before starting processes, so that a plain mistake is one
    error line rather than one per process."""
    from ..checkpoint import find_resumable
    from ..presets import preset_config

    if args.resume:
        find_resumable(args.resume)
        return
    config = preset_config(args.preset, **overrides(args))
    config.validate()
    config.check_processes(args.nproc)


def _train(args: argparse.Namespace) -> int:
    from ..config import check_resume_overrides
    from ..presets import preset_config, sizes_for_budget
    from ..train import load_trainer, train

    given = overrides(args)
    console = not args.quiet
    if args.resume:
        others = args.preset or args.text or args.corpus or args.out
        check_resume_overrides(given, others=["text/--preset/--out"] if others else [])
        trainer = load_trainer(args.resume, given, console=console, progress_bar=not args.no_bar)
        trainer.run()
        return 0
    train(
        preset_config(args.preset, **given),
        paths=args.text,
        corpus=args.corpus,
        encoding=args.encoding,
        errors=args.errors,
        out=args.out,
        overwrite=args.overwrite,
        name=args.name,
        console=console,
        progress_bar=not args.no_bar,
        size_for_budget=sizes_for_budget(given, args.preset),
        given=set(given),
    )
    return 0
