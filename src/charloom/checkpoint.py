"""Run directories and checkpoints: weights, config, training state; atomic writes; safe loads.

A run directory looks like this::

    RUN/
      latest/            the newest checkpoint (what --resume continues from)
        config.json        model settings, vocabulary, text normalisation, charloom version
        model.safetensors  the weights
        state.json         training settings, iteration, schedule, data position, ...
        state.safetensors  optimizer moments, RNG states, carried recurrent state
        manifest.json      size and SHA-256 of every file above; written last
      best/              the checkpoint with the best validation loss (config + weights)
      metrics.jsonl  samples.txt  loss.png  loss.pdf

A checkpoint is written into a temporary folder, each file flushed to disk, then put in place by
renames; the previous one is kept as ``NAME.old`` until the new one is complete, so a crash at
any moment leaves at least one complete checkpoint. Nothing here unpickles: tensors travel in
safetensors files and everything else in JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError

from . import basemodel
from ._version import __version__
from .errors import CharloomError
from .modelconfig import ModelConfig
from .rundir import BEST, LATEST
from .vocab import Vocab

# torch is imported only where tensors are made (weights to write, weights to load as tensors,
# a model to build): reading a checkpoint's settings and its weights as arrays - what sampling
# on the CPU needs - must not cost torch's import (seconds).
if TYPE_CHECKING:
    import torch

    from .model import CharRNN

#: Version of the on-disk layout; a checkpoint from a newer charloom is refused, not guessed at.
FORMAT = 1

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.json"
STATE_TENSORS_FILE = "state.safetensors"
MANIFEST_FILE = "manifest.json"

# A config.json larger than this is not one of ours (the largest vocabulary is ~4 MB of text).
_MAX_CONFIG_BYTES = 64 * 1024 * 1024


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, loaded."""

    path: Path
    model_config: ModelConfig
    vocab: Vocab
    meta: dict  # the rest of config.json: text normalisation, training summary, version
    weights: dict[str, torch.Tensor]
    state: dict = field(default_factory=dict)  # state.json, for a resumable checkpoint
    state_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def ascii(self) -> bool:
        return bool(self.meta.get("text", {}).get("ascii", False))

    def build_model(self, device: str | torch.device = "cpu") -> CharRNN:
        from .model import CharRNN

        model = CharRNN(self.model_config)
        try:
            model.load_state_dict(self.weights, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise CharloomError(
                f"{self.path}: the weights do not match the model settings ({detail})"
            ) from None
        return model.to(device)


# --- writing ----------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The SHA-256 of file ``path``, as hex (what manifests and fine-tuned runs record)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def config_dict(
    model_config: ModelConfig,
    vocab: Vocab,
    ascii: bool,
    summary: dict,
    documents: str = "off",
    parent: dict | None = None,
) -> dict:
    """A checkpoint's config.json; ``text`` says how text is read: ``ascii`` normalisation,
    and the ``documents`` mode (recorded only when on: older runs have none); ``parent``: the
    run a fine-tuned model started from (see ``finetune.parent_record``), absent for a model
    trained from scratch."""
    text: dict = {"ascii": ascii}
    if documents != "off":
        text["documents"] = documents
    out = {
        "format": FORMAT,
        "charloom_version": __version__,
        "model": model_config.to_dict(),
        "vocab": vocab.to_dict(),
        "text": text,
        "training": summary,
    }
    if parent is not None:
        out["parent"] = parent
    return out


