"""charloom: character-level recurrent language models.

The Python API in a few names::

    import charloom
    config = charloom.preset_config("tiny", iters=300)
    result = charloom.train(config, paths=["my.txt"], out="runs/mine")
    model = charloom.load("runs/mine")
    print(model.sample(prime="Th", length=200)[0])
    print(model.evaluate(open("held-out.txt").read()).bpc)
"""

from ._version import __version__
from .charmodel import CharModel, load
from .config import TrainConfig
from .errors import CharloomError
from .evaluate import EvalResult
from .model import CharRNN, ModelConfig
from .prepared import prepare
from .presets import preset_config
from .train import Trainer, TrainResult, load_trainer, train
from .vocab import Vocab

__all__ = [
    "__version__",
    "CharModel",
    "CharRNN",
    "CharloomError",
    "EvalResult",
    "ModelConfig",
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
