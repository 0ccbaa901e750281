"""charloom: character-level recurrent language models.

The Python API in a few names::

    import charloom
    config = charloom.preset_config("tiny", iters=300)
    run = charloom.train(config, paths=["my.txt"], out="runs/mine")
    print(run.sample(prime="Th", length=200)[0])
    print(run.eval(open("held-out.txt").read()).bpc)
    run.plot()                      # the loss curves, a matplotlib Figure
    run = charloom.load("runs/mine")  # the same object, later

``charloom.train`` and ``charloom.load`` return a :class:`Run` (see ``run.py``), which is a
:class:`CharModel` with its run directory. ``Trainer``, ``load_trainer`` and ``TrainResult``
are the lower-level loop behind them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

# The names below are imported on first use (PEP 562), not with the package: importing torch
# takes seconds, and ``charloom sample`` with the compiled engine never needs it.
_HOMES = {
    "CharModel": "charmodel",
    "Run": "run",
    "load": "run",
    "TrainConfig": "config",
    "CharloomError": "errors",
    "EvalResult": "evaluate",
    "CharRNN": "model",
    "ModelConfig": "model",
    "prepare": "prepared",
    "preset_config": "presets",
    "Trainer": "train",
    "TrainResult": "train",
    "load_trainer": "train",
    "train": "run",
    "Vocab": "vocab",
}

if TYPE_CHECKING:
    from .charmodel import CharModel
    from .config import TrainConfig
    from .errors import CharloomError
    from .evaluate import EvalResult
    from .model import CharRNN, ModelConfig
    from .prepared import prepare
    from .presets import preset_config
    from .run import Run, load, train
    from .train import Trainer, TrainResult, load_trainer
    from .vocab import Vocab


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'charloom' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


class _Package(types.ModuleType):
    """The package's own module type: ``charloom.train`` stays the function. Python binds a
    submodule to its package's attribute when the submodule is first imported, and with the
    names above imported lazily, the module ``charloom.train`` would take the function's
    name (as it never did while this file imported everything)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "__version__",
    "CharModel",
    "CharRNN",
    "CharloomError",
    "EvalResult",
    "ModelConfig",
    "Run",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "Vocab",
    "load",
    "load_trainer",
    "prepare",
    "preset_config",
    "train",
]
