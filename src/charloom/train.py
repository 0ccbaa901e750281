"""Trainer: the training loop, its schedule, evaluation and checkpoints.

Logging, sampling, plotting and the progress bar hang off the loop as callbacks (see
``reporting.py``), so the loop itself reads top to bottom: batch -> forward -> loss -> backward
-> clip -> step, with evaluation and checkpoints at their intervals.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import distributed
from .batches import make_batches
from .config import TrainConfig
from .corpus import TextSource, normalise_ascii, read_text
from .device import autocast, resolve_device, resolve_precision
from .errors import CharloomError, TrainingInterrupted
from .evaluate import EvalResult, evaluate_ids
from .model import CharRNN, detach_state
from .prepared import load_prepared, open_prepared, prepared_folder
from .sample import SampleSettings, sample
from .vocab import Vocab

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
SAMPLE_HEADER = "--- iteration {} ---"  # heads each sample in samples.txt
RUNS_ROOT = "runs"

# "No non-finite loss yet" (see Trainer._check_diverged).
_NEVER = 2**62
# The smallest validation split worth evaluating (characters).
_MIN_VAL_CHARS = 2
# Under --time, the share of the budget that evaluations may take.
EVAL_SHARE = 0.05


# --- data ------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """The encoded training and validation text and the vocabulary."""

    vocab: Vocab
    train: torch.Tensor  # (N_train,) ids
    val: torch.Tensor  # (N_val,) ids; empty when there is no validation split
    source: TextSource | None
    sha256: str


def validation_size(n: int, val_fraction: float) -> int:
    """How many of ``n`` characters are held out, at the end of the text, for validation."""
    n_val = int(n * val_fraction)
    return n_val if n_val >= _MIN_VAL_CHARS else 0


def prepare_data(
    config: TrainConfig,
    text: str,
    source: TextSource | None = None,
    vocab: Vocab | None = None,
) -> TrainData:
    """Normalise, encode and split ``text`` as ``config`` says (``vocab``: reuse a saved one)."""
    if config.ascii:
        if config.vocab == "bytes":
            raise CharloomError("--ascii goes with --vocab printable or corpus, not bytes")
        text = normalise_ascii(text)
    if not text:
        raise CharloomError("the text is empty")
    vocab = vocab or Vocab.build(config.vocab, text)
    ids = vocab.encode(text, what="training text")
    n_val = validation_size(len(ids), config.val_fraction)
    train = torch.from_numpy(ids[: len(ids) - n_val].copy())
    val = torch.from_numpy(ids[len(ids) - n_val :].copy())
    digest = hashlib.sha256(ids.tobytes()).hexdigest()
    return TrainData(vocab, train, val, source, digest)


# --- schedule --------------------------------------------------------------------------------
def learning_rate(config: TrainConfig, iteration: int, progress: float) -> float:
    """Learning rate at ``iteration`` (0-based); ``progress`` in [0, 1] is how far the run is
    through its budget (iterations, or wall-clock time under ``--time``)."""
    if config.warmup and iteration < config.warmup:
        return config.lr * (iteration + 1) / config.warmup
    if config.schedule == "constant":
        return config.lr
    if config.time is None:
        span = max(1, config.iters - config.warmup)
        progress = (iteration - config.warmup) / span
    progress = min(max(progress, 0.0), 1.0)
    low = config.lr * config.min_lr_ratio
    return low + 0.5 * (config.lr - low) * (1 + math.cos(math.pi * progress))


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random numbers (dropout) in a distributed run."""
    return (seed + 1_000_003 * rank) % 2**63


