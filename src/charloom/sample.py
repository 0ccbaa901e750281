"""Next-character sampling: temperature, top-k, top-p, greedy; streamed as it is generated.

The prime is run through the model once (one fused call); then each step feeds the characters
just drawn, for all ``num_samples`` streams at once, carrying the recurrent state.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import CharloomError
from .model import CharRNN
from .vocab import Vocab


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


def check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise CharloomError(f"length must be an integer >= 0, not {length!r}")


ENGINES = ("auto", "torch", "numba")


def _use_numba(model: CharRNN, engine: str) -> bool:
    from . import fastgen

    if engine == "torch":
        return False
    on_cpu = model.head.weight.device.type == "cpu"
    if engine == "numba":
        if not fastgen.available():
            raise CharloomError("the numba engine needs numba: pip install 'charloom[fast]'")
        if not on_cpu:
            raise CharloomError("the numba engine runs on the CPU only")
        return True
    if engine != "auto":
        raise CharloomError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    return on_cpu and fastgen.available()


@torch.no_grad()
def generate_blocks(
    model: CharRNN,
    prime_ids: list[int],
    settings: SampleSettings,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    engine: str = "auto",
    steps: int | None = None,
) -> Iterator[torch.Tensor]:
    """Endless stream of next ids after ``prime_ids``, in blocks ``(n, num_samples)``.

    ``engine``: ``torch`` (the reference: one model call per character, blocks of one step),
    ``numba`` (the compiled loop of ``fastgen.py``, CPU only; blocks of 1, 4, 16, then 64 steps,
    so the first characters show at once) or ``auto`` (numba where it can run). ``steps``, when
    given, is how many steps the caller expects to need: blocks stop there exactly (and go on
    past it if asked). The same seed gives the same ids whatever the engine and block sizes."""
    if not prime_ids:
        raise CharloomError("the prime must hold at least one character")
    fast = _use_numba(model, engine)
    uniforms = Uniforms(num_samples, generator or torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        device = model.head.weight.device
        x = torch.tensor(prime_ids, device=device).long().unsqueeze(0).expand(num_samples, -1)
        logits, state = model(x.contiguous())
        logits = logits[:, -1].float()
        if fast:
            from .fastgen import FastGenerator

            gen = FastGenerator(model)
            block, left = 1, steps
            while True:
                n = min(block, left) if left else block
                ids, state, logits = gen.run(
                    state,
                    logits,
                    uniforms.take(n),
                    settings.temperature,
                    min(settings.top_k or 0, logits.shape[-1]),  # k >= V keeps everything
                    1.0 if settings.top_p is None else settings.top_p,
                    settings.greedy,
                )
                yield ids
                left = left - n if left else None
                block = min(block * 4, Uniforms.BLOCK)
        while True:
            nxt = pick(logits, settings, uniforms.take(1)[0])
            yield nxt.unsqueeze(0)
            step_logits, state = model(nxt.unsqueeze(1), state)
            logits = step_logits[:, -1].float()
    finally:
        model.train(was_training)


def generate_ids(
    model: CharRNN,
    prime_ids: list[int],
    settings: SampleSettings,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    engine: str = "auto",
) -> Iterator[torch.Tensor]:
    """Endless stream of next ids, ``(num_samples,)`` per step, after ``prime_ids`` (see
    ``generate_blocks``)."""
    for block in generate_blocks(model, prime_ids, settings, num_samples, generator, engine):
        yield from block.unbind(0)


def _generator(seed: int | None) -> torch.Generator:
    # Always a CPU generator: the uniforms are drawn on the CPU whatever the model's device,
    # so a seed gives the same text on every device and engine.
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return g


def prepare_prime(vocab: Vocab, prime: str) -> list[int]:
    if not isinstance(prime, str) or not prime:
        raise CharloomError("the prime must hold at least one character")
    return [int(i) for i in vocab.encode(prime, what="prime")]


def stream_samples(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    length: int,
    settings: SampleSettings | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    engine: str = "auto",
) -> Iterator[list[str]]:
    """Generate ``num_samples`` texts after ``prime``; yields one string per sample for each
    block of steps (one character per step with the torch engine, up to 64 with numba; possibly
    empty while a multi-byte character completes in bytes mode). Every sample ends after exactly
    ``length`` new characters."""
    settings = settings or SampleSettings()
    settings.validate()
    check_length(length)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise CharloomError(f"num-samples must be an integer >= 1, not {num_samples!r}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
    ):
        raise CharloomError(f"seed must be an integer in 0..2^63-1, not {seed!r}")
    prime_ids = prepare_prime(vocab, prime)
    if length == 0:
        return
    decoders = [vocab.decoder() for _ in range(num_samples)]
    counts = [0] * num_samples
    generator = _generator(seed)
    blocks = generate_blocks(
        model, prime_ids, settings, num_samples, generator, engine, steps=length
    )
    for block in blocks:
        out = []
        for i, tokens in enumerate(block.T.tolist()):
            piece = decoders[i].feed_many(tokens) if counts[i] < length else ""
            piece = piece[: length - counts[i]]
            counts[i] += len(piece)
            out.append(piece)
        yield out
        if min(counts) >= length:
            return


def sample(
    model: CharRNN,
    vocab: Vocab,
    prime: str = "Th",
    length: int = 200,
    settings: SampleSettings | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    engine: str = "auto",
) -> list[str]:
    """``num_samples`` texts, each the prime followed by exactly ``length`` new characters."""
    texts = [[prime] for _ in range(num_samples)]
    for pieces in stream_samples(model, vocab, prime, length, settings, num_samples, seed, engine):
        for t, p in zip(texts, pieces):
            t.append(p)
    return ["".join(t) for t in texts]
