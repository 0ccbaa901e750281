"""Next-character sampling: temperature, top-k, top-p, greedy; streamed as it is generated.

Three pieces, each written once and shared by ``charloom sample``, ``CharModel`` and the server:

- :class:`SampleStream` - one request: its prime, settings, length, samples and seeded random
  numbers; it runs the prime once and turns the drawn ids into exactly ``length`` new characters
  per sample. It never calls the model past the prime, so any engine can feed it.
- an engine - :class:`TorchGenerator` (the reference: ``pick`` then the cell path's step) or
  ``fastgen.FastGenerator`` (the same arithmetic, compiled) - draws ids for a block of steps:
  ``run(state, logits, uniforms, settings) -> ids, state, logits``. With ``engine="auto"`` a
  stream starts on the torch engine while the compiled one is compiled in the background, and
  switches to it between two blocks (:func:`generate_blocks`).
- :func:`generate_blocks` / :func:`stream_samples` / :func:`sample` - one stream driven by one
  engine, for the command line and the Python API (the server drives many streams itself).

The same seed gives the same text whatever the engine, block sizes or batch neighbours, because
every draw consumes the stream's uniforms in the same order (see :class:`Uniforms`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import fastgen
from .errors import CharloomError
from .model import CharRNN, State
from .nextchar import SampleSettings, Uniforms, pick
from .vocab import Vocab


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
        end: int | None = None,
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
            prime = encode_prime(vocab, prime) if prime or end is None else []
        if len(prime) == 0 and end is None:
            raise CharloomError("the prime must hold at least one character")
        #: Documents mode: the end-of-document id; each sample is one document, started from
        #: the end symbol (the start marker) and the prime, and stopped when it draws the
        #: symbol again (or at ``length`` characters, the cap).
        self.end = end
        self.prime_ids = ([end] if end is not None else []) + [int(i) for i in prime]
        self.length = length
        self.settings = settings
        self.num_samples = num_samples
        self.seed = seed
        #: The stream's random numbers, ``(steps, num_samples)`` per ``take``; engines draw with
        #: them in order, which is what makes a seed give the same text everywhere.
        self.uniforms = Uniforms(num_samples, seeded_generator(seed))
        self.decoders = [vocab.decoder() for _ in range(num_samples)]
        self.counts = [0] * num_samples  # new characters made so far, per sample
        #: Documents mode: which samples drew the end symbol (ended by themselves), and the
        #: ids each drew before it (what ``--novel`` fingerprints).
        self.ended = [False] * num_samples
        self.drawn: list[list[int]] = [[] for _ in range(num_samples)]

    @property
    def done(self) -> bool:
        """Whether every sample has its ``length`` characters or, in documents mode, its end
        (at once for ``length`` 0)."""
        return all(self._finished(i) for i in range(self.num_samples))

    def _finished(self, i: int) -> bool:
        return self.ended[i] or self.counts[i] >= self.length

    def stopped(self) -> torch.Tensor:
        """``(num_samples,)`` bool: the samples that need no more ids (what an engine skips)."""
        return torch.tensor([self._finished(i) for i in range(self.num_samples)])

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
            if self._finished(i):
                out.append("")
                continue
            if self.end is not None:
                if self.end in tokens:
                    tokens = tokens[: tokens.index(self.end)]
                    self.ended[i] = True
                self.drawn[i].extend(tokens)
            left = self.length - self.counts[i]
            piece = self.decoders[i].feed(tokens)[:left] if left > 0 else ""
            self.counts[i] += len(piece)
            out.append(piece)
        return out


# torch's own one-step recurrences, what nn.LSTMCell/GRUCell/RNNCell call: the cell path's
# arithmetic, without the module machinery.
_CELL_STEPS: dict[str, Callable[..., Any]] = {
    "lstm": torch.lstm_cell,
    "gru": torch.gru_cell,
    "rnn": torch.rnn_tanh_cell,
}
_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class TorchGenerator:
    """The reference engine: each step picks the next ids with :func:`pick`, then runs the
    model's cell path for one character (``CharRNN.step(..., path="cell")``: embedding, torch's
    cell function per layer with the model's own weights, head). It has the interface of
    ``fastgen.FastGenerator``, so a caller can drive either, on any device and for any number
    of streams.

    Not ``CharRNN.step`` on the fused path: on the CPU, ``nn.LSTM`` builds its oneDNN kernel on
    every call, which costs milliseconds for a single step; the cell functions cost
    microseconds. Dropout is not applied (generation runs the model in eval mode)."""

    def __init__(self, model: CharRNN) -> None:
        self.model = model
        self._cell = _CELL_STEPS[model.config.kind]
        self._weights = [
            tuple(model.layer_weights(layer)[name] for name in _WEIGHT_NAMES)
            for layer in range(model.config.layers)
        ]

    def run(
        self,
        state: State,
        logits: torch.Tensor,
        uniforms: torch.Tensor,
        settings: SampleSettings,
        end: int | None = None,
        stopped: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Draw ``uniforms.shape[0]`` characters for each of B streams from ``logits (B, V)``
        and ``state`` (tuple of ``(L, B, H)``), with ``uniforms (steps, B)``. Returns the ids
        ``(steps, B)``, the new state and the float logits after the last character.

        ``end``: the end-of-document id. A stream that draws it (or is in ``stopped (B,)``
        bool) stops: its later ids are all ``end``, and once every stream has stopped the
        block ends without stepping the model further."""
        m, cell, lstm = self.model, self._cell, self.model.is_lstm
        emb, head_w, head_b = m.embedding.weight, m.head.weight, m.head.bias
        with torch.no_grad():
            uniforms = uniforms.to(logits.device)  # one copy per block, not one per step
            hs = list(state[0].unbind(0))
            cs = list(state[1].unbind(0)) if lstm else hs
            drawn: list[torch.Tensor] = []
            stop, end_id = None, -1 if end is None else end
            if end is not None:
                stop = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
                if stopped is not None:
                    stop |= stopped.to(logits.device)
            for u in uniforms:
                nxt = pick(logits, settings, u)
                if stop is not None:
                    nxt = nxt.masked_fill(stop, end_id)
                    stop |= nxt == end_id
                    drawn.append(nxt)
                    if bool(stop.all()):
                        rest = len(uniforms) - len(drawn)
                        drawn.extend(torch.full_like(nxt, end_id) for _ in range(rest))
                        break
                else:
                    drawn.append(nxt)
                inp = F.embedding(nxt, emb)
                for layer, weights in enumerate(self._weights):
                    if lstm:
                        hs[layer], cs[layer] = cell(inp, (hs[layer], cs[layer]), *weights)
                    else:
                        hs[layer] = cell(inp, hs[layer], *weights)
                    inp = hs[layer]
                logits = F.linear(inp, head_w, head_b).float()
            new = (torch.stack(hs), torch.stack(cs)) if lstm else (torch.stack(hs),)
            ids = torch.stack(drawn) if len(drawn) != 1 else drawn[0].unsqueeze(0)
        return ids, new, logits


