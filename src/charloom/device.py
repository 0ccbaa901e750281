"""Devices, precision and threads: where and how the tensors run."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from .errors import CharloomError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharloomError("--device cuda was asked for, but no CUDA device is available")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise CharloomError("--device mps was asked for, but MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise CharloomError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (so bf16 autocast pays off): a CPU
    with AVX-512 bf16 or AMX tiles, a CUDA device with bf16 support."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where :func:`fast_bf16`, else ``fp32``; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(device) else "fp32"


@functools.cache
@functools.cache
def cpu_has_bf16_lstm() -> bool:
    """Whether this CPU's torch build runs a fused LSTM under bf16 autocast: oneDNN has no such
    kernel without AVX-512 (it fails with "could not create a primitive descriptor"). Asked
    once a process; the probe's weights draw nothing from the caller's random generator."""
    with torch.random.fork_rng(devices=[]):
        lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 4))
    except RuntimeError:
        return False
    return True


def check_precision(precision: str, device: torch.device, kind: str) -> None:
    """Refuse, before training starts, a precision the device cannot run for ``kind``."""
    cpu_lstm = device.type == "cpu" and kind == "lstm"
    if precision == "bf16" and cpu_lstm and not cpu_has_bf16_lstm():
        raise CharloomError(
            "--precision bf16 needs a CPU with AVX-512 (this one has no bf16 LSTM kernel); "
            "use --precision fp32 or auto, or --model gru"
        )


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (``fp32``: none, ``bf16``: bfloat16 autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise CharloomError(f"unknown precision {precision!r}; choose fp32 or bf16")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Within the block torch uses ``n`` threads (``None``: as it was); the caller's setting
    comes back afterwards."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PrivateRng:
    """Torch's global random generators as one run sees them, kept apart from the caller's: a
    run seeds and draws (initial weights, dropout) inside :meth:`active`, and the caller's
    generator state is the same before and after."""

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device, self.seed = device, seed
        self.cuda = device.type == "cuda"
        self.state = torch.Generator().manual_seed(seed).get_state()  # = torch.manual_seed's
        self.cuda_state: torch.Tensor | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        devices = [self.device.index or 0] if self.cuda else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(self.state)
            if self.cuda:
                if self.cuda_state is None:
                    torch.cuda.manual_seed(self.seed)
                else:
                    torch.cuda.set_rng_state(self.cuda_state, self.device)
            try:
                yield
            finally:
                self.state = torch.get_rng_state()
                if self.cuda:
                    self.cuda_state = torch.cuda.get_rng_state(self.device)
