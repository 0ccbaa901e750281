"""Devices, precision and threads: where and how the tensors run."""

from __future__ import annotations

import contextlib

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


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (``fp32``: none, ``bf16``: bfloat16 autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise CharloomError(f"unknown precision {precision!r}; choose fp32 or bf16")