#: Either engine: both have ``run(state, logits, uniforms, settings) -> ids, state, logits``.
Engine = TorchGenerator | fastgen.FastGenerator
ENGINES = ("auto", "torch", "numba")


def check_engine(engine: str) -> None:
    """Refuse an ``engine`` that is not one of :data:`ENGINES`."""
    if engine not in ENGINES:
        raise CharloomError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")


def engine_in_use(device: str | torch.device = "cpu") -> str:
    """What ``engine="auto"`` runs on ``device`` now: ``numba``, ``torch (compiling)`` (the
    compiled engine is being compiled or loaded; a stream switches to it when it is ready),
    ``torch (numba not installed)``, ``torch (numba failed: ...)`` or ``torch (not on the
    CPU)``. For reports such as ``charloom bench``; it starts nothing."""
    if torch.device(device).type != "cpu":
        return "torch (not on the CPU)"
    status = fastgen.status()
    if status == "ready":
        return "numba"
    if status in ("compiling", "idle"):
        return "torch (compiling)"
    return f"torch (numba {status})"


def _choose(model: CharRNN, engine: str) -> str:
    """``numba``, ``torch``, or ``pending`` (torch until the compiled engine is ready) for
    ``engine`` on ``model``'s device; ``numba`` waits for the compiler, since it was asked for."""
    check_engine(engine)
    if engine == "torch":
        return "torch"
    on_cpu = model.head.weight.device.type == "cpu"
    if engine == "numba":
        if not on_cpu:
            raise CharloomError("the numba engine runs on the CPU only")
        if fastgen.status() == "not installed":
            raise CharloomError(f"the numba engine needs numba: {fastgen.INSTALL_HINT}")
        if not fastgen.prepare(wait=True):
            raise CharloomError(f"the numba engine cannot run here ({fastgen.status()})")
        return "numba"
    if not on_cpu:
        return "torch"
    if fastgen.ready():
        return "numba"
    if not fastgen.available():
        fastgen.prepare()  # says once that numba is missing
        return "torch"
    return "pending"  # generate_blocks starts the compiler once the first block is out


def engine_name(model: CharRNN, engine: str = "auto") -> str:
    """What ``engine`` runs for ``model`` now - ``numba`` or ``torch`` - by the rule
    :func:`generate_blocks` follows, so that other drivers (the server) choose as it does.
    ``auto`` while the compiled engine is still being compiled: ``torch`` now, and the compile
    is started (a long-lived driver asks again later)."""
    choice = _choose(model, engine)
    if choice == "pending":
        fastgen.prepare()
        return "torch"
    return choice


def make_generator(model: CharRNN, engine: str = "auto") -> Engine:
    """The engine object ``engine`` names for ``model`` now (see :func:`engine_name`)."""
    if engine_name(model, engine) == "numba":
        return fastgen.FastGenerator(model)
    return TorchGenerator(model)


