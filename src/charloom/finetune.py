"""Fine-tuning: a new run that starts from another run's weights (``--init-from RUN|base``).

What the parent fixes and what stays free:

- The model's shape (cell kind, layers, hidden and embedding sizes) and the vocabulary's kind
  come from the parent. A setting the user gave explicitly that disagrees is an error (one
  line): silently training another shape would discard the parent.
- The vocabulary is the parent's, extended: every symbol of the new text's own vocabulary that
  the parent lacks is appended as a new id. A ``bytes`` parent never needs a new row. Every
  existing row (embedding, output weights and bias) is copied bit for bit.
- The optimiser and the schedule start fresh (new moments, warm-up, cosine), with the
  fine-tuning defaults of ``presets.FINETUNE``.

The new rows start from the mean of the parent's rows (embedding and output weights), so a
new symbol reads like an average known one, and with the output bias of the parent's least
likely symbol (:data:`NEW_ROW_BIAS`), so the model does not start by predicting symbols it has
never seen. See docs/finetune.md, "New characters", for the measurement behind the bias.

The new run records its parent in ``config.json``: the checkpoint folder, the SHA-256 of its
weights file and the parent's own record (a chain back to the first run trained from scratch).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import basemodel
from . import checkpoint as ckpt
from .config import TrainConfig, flag_for
from .data import TrainData, load_data
from .errors import CharloomError
from .model import CharRNN
from .vocab import Vocab

#: Settings a fine-tuned run takes from its parent (its model's shape and vocabulary kind).
SHAPE_SETTINGS = ("kind", "layers", "hidden", "embed", "vocab")
#: The parameters with one row per vocabulary symbol: ``(V, E)``, ``(V, H)`` and ``(V,)``.
VOCAB_ROWS = ("embedding.weight", "head.weight", "head.bias")
#: How a new symbol's output bias starts: "min" (the parent's least likely symbol's) or "mean".
NEW_ROW_BIAS = "min"


@dataclass
class Parent:
    """The run a fine-tuned model starts from, loaded and checked."""

    name: str  # as the user gave it (``base``, ``runs/x``, ``runs/x/latest``)
    checkpoint: ckpt.Checkpoint
    record: dict  # what the child's config.json keeps under "parent"

    def describe(self) -> str:
        m = self.checkpoint.model_config
        return (
            f"{self.name} ({m.kind} {m.layers}x{m.hidden}, embed {m.embed}, "
            f"vocabulary {self.checkpoint.vocab.kind})"
        )


def load_parent(name: str) -> Parent:
    """Load the parent ``name`` (a run directory, a checkpoint folder, or ``base``); a path
    that is not a run, or a damaged run, is a :class:`CharloomError` naming ``--init-from``."""
    try:
        folder = ckpt.resolve_checkpoint(name, ckpt.BEST)
        checkpoint = ckpt.load_checkpoint(folder)
        # A run whose weights and settings disagree is damaged: find out before training.
        checkpoint.build_model("cpu")
    except CharloomError as exc:
        raise CharloomError(f"--init-from {name}: {exc}") from None
    return Parent(name, checkpoint, parent_record(name, folder, checkpoint))


def parent_record(name: str, folder: Path, checkpoint: ckpt.Checkpoint) -> dict:
    """What a child records about its parent: where it was, the SHA-256 of its weights file
    (which identifies the weights wherever the folder moves), and its own parent record."""
    builtin = basemodel.builtin_path(name) is not None
    return {
        "path": basemodel.BASE_NAME if builtin else str(Path(folder).resolve()),
        "builtin": builtin,
        "weights_sha256": ckpt.file_sha256(Path(folder) / ckpt.WEIGHTS_FILE),
        "parent": checkpoint.meta.get("parent"),
    }


def check_given(parent: Parent, given: Collection[str], config: TrainConfig) -> None:
    """Refuse settings the user chose explicitly (``given``: their names) that disagree with
    the parent's shape or vocabulary kind."""
    m, vocab = parent.checkpoint.model_config, parent.checkpoint.vocab
    have = {"kind": m.kind, "layers": m.layers, "hidden": m.hidden, "embed": m.embed}
    have["vocab"] = vocab.kind
    for name in SHAPE_SETTINGS:
        want = config.vocab if name == "vocab" else getattr(config.model, name)
        if name in given and want != have[name]:
            raise CharloomError(
                f"{flag_for(name)} {want} disagrees with the --init-from parent "
                f"{parent.describe()}: a fine-tuned model keeps its parent's "
                f"{'vocabulary kind' if name == 'vocab' else 'shape'}; leave "
                f"{flag_for(name)} out"
            )


def parent_config(config: TrainConfig, parent: Parent, given: Collection[str] = ()) -> TrainConfig:
    """``config`` with the parent's shape, vocabulary kind and text normalisation. ``given``:
    the settings the caller chose explicitly; one that disagrees with the parent is an error.
    Dropout stays the caller's: it is a training setting, not part of the shape."""
    check_given(parent, given, config)
    m = parent.checkpoint.model_config
    return config.replace(
        kind=m.kind,
        layers=m.layers,
        hidden=m.hidden,
        embed=m.embed,
        vocab=parent.checkpoint.vocab.kind,
        ascii=parent.checkpoint.ascii or config.ascii,
    )


