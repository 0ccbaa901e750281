"""TrainConfig: every setting of a training run, with the one home of each default.

Precedence, lowest first: the defaults below, then a preset (``presets.py``), then what the user
gives (CLI flags or keyword arguments).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field, fields

from .batches import BATCHINGS
from .errors import CharloomError
from .model import PATHS, ModelConfig
from .vocab import VOCAB_KINDS

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
LOG_STYLES = ("bar", "lecture")


@dataclass
class TrainConfig:
    """Settings of one training run (the model's shape is in ``model``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # text -> vocabulary
    vocab: str = "corpus"
    ascii: bool = False  # unidecode + collapse runs of spaces, as the lecture did
    val_fraction: float = 0.1  # the last part of the text is held out for validation
    # batches
    batching: str = "stream"
    batch_size: int = 32
    seq_len: int = 100
    path: str = "fused"  # "cell": the lecture's per-step LSTMCell loop (slow, reference)
    # optimisation
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    schedule: str = "cosine"
    warmup: int = 100  # iterations of linear warm-up
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    # length: iterations, or a wall-clock budget in seconds (then the schedule ends at it)
    iters: int = 2000
    time: float | None = None
    # runtime
    # auto: bf16 autocast where the hardware multiplies bf16 fast (a CPU with AVX-512 bf16 or
    # AMX, a CUDA device with bf16), else fp32; a run records the precision it used.
    precision: str = "auto"
    device: str = "auto"
    seed: int = 1337
    threads: int | None = None
    # reporting
    eval_every: int = 200
    sample_every: int = 500
    log_every: int = 50
    checkpoint_every: int | None = None  # iterations; default: with every evaluation
    checkpoint_every_s: float | None = 600.0  # and at least this often in wall-clock seconds
    sample_prime: str = "Th"
    sample_length: int = 200
    sample_temperature: float = 0.8
    log_style: str = "bar"
    tensorboard: bool = False

    def validate(self) -> None:
        """Refuse bad settings with a :class:`CharloomError` before anything is allocated."""
        # The vocabulary size is only known once the text is read; check the rest now.
        dataclasses.replace(self.model, vocab_size=self.model.vocab_size or 1).validate()
        choices = {
            "vocab": VOCAB_KINDS,
            "batching": BATCHINGS,
            "path": PATHS,
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "precision": PRECISIONS,
            "device": DEVICES,
            "log_style": LOG_STYLES,
        }
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
        _check_float("lr", self.lr, lo=0.0, lo_open=True, hi=10.0)
        _check_float("weight_decay", self.weight_decay, lo=0.0)
        _check_float("min_lr_ratio", self.min_lr_ratio, lo=0.0, hi=1.0)
        _check_float("val_fraction", self.val_fraction, lo=0.0, hi=0.9)
        _check_float("sample_temperature", self.sample_temperature, lo=0.0, lo_open=True)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, lo=0.0, lo_open=True)
        if self.time is not None:
            _check_float("time", self.time, lo=0.0, lo_open=True)
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**63
        ):
            raise CharloomError(f"--seed must be an integer in 0..2^63-1, not {self.seed!r}")

    def check_processes(self, n: int) -> None:
        """Refuse a batch that ``n`` processes cannot share equally."""
        if self.batch_size % n:
            raise CharloomError(
                f"--batch-size {self.batch_size} must be a multiple of the number of processes "
                f"({n}): each process takes an equal share of every batch"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
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


# Settings that a resumed run may change; everything else is fixed by the run.
RESUMABLE = frozenset(
    {
        "iters", "time", "eval_every", "sample_every", "log_every", "checkpoint_every",
        "checkpoint_every_s", "device", "threads", "sample_prime", "sample_length",
        "sample_temperature", "tensorboard",
    }
)


def check_resume_overrides(overrides: dict) -> None:
    """Refuse settings a resumed run cannot change (only the budget and reporting can)."""
    fixed = sorted(set(overrides) - RESUMABLE)
    if fixed:
        bad = ", ".join("--" + f.replace("_", "-") for f in fixed)
        raise CharloomError(
            f"{bad} cannot be given with --resume: a resumed run keeps its settings "
            "(only the budget and reporting can change)"
        )


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
