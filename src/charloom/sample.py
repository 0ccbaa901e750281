"""Next-character sampling: temperature, top-k, top-p, greedy; streamed as it is generated.

Three pieces, each written once and shared by ``charloom sample``, ``CharModel`` and the server:

- :class:`SampleStream` - one request: its prime, settings, length, samples and seeded random
  numbers; it runs the prime once and turns the drawn ids into exactly ``length`` new characters
  per sample. It never calls the model past the prime, so any engine can feed it.
- an engine - :class:`TorchGenerator` (the reference: ``pick`` then ``CharRNN.step``) or
  ``fastgen.FastGenerator`` (the same arithmetic, compiled) - draws ids for a block of steps:
  ``run(state, logits, uniforms, settings) -> ids, state, logits``.
- :func:`generate_blocks` / :func:`stream_samples` / :func:`sample` - one stream driven by one
  engine, for the command line and the Python API (the server drives many streams itself).

The same seed gives the same text whatever the engine, block sizes or batch neighbours, because
every draw consumes the stream's uniforms in the same order (see :class:`Uniforms`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from .errors import CharloomError
from .model import CharRNN, State
from .nextchar import SampleSettings, Uniforms, pick
from .vocab import Vocab

if TYPE_CHECKING:
    from .fastgen import FastGenerator


def check_length(length: int) -> None:
    """Refuse a ``length`` (new characters per sample) that is not an integer >= 0."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise CharloomError(f"length must be an integer >= 0, not {length!r}")


def seeded_generator(seed: int | None) -> torch.Generator:
    """The random-number generator a stream draws its uniforms from; ``None``: a fresh random
    seed. Always a CPU generator: the uniforms are drawn on the CPU whatever the model's device,
    so a seed gives the same text on every device and engine."""
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return g


def encode_prime(vocab: Vocab, prime: str) -> list[int]:
    """The ids of ``prime``, refusing an empty prime or one with characters ``vocab`` lacks."""
    if not isinstance(prime, str) or not prime:
        raise CharloomError("the prime must hold at least one character")
    return [int(i) for i in vocab.encode(prime, what="prime")]


class SampleStream:
    """One generation request: ``num_samples`` samples of exactly ``length`` new characters
    after ``prime`` (text, or ids already encoded with ``vocab``), drawn with ``settings`` and
    the stream's own seeded random numbers.

    It holds everything about the request except the model's running state, which belongs to
    whoever steps it (one stream alone in :func:`generate_blocks`, many streams in one batch in
    the server), so any engine can feed it. Use: ``state, logits = stream.start(model)``; then
    for each block of ids an engine drew with ``stream.uniforms``, ``stream.take(ids)`` gives
    each sample's new text, until ``stream.done``."""

    def __init__(
        self,
        vocab: Vocab,
        prime: str | Sequence[int],
        length: int,
        settings: SampleSettings | None = None,
        num_samples: int = 1,
        seed: int | None = None,
    ) -> None:
        settings = settings or SampleSettings()
        settings.validate()
        check_length(length)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise CharloomError(f"num-samples must be an integer >= 1, not {num_samples!r}")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise CharloomError(f"seed must be an integer in 0..2^63-1, not {seed!r}")
        if isinstance(prime, str):
            prime = encode_prime(vocab, prime)
        if len(prime) == 0:
            raise CharloomError("the prime must hold at least one character")
        self.prime_ids = [int(i) for i in prime]
        self.length = length
        self.settings = settings
        self.num_samples = num_samples
        self.seed = seed
        #: The stream's random numbers, ``(steps, num_samples)`` per ``take``; engines draw with
        #: them in order, which is what makes a seed give the same text everywhere.
        self.uniforms = Uniforms(num_samples, seeded_generator(seed))
        self.decoders = [vocab.decoder() for _ in range(num_samples)]
        self.counts = [0] * num_samples  # new characters made so far, per sample

    @property
    def done(self) -> bool:
        """Whether every sample has its ``length`` characters (at once for ``length`` 0)."""
        return min(self.counts) >= self.length

    @torch.no_grad()
    def start(self, model: CharRNN) -> tuple[State, torch.Tensor]:
        """Run the prime through ``model`` once (one row) and give every sample a copy: returns
        the state (tuple of ``(L, num_samples, H)``) and the float ``logits (num_samples, V)``
        of the first draw. One row, not ``num_samples``, so the numbers - and the text - do not
        depend on how many samples are asked for."""
        device = model.head.weight.device
        x = torch.tensor(self.prime_ids, device=device, dtype=torch.long).unsqueeze(0)
        logits, state = model(x)
        n = self.num_samples
        state = tuple(s.expand(-1, n, -1).contiguous() for s in state)
        return state, logits[:, -1].float().expand(n, -1).contiguous()

    def take(self, ids: torch.Tensor) -> list[str]:
        """The new text of each sample from a block of drawn ``ids (steps, num_samples)``:
        exactly what completes, cut at ``length`` characters (possibly empty while a
        multi-byte character completes in bytes mode, and always empty once a sample is done)."""
        out = []
        for i, tokens in enumerate(ids.T.tolist()):
            left = self.length - self.counts[i]
            piece = self.decoders[i].feed(tokens)[:left] if left > 0 else ""
            self.counts[i] += len(piece)
            out.append(piece)
        return out


