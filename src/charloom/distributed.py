"""Many processes: ``torch.distributed`` set up from torchrun's environment, and the few
collective operations the trainer needs.

A run started by ``torchrun --nproc-per-node N -m charloom train ...`` has N processes (ranks);
torchrun tells each one its place through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Every rank builds the same model from the same
seed and draws the same global batch; each trains on its own contiguous share of the batch's
rows, and ``DistributedDataParallel`` averages the gradients, so N processes compute exactly the
step one process would.

Rank 0 is the only one that decides anything that depends on a clock or a signal (the time
budget, when to evaluate or checkpoint, when to stop) and the only one that writes; the other
ranks follow its commands (:meth:`Group.command`), so they can never disagree about what comes
next. CPU tensors travel over gloo, CUDA tensors over NCCL, in one process group.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import CharloomError, TrainingInterrupted

#: How long a rank waits for the others before giving up (a crashed rank must not hang the
#: rest forever; torchrun also stops the survivors when one rank fails).
TIMEOUT = timedelta(minutes=30)

# Commands rank 0 sends to the others (see :meth:`Group.command`).
STEP, EVAL, SAVE, STOP, ABORT = 1, 2, 3, 4, 5


def launched() -> bool:
    """Whether this process was started by torchrun (or anything else that sets ``RANK`` and
    ``WORLD_SIZE``) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@dataclass(frozen=True)
class Group:
    """This process's place in a distributed run."""

    rank: int
    world_size: int
    device: torch.device  # the device this rank trains on (cuda:LOCAL_RANK on GPUs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (``n`` divisible by the world size)."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    # --- collectives (every rank must call them, in the same order) --------------------
    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64, on the CPU)."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over all ranks, in place, without waiting for the device."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.div_(self.world_size)

    def command(
        self, cmd: int = 0, lr: float = 0.0, caught: int | None = None
    ) -> tuple[int, float, int | None]:
        """Rank 0 sends ``(cmd, lr)``; every rank sends the signal it caught (``caught``:
        SIGINT, SIGTERM or None). Returns rank 0's command and learning rate, and the signal
        caught anywhere (SIGTERM before SIGINT), so that rank 0 hears of a signal that reached
        only another rank."""
        mine = (cmd, lr) if self.is_main else (0, 0.0)
        flags = (caught == signal.SIGINT, caught == signal.SIGTERM)
        t = torch.tensor([*mine, *flags], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)  # one message per step, in both directions
        heard = signal.SIGTERM if t[3] > 0 else signal.SIGINT if t[2] > 0 else None
        return int(t[0]), float(t[1]), heard

    def gather(self, obj) -> list | None:
        """Every rank's ``obj``, in rank order, on rank 0 (``None`` elsewhere)."""
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn, *args):
        """Run ``fn(*args)`` on rank 0 and hand its result (or its :class:`CharloomError`,
        raised again) to every rank - so a failure there stops all ranks the same way."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn(*args))
            except CharloomError as exc:
                outcome = ("error", str(exc))
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise CharloomError(value)
        return value


# --- the lead/follow protocol of a training run --------------------------------------------
Command = Callable[..., tuple[int, float]]  # command(cmd=0, value=0.0) -> (cmd, value)


def lead(loop: Callable[[], object], command: Command):
    """Rank 0: run the training ``loop``, then tell the other ranks how it ended - STOP (with
    the signal that interrupted it, if one did) or ABORT on an error."""
    end, value = ABORT, 0.0
    try:
        result = loop()
        end = STOP
        return result
    except TrainingInterrupted as exc:
        end, value = STOP, float(exc.signum)
        raise
    finally:
        # If another rank is gone, there is nobody to tell: the original error stands.
        with contextlib.suppress(Exception):
            command(end, value)


def follow(command: Command, handlers: dict[int, Callable[[float], object]]) -> float:
    """A rank other than 0: do what rank 0 says (``handlers[cmd](value)`` for STEP, EVAL,
    SAVE) until it says STOP; returns STOP's value (the signal that stopped rank 0, or 0).
    Rank 0 alone decides, so clocks, signals and time budgets cannot make the ranks disagree
    about what comes next."""
    while True:
        cmd, value = command()
        if cmd == STOP:
            return value
        if cmd not in handlers:
            raise CharloomError("rank 0 stopped with an error (see its message above)")
        handlers[cmd](value)


def join(device: torch.device) -> Group | None:
    """Join the distributed run this process belongs to (``None`` when it runs alone).

    Idempotent: a process that has joined already gets its :class:`Group` back."""
    if not launched():
        return None
    if device.type not in ("cpu", "cuda"):
        raise CharloomError(
            f"distributed training runs on CPUs (gloo) or CUDA GPUs (NCCL), not {device.type}; "
            "pass --device cpu"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CharloomError(
                f"process {local_rank} of this machine has no GPU of its own "
                f"({torch.cuda.device_count()} visible); start at most that many per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise CharloomError(f"cannot join the distributed run: {exc}") from None
    return Group(dist.get_rank(), dist.get_world_size(), device)


def leave() -> None:
    """Leave the distributed run (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        # A DistributedDataParallel wrapper still held by a reference cycle would otherwise
        # be freed at interpreter exit, after its process group, and abort the process.
        gc.collect()
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``charloom ARGV`` as ``nproc`` processes on this machine under torchrun
    (``python -m torch.distributed.run --standalone --nproc-per-node N -m charloom ARGV``);
    its exit status."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "charloom",
        *argv,
    ]
    child = subprocess.Popen(command)
    # Ctrl-C reaches every process of the terminal, torchrun's workers included, and they
    # checkpoint and stop; this launcher only waits for them. SIGTERM is passed on.
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda s, f: child.send_signal(s)),
    }
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
