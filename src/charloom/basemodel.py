"""The built-in base model: a checkpoint folder shipped inside the package, named ``base``.

Wherever a command takes a RUN, ``base`` means this folder unless a file or folder called
``base`` exists where the command runs: a real path always wins, so a user's own run named
``base`` keeps working (``./base`` if in doubt, or ``charloom info base`` shows which it took).

The folder is an ordinary checkpoint (``config.json``, ``model.safetensors``, ``manifest.json``)
plus ``card.json``, the model card written by ``bench/train_base.py``: the command, data and
licences, seed, time and machine of its training. Loading it never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CharloomError

#: The name that stands for the built-in base model wherever a RUN is accepted.
BASE_NAME = "base"
#: The model card's file name inside a checkpoint folder.
CARD_FILE = "card.json"
# A card larger than this is not one of ours.
_MAX_CARD_BYTES = 1 << 20


def base_dir() -> Path:
    """The folder of the built-in base model inside the installed package."""
    return Path(__file__).resolve().parent / BASE_NAME


def builtin_path(name: str) -> Path | None:
    """The folder ``name`` stands for if it names a built-in model, else ``None``. Only the
    bare name counts (``base``, not ``./base``), and only when no such path exists here."""
    if name != BASE_NAME or Path(name).exists():
        return None
    folder = base_dir()
    if not folder.is_dir():
        raise CharloomError(
            "the built-in base model is missing from this installation of charloom "
            f"(expected at {folder}); reinstall charloom"
        )
    return folder


def shadow_note(name: str) -> str:
    """What to add to a 'not a run' message about ``name``: a hint when a real path called
    ``base`` hides the built-in model."""
    if name == BASE_NAME and Path(name).exists():
        return (
            f"; the path ./{BASE_NAME} here hides the built-in base model "
            "(run the command from another folder to use it)"
        )
    return ""


def read_card(folder: Path) -> dict | None:
    """The model card of checkpoint ``folder`` (``card.json``), or ``None`` when it has none."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > _MAX_CARD_BYTES:
            raise CharloomError(f"{path} is too large to be a model card")
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CharloomError(f"{path} is not a readable model card ({exc})") from None
    if not isinstance(card, dict):
        raise CharloomError(f"{path} is not a model card (not a JSON object)")
    return card