class TorchGenerator:
    """The reference engine: each step picks the next ids with :func:`pick` and runs one
    :meth:`CharRNN.step`. It has the interface of ``fastgen.FastGenerator``, so a caller
    can drive either."""

    def __init__(self, model: CharRNN) -> None:
        self.model = model

    @torch.no_grad()
    def run(
        self,
        state: State,
        logits: torch.Tensor,
        uniforms: torch.Tensor,
        settings: SampleSettings,
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Draw ``uniforms.shape[0]`` characters for each of B streams from ``logits (B, V)``
        and ``state`` (tuple of ``(L, B, H)``), with ``uniforms (steps, B)``. Returns the ids
        ``(steps, B)``, the new state and the float logits after the last character."""
        drawn = []
        for u in uniforms:
            nxt = pick(logits, settings, u)
            drawn.append(nxt)
            step_logits, state = self.model.step(nxt, state)
            logits = step_logits.float()
        return torch.stack(drawn), state, logits


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


def engine_name(model: CharRNN, engine: str = "auto") -> str:
    """What ``engine`` resolves to for ``model`` - ``numba`` or ``torch`` - by the rule
    :func:`generate_blocks` follows, so that other drivers (the server) choose as it does."""
    return "numba" if _use_numba(model, engine) else "torch"


def make_generator(model: CharRNN, engine: str = "auto") -> FastGenerator | TorchGenerator:
    """The engine object ``engine`` names for ``model`` (see :func:`engine_name`)."""
    if engine_name(model, engine) == "numba":
        from .fastgen import FastGenerator

        return FastGenerator(model)
    return TorchGenerator(model)


@torch.no_grad()
def generate_blocks(
    model: CharRNN, stream: SampleStream, engine: str = "auto"
) -> Iterator[torch.Tensor]:
    """Endless stream of the ids drawn for ``stream``, in blocks ``(n, num_samples)``.

    ``engine``: ``torch`` (the reference, :class:`TorchGenerator`; blocks of one step),
    ``numba`` (the compiled loop of ``fastgen.py``, CPU only; blocks of 1, 4, 16, then 64 steps,
    so the first characters show at once) or ``auto`` (numba where it can run). Blocks stop at
    exactly ``stream.length`` steps (and go on past it if asked, as bytes mode may need). The
    same seed gives the same ids whatever the engine and block sizes."""
    fast = _use_numba(model, engine)
    was_training = model.training
    model.eval()
    try:
        if fast:
            from .fastgen import FastGenerator

            gen: FastGenerator | TorchGenerator = FastGenerator(model)
        else:
            gen = TorchGenerator(model)
        state, logits = stream.start(model)
        block, left = 1, stream.length
        while True:
            n = min(block, left) if left > 0 else block
            ids, state, logits = gen.run(state, logits, stream.uniforms.take(n), stream.settings)
            yield ids
            left -= n
            if fast:
                block = min(block * 4, Uniforms.BLOCK)
    finally:
        model.train(was_training)


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
    if not isinstance(prime, str):
        raise CharloomError("the prime must hold at least one character")
    stream = SampleStream(vocab, prime, length, settings, num_samples, seed)
    if stream.done:
        return
    for block in generate_blocks(model, stream, engine):
        yield stream.take(block)
        if stream.done:
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
