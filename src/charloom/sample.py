"""Next-character sampling with torch models: the torch reference engine, the choice of engine,
and one stream driven to its end for the command line and the Python API.

The pieces, each written once and shared by ``charloom sample``, ``CharModel`` and the server:

- ``samplestream.SampleStream`` - one request: its prime, settings, length, samples and seeded
  random numbers; it turns the drawn ids into exactly ``length`` new characters per sample.
- an engine draws ids for a block of steps: ``run(state, logits, uniforms, settings) -> ids,
  state, logits``. :class:`TorchGenerator` (the reference: :func:`pick` then torch's cell
  functions; any device); on the CPU, ``npgen.NumpyGenerator`` (the same arithmetic in numpy:
  no compiler, no start-up) and ``fastgen.FastGenerator`` (compiled with numba), which work on
  numpy arrays; :class:`CompiledGenerator` puts the compiled one behind tensors for the server.
  With ``engine="auto"`` on the CPU a stream starts on the numpy engine while the compiled one is
  loaded or compiled in the background, and switches to it between two blocks.
- :func:`generate_blocks` / :func:`stream_samples` / :func:`sample` - one stream driven by one
  engine (the server drives many streams itself).

The same seed gives the same text whatever the engine, block sizes or batch neighbours, because
every draw consumes the stream's uniforms in the same order (see ``nextchar.Uniforms``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import fastgen
from .errors import CharloomError
from .model import CharRNN, State
from .nextchar import DEFAULT_LENGTH, DEFAULT_PRIME, SampleSettings, Uniforms
from .npgen import GenWeights
from .samplestream import SampleStream, request_pieces, text_pieces, whole_texts
from .vocab import Vocab


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
    if settings.top_k is None and (settings.top_p is None or settings.top_p >= 1):
        # Temperature alone, the usual case, in as few tensor operations as it takes: once per
        # character, each operation's fixed cost is most of a one-stream step's time.
        cdf = _plain_cdf(logits.float(), settings.temperature)
    else:
        cdf = torch.cumsum(next_token_distribution(logits, settings), dim=-1)
    target = u.to(cdf.device, cdf.dtype).unsqueeze(1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target).squeeze(1).clamp_(max=cdf.shape[-1] - 1)


#: Below this temperature the plain draw shifts the logits by their maximum before dividing
#: (logits over the temperature could overflow to infinity); above it softmax, which shifts
#: them itself, is safe.
_SHIFT_BELOW = 1e-3


def _plain_cdf(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Float ``logits (B, V)`` -> the running sum of their softmax at ``temperature``
    ``(B, V)``: :func:`next_token_distribution` without top-k or top-p, then ``cumsum``."""
    if temperature < _SHIFT_BELOW:
        logits = logits - logits.amax(dim=-1, keepdim=True)
    return torch.softmax(logits / temperature, dim=-1).cumsum_(dim=-1)


