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

from ._version import __version__
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
