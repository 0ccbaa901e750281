"""The numpy engine: generation on the CPU in plain numpy, without torch and without a compiler.

It exists for the first characters. Importing torch takes seconds, and the compiled loop of
``fastgen.py`` needs numba loaded (or compiled) first; numpy is ready in a tenth of a second. So
on the CPU a stream starts here - the prime, then the first blocks of steps - and moves to the
compiled engine between two blocks once that is ready (``fastgen.cpu_blocks``). It does the
arithmetic of the reference (``sample.TorchGenerator``: torch's cell functions, then
``sample.pick``) in float32 and draws with the same uniforms, so the same seed gives the same
text (up to float rounding: a draw changes only when a uniform falls within about 1e-7 of a
boundary between two characters).

:class:`GenWeights` is the weights laid out for generation (transposed, layer 0's input
projection of every character precomputed as a table); the compiled engine reads the same
arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CharloomError
from .modelconfig import EMBEDDING, HEAD_BIAS, HEAD_WEIGHT, ModelConfig, weight_names
from .nextchar import SampleSettings

#: A recurrent state: ``(h,)`` or ``(h, c)`` for an LSTM, each ``(L, B, H)`` float32.
ArrayState = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class GenWeights:
    """A model's weights as generation reads them (float32, C-contiguous).

    ``table (V, G*H)``: layer 0's gate inputs for each character (embedding times ``weight_ih``,
    plus biases); ``w_ih (max(L-1, 1), H, G*H)``: the input weights of layers 1..L-1;
    ``bias_in (L, G*H)``; ``w_hh (L, H, G*H)``; ``b_hh (L, G*H)``; ``head_w (H, V)``;
    ``head_b (V,)``. A GRU keeps its recurrent bias apart (its n gate scales it by r); an LSTM
    and an RNN add it to ``bias_in``, and their ``b_hh`` is not read."""

    kind: str
    table: np.ndarray
    w_ih: np.ndarray
    bias_in: np.ndarray
    w_hh: np.ndarray
    b_hh: np.ndarray
    head_w: np.ndarray
    head_b: np.ndarray

    @property
    def layers(self) -> int:
        return self.w_hh.shape[0]

    @property
    def hidden(self) -> int:
        return self.w_hh.shape[1]

    @classmethod
    def from_arrays(cls, config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> GenWeights:
        """From a CharRNN's state dict as arrays (a checkpoint's ``model.safetensors``, or
        ``model.state_dict()`` converted), checked against ``config``'s shape."""
        h, g, v = config.hidden, config.gates * config.hidden, config.vocab_size

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            a = arrays.get(name)
            if a is None or tuple(a.shape) != shape:
                found = "missing" if a is None else f"shape {tuple(a.shape)}"
                raise CharloomError(f"weight {name} is {found}, expected {shape}")
            return np.asarray(a, dtype=np.float32)

        split = config.kind == "gru"
        layers = []
        for layer in range(config.layers):
            names = weight_names(layer)
            inp = config.embed if layer == 0 else h
            w = {
                "weight_ih": get(names["weight_ih"], (g, inp)),
                "weight_hh": get(names["weight_hh"], (g, h)),
                "bias_ih": get(names["bias_ih"], (g,)),
                "bias_hh": get(names["bias_hh"], (g,)),
            }
            w["bias_in"] = w["bias_ih"] if split else w["bias_ih"] + w["bias_hh"]
            layers.append(w)
        emb = get(EMBEDDING, (v, config.embed))
        w_ih = [w["weight_ih"].T for w in layers[1:]]
        dense = np.ascontiguousarray
        return cls(
            kind=config.kind,
            table=dense(emb @ layers[0]["weight_ih"].T + layers[0]["bias_in"]),
            w_ih=dense(np.stack(w_ih)) if w_ih else np.zeros((1, h, g), np.float32),
            bias_in=dense(np.stack([w["bias_in"] for w in layers])),
            w_hh=dense(np.stack([w["weight_hh"].T for w in layers])),
            b_hh=dense(np.stack([w["bias_hh"] for w in layers])),
            head_w=dense(get(HEAD_WEIGHT, (v, h)).T),
            head_b=dense(get(HEAD_BIAS, (v,))),
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x / 2)): no overflow for large negative x, unlike 1 / (1 + exp(-x)).
    return np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x))


def distribution(logits: np.ndarray, settings: SampleSettings) -> np.ndarray:
    """``logits (B, V)`` -> float32 probabilities ``(B, V)`` after temperature, top-k and
    top-p: ``sample.next_token_distribution`` in numpy."""
    x = logits.astype(np.float32)
    x = (x - x.max(axis=1, keepdims=True)) / np.float32(settings.temperature)
    vocab = x.shape[1]
    if settings.top_k is not None and settings.top_k < vocab:
        kth = np.partition(x, vocab - settings.top_k, axis=1)[:, vocab - settings.top_k, None]
        x = np.where(x < kth, np.float32(-np.inf), x)
    e = np.exp(x)  # the maximum is 0, so nothing overflows; masked entries become 0
    probs = e / e.sum(axis=1, keepdims=True)
    if settings.top_p is not None and settings.top_p < 1:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=1)
        before = np.cumsum(sorted_p, axis=1) - sorted_p
        keep = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(keep, order, before < np.float32(settings.top_p), axis=1)
        probs = np.where(keep, probs, np.float32(0.0))
        probs = probs / probs.sum(axis=1, keepdims=True)
    return probs