# torch's own one-step recurrences, what nn.LSTMCell/GRUCell/RNNCell call: the cell path's
# arithmetic, without the module machinery.
_CELL_STEPS: dict[str, Callable[..., Any]] = {
    "lstm": torch.lstm_cell,
    "gru": torch.gru_cell,
    "rnn": torch.rnn_tanh_cell,
}
_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def start_state(model: CharRNN, prime_ids: list[int], rows: int) -> tuple[State, torch.Tensor]:
    """Run ``prime_ids`` through ``model`` (fused path, one row) and give each of ``rows``
    samples a copy: the state (tuple of ``(L, rows, H)``) and the float ``logits (rows, V)`` of
    the first draw. One row, so the numbers do not depend on how many samples are asked for."""
    with torch.no_grad():
        x = torch.tensor(prime_ids, device=model.head.weight.device).unsqueeze(0)
        logits, state = model(x)
        state = tuple(s.expand(-1, rows, -1).contiguous() for s in state)
        return state, logits[:, -1].float().expand(rows, -1).contiguous()


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

    def start(self, prime_ids: list[int], rows: int) -> tuple[State, torch.Tensor]:
        """See :func:`start_state`."""
        return start_state(self.model, prime_ids, rows)

    def run(
        self,
        state: State,
        logits: torch.Tensor,
        uniforms: torch.Tensor | np.ndarray,
        settings: SampleSettings,
        end: int | None = None,
        stopped: torch.Tensor | np.ndarray | None = None,
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
            uniforms = torch.as_tensor(uniforms).to(logits.device)  # one copy per block
            hs = list(state[0].unbind(0))
            cs = list(state[1].unbind(0)) if lstm else hs
            drawn: list[torch.Tensor] = []
            stop, end_id = None, -1 if end is None else end
            if end is not None:
                stop = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
                if stopped is not None:
                    stop |= torch.as_tensor(stopped).to(logits.device)
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


def gen_weights(model: CharRNN) -> GenWeights:
    """``model``'s weights laid out for the CPU engines (numpy and compiled)."""
    with torch.no_grad():
        arrays = {
            k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items()
        }
    return GenWeights.from_arrays(model.config, arrays)


class CompiledGenerator:
    """The compiled engine (``fastgen.FastGenerator``) behind the tensor interface of
    :class:`TorchGenerator`, for a driver that keeps its streams' state in tensors (the
    server). Copies in and out cost little next to a block of steps."""

    def __init__(self, model: CharRNN) -> None:
        self._fast = fastgen.FastGenerator(gen_weights(model))

    def run(
        self,
        state: State,
        logits: torch.Tensor,
        uniforms: torch.Tensor | np.ndarray,
        settings: SampleSettings,
        end: int | None = None,
        stopped: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """As :meth:`TorchGenerator.run`, on the CPU."""
        ids, new, lg = self._fast.run(
            tuple(s.detach().to("cpu", torch.float32).numpy() for s in state),
            logits.detach().to("cpu", torch.float32).numpy(),
            np.asarray(uniforms, dtype=np.float32),
            settings,
            end,
            None if stopped is None else stopped.cpu().numpy(),
        )
        return torch.from_numpy(ids), tuple(torch.from_numpy(s) for s in new), torch.from_numpy(lg)


#: The engines a tensor-driven caller (the server) can hold.
Engine = TorchGenerator | CompiledGenerator
ENGINES = ("auto", "torch", "numpy", "numba")


def check_engine(engine: str) -> None:
    """Refuse an ``engine`` that is not one of :data:`ENGINES`."""
    if engine not in ENGINES:
        raise CharloomError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")


def engine_in_use(device: str | torch.device = "cpu") -> str:
    """What ``engine="auto"`` runs a stream's bulk on, on ``device``, now: ``numba``,
    ``numpy (compiling)`` (the compiled engine is being compiled or loaded; a stream switches to
    it when it is ready), ``numpy (numba not installed)``, ``numpy (numba failed: ...)`` or
    ``torch (not on the CPU)``. For reports such as ``charloom bench``; it starts nothing."""
    if torch.device(device).type != "cpu":
        return "torch (not on the CPU)"
    status = fastgen.status()
    if status == "ready":
        return "numba"
    if status in ("compiling", "idle"):
        return "numpy (compiling)"
    return f"numpy (numba {status})"


def _choose(model: CharRNN, engine: str) -> str:
    """What ``engine`` runs on ``model``'s device: ``torch``, ``numpy``, ``numba`` (waits for
    the compiler, since it was asked for) or ``auto`` (the CPU engines' own choice, see
    ``fastgen.cpu_blocks``)."""
    check_engine(engine)
    if engine == "torch":
        return "torch"
    on_cpu = model.head.weight.device.type == "cpu"
    if engine in ("numba", "numpy") and not on_cpu:
        raise CharloomError(f"the {engine} engine runs on the CPU only")
    if engine == "numba":
        fastgen.require()
    if not on_cpu:
        return "torch"
    if engine == "auto" and not fastgen.available():
        fastgen.prepare()  # says once that numba is missing
        return "numpy"
    return engine


def engine_name(model: CharRNN, engine: str = "auto") -> str:
    """For a driver that keeps tensors (the server): ``numba`` or ``torch``, by the rule of
    ``auto``. While the compiled engine is still being compiled, ``torch`` now, and the
    compile is started (a long-lived driver asks again later)."""
    choice = _choose(model, engine)
    if choice == "numpy":
        raise CharloomError("the numpy engine drives single streams only; choose auto or torch")
    if choice == "auto":
        return "numba" if fastgen.prepare() else "torch"
    return choice


def make_generator(model: CharRNN, engine: str = "auto") -> Engine:
    """The tensor-driven engine ``engine`` names for ``model`` now (see :func:`engine_name`)."""
    if engine_name(model, engine) == "numba":
        return CompiledGenerator(model)
    return TorchGenerator(model)


def generate_blocks(
    model: CharRNN, stream: SampleStream, engine: str = "auto"
) -> Iterator[np.ndarray]:
    """Endless stream of the ids drawn for ``stream``, in int64 blocks ``(n, num_samples)`` of
    1, 4, 16, then 64 steps (so the first characters show at once).

    ``engine``: ``torch`` (the reference, :class:`TorchGenerator`, any device), ``numpy`` or
    ``numba`` (CPU only; ``numba`` waits for the compiler) or ``auto``: on the CPU, numpy at
    first and numba once it is ready (``fastgen.cpu_blocks``); elsewhere torch. The engine is
    checked at once (not at the first block). Blocks stop at exactly ``stream.length`` steps
    (and go on past it if asked, as bytes mode may need). The same seed gives the same ids
    whatever the engine, the switch and the block sizes."""
    plan = _choose(model, engine)
    if plan != "torch":
        return fastgen.cpu_blocks(gen_weights(model), stream, plan)
    return _torch_blocks(model, stream)


@torch.no_grad()
def _torch_blocks(model: CharRNN, stream: SampleStream) -> Iterator[np.ndarray]:
    was_training = model.training
    model.eval()
    try:
        gen = TorchGenerator(model)
        state, logits = gen.start(stream.prime_ids, stream.num_samples)
        block, left = 1, stream.length
        while True:
            n = min(block, left) if left > 0 else block
            u = stream.uniforms.take(n)
            ids, state, logits = gen.run(state, logits, u, stream.settings, *stream.stop_args())
            yield ids.cpu().numpy()
            left -= n
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
    end: int | None = None,
) -> Iterator[list[str]]:
    """Generate ``num_samples`` texts after ``prime``; yields one string per sample for each
    block of steps (one character per step with the torch engine, up to 64 with numba; possibly
    empty while a multi-byte character completes in bytes mode). Every sample ends after exactly
    ``length`` new characters, or, with ``end`` (documents mode), at the end of its document
    if that comes first."""

    def blocks(stream: SampleStream) -> Iterator[np.ndarray]:
        return generate_blocks(model, stream, engine)

    yield from request_pieces(vocab, prime, length, settings, num_samples, seed, blocks, end=end)


def sample(
    model: CharRNN,
    vocab: Vocab,
    prime: str = DEFAULT_PRIME,
    length: int = DEFAULT_LENGTH,
    settings: SampleSettings | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    engine: str = "auto",
    end: int | None = None,
) -> list[str]:
    """``num_samples`` texts, each the prime followed by exactly ``length`` new characters
    (``end``: documents mode, each a document of at most ``length`` new characters)."""
    pieces = stream_samples(model, vocab, prime, length, settings, num_samples, seed, engine, end)
    return whole_texts(prime, pieces, num_samples)


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
    pieces = text_pieces(stream, generate_blocks(model, stream, engine))
    texts = whole_texts(prime, pieces, num_samples)
    head = stream.prime_ids[1:]
    return [(t, stream.ended[i], head + stream.drawn[i]) for i, t in enumerate(texts)]
