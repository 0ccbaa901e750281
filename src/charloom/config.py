"""TrainConfig: every setting of a training run, with the one home of each default.

Precedence, lowest first: the defaults below, then a preset (``presets.py``), then what the user
gives (CLI flags or keyword arguments).

The rules about settings live here too, so that the command line and the Python API apply the
same ones: which settings a resumed run may change (:data:`RESUMABLE`,
:func:`check_resume_overrides`) and how many processes can share a batch
(:meth:`TrainConfig.check_processes`). Each field's metadata describes its command-line flag.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .documents import DOCUMENT_MODES
from .errors import CharloomError
from .modelconfig import PATHS, ModelConfig
from .nextchar import DEFAULT_LENGTH, DEFAULT_PRIME, SampleSettings
from .vocab import VOCAB_KINDS

#: How training cuts the text into batches (``batches.KINDS``; kept here so that offering the
#: choice does not import torch).
BATCHINGS = ("stream", "portions")
#: The environment variable naming the text of ``charloom bench``'s quality runs.
BENCH_DATA_ENV = "CHARLOOM_BENCH_DATA"

OPTIMIZERS = ("adamw", "adam")
#: How the output layer's bias starts (``unigram``: see ``data.TrainData.log_frequencies``).
HEAD_BIASES = ("torch", "unigram")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
LOG_STYLES = ("bar", "lecture")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"5m"``, ``"2h"``, ``"1.5h"`` or plain seconds -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise CharloomError(f"cannot read {text!r} as a duration; write it like 90s, 5m or 2h")
    seconds = float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "").lower() or None]
    if seconds <= 0:
        raise CharloomError(f"the duration {text!r} must be more than zero")
    return seconds


def parse_grad_clip(text: str) -> float | None:
    """``--grad-clip``: a maximum gradient norm, or ``none`` (also ``off`` or ``0``) for none."""
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise CharloomError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise CharloomError(f"{text!r} is not a finite number")
    if value <= 0:
        raise CharloomError("must be > 0 (or 'none' for no clipping)")
    return value


def parse_checkpoint_every(text: str) -> dict[str, float]:
    """``--checkpoint-every``: a number of iterations, or a duration such as ``10m``. One flag
    sets one of two settings, so the answer is the settings it stands for:
    ``{"checkpoint_every": n}`` or ``{"checkpoint_every_s": seconds}``."""
    if text.strip().isdigit():
        n = int(text)
        if n < 1:
            raise CharloomError("must be at least 1")
        return {"checkpoint_every": n}
    return {"checkpoint_every_s": parse_duration(text)}


def _setting(default: Any = None, help: str = "", *, factory: Any = None, **cli: Any) -> Any:
    """A field with the metadata the ``train`` command builds its flag from: ``help``, and
    where needed ``flag`` (its spelling), ``choices``, ``min`` (the least integer), ``type`` (a
    text -> value converter), ``metavar``; ``cli=False`` for a setting with no flag of its own."""
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Settings of one training run (the model's shape is in ``model``).

    Each field's ``metadata`` says how the ``train`` command offers it (see :func:`_setting`):
    the flags are generated from these fields, so a new setting is declared once, here."""

    model: ModelConfig = _setting(factory=ModelConfig, cli=False)
    # where the weights start: None for random, else a parent run (finetune.py)
    init_from: str | None = _setting(
        None,
        "fine-tune: start from the weights of RUN (its best checkpoint, or a checkpoint folder "
        "such as RUN/latest) or of the built-in model 'base'; the model's shape and vocabulary "
        "come from it",
        metavar="RUN",
    )
    # text -> vocabulary
    vocab: str = _setting("corpus", "which characters the model knows", choices=VOCAB_KINDS)
    ascii: bool = _setting(False, "normalise text to ASCII (unidecode, collapse runs of spaces)")
    val_fraction: float = _setting(
        0.1, "the last part of the text held out for validation (0 to 0.9)"
    )
    documents: str = _setting(
        "off",
        "learn many short documents, each whole: one per line, per blank-line-separated "
        "paragraph, or per file (samples then stop at a document's end)",
        choices=DOCUMENT_MODES,
    )
    # batches
    batching: str = _setting(
        "stream",
        "stream: contiguous rows carrying state; portions: random pieces from a zero state",
        choices=BATCHINGS,
    )
    batch_size: int = _setting(32, "sequences per batch", min=1)
    seq_len: int = _setting(100, "characters per sequence (backpropagation length)", min=1)
    path: str = _setting(
        "fused",
        "fused nn.LSTM/GRU/RNN (fast) or the per-step cell loop (the lecture's)",
        choices=PATHS,
    )
    head_bias: str = _setting(
        "torch",
        "where the output layer's bias starts: torch (PyTorch's own random start, the "
        "lecture's) or unigram (the log frequency of each character in the training text, so "
        "the first steps need not learn them; what --time picks for a text read few times)",
        choices=HEAD_BIASES,
    )
    # optimisation
    optimizer: str = _setting("adamw", "the optimiser", choices=OPTIMIZERS)
    lr: float = _setting(3e-3, "peak learning rate")
    weight_decay: float = _setting(0.0, "weight decay (adamw only)")
    grad_clip: float | None = _setting(1.0, "max gradient norm, or 'none'", type=parse_grad_clip)
    schedule: str = _setting(
        "cosine",
        "learning rate after the warm-up: cosine or linear decay, or constant",
        choices=SCHEDULES,
    )
    warmup: int = _setting(100, "iterations of linear warm-up", min=0)
    min_lr_ratio: float = _setting(0.1, "the decay ends at lr * this ratio (0 to 1)")
    # length: iterations, or a wall-clock budget in seconds (then the schedule ends at it)
    iters: int = _setting(2000, "training iterations", min=1)
    time: float | None = _setting(
        None,
        "wall-clock budget: 90s, 5m, 2h (the schedule ends at it; with no preset and no size "
        "flags, charloom also sizes the model for it)",
        type=parse_duration,
        metavar="DURATION",
    )
    # runtime
    # auto: bf16 autocast where the hardware multiplies bf16 fast (a CPU with AVX-512 bf16 or
    # AMX, a CUDA device with bf16), else fp32; a run records the precision it used.
    precision: str = _setting(
        "auto",
        "arithmetic: auto takes bf16 where this hardware multiplies it fast, else fp32",
        choices=PRECISIONS,
    )
    device: str = _setting(
        "auto", "where to train (auto: cuda, then mps, then cpu)", choices=DEVICES
    )
    seed: int = _setting(1337, "random seed: the same seed, the same training", min=0)
    threads: int | None = _setting(None, "torch threads (default: torch's choice)", min=1)
    # reporting
    eval_every: int = _setting(200, "validate every N iterations", min=1, metavar="N")
    # None: sized from the training between evaluations (schedule.eval_chars), so that
    # evaluations take about 5% of a run whatever the model, vocabulary and validation split.
    eval_chars: int | None = _setting(
        None,
        "validation characters read per evaluation (the first N of the held-out part; default: "
        "sized so evaluations take about 5 percent of the run, 2,048 to 1,000,000)",
        min=2,
        metavar="N",
    )
    sample_every: int = _setting(500, "print a sample every N iterations", min=1, metavar="N")
    log_every: int = _setting(50, "log the training loss every N iterations", min=1, metavar="N")
    checkpoint_every: int | None = _setting(  # iterations; default: with every evaluation
        None,
        "checkpoint every N iterations, or every DURATION (10m) (default: with each "
        "evaluation, and at least every 10 minutes)",
        type=parse_checkpoint_every,
        metavar="N|DURATION",
    )
    checkpoint_every_s: float | None = _setting(  # and at least this often in seconds
        600.0, cli=False, flag="--checkpoint-every"
    )
    sample_prime: str = _setting(DEFAULT_PRIME, "text the progress samples start from")
    sample_length: int = _setting(DEFAULT_LENGTH, "characters per progress sample", min=0)
    sample_temperature: float = _setting(
        SampleSettings.temperature, "temperature of the progress samples"
    )
    log_style: str = _setting(
        "bar", "console output: a progress bar, or the lecture's lines", choices=LOG_STYLES
    )
    tensorboard: bool = _setting(False, "also log to TensorBoard (needs charloom[tensorboard])")

    def validate(self) -> None:
        """Refuse bad settings with a :class:`CharloomError` before anything is allocated."""
        # The vocabulary size is only known once the text is read; check the rest now.
        dataclasses.replace(self.model, vocab_size=self.model.vocab_size or 1).validate()
        choices = {f.name: f.metadata["choices"] for f in fields(self) if "choices" in f.metadata}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise CharloomError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                    f"not {getattr(self, name)!r}"
                )
        positive = ("batch_size", "seq_len", "eval_every", "sample_every", "log_every")
        for name in positive:
            _check_int(name, getattr(self, name), 1)
        _check_int("iters", self.iters, 0)
        _check_int("warmup", self.warmup, 0)
        _check_int("sample_length", self.sample_length, 0)
        if self.checkpoint_every is not None:
            _check_int("checkpoint_every", self.checkpoint_every, 1)
        if self.checkpoint_every_s is not None:
            _check_float("checkpoint_every_s", self.checkpoint_every_s, lo=0.0, lo_open=True)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        if self.eval_chars is not None:
            _check_int("eval_chars", self.eval_chars, 2)
        _check_float("lr", self.lr, lo=0.0, lo_open=True, hi=10.0)
        _check_float("weight_decay", self.weight_decay, lo=0.0)
        _check_float("min_lr_ratio", self.min_lr_ratio, lo=0.0, hi=1.0)
        _check_float("val_fraction", self.val_fraction, lo=0.0, hi=0.9)
        _check_float("sample_temperature", self.sample_temperature, lo=0.0, lo_open=True)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, lo=0.0, lo_open=True)
        if self.init_from is not None and (
            not isinstance(self.init_from, str) or not self.init_from.strip()
        ):
            raise CharloomError(f"--init-from must name a run, not {self.init_from!r}")
        if self.time is not None:
            _check_float("time", self.time, lo=0.0, lo_open=True)
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**63
        ):
            raise CharloomError(f"--seed must be an integer in 0..2^63-1, not {self.seed!r}")

    def check_processes(self, n: int) -> None:
        """Refuse a batch that ``n`` processes cannot share equally: each process takes
        ``batch_size / n`` rows of every batch, and the averaged gradient must be the one a
        single process would compute."""
        if self.batch_size % n:
            raise CharloomError(
                f"--batch-size {self.batch_size} must be a multiple of --nproc {n}: "
                "each process takes an equal share of every batch"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> TrainConfig:
        if not isinstance(d, dict):
            raise CharloomError("the saved training settings are not an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CharloomError(f"unknown training settings: {', '.join(unknown)}")
        d = dict(d)
        model = d.pop("model", None)
        if model is not None:
            if not isinstance(model, dict) or set(model) - {f.name for f in fields(ModelConfig)}:
                raise CharloomError("the saved model settings are not valid")
            model = ModelConfig(**model)
        cfg = cls(model=model or ModelConfig(), **d)
        cfg.validate()
        return cfg

    def replace(self, **overrides) -> TrainConfig:
        """A copy with ``overrides`` applied; model fields may be given by name too."""
        d = self.to_dict()
        model = dict(d.pop("model"))
        model_fields = {f.name for f in fields(ModelConfig)}
        train_fields = {f.name for f in fields(TrainConfig)} - {"model"}
        for key, value in overrides.items():
            if key in model_fields:
                model[key] = value
            elif key in train_fields:
                d[key] = value
            else:
                raise CharloomError(f"unknown setting {key!r}")
        return TrainConfig(model=ModelConfig(**model), **d)


def settings() -> list[dataclasses.Field]:
    """Every setting a user can give, in order: the model's fields in place of ``model``, then
    the rest of TrainConfig's. Each carries the metadata described at :func:`_setting`."""
    out: list[dataclasses.Field] = []
    for f in fields(TrainConfig):
        out.extend(fields(ModelConfig) if f.name == "model" else [f])
    return out


def flag_for(name: str) -> str:
    """The command-line spelling of setting ``name``: ``kind`` is ``--model``, ``batch_size``
    is ``--batch-size``. Messages name settings the way the user gave them."""
    for f in settings():
        if f.name == name and "flag" in f.metadata:
            return f.metadata["flag"]
    return "--" + name.replace("_", "-")


#: Settings that a resumed run may change: its budget, where it runs, and its reporting.
#: Everything else (the model, the text, the optimisation) is fixed by the run being resumed.
RESUMABLE = frozenset(
    {
        "iters",
        "time",
        "eval_every",
        "sample_every",
        "log_every",
        "checkpoint_every",
        "checkpoint_every_s",
        "device",
        "threads",
        "sample_prime",
        "sample_length",
        "sample_temperature",
        "tensorboard",
    }
)


def check_resume_overrides(overrides: Mapping[str, object], others: Sequence[str] = ()) -> None:
    """Refuse, with a :class:`CharloomError`, settings a resumed run cannot change (any outside
    :data:`RESUMABLE`): a resume continues the same optimisation, so changing the model or the
    batches would make a run that no single training could have produced.

    ``others``: the caller's own inputs that a resume cannot take either (the command line:
    ``"text/--preset/--out"``), named when no setting is at fault."""
    fixed = sorted(set(overrides) - RESUMABLE)
    bad = ", ".join(flag_for(name) for name in fixed) or ", ".join(others)
    if bad:
        raise CharloomError(
            f"{bad} cannot be given with --resume: a resumed run keeps its settings "
            "(only the budget and reporting can change)"
        )


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise CharloomError(f"--{name.replace('_', '-')} must be an integer >= {lo}, not {value!r}")


def _check_float(name, value, lo=None, hi=None, lo_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        if hi is not None:
            bound += f"{' and ' if bound else ''}<= {hi}"
        raise CharloomError(f"--{name.replace('_', '-')} must be a number {bound}, not {value!r}")
