"""One training step: forward, loss, backward, clipping, the divergence guard, the optimiser.

:class:`TrainStep` is what the training loop calls once per batch, and what benchmarks and tests
call to time or probe a step without a run directory. Under torchrun it steps this rank's share
of the batch through ``DistributedDataParallel``, which averages the gradients over the ranks.

A non-finite loss or gradient stops training: on the CPU at once, before the weights change; on
GPUs, which must not wait for the device every step, the first bad iteration is noted on the
device and reported by :meth:`TrainStep.check_diverged` before anything is logged or written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .batches import Batches
from .config import TrainConfig
from .device import autocast, resolve_device, resolve_precision
from .distributed import Group
from .errors import CharloomError
from .loss import LOGITS_BUDGET, sliced_head_loss, slices_needed
from .model import CharRNN, State, detach_state

# "No non-finite loss yet" (see TrainStep.check_diverged).
_NEVER = 2**62
DIVERGED_ADVICE = "Try a lower --lr, --grad-clip 1.0, or --precision fp32"


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random numbers (dropout) in a distributed run."""
    return (seed + 1_000_003 * rank) % 2**63


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam, or AdamW with ``config.weight_decay``, at ``config.lr``."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


class TrainStep:
    """Steps ``model`` on batches ``x, y (B, T)``; holds the optimiser and the recurrent state
    carried between batches of contiguous streams (``carry``: tuple of ``(L, B/ranks, H)``)."""

    def __init__(
        self,
        config: TrainConfig,
        model: CharRNN,
        device: torch.device,
        group: Group | None = None,
    ) -> None:
        self.config, self.model, self.device, self.group = config, model, device, group
        self.optimizer = build_optimizer(config, model)
        self.module: torch.nn.Module = model  # what the training forward runs
        if group is not None:
            config.check_processes(group.world_size)
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.module = DistributedDataParallel(model, device_ids=ids)
        self.carry: State | None = None
        #: Bytes of logits the loss may hold at once (see ``loss.py``); tests lower it.
        self.logits_budget = LOGITS_BUDGET
        self._nonfinite_at: torch.Tensor | None = None  # on GPUs: first non-finite iteration

    @classmethod
    def build(
        cls, config: TrainConfig, vocab_size: int, device: str | torch.device = "cpu"
    ) -> TrainStep:
        """A fresh model of ``config``'s shape for ``vocab_size`` symbols (initialised from
        ``config.seed``), with its optimiser: for benchmarks and tests, which time or probe
        steps without data or a run directory."""
        device = resolve_device(device) if isinstance(device, str) else device
        precision = resolve_precision(config.precision, device)
        config = config.replace(vocab_size=vocab_size, precision=precision)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = CharRNN(config.model).to(device)
        return cls(config, model, device)

    def take(self, batches: Batches, lr: float | None = None, iteration: int = 0):
        """One step on the next batch of ``batches`` (at ``lr``, default the config's)."""
        x, y = batches.next()
        reset = batches.carries_state and batches.new_epoch
        lr = self.config.lr if lr is None else lr
        return self(x, y, lr, iteration, carry=batches.carries_state, reset=reset)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of batch tensor ``t (B, T)``, on the training device."""
        if self.group is not None:
            t = t[self.group.share(len(t))]
        if self.device.type == "cuda":
            t = t.pin_memory()  # so that the copy does not wait for the device
        return t.to(self.device, non_blocking=True)

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        lr: float,
        iteration: int,
        carry: bool = False,
        reset: bool = False,
    ) -> float | torch.Tensor:
        """One optimisation step on the global batch ``x, y (B, T)`` at learning rate ``lr``
        (``iteration``: 0-based, for messages). ``carry``: start from the state the previous
        batch left (contiguous streams); ``reset``: a new epoch, start those from zero. Returns
        the batch's mean loss: a float, or on GPUs a device scalar."""
        cfg = self.config
        if reset:
            self.carry = None
        state = self.carry if carry else None
        x, y = self._to_device(x), self._to_device(y)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Mean over every character of the batch: the lecture's loss averaged over the portion.
        # A large vocabulary's logits would dwarf the model: then the head and the loss run a
        # slice of rows at a time (loss.py), with the same loss and gradients.
        sliced = slices_needed(y.numel(), self.model.config.vocab_size, self.logits_budget) > 1
        with autocast(self.device, cfg.precision):
            out, new_state = self.module(x, state, path=cfg.path, with_head=not sliced)
            if sliced:
                rows = out.reshape(-1, out.shape[-1])
                loss = sliced_head_loss(rows, self.model.head, y.reshape(-1), self.logits_budget)
        if not sliced:
            loss = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        value = self._watch(loss.detach(), grad_norm, iteration)
        self.optimizer.step()
        if carry:
            self.carry = detach_state(new_state)
        return value

    def _watch(
        self, loss: torch.Tensor, grad_norm: torch.Tensor, iteration: int
    ) -> float | torch.Tensor:
        """The step's loss as reported (under torchrun: the whole batch's, averaged over the
        ranks), after the divergence guard (see the module docstring)."""
        if self.group is not None:
            loss = self.group.mean_(loss.clone())
        if self.device.type == "cuda":
            bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
            mark = torch.where(bad, iteration + 1, _NEVER)
            first = self._nonfinite_at
            self._nonfinite_at = mark if first is None else torch.minimum(first, mark)
            return loss
        value = float(loss)
        if not (math.isfinite(value) and math.isfinite(float(grad_norm))):
            what = "loss" if not math.isfinite(value) else "gradient norm"
            raise CharloomError(
                f"training diverged: the {what} became non-finite at iteration "
                f"{iteration + 1}; the last checkpoint is kept. {DIVERGED_ADVICE}"
            )
        return value

    def check_diverged(self) -> None:
        """Raise if a GPU step noted a non-finite loss (a no-op on the CPU, which raised)."""
        if self._nonfinite_at is not None and int(self._nonfinite_at) != _NEVER:
            raise CharloomError(
                "training diverged: the loss or gradient norm became non-finite at iteration "
                f"{int(self._nonfinite_at)}; the last checkpoint is kept. {DIVERGED_ADVICE}"
            )

    def mean_loss(self, losses: Sequence[float | torch.Tensor]) -> float:
        """Mean of the losses the steps returned (floats, or device scalars on GPUs)."""
        if losses and torch.is_tensor(losses[0]):
            self.check_diverged()
            return float(torch.stack(list(losses)).mean())  # type: ignore[arg-type]
        return sum(float(v) for v in losses) / len(losses)

    def check_finite_weights(self, iteration: int) -> None:
        """Refuse to write weights that are not finite (nothing is written, the last
        checkpoint stays)."""
        self.check_diverged()
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise CharloomError(
                    f"the weights became non-finite ({name}) at iteration {iteration}; "
                    f"nothing was written and the last checkpoint is kept. {DIVERGED_ADVICE}"
                )
