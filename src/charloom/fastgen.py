"""Fast generation on the CPU: the whole sampling loop compiled with numba.

Generating one character is a few small matrix-vector products; done step by step from Python,
each step costs tens of microseconds of interpreter and dispatch overhead, far more than the
arithmetic. Here the loop - recurrent step for every layer, head, temperature, top-k/top-p and the
draw - runs as one compiled function for many steps at once.

It reads the same weights as ``CharRNN`` and draws with the same uniforms as the reference sampler
in ``sample.py`` (inverse-CDF sampling), so for a given seed it produces the same text; the tests
check this against the simple path. numba is optional (``pip install 'charloom[fast]'``); without
it, or on a GPU, charloom uses the reference path.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import CharRNN

_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_KIND_CODE = {"lstm": 0, "gru": 1, "rnn": 2}

try:  # numba is an optional extra
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None
    HAVE_NUMBA = False


def available() -> bool:
    return HAVE_NUMBA


if HAVE_NUMBA:

    @numba.njit(cache=True, fastmath=False, inline="always")
    def _sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    @numba.njit(cache=True, fastmath=False)
    def _draw(logits, temperature, top_k, top_p, greedy, u, probs, order):
        """Index drawn from ``logits (V,)``: the same arithmetic as ``sample.pick``."""
        v = logits.shape[0]
        if greedy:
            return np.argmax(logits)
        top = np.max(logits)
        for j in range(v):
            probs[j] = (logits[j] - top) / temperature
        if top_k > 0 and top_k < v:
            srt = np.sort(probs)
            kth = srt[v - top_k]
            for j in range(v):
                if probs[j] < kth:
                    probs[j] = -np.inf
        m = np.max(probs)
        total = np.float32(0.0)
        for j in range(v):
            e = np.float32(np.exp(probs[j] - m))
            probs[j] = e
            total += e
        for j in range(v):
            probs[j] = probs[j] / total
        if top_p < 1.0:
            # Keep a character if the mass of the likelier ones is below top_p.
            idx = np.argsort(-probs, kind="mergesort")
            before = np.float32(0.0)
            for r in range(v):
                j = idx[r]
                order[j] = 1 if before < top_p else 0
                before += probs[j]
            kept = np.float32(0.0)
            for j in range(v):
                if order[j] == 0:
                    probs[j] = 0.0
                kept += probs[j]
            for j in range(v):
                probs[j] = probs[j] / kept
        # The running sum in float32, as torch.cumsum computes it.
        running = np.empty(v, dtype=np.float32)
        cdf = np.float32(0.0)
        for j in range(v):
            cdf += probs[j]
            running[j] = cdf
        target = np.float32(u) * running[v - 1]
        count = 0
        for j in range(v):
            if running[j] < target:
                count += 1
        return min(count, v - 1)

    @numba.njit(cache=True, fastmath=False)
    def _step_stream(
        kind, b, x, table, w_ih, b_ih, w_hh, b_hh, head_w, head_b, h, c, gi, gh, logits
    ):
        """Advance stream ``b`` by one character ``x``; leaves the next logits in ``logits``."""
        layers, _, hidden = h.shape
        gsize = gi.shape[0]
        for layer in range(layers):
            # input part: a row of the precomputed table for layer 0, a mat-vec above it
            if layer == 0:
                for j in range(gsize):
                    gi[j] = table[x, j]
            else:
                for j in range(gsize):
                    gi[j] = b_ih[layer, j]
                wl = w_ih[layer - 1]
                for k in range(hidden):
                    hk = h[layer - 1, b, k]
                    for j in range(gsize):
                        gi[j] += hk * wl[k, j]
            for j in range(gsize):
                gh[j] = b_hh[layer, j]
            wh = w_hh[layer]
            for k in range(hidden):
                hk = h[layer, b, k]
                for j in range(gsize):
                    gh[j] += hk * wh[k, j]
            if kind == 0:  # LSTM: gates i, f, g, o
                for k in range(hidden):
                    i = _sigmoid(gi[k] + gh[k])
                    f = _sigmoid(gi[hidden + k] + gh[hidden + k])
                    g = np.tanh(gi[2 * hidden + k] + gh[2 * hidden + k])
                    o = _sigmoid(gi[3 * hidden + k] + gh[3 * hidden + k])
                    cc = f * c[layer, b, k] + i * g
                    c[layer, b, k] = cc
                    h[layer, b, k] = o * np.tanh(cc)
            elif kind == 1:  # GRU: gates r, z, n
                for k in range(hidden):
                    r = _sigmoid(gi[k] + gh[k])
                    z = _sigmoid(gi[hidden + k] + gh[hidden + k])
                    n = np.tanh(gi[2 * hidden + k] + r * gh[2 * hidden + k])
                    h[layer, b, k] = (1.0 - z) * n + z * h[layer, b, k]
            else:  # RNN (tanh)
                for k in range(hidden):
                    h[layer, b, k] = np.tanh(gi[k] + gh[k])
        vocab = logits.shape[0]
        for j in range(vocab):
            logits[j] = head_b[j]
        top = layers - 1
        for k in range(hidden):
            hk = h[top, b, k]
            for j in range(vocab):
                logits[j] += hk * head_w[k, j]

    @numba.njit(cache=True, fastmath=False)
    def _run_stream(
        kind,
        b,
        table,
        w_ih,
        b_ih,
        w_hh,
        b_hh,
        head_w,
        head_b,
        h,
        c,
        logits0,
        u,
        temperature,
        top_k,
        top_p,
        greedy,
        out,
    ):
        """Stream ``b``: draw ``out.shape[0]`` characters, starting from ``logits0[b]`` and the
        state ``h, c (L, B, H)`` (both updated in place)."""
        vocab = logits0.shape[1]
        gsize = table.shape[1]
        gi = np.empty(gsize, dtype=np.float32)
        gh = np.empty(gsize, dtype=np.float32)
        logits = logits0[b].copy()
        probs = np.empty(vocab, dtype=np.float32)
        order = np.empty(vocab, dtype=np.int8)
        for t in range(out.shape[0]):
            x = _draw(logits, temperature, top_k, top_p, greedy, u[t, b], probs, order)
            out[t, b] = x
            _step_stream(
                kind, b, x, table, w_ih, b_ih, w_hh, b_hh, head_w, head_b, h, c, gi, gh, logits
            )
        logits0[b, :] = logits

    # Two functions rather than one compiled twice: numba's on-disk cache does not tell two
    # compilations of one function apart by their options.
    @numba.njit(cache=True)
    def _generate_serial(
        kind,
        table,
        w_ih,
        b_ih,
        w_hh,
        b_hh,
        head_w,
        head_b,
        h,
        c,
        logits0,
        u,
        temperature,
        top_k,
        top_p,
        greedy,
        out,
    ):
        for b in range(out.shape[1]):
            _run_stream(
                kind,
                b,
                table,
                w_ih,
                b_ih,
                w_hh,
                b_hh,
                head_w,
                head_b,
                h,
                c,
                logits0,
                u,
                temperature,
                top_k,
                top_p,
                greedy,
                out,
            )

    @numba.njit(cache=True, parallel=True)
    def _generate_parallel(
        kind,
        table,
        w_ih,
        b_ih,
        w_hh,
        b_hh,
        head_w,
        head_b,
        h,
        c,
        logits0,
        u,
        temperature,
        top_k,
        top_p,
        greedy,
        out,
    ):
        # Streams are independent: one per thread.
        for b in numba.prange(out.shape[1]):
            _run_stream(
                kind,
                b,
                table,
                w_ih,
                b_ih,
                w_hh,
                b_hh,
                head_w,
                head_b,
                h,
                c,
                logits0,
                u,
                temperature,
                top_k,
                top_p,
                greedy,
                out,
            )


# Below this many streams, starting threads costs more than it saves.
_PARALLEL_FROM = 4


class FastGenerator:
    """Holds a model's weights laid out for the compiled loop (float32, transposed)."""

    def __init__(self, model: CharRNN) -> None:
        if not HAVE_NUMBA:
            raise RuntimeError("numba is not installed")
        cfg = model.config
        self.kind = _KIND_CODE[cfg.kind]
        r = model.rnn
        hidden, gsize = cfg.hidden, _GATES[cfg.kind] * cfg.hidden
        with torch.no_grad():
            f32 = lambda t: t.detach().to("cpu", torch.float32)  # noqa: E731
            # Layer 0's input projection of every character, precomputed: a table lookup.
            self.table = f32(model.embedding.weight) @ f32(r.weight_ih_l0).T + f32(r.bias_ih_l0)
            self.table = self.table.numpy().copy()
            w_ih = [
                f32(getattr(r, f"weight_ih_l{i}")).T.numpy().copy() for i in range(1, cfg.layers)
            ]
            self.w_ih = np.stack(w_ih) if w_ih else np.zeros((1, hidden, gsize), np.float32)
            self.b_ih = np.stack(
                [f32(getattr(r, f"bias_ih_l{i}")).numpy() for i in range(cfg.layers)]
            )
            self.w_hh = np.stack(
                [f32(getattr(r, f"weight_hh_l{i}")).T.numpy().copy() for i in range(cfg.layers)]
            )
            self.b_hh = np.stack(
                [f32(getattr(r, f"bias_hh_l{i}")).numpy() for i in range(cfg.layers)]
            )
            self.head_w = f32(model.head.weight).T.numpy().copy()
            self.head_b = f32(model.head.bias).numpy().copy()
        self.is_lstm = cfg.kind == "lstm"

    def run(
        self,
        state: tuple[torch.Tensor, ...],
        logits: torch.Tensor,
        uniforms: torch.Tensor,
        temperature: float,
        top_k: int,
        top_p: float,
        greedy: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """Draw ``uniforms.shape[0]`` characters for each of B streams.

        ``state``: tuple of (L, B, H); ``logits (B, V)``: the distribution for the first draw;
        ``uniforms (steps, B)``. Returns ids ``(steps, B)``, the new state and the logits after
        the last character."""
        h = state[0].detach().to("cpu", torch.float32).numpy().copy()
        c = (
            state[1].detach().to("cpu", torch.float32).numpy().copy()
            if self.is_lstm
            else np.zeros((1, 1, 1), np.float32)
        )
        lg = logits.detach().to("cpu", torch.float32).numpy().copy()
        u = uniforms.to(torch.float32).numpy()
        out = np.empty(u.shape, dtype=np.int64)
        kernel = _generate_parallel if u.shape[1] >= _PARALLEL_FROM else _generate_serial
        kernel(
            self.kind,
            self.table,
            self.w_ih,
            self.b_ih,
            self.w_hh,
            self.b_hh,
            self.head_w,
            self.head_b,
            h,
            c,
            lg,
            u,
            np.float32(temperature),
            top_k,
            np.float32(top_p),
            greedy,
            out,
        )
        new_state = (
            (torch.from_numpy(h), torch.from_numpy(c)) if self.is_lstm else (torch.from_numpy(h),)
        )
        return torch.from_numpy(out), new_state, torch.from_numpy(lg)