def extend_vocab(parent: Vocab, own: Vocab) -> tuple[Vocab, list[str]]:
    """The parent's vocabulary with every symbol of ``own`` (the new text's vocabulary) that it
    lacks appended, in ``own``'s order; and those new symbols. The parent's ids are kept."""
    if parent.kind != own.kind:
        raise CharloomError(
            f"the new text's vocabulary is {own.kind}, the parent's {parent.kind}; "
            "a fine-tuned model keeps its parent's vocabulary kind"
        )
    known = set(parent.chars)
    new = [c for c in own.chars if c not in known]
    # Documents mode on either side keeps (or adds) the end symbol, one past the characters.
    documents = parent.documents or own.documents
    if not new and documents == parent.documents:
        return parent, []
    return Vocab(parent.kind, parent.chars + tuple(new), documents), new


def row_sources(parent: Vocab, vocab: Vocab) -> list[int | None]:
    """For each id of ``vocab`` (the parent's extended by :func:`extend_vocab`), the parent's
    id whose rows it starts from, or None for a symbol the parent lacks. The characters keep
    their ids; the end symbol moves past any new characters, so it is mapped, not copied by
    position."""
    sources: list[int | None] = []
    for i in range(vocab.size):
        if i < parent.chars_size:
            sources.append(i)
        elif i == vocab.end:
            sources.append(parent.end)
        else:
            sources.append(None)
    return sources


def load_data_for(
    parent: Parent, config: TrainConfig, given: Collection[str], reading: Mapping
) -> tuple[TrainConfig, TrainData, list[str]]:
    """``(config, data, new symbols)`` for fine-tuning ``parent``: the config with the parent's
    shape (:func:`parent_config`), and the text (``reading``: ``data.load_data``'s keyword
    arguments) encoded with the parent's vocabulary, extended by the symbols it lacks."""
    config = parent_config(config, parent, given)
    config, data = load_data(config, **reading)
    vocab, new = extend_vocab(parent.checkpoint.vocab, data.vocab)
    if vocab != data.vocab:  # encode again so that every known symbol has the parent's id
        config, data = load_data(config, **reading, vocab=vocab)
    return config.replace(vocab_size=vocab.size), data, new


@torch.no_grad()
def init_from_parent(model: CharRNN, parent: Parent, vocab: Vocab) -> int:
    """Copy the parent's weights into ``model`` (built with ``vocab``, the parent's extended by
    :func:`extend_vocab`) and initialise the rows of new symbols; returns how many rows are new.
    The parent's rows are copied exactly, so the fine-tuned model starts as the parent on every
    known symbol (the end-of-document symbol included, wherever its id moved)."""
    weights = parent.checkpoint.weights
    own = model.state_dict()
    if set(own) != set(weights):
        raise CharloomError(f"--init-from {parent.name}: its weights do not fit the model")
    sources = row_sources(parent.checkpoint.vocab, vocab)
    if len(sources) != own["head.bias"].shape[0]:
        raise CharloomError(f"--init-from {parent.name}: its vocabulary does not fit the model")
    kept = torch.tensor([i for i, s in enumerate(sources) if s is not None], dtype=torch.long)
    taken = torch.tensor([s for s in sources if s is not None], dtype=torch.long)
    fresh = torch.tensor([i for i, s in enumerate(sources) if s is None], dtype=torch.long)
    n_new = len(fresh)
    for name, target in own.items():
        source = weights[name].to(target.dtype)
        rows = name in VOCAB_ROWS
        if target.shape[1:] != source.shape[1:] or (not rows and target.shape != source.shape):
            raise CharloomError(
                f"--init-from {parent.name}: {name} has shape {tuple(source.shape)}, the model "
                f"needs {tuple(target.shape)}"
            )
        if not rows:
            target.copy_(source)
            continue
        target[kept] = source[taken]
        if n_new:
            target[fresh] = new_rows(name, source, n_new)
    return n_new


def new_rows(name: str, rows: torch.Tensor, n: int) -> torch.Tensor:
    """The initial values of ``n`` new rows of vocabulary parameter ``name`` given the parent's
    ``rows`` ``(V_old, ...)``: their mean, except an output bias, which starts at the parent's
    lowest (``NEW_ROW_BIAS="min"``) so that a new symbol starts as unlikely as its rarest."""
    low_bias = name == "head.bias" and NEW_ROW_BIAS == "min"
    value = rows.min() if low_bias else rows.mean(dim=0)
    return value.expand(n, *rows.shape[1:]).clone()


def note(parent: Parent, new: list[str]) -> str:
    """The console line that says what a fine-tuning run starts from."""
    shown = "".join(new[:40]) + ("..." if len(new) > 40 else "")
    added = f"; {len(new)} new symbol(s) added to the vocabulary: {shown!r}" if new else ""
    sha = parent.record["weights_sha256"][:12]
    return f"fine-tuning from {parent.describe()}, weights sha256 {sha}...{added}"