@torch.no_grad()
def generate_blocks(
    model: CharRNN, stream: SampleStream, engine: str = "auto"
) -> Iterator[torch.Tensor]:
    """Endless stream of the ids drawn for ``stream``, in blocks ``(n, num_samples)`` of 1, 4,
    16, then 64 steps (so the first characters show at once).

    ``engine``: ``torch`` (the reference, :class:`TorchGenerator`), ``numba`` (the compiled loop
    of ``fastgen.py``, CPU only; waits for it to compile) or ``auto``: numba on the CPU where it
    can run, else torch. While the compiled engine is still being compiled or loaded, ``auto``
    starts on torch and switches to numba between two blocks once it is ready; if numba fails at
    run time, ``auto`` says so once and redoes the block on torch. Blocks stop at exactly
    ``stream.length`` steps (and go on past it if asked, as bytes mode may need). The same seed
    gives the same ids whatever the engine, the switch and the block sizes."""
    plan = _choose(model, engine)
    was_training = model.training
    model.eval()
    try:
        gen: Engine = TorchGenerator(model)
        state, logits = stream.start(model)
        block, left = 1, stream.length
        while True:
            if plan in ("numba", "pending") and (plan == "numba" or fastgen.ready()):
                gen = _compiled(model, engine, gen)
                plan = "numba" if isinstance(gen, fastgen.FastGenerator) else "torch"
            n = min(block, left) if left > 0 else block
            u = stream.uniforms.take(n)
            stop = (stream.end, stream.stopped()) if stream.end is not None else ()
            try:
                ids, state, logits = gen.run(state, logits, u, stream.settings, *stop)
            except Exception as exc:
                if not isinstance(gen, fastgen.FastGenerator):
                    raise
                gen, plan = _compiled_failed(model, engine, exc), "torch"
                ids, state, logits = gen.run(state, logits, u, stream.settings, *stop)
            yield ids
            if plan == "pending" and block == 1:
                # After the first block, so importing numba (a second, holding the
                # interpreter's lock much of it) does not delay the first character.
                fastgen.prepare()
            left -= n
            block = min(block * 4, Uniforms.BLOCK)
    finally:
        model.train(was_training)


def _compiled(model: CharRNN, engine: str, gen: Engine) -> Engine:
    """The compiled engine for ``model`` (``gen`` if it is one already); where it cannot be
    built, the torch engine (``auto``) or a one-line error (``numba``)."""
    if isinstance(gen, fastgen.FastGenerator):
        return gen
    try:
        return fastgen.FastGenerator(model)
    except Exception as exc:
        return _compiled_failed(model, engine, exc)


def _compiled_failed(model: CharRNN, engine: str, exc: Exception) -> TorchGenerator:
    """After the compiled engine raised: a one-line error if it was asked for by name, else
    the torch engine (and one line on stderr, once per process)."""
    reason = fastgen.one_line(exc)
    if engine == "numba":
        raise CharloomError(f"the numba engine failed: {reason}") from exc
    fastgen.failed(reason)
    return TorchGenerator(model)


def stream_samples(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    length: int,
    settings: SampleSettings | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    engine: str = "auto",
    end: int | None = None,
) -> Iterator[list[str]]:
    """Generate ``num_samples`` texts after ``prime``; yields one string per sample for each
    block of steps (one character per step with the torch engine, up to 64 with numba; possibly
    empty while a multi-byte character completes in bytes mode). Every sample ends after exactly
    ``length`` new characters, or, with ``end`` (documents mode), at the end of its document
    if that comes first."""
    if not isinstance(prime, str):
        raise CharloomError("the prime must hold at least one character")
    stream = SampleStream(vocab, prime, length, settings, num_samples, seed, end)
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
    end: int | None = None,
) -> list[str]:
    """``num_samples`` texts, each the prime followed by exactly ``length`` new characters
    (``end``: documents mode, each a document of at most ``length`` new characters)."""
    texts = [[prime] for _ in range(num_samples)]
    pieces_of = stream_samples(
        model, vocab, prime, length, settings, num_samples, seed, engine, end
    )
    for pieces in pieces_of:
        for t, p in zip(texts, pieces):
            t.append(p)
    return ["".join(t) for t in texts]


def sample_documents(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    length: int,
    settings: SampleSettings | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    engine: str = "auto",
) -> list[tuple[str, bool, list[int]]]:
    """``num_samples`` documents from a documents-mode model: each the prime (may be empty)
    and what follows up to the end symbol or ``length`` new characters (the cap). For each:
    its text, whether it ended by itself, and its ids (prime included) without the end."""
    if vocab.end is None:
        raise CharloomError("this model was not trained in documents mode")
    if not isinstance(prime, str):
        raise CharloomError("the prime must be a text")
    stream = SampleStream(vocab, prime, length, settings, num_samples, seed, vocab.end)
    texts = [[prime] for _ in range(num_samples)]
    if not stream.done:
        for block in generate_blocks(model, stream, engine):
            for t, piece in zip(texts, stream.take(block)):
                t.append(piece)
            if stream.done:
                break
    head = stream.prime_ids[1:]
    return [("".join(t), stream.ended[i], head + stream.drawn[i]) for i, t in enumerate(texts)]