# --- run directories -------------------------------------------------------------------------
def _looks_like_run(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    return bool(names & {ckpt.LATEST, ckpt.BEST, f"{ckpt.LATEST}.old", METRICS_FILE})


def new_run_dir(out: str | os.PathLike | None, name: str, overwrite: bool = False) -> Path:
    """Where a new run writes. An explicit ``out`` that exists and is not empty is refused unless
    ``overwrite`` (and then only if it is a charloom run); without ``out``, ``runs/<name>`` gets
    a numeric suffix rather than replacing anything."""
    if out is None:
        base = Path(RUNS_ROOT) / name
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CharloomError(f"--out {str(out)!r} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise CharloomError(
                f"run directory {str(out)!r} already exists; use --resume {out} to continue it, "
                "--overwrite to replace it, or another --out"
            )
        if not _looks_like_run(path):
            raise CharloomError(
                f"{str(out)!r} is not empty and is not a charloom run; refusing to overwrite it"
            )
    return path


def _clear_run_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# --- the trainer -----------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float


EVENTS = ("start", "log", "eval", "sample", "checkpoint", "end")


@dataclass
class Trainer:
    """Runs one training run into ``run_dir``. Callbacks get the trainer; see ``EVENTS``."""

    config: TrainConfig
    data: TrainData
    run_dir: Path
    callbacks: dict[str, list[Callable]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        cfg = self.config
        cfg.model.vocab_size = self.data.vocab.size
        cfg.validate()
        cfg.model.validate()
        self.run_dir = Path(self.run_dir)
        self.device = resolve_device(cfg.device)
        self.dist = distributed.join(self.device)  # None unless started by torchrun
        if self.dist is not None:
            self.device = self.dist.device
        cfg.precision = resolve_precision(cfg.precision, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = CharRNN(cfg.model).to(self.device)
        decay = cfg.weight_decay if cfg.optimizer == "adamw" else 0.0
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=cfg.lr, weight_decay=decay)
        self.batches = make_batches(
            cfg.batching, self.data.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed + 1
        )
        self._train_module = self._spread_over_ranks()  # what the training forward runs
        self._nonfinite_at: torch.Tensor | None = None  # on GPUs: first non-finite iteration
        self.iteration = 0
        self.elapsed = 0.0  # seconds of training so far, across resumes
        self.chars_seen = 0
        self.best_val: float | None = None
        self.best_iter: int | None = None
        self.last_val: EvalResult | None = None
        self.carry = None  # recurrent state carried between stream batches
        self.lr = learning_rate(cfg, 0, 0.0)
        # Filled in as training goes, read by callbacks.
        self.last_loss = float("nan")
        self.window_loss = float("nan")
        self.chars_per_s = 0.0
        self.sample_text = ""
        self.resumed_from: Path | None = None
        self.resume_note: str | None = None
        self.interrupted: int | None = None  # the signal that asked training to stop
        self.sizing_note: str | None = None  # how the model was sized for a --time budget
        # Time bookkeeping for --time budgets: what steps and evaluations cost.
        self.step_seconds = 0.0
        self._eval_cost = 0.0
        self._save_cost = 0.0
        self._next_eval_at = 0.1 * cfg.time if cfg.time is not None else 0.0
        self._prime = self._training_prime()

    # callbacks -------------------------------------------------------------------------
    def add_callback(self, event: str, fn: Callable) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str) -> None:
        for fn in self.callbacks.get(event, ()):
            fn(self)

    # many processes ----------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Whether this process reports and writes: always, unless it is a rank other than 0
        of a distributed run (see ``distributed.py``)."""
        return self.dist is None or self.dist.is_main

    def _spread_over_ranks(self) -> torch.nn.Module:
        """The model, or under torchrun the model wrapped in DistributedDataParallel, which
        averages the gradients of the ranks' shares of each batch. ``self.model`` stays the
        bare module: evaluation, samples and checkpoints use it."""
        if self.dist is None:
            return self.model
        cfg, world = self.config, self.dist.world_size
        if cfg.batch_size % world:
            raise CharloomError(
                f"--batch-size {cfg.batch_size} must be a multiple of the number of processes "
                f"({world}): each process takes an equal share of every batch"
            )
        if self.dist.rank:  # dropout masks differ between ranks as between rows of one batch
            torch.manual_seed(_rank_seed(cfg.seed, self.dist.rank))
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _command(self, cmd: int = 0, value: float = 0.0) -> tuple[int, float]:
        """Rank 0: send a command to the other ranks; they: receive it. Either way, a signal
        caught by any rank reaches rank 0 here, which then stops the run for all."""
        cmd, value, heard = self.dist.command(cmd, value, self.interrupted)
        if heard is not None and self.interrupted is None:
            self.interrupted = heard
        return cmd, value

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of batch tensor ``t (B, T)``, on the training device."""
        if self.dist is not None:
            t = t[self.dist.share(len(t))]
        if self.device.type == "cuda":
            t = t.pin_memory()  # so that the copy does not wait for the device
        return t.to(self.device, non_blocking=True)

    def _check_diverged(self) -> None:
        """On GPUs non-finite losses are noted on the device (no sync per step) and reported
        here, before anything is evaluated, logged or written."""
        if self._nonfinite_at is not None and int(self._nonfinite_at) != _NEVER:
            raise CharloomError(
                "training diverged: the loss or gradient norm became non-finite at iteration "
                f"{int(self._nonfinite_at)}; the last checkpoint is kept. Try a lower --lr, "
                "--grad-clip 1.0, or --precision fp32"
            )

    def _mean_loss(self, losses: list) -> float:
        """Mean of the losses ``_step`` returned (floats, or device scalars on GPUs)."""
        if losses and torch.is_tensor(losses[0]):
            self._check_diverged()
            return float(torch.stack(losses).mean())
        return sum(losses) / len(losses)

    # helpers ---------------------------------------------------------------------------
    def _training_prime(self) -> str:
        prime = self.config.sample_prime or ""
        if prime and not self.data.vocab.unknown(prime):
            return prime
        # A corpus without "T" or "h" (another script, say): prime with its first character.
        first = self.data.vocab.decode(self.data.train[:1].tolist())
        return first or self.data.vocab.decode([0])

    @property
    def has_validation(self) -> bool:
        return len(self.data.val) >= _MIN_VAL_CHARS

    @property
    def progress(self) -> float:
        cfg = self.config
        if cfg.time is not None:
            return min(1.0, self.elapsed / cfg.time)
        return min(1.0, self.iteration / max(1, cfg.iters))

    def done(self) -> bool:
        cfg = self.config
        if cfg.time is not None:
            # Stop early enough that the final evaluation and checkpoint end by the deadline.
            # (The first evaluation also pays one-off warm-up costs, so the reserve is capped.)
            reserve = 1.2 * (self._eval_cost + self._save_cost) if self.has_validation else 0.0
            return self.elapsed + min(reserve, 0.1 * cfg.time) >= cfg.time
        return self.iteration >= cfg.iters

    def _eval_due(self, it: int) -> bool:
        if self.config.time is None:
            return it % self.config.eval_every == 0
        # Under a time budget, evaluations are spaced by what they cost, so that they take
        # about EVAL_SHARE of the time whatever the model and validation size.
        return self.elapsed >= self._next_eval_at

    @staticmethod
    def _elapsed_now(base: float, start: float) -> float:
        return base + (time.perf_counter() - start)

    @property
    def overhead_share(self) -> float:
        """Share of the wall-clock time spent outside training steps (evaluation, samples,
        checkpoints, plots)."""
        return 0.0 if self.elapsed <= 0 else max(0.0, 1 - self.step_seconds / self.elapsed)

    def evaluate(self) -> EvalResult:
        self._check_diverged()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else None
        if self.dist is None:
            return evaluate_ids(self.model, self.data.val, autocast_dtype=dtype)
        if self.dist.is_main:
            self._command(distributed.EVAL)
        # Each rank predicts its contiguous share of the held-out characters.
        n, world, rank = len(self.data.val) - 1, self.dist.world_size, self.dist.rank
        lo, hi = rank * n // world, (rank + 1) * n // world
        part = evaluate_ids(self.model, self.data.val[lo : hi + 1], autocast_dtype=dtype)
        total, chars = self.dist.sum([part.loss * part.chars if part.chars else 0.0, part.chars])
        return EvalResult(total / chars, int(chars))

    def make_sample(self) -> str:
        cfg = self.config
        settings = SampleSettings(temperature=cfg.sample_temperature)
        # Seeded from the iteration so samples are repeatable and draw nothing from the
        # training random streams.
        return sample(
            self.model,
            self.data.vocab,
            self._prime,
            cfg.sample_length,
            settings,
            seed=cfg.seed + self.iteration,
            engine="torch",  # no compilation pause inside a timed run
        )[0]

    def summary(self) -> dict:
        return {
            "iterations": self.iteration,
            "chars_seen": self.chars_seen,
            "elapsed_s": round(self.elapsed, 3),
            "train_loss": None if math.isnan(self.window_loss) else self.window_loss,
            "val_loss": self.last_val.loss if self.last_val else None,
            "best_val_loss": self.best_val,
            "best_iteration": self.best_iter,
            "source": self.data.source.to_dict() if self.data.source else None,
        }

    # checkpoints -----------------------------------------------------------------------
    def _config_json(self) -> dict:
        return ckpt.config_dict(
            self.config.model, self.data.vocab, self.config.ascii, self.summary()
        )

    def _check_finite_weights(self) -> None:
        self._check_diverged()
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise CharloomError(
                    f"the weights became non-finite ({name}) at iteration {self.iteration}; "
                    "nothing was written and the last checkpoint is kept. Try a lower --lr, "
                    "--grad-clip 1.0, or --precision fp32"
                )

    def _rank_state(self) -> dict[str, torch.Tensor]:
        """What differs between ranks: random generators and the carried state (this rank's
        streams), on the CPU."""
        tensors = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        for i, t in enumerate(self.carry or ()):
            tensors[f"carry.{i}"] = t.detach().cpu()
        return tensors

    def save(self) -> Path:
        """Write ``latest/``: weights and everything needed to resume exactly. Under torchrun
        every rank takes part (rank 0 gathers the others' states) and rank 0 writes; the
        checkpoint holds the whole carried state, so it resumes with any number of processes."""
        self._check_finite_weights()
        if self.dist is None:
            return self._write_latest([self._rank_state()])
        if self.dist.is_main:
            self._command(distributed.SAVE)
        return self.dist.on_main(self._write_latest, self.dist.gather(self._rank_state()))

    def _write_latest(self, ranks: list[dict[str, torch.Tensor]]) -> Path:
        opt_meta, opt_tensors = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors = dict(opt_tensors)
        for rank, part in enumerate(ranks):
            for key in ("rng.torch", "rng.cuda"):
                if key in part:
                    tensors[key + (f".rank{rank}" if rank else "")] = part[key]
        for key in (k for k in ranks[0] if k.startswith("carry.")):
            tensors[key] = torch.cat([part[key] for part in ranks], dim=1)  # (L, B, H)
        batch_state = self.batches.state_dict()
        tensors["rng.batches"] = batch_state.pop("rng")
        state = {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "chars_seen": self.chars_seen,
            "best_val_loss": self.best_val,
            "best_iteration": self.best_iter,
            "last_val_loss": self.last_val.loss if self.last_val else None,
            "window_loss": None if math.isnan(self.window_loss) else self.window_loss,
            "batches": batch_state,
            "optimizer": opt_meta,
            "source": self.data.source.to_dict() if self.data.source else None,
            "data_sha256": self.data.sha256,
            "processes": len(ranks),
        }
        path = ckpt.write_checkpoint(
            self.run_dir, ckpt.LATEST, self._config_json(), self.model.state_dict(), state, tensors
        )
        self._fire("checkpoint")
        return path

    def save_best(self) -> Path:
        self._check_finite_weights()
        return ckpt.write_checkpoint(
            self.run_dir, ckpt.BEST, self._config_json(), self.model.state_dict()
        )

    def restore(self, checkpoint: ckpt.Checkpoint) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        st, tensors = checkpoint.state, checkpoint.state_tensors
        if st.get("data_sha256") != self.data.sha256:
            raise CharloomError(
                "the training text differs from the one this run was trained on; "
                "resume with the same text (or start a new run)"
            )
        try:
            self.model.load_state_dict(checkpoint.weights)
            self.optimizer.load_state_dict(ckpt.unflatten_optimizer(st["optimizer"], tensors))
            rank = self.dist.rank if self.dist is not None else 0
            suffix = f".rank{rank}" if rank else ""
            # A rank the saved run did not have keeps the generator it was seeded with.
            if not rank or "rng.torch" + suffix in tensors:
                torch.set_rng_state(tensors["rng.torch" + suffix])
            if self.device.type == "cuda" and "rng.cuda" + suffix in tensors:
                torch.cuda.set_rng_state(tensors["rng.cuda" + suffix], self.device)
            self.batches.load_state_dict({**st["batches"], "rng": tensors["rng.batches"]})
            carry = [tensors[k] for k in sorted(t for t in tensors if t.startswith("carry."))]
            if carry and self.dist is not None:  # this rank's streams of the whole state
                carry = [t[:, self.dist.share(t.shape[1])] for t in carry]
            self.carry = tuple(t.to(self.device) for t in carry) if carry else None
            self.iteration = int(st["iteration"])
            self.elapsed = float(st["elapsed"])
            self.chars_seen = int(st["chars_seen"])
            self.best_val = st.get("best_val_loss")
            self.best_iter = st.get("best_iteration")
            wl = st.get("window_loss")
            self.window_loss = float("nan") if wl is None else float(wl)
            if st.get("last_val_loss") is not None:
                self.last_val = EvalResult(float(st["last_val_loss"]), len(self.data.val) - 1)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CharloomError(
                f"{checkpoint.path}: the training state is damaged or does not match ({exc})"
            ) from None
        self.resumed_from = checkpoint.path
        self.lr = learning_rate(self.config, self.iteration, self.progress)
        if self.is_main:
            _truncate_metrics(self.run_dir / METRICS_FILE, self.iteration)
            _truncate_samples(self.run_dir / SAMPLES_FILE, self.iteration)

    # the loop --------------------------------------------------------------------------
    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float | torch.Tensor:
        """One optimisation step on the global batch ``x, y (B, T)`` (under torchrun, on this
        rank's rows). Returns the batch's mean loss: a float, or on GPUs a device scalar."""
        cfg = self.config
        model = self.model
        if self.batches.carries_state and self.batches.new_epoch:
            self.carry = None
        state = self.carry if self.batches.carries_state else None
        x, y = self._to_device(x), self._to_device(y)
        if self.dist is None:
            self.lr = learning_rate(cfg, self.iteration, self.progress)
        elif self.dist.is_main:  # rank 0 owns the schedule (and the clock it may follow)
            self.lr = learning_rate(cfg, self.iteration, self.progress)
            self._command(distributed.STEP, self.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        with autocast(self.device, cfg.precision):
            logits, new_state = self._train_module(x, state, path=cfg.path)
        # Mean over every character of the batch: the lecture's loss averaged over the portion.
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        value = self._watch(loss.detach(), grad_norm)
        self.optimizer.step()
        if self.batches.carries_state:
            self.carry = detach_state(new_state)
        return value

    def _watch(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> float | torch.Tensor:
        """The step's loss as reported (under torchrun: the whole batch's, averaged over the
        ranks). A non-finite loss or gradient stops training: on the CPU at once, before the
        weights change; on GPUs, which must not wait for the device every step, it is noted
        there and reported by :meth:`_check_diverged` before anything is logged or written."""
        if self.dist is not None:
            loss = self.dist.mean_(loss.clone())
        if self.device.type == "cuda":
            bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
            mark = torch.where(bad, self.iteration + 1, _NEVER)
            first = self._nonfinite_at
            self._nonfinite_at = mark if first is None else torch.minimum(first, mark)
            return loss
        value = float(loss)
        if not (math.isfinite(value) and math.isfinite(float(grad_norm))):
            what = "loss" if not math.isfinite(value) else "gradient norm"
            raise CharloomError(
                f"training diverged: the {what} became non-finite at iteration "
                f"{self.iteration + 1}; the last checkpoint is kept. Try a lower --lr, "
                "--grad-clip 1.0, or --precision fp32"
            )
        return value

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train until the budget is spent (or until iteration ``stop_at``, for tests and
        interrupted runs); write the final checkpoint and return a summary."""
        self._train_module.train()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fire("start")
        previous_handlers = self._catch_signals()
        try:
            if self.dist is None:
                return self._loop(stop_at)
            return self._lead(stop_at) if self.dist.is_main else self._follow()
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

    def _lead(self, stop_at: int | None) -> TrainResult:
        """Rank 0 of a distributed run: the loop, then tell the other ranks how it ended."""
        end, value = distributed.ABORT, 0.0
        try:
            result = self._loop(stop_at)
            end = distributed.STOP
            return result
        except TrainingInterrupted as exc:
            end, value = distributed.STOP, float(exc.signum)
            raise
        finally:
            # If another rank is gone, there is nobody to tell: the original error stands.
            with contextlib.suppress(Exception):
                self._command(end, value)

    def _follow(self) -> TrainResult:
        """A rank other than 0: do what rank 0 says - step, evaluate, checkpoint - until it
        says stop. Rank 0 alone decides, so clocks, signals and time budgets cannot make the
        ranks disagree about what comes next."""
        cfg = self.config
        while True:
            cmd, value = self._command()
            if cmd == distributed.STEP:
                self.lr = value
                x, y = self.batches.next()
                self._step(x, y)
                self.iteration += 1
                self.chars_seen += cfg.batch_size * cfg.seq_len
            elif cmd == distributed.EVAL:
                self.last_val = self.evaluate()
                self.model.train()
            elif cmd == distributed.SAVE:
                self.save()
            elif cmd == distributed.STOP:
                break
            else:
                raise CharloomError("rank 0 stopped with an error (see its message above)")
        self._fire("end")
        if value:
            raise TrainingInterrupted(int(value), self.run_dir, self.iteration)
        val = self.last_val.loss if self.last_val else None
        return TrainResult(self.run_dir, self.iteration, float("nan"), val, None, self.elapsed)

    def _catch_signals(self) -> dict:
        """SIGINT/SIGTERM: finish the step, checkpoint, stop. A second one leaves at once -
        safe, because every checkpoint is written atomically."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.interrupted is not None:
                os._exit(128 + signum)
            self.interrupted = signum
            if self.is_main:  # under torchrun: one message, not one per rank
                print(
                    "\ncharloom: stopping after this step and saving a checkpoint "
                    "(press Ctrl-C again to quit at once)",
                    file=sys.stderr,
                    flush=True,
                )

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _loop(self, stop_at: int | None) -> TrainResult:
        cfg = self.config
        model = self.model
        chars_per_step = cfg.batch_size * cfg.seq_len
        checkpoint_every = cfg.checkpoint_every or cfg.eval_every
        window_losses: list[float] = []
        window_time, window_iters = 0.0, 0  # time spent in training steps only
        base_elapsed, loop_start = self.elapsed, time.perf_counter()
        last_saved, last_saved_at = self.iteration, loop_start
        while not self.done() and (stop_at is None or self.iteration < stop_at):
            if self.interrupted is not None:
                self.save()
                self._fire("end")
                raise TrainingInterrupted(self.interrupted, self.run_dir, self.iteration)
            t0 = time.perf_counter()
            x, y = self.batches.next()
            loss = self._step(x, y)
            self.iteration += 1
            self.chars_seen += chars_per_step
            self.last_loss = loss
            window_losses.append(loss)
            window_iters += 1
            now = time.perf_counter()
            window_time += now - t0
            # Wall-clock, evaluation and checkpoints included: --time is a real deadline.
            self.elapsed = base_elapsed + (now - loop_start)
            it = self.iteration
            if it % cfg.log_every == 0 or self.done():
                self.window_loss = self._mean_loss(window_losses)
                self.chars_per_s = window_iters * chars_per_step / max(window_time, 1e-9)
                window_losses.clear()
                window_time, window_iters = 0.0, 0
                self._fire("log")
            self.step_seconds += now - t0
            evaluated = False
            if self.has_validation and (self.done() or self._eval_due(it)):
                t_eval = time.perf_counter()
                self.last_val = self.evaluate()
                model.train()
                if self.best_val is None or self.last_val.loss < self.best_val:
                    self.best_val, self.best_iter = self.last_val.loss, it
                    self.save_best()
                self._fire("eval")
                self._eval_cost = time.perf_counter() - t_eval
                self._next_eval_at = self._elapsed_now(base_elapsed, loop_start) + max(
                    self._eval_cost * (1 - EVAL_SHARE) / EVAL_SHARE,
                    0.05 * (cfg.time or 0),
                )
                evaluated = True
            if it % cfg.sample_every == 0:
                self.sample_text = self.make_sample()
                model.train()
                self._fire("sample")
            due_by_time = (
                cfg.checkpoint_every_s is not None
                and time.perf_counter() - last_saved_at >= cfg.checkpoint_every_s
            )
            if cfg.checkpoint_every is None and cfg.time is not None:
                due_by_count = evaluated or (not self.has_validation and it % cfg.eval_every == 0)
            else:
                due_by_count = it % checkpoint_every == 0
            if due_by_count or due_by_time:
                t_save = time.perf_counter()
                self.save()
                last_saved, last_saved_at = it, time.perf_counter()
                self._save_cost = last_saved_at - t_save
            self.elapsed = self._elapsed_now(base_elapsed, loop_start)
        if window_losses:
            self.window_loss = self._mean_loss(window_losses)
        if self.iteration != last_saved or not (self.run_dir / ckpt.LATEST).exists():
            self.save()
        self._fire("end")
        return TrainResult(
            run_dir=self.run_dir,
            iterations=self.iteration,
            train_loss=self.window_loss,
            val_loss=self.last_val.loss if self.last_val else None,
            best_val_loss=self.best_val,
            elapsed=self.elapsed,
        )


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metrics recorded after ``iteration`` (a run that crashed after its last checkpoint
    is resumed from that checkpoint, so those lines will be written again)."""
    if not path.exists():
        return
    keep = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
            if rec.get("iter", 0) <= iteration:
                keep.append(json.dumps(rec))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


_SAMPLE_HEADER = re.compile(
    "^" + re.escape(SAMPLE_HEADER).replace(re.escape("{}"), r"(\d+)") + "$", re.MULTILINE
)


def _truncate_samples(path: Path, iteration: int) -> None:
    """Drop training samples written after ``iteration`` (see :func:`_truncate_metrics`)."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    for m in _SAMPLE_HEADER.finditer(text):
        if int(m.group(1)) > iteration:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text[: m.start()], encoding="utf-8")
            os.replace(tmp, path)
            return


# --- the public entry points -----------------------------------------------------------------
def train(
    config: TrainConfig | None = None,
    *,
    text: str | None = None,
    paths: tuple[str, ...] | list[str] = (),
    corpus: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    name: str | None = None,
    callbacks: dict[str, list[Callable]] | None = None,
    stop_at: int | None = None,
    console: bool = True,
    progress_bar: bool = True,
    size_for_budget: bool = False,
) -> TrainResult:
    """Train a new model on ``text`` (a string), or on ``paths``/``corpus`` (read from disk).

    Everything is checked before the run directory is created, so a bad input writes nothing.
    ``console`` prints progress to stderr; metrics, samples and plots are written regardless.
    ``size_for_budget``: under a ``time`` budget, pick the model size, batch and learning rate
    for the budget and the text (``presets.budget_overrides``).
    """
    from .reporting import attach_reporting

    config = config or TrainConfig()
    config.validate()
    folder = prepared_folder(paths, corpus) if text is None else None
    if folder is not None:  # ids written by `charloom prepare`: mapped, not read
        config, data = load_prepared(config, folder)
        source, n_chars = data.source, open_prepared(folder).length
    else:
        if text is not None:
            source = None
        else:
            text, source = read_text(paths, corpus, encoding=encoding, errors=errors)
        n_chars = len(text)
    sizing_note = None
    if size_for_budget and config.time is not None:
        from .presets import budget_overrides, machine_rate

        rates = machine_rate(resolve_device(config.device).type)
        chosen = budget_overrides(config.time, int(n_chars * (1 - config.val_fraction)), rates)
        config = config.replace(**chosen)
        sizing_note = (
            f"sized for a {config.time:g} s budget on {n_chars:,} chars "
            f"(matmul {rates['fp32']:,.0f} GFLOP/s fp32, {rates['bf16']:,.0f} bf16): "
            f"{config.model.kind} {config.model.layers}x{config.model.hidden}, "
            f"{config.precision}, dropout {config.model.dropout:g}, "
            f"batch {config.batch_size}x{config.seq_len}, lr {config.lr:g}"
        )
    if folder is None:
        data = prepare_data(config, text, source)
    # Under torchrun, rank 0 picks (and later writes) the run directory; the others learn it.
    group = distributed.join(resolve_device(config.device))
    pick = (new_run_dir, out, name or _default_name(source), overwrite)
    run_dir = group.on_main(*pick) if group else pick[0](*pick[1:])
    trainer = Trainer(config, data, run_dir)  # builds batches: checks the text is long enough
    if config.tensorboard:
        from .reporting import require_tensorboard

        require_tensorboard()
    if run_dir.exists() and overwrite and trainer.is_main:
        _clear_run_dir(run_dir)
    trainer.sizing_note = sizing_note
    attach_reporting(trainer, console=console, bar=progress_bar)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    return trainer.run(stop_at=stop_at)


def _default_name(source: TextSource | None) -> str:
    if source is None:
        return "run"
    if source.corpus:
        return source.corpus
    stem = Path(source.paths[0]).stem if source.paths else "run"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in stem) or "run"


def load_trainer(
    run_dir: str | os.PathLike, overrides: dict | None = None, text: str | None = None
) -> Trainer:
    """A trainer restored from ``run_dir``'s latest complete checkpoint, ready to ``run()``.

    ``overrides`` may extend the budget (``iters``, ``time``) or change reporting intervals;
    ``text`` replaces re-reading the recorded text source (needed when it was given as a
    string)."""
    path, note = ckpt.find_resumable(Path(run_dir))
    checkpoint = ckpt.load_checkpoint(path, with_state=True)
    st = checkpoint.state
    config = TrainConfig.from_dict(st.get("config"))
    if overrides:
        config = config.replace(**overrides)
        config.validate()
    source = TextSource.from_dict(st["source"]) if st.get("source") else None
    if text is None and source is not None and source.prepared:
        config, data = load_prepared(config, source.paths[0], vocab=checkpoint.vocab)
    else:
        if text is None:
            if source is None:
                raise CharloomError(
                    f"{run_dir} was trained on a text given in Python; pass it again to resume"
                )
            text = source.read()
        data = prepare_data(config, text, source, vocab=checkpoint.vocab)
    trainer = Trainer(config, data, Path(run_dir))
    trainer.restore(checkpoint)
    trainer.resume_note = note
    return trainer
