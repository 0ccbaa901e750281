"""Picking the next character: the settings (temperature, top-k, top-p, greedy), the
distribution they give, and the inverse-CDF draw from explicit uniforms that every engine - the
torch reference and the compiled loop of ``fastgen.py`` - shares, so that the same seed gives the
same text whatever the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import CharloomError


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


def next_token_distribution(logits: torch.Tensor, settings: SampleSettings) -> torch.Tensor:
    """``logits (B, V)`` -> probabilities ``(B, V)`` after temperature, top-k and top-p."""
    # Shift by the maximum before dividing, so that a tiny temperature gives large negative
    # numbers (a near-greedy choice) rather than infinities and NaN.
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if settings.top_p is not None and settings.top_p < 1:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # Keep a character if the mass *before* it is below p: the smallest set reaching p.
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep_sorted = before < settings.top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def pick(logits: torch.Tensor, settings: SampleSettings, u: torch.Tensor) -> torch.Tensor:
    """``logits (B, V)``, uniforms ``u (B,)`` in [0, 1) -> next ids ``(B,)``.

    Inverse-CDF sampling: the first character whose cumulative probability reaches ``u``. Drawing
    from explicit uniforms (rather than ``torch.multinomial``) lets the compiled generator in
    ``fastgen.py`` reproduce exactly the same text from the same seed."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    probs = next_token_distribution(logits, settings)
    cdf = torch.cumsum(probs, dim=-1)
    target = u.to(cdf.device, cdf.dtype).unsqueeze(1) * cdf[:, -1:]
    return (cdf < target).sum(dim=-1).clamp_(max=probs.shape[-1] - 1)


class Uniforms:
    """The random numbers a generation consumes: ``(B,)`` per step, drawn from ``generator`` in
    blocks of ``BLOCK`` steps, so every engine sees the same sequence for the same seed."""

    BLOCK = 64

    def __init__(self, batch: int, generator: torch.Generator) -> None:
        self.batch, self.generator = batch, generator
        self._block = torch.empty(0, batch)
        self._next = 0

    def take(self, steps: int) -> torch.Tensor:
        """``(steps, B)`` uniforms in [0, 1)."""
        parts = []
        while steps > 0:
            if self._next >= len(self._block):
                self._block = torch.rand(self.BLOCK, self.batch, generator=self.generator)
                self._next = 0
            n = min(steps, len(self._block) - self._next)
            parts.append(self._block[self._next : self._next + n])
            self._next += n
            steps -= n
        return torch.cat(parts) if len(parts) > 1 else parts[0]