def pick(logits: np.ndarray, settings: SampleSettings, u: np.ndarray) -> np.ndarray:
    """``logits (B, V)``, uniforms ``u (B,)`` -> next ids ``(B,)`` int64: the first character
    whose cumulative probability reaches ``u`` (``sample.pick`` in numpy)."""
    if settings.greedy:
        return logits.argmax(axis=1).astype(np.int64)
    cdf = np.cumsum(distribution(logits, settings), axis=1)
    target = u.astype(np.float32)[:, None] * cdf[:, -1:]
    return np.minimum((cdf < target).sum(axis=1), cdf.shape[1] - 1).astype(np.int64)


class NumpyGenerator:
    """The numpy engine, with the interface of the other engines: ``start`` runs a prime,
    ``run`` draws a block of steps for B streams. Its arguments are never changed."""

    def __init__(self, weights: GenWeights) -> None:
        self.w = weights
        self.is_lstm = weights.kind == "lstm"

    def zero_state(self, rows: int) -> ArrayState:
        shape = (self.w.layers, rows, self.w.hidden)
        z = np.zeros(shape, np.float32)
        return (z, z.copy()) if self.is_lstm else (z,)

    def start(self, prime_ids: Sequence[int], rows: int) -> tuple[ArrayState, np.ndarray]:
        """Run ``prime_ids`` from the zero state (one row) and give each of ``rows`` samples a
        copy: the state (tuple of ``(L, rows, H)``) and the logits ``(rows, V)`` of the first
        draw. One row, so the numbers do not depend on how many samples are asked for."""
        state = self.zero_state(1)
        logits = np.zeros((1, self.w.head_b.shape[0]), np.float32)
        for i in prime_ids:
            state, logits = self.step(state, np.array([i], np.int64))
        state = tuple(np.repeat(s, rows, axis=1) for s in state)
        return state, np.repeat(logits, rows, axis=0)

    def step(self, state: ArrayState, ids: np.ndarray) -> tuple[ArrayState, np.ndarray]:
        """Read one character per stream (``ids (B,)``): the new state and logits ``(B, V)``."""
        w = self.w
        hs, cs = list(state[0]), list(state[1]) if self.is_lstm else []
        inp = w.table[ids]
        for layer in range(w.layers):
            gi = inp if layer == 0 else hs[layer - 1] @ w.w_ih[layer - 1] + w.bias_in[layer]
            gh = hs[layer] @ w.w_hh[layer]
            if self.is_lstm:
                i, f, g, o = np.split(gi + gh, 4, axis=1)
                cs[layer] = _sigmoid(f) * cs[layer] + _sigmoid(i) * np.tanh(g)
                hs[layer] = _sigmoid(o) * np.tanh(cs[layer])
            elif w.kind == "gru":
                gh = gh + w.b_hh[layer]
                ir, iz, in_ = np.split(gi, 3, axis=1)
                hr, hz, hn = np.split(gh, 3, axis=1)
                r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
                n = np.tanh(in_ + r * hn)
                hs[layer] = (np.float32(1.0) - z) * n + z * hs[layer]
            else:
                hs[layer] = np.tanh(gi + gh)
        logits = hs[-1] @ w.head_w + w.head_b
        new = (np.stack(hs), np.stack(cs)) if self.is_lstm else (np.stack(hs),)
        return new, logits

    def run(
        self,
        state: ArrayState,
        logits: np.ndarray,
        uniforms: np.ndarray,
        settings: SampleSettings,
        end: int | None = None,
        stopped: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ArrayState, np.ndarray]:
        """Draw ``uniforms.shape[0]`` characters for each of B streams from ``logits (B, V)``
        and ``state``, with ``uniforms (steps, B)``. Returns the ids ``(steps, B)`` int64, the
        new state and the logits after the last character.

        ``end`` (documents mode): the end-of-document id. A stream that draws it (or is set in
        ``stopped (B,)``) stops: its later ids are all ``end``, and once every stream has
        stopped the block ends without stepping further (as the other engines do)."""
        drawn = np.empty(uniforms.shape, np.int64)
        stop, end_id = None, -1 if end is None else int(end)
        if end is not None:
            stop = np.zeros(len(logits), bool) if stopped is None else np.array(stopped, bool)
        for t, u in enumerate(uniforms):
            ids = pick(logits, settings, u)
            if stop is not None:
                ids[stop] = end_id
                stop |= ids == end_id
                if stop.all():
                    drawn[t:] = end_id
                    return drawn, state, logits
            drawn[t] = ids
            state, logits = self.step(state, ids)
        return drawn, state, logits