def write_checkpoint(
    run_dir: Path,
    name: str,
    config: dict,
    weights: dict[str, torch.Tensor],
    state: dict | None = None,
    state_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``run_dir/name`` so that a crash at any moment leaves a complete one."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp{os.getpid()}"
    old = run_dir / f"{name}.old"
    try:
        # Temporary folders left by a crashed writer are never complete checkpoints.
        for stale in run_dir.glob(f".{name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = {CONFIG_FILE: None, WEIGHTS_FILE: None}
        write_json(tmp / CONFIG_FILE, config)
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        save_file(cpu, str(tmp / WEIGHTS_FILE))
        if state is not None:
            write_json(tmp / STATE_FILE, state)
            files[STATE_FILE] = None
            tensors = {
                k: v.detach().to("cpu").contiguous() for k, v in (state_tensors or {}).items()
            }
            save_file(tensors, str(tmp / STATE_TENSORS_FILE))
            files[STATE_TENSORS_FILE] = None
        for fname in files:
            with open(tmp / fname, "rb+") as fh:
                os.fsync(fh.fileno())
        manifest = {
            "format": FORMAT,
            "files": {
                f: {"bytes": (tmp / f).stat().st_size, "sha256": file_sha256(tmp / f)}
                for f in files
            },
        }
        write_json(tmp / MANIFEST_FILE, manifest)
        _fsync_dir(tmp)
        # Swap: keep the previous checkpoint as NAME.old until the new one is in place.
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        if old.exists():
            shutil.rmtree(old)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CharloomError(
            f"cannot write checkpoint to {final}: {exc.strerror or exc}; "
            f"the previous checkpoint is kept"
        ) from None
    return final


# --- reading ----------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise CharloomError(f"{path} is too large to be a charloom {what}")
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CharloomError(f"{path} is missing: not a complete charloom checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CharloomError(
            f"{path} is not valid JSON ({exc}); the checkpoint is damaged"
        ) from None
    except OSError as exc:
        raise CharloomError(f"cannot read {path}: {exc.strerror}") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return _safely(path, lambda: load_file(str(path), device="cpu"))


class UnreadableDtype(CharloomError):
    """Weights in a dtype numpy lacks (bfloat16): torch can still load them."""


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The weights of checkpoint folder ``path`` as numpy arrays, without torch. A dtype numpy
    lacks raises :class:`UnreadableDtype`; a caller may then load them with torch."""
    from safetensors.numpy import load_file

    try:
        return _safely(path / WEIGHTS_FILE, lambda: load_file(str(path / WEIGHTS_FILE)))
    except TypeError as exc:  # "data type 'bfloat16' not understood"
        raise UnreadableDtype(f"{path / WEIGHTS_FILE}: {exc}") from None


def _safely(path: Path, load):
    """``load()``, a safetensors reader of ``path``, with its failures as one-line errors."""
    try:
        return load()
    except FileNotFoundError:
        raise CharloomError(f"{path} is missing: not a complete charloom checkpoint") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CharloomError(f"{path} is damaged or not a safetensors file ({exc})") from None


def verify_manifest(ckpt: Path) -> None:
    """Check every file of checkpoint ``ckpt`` against its manifest (size and SHA-256)."""
    manifest = _read_json(ckpt / MANIFEST_FILE, "manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise CharloomError(f"{ckpt / MANIFEST_FILE} is not a charloom manifest")
    for fname, info in files.items():
        p = ckpt / fname
        if not p.is_file() or "/" in fname or fname.startswith("."):
            raise CharloomError(f"{ckpt}: file {fname} is missing; the checkpoint is incomplete")
        if (
            not isinstance(info, dict)
            or p.stat().st_size != info.get("bytes")
            or file_sha256(p) != info.get("sha256")
        ):
            raise CharloomError(
                f"{ckpt}: {fname} does not match its manifest (truncated or altered)"
            )


def is_checkpoint_dir(path: Path) -> bool:
    return (
        (path / CONFIG_FILE).is_file()
        or (path / MANIFEST_FILE).is_file()
        or (path / WEIGHTS_FILE).is_file()
    )


def parse_config(cfg, where: Path) -> tuple[ModelConfig, Vocab, dict]:
    """Model settings, vocabulary and the rest of a config.json, validated before allocation."""
    if not isinstance(cfg, dict) or "charloom_version" not in cfg or "model" not in cfg:
        raise CharloomError(f"{where} is not a charloom config (a foreign checkpoint?)")
    fmt = cfg.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CharloomError(f"{where} has no valid format number")
    if fmt > FORMAT:
        raise CharloomError(
            f"{where} was written by a newer charloom ({cfg.get('charloom_version')}, format "
            f"{fmt}); upgrade charloom to read it"
        )
    try:
        vocab = Vocab.from_dict(cfg.get("vocab"))
        model_config = ModelConfig.from_dict(cfg["model"])
    except CharloomError as exc:
        raise CharloomError(f"{where}: {exc}") from None
    except TypeError as exc:  # e.g. a setting of the wrong type
        raise CharloomError(f"{where}: invalid model settings ({exc})") from None
    text = cfg.get("text", {})
    if not isinstance(text, dict) or not isinstance(text.get("ascii", False), bool):
        raise CharloomError(f"{where}: the 'text' settings are not valid")
    training = cfg.get("training")
    if training is not None and not isinstance(training, dict):
        raise CharloomError(f"{where}: the 'training' summary is not an object")
    for key, value in (training or {}).items():
        ok = value is None or (
            isinstance(value, dict)
            if key == "source"
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        )
        if not ok:
            raise CharloomError(f"{where}: the training summary's {key!r} is not valid")
    if not isinstance(cfg.get("parent", {}), dict):
        raise CharloomError(f"{where}: the 'parent' record is not an object")
    if model_config.vocab_size != vocab.size:
        raise CharloomError(
            f"{where}: model vocab_size {model_config.vocab_size} does not match the vocabulary "
            f"({vocab.size})"
        )
    meta = {k: v for k, v in cfg.items() if k not in ("model", "vocab")}
    return model_config, vocab, meta


def read_settings(path: Path) -> tuple[ModelConfig, Vocab, dict]:
    """Checkpoint folder ``path``'s files checked against its manifest (if it has one), and its
    config.json parsed: model settings, vocabulary and the rest (see :func:`parse_config`)."""
    if (path / MANIFEST_FILE).exists():
        verify_manifest(path)
    return parse_config(_read_json(path / CONFIG_FILE, "config"), path / CONFIG_FILE)


def read_meta(path: str | os.PathLike) -> dict:
    """What checkpoint folder ``path``'s config.json records besides the model and vocabulary
    (its ``training`` summary, version, text settings), without loading any weights."""
    path = Path(path)
    return parse_config(_read_json(path / CONFIG_FILE, "config"), path / CONFIG_FILE)[2]


def load_checkpoint(path: Path, with_state: bool = False) -> Checkpoint:
    """Load checkpoint folder ``path``; ``with_state`` also loads the training state."""
    path = Path(path)
    model_config, vocab, meta = read_settings(path)
    weights = _load_tensors(path / WEIGHTS_FILE)
    ckpt = Checkpoint(path, model_config, vocab, meta, weights)
    if with_state:
        if not (path / STATE_FILE).exists():
            raise CharloomError(f"{path} holds no training state, so it cannot be resumed")
        state = _read_json(path / STATE_FILE, "training state")
        if not isinstance(state, dict):
            raise CharloomError(f"{path / STATE_FILE} is not a training state")
        ckpt.state = state
        ckpt.state_tensors = _load_tensors(path / STATE_TENSORS_FILE)
    return ckpt


def _complete(ckpt: Path) -> str | None:
    """``None`` if ``ckpt`` is a complete checkpoint, else why not."""
    if not ckpt.is_dir():
        return "missing"
    try:
        verify_manifest(ckpt)
    except CharloomError as exc:
        return str(exc)
    return None


def resolve_checkpoint(path: str | os.PathLike, which: str = BEST) -> Path:
    """The checkpoint folder meant by ``path``: a checkpoint folder, a file inside one, or a run
    directory (then ``which``: ``best`` if it exists, else ``latest``)."""
    p = basemodel.builtin_path(str(path)) or Path(path)
    if not p.exists():
        raise CharloomError(f"no such run or checkpoint: {str(path)!r}")
    if p.is_file():
        if p.name in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE):
            return p.parent
        raise CharloomError(f"{str(path)!r} is not a charloom run or checkpoint folder")
    if is_checkpoint_dir(p):
        return p
    order = [which, LATEST] if which == BEST else [LATEST]
    for name in order:
        for cand in (p / name, p / f"{name}.old"):
            if cand.is_dir() and _complete(cand) is None:
                return cand
    for name in order:
        if (p / name).is_dir():
            return p / name  # incomplete: loading it reports why
    raise CharloomError(
        f"{str(path)!r} is not a charloom run or checkpoint (no {which}/ or latest/)"
        + basemodel.shadow_note(str(path))
    )


def find_resumable(run_dir: Path) -> tuple[Path, str | None]:
    """The checkpoint ``--resume`` continues from, and a note if it had to fall back."""
    run_dir = Path(run_dir)
    latest, old = run_dir / LATEST, run_dir / f"{LATEST}.old"
    why = _complete(latest)
    if why is None:
        return latest, None
    if _complete(old) is None:
        return old, f"{latest} is incomplete ({why}); resuming from the previous checkpoint {old}"
    if not run_dir.is_dir():
        raise CharloomError(f"no such run directory: {str(run_dir)!r}")
    raise CharloomError(f"{run_dir} holds no complete checkpoint to resume from ({why})")
