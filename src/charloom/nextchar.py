"""What every engine picks the next character with: the settings (temperature, top-k, top-p,
greedy) and the seeded uniforms the inverse-CDF draws consume, in the same order whatever the
engine - the torch reference (``sample.py``), the numpy engine (``npgen.py``) and the compiled
loop (``fastgen.py``) - so that the same seed gives the same text everywhere.

Free of torch: the numbers come from numpy's PCG64 generator, so a process that samples on the
CPU never has to import torch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .errors import CharloomError

#: What a sample starts from when no prime is given (the lecture's): ``charloom sample``, the
#: Python API, the server and the samples printed during training. A documents-mode model's
#: samples start from the start-of-document marker instead (no prime).
DEFAULT_PRIME = "Th"
#: How many new characters a sample has when no length is given (the lecture's).
DEFAULT_LENGTH = 200


@dataclass
class SampleSettings:
    """How to pick each next character. The one home of sampling defaults."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def validate(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise CharloomError(f"temperature must be a number > 0, not {t!r}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise CharloomError(f"top-k must be an integer >= 1, not {self.top_k!r}")
        p = self.top_p
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1
        ):
            raise CharloomError(f"top-p must be in (0, 1], not {p!r}")


def seeded_rng(seed: int | None) -> np.random.Generator:
    """The random-number generator a stream draws its uniforms from; ``None``: a fresh random
    seed. The uniforms are drawn on the CPU whatever the model's device, so a seed gives the
    same text on every device and engine."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**63)
    return np.random.Generator(np.random.PCG64(seed))


class Uniforms:
    """The random numbers a generation consumes: ``(B,)`` per step, drawn from ``rng`` in
    blocks of ``BLOCK`` steps, so every engine sees the same sequence for the same seed."""

    BLOCK = 64

    def __init__(self, batch: int, rng: np.random.Generator) -> None:
        self.batch, self.rng = batch, rng
        self._block = np.empty((0, batch), np.float32)
        self._next = 0

    def take(self, steps: int) -> np.ndarray:
        """``(steps, B)`` float32 uniforms in [0, 1)."""
        parts = []
        while steps > 0:
            if self._next >= len(self._block):
                self._block = self.rng.random((self.BLOCK, self.batch), dtype=np.float32)
                self._next = 0
            n = min(steps, len(self._block) - self._next)
            parts.append(self._block[self._next : self._next + n])
            self._next += n
            steps -= n
        if not parts:
            return np.empty((0, self.batch), np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
