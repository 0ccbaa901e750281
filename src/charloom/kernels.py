"""The numba kernels of the compiled generation engine (see ``fastgen.py`` for the design).

Kept apart from ``fastgen.py`` because importing numba and setting up these functions costs about
a second: ``fastgen`` imports this module in a background thread, so a sample can start on the
torch engine at once and switch to these kernels when they are ready.

Every kernel is compiled with numba's on-disk cache, so only a process's first call on a machine
pays for compiling. numba puts the cache in ``$NUMBA_CACHE_DIR`` if set, else in the package's
``__pycache__`` if writable, else in the user's cache folder (``~/.cache/numba``); where none of
these is writable the kernels are compiled without a cache, in every process (see :func:`_jit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)``, or without the cache where numba finds no writable
    place for one (it refuses at decoration time): slower to start, but it still runs."""

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return wrap


_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_HALF = np.float32(0.5)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split in two, so k * ln2 is exact in float32
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.0)  # below this exp() is taken as 0 (float32's normal range ends)
_EXP_HI = np.float32(88.0)
_TANH_SMALL = np.float32(0.625)
# exp on [-ln2/2, ln2/2] and tanh on [-0.625, 0.625]: minimax polynomial coefficients
# (the classic single-precision ones, as in the Cephes library's expf and tanhf).
_EXP_C = tuple(
    np.float32(v)
    for v in (
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    )
)
_TANH_C = tuple(
    np.float32(v)
    for v in (
        -5.70498872745e-3,
        2.06390887954e-2,
        -5.37397155531e-2,
        1.33314422036e-1,
        -3.33332819422e-1,
    )
)

_E0, _E1, _E2, _E3, _E4, _E5 = _EXP_C
_T0, _T1, _T2, _T3, _T4 = _TANH_C


@_jit(inline="always", error_model="numpy")
def exp_into(src, dst, bits, n):
    """``dst[:n] = exp(src[:n])`` in float32 (within 2 ulp; 0 below -87): 2^k times a
    polynomial, in two loops that vectorise (the 2^k made from its bits)."""
    for j in range(n):
        x0 = src[j]
        x = min(max(x0, _EXP_LO), _EXP_HI)
        k = np.floor(x * _LOG2E + _HALF)
        r = (x - k * _LN2_HI) - k * _LN2_LO
        p = ((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5
        dst[j] = (p * (r * r) + r) + _F1
        bits[j] = ((np.int32(k) + np.int32(127)) << np.int32(23)) if x0 >= _EXP_LO else 0
    scale = bits.view(np.float32)
    for j in range(n):
        dst[j] = dst[j] * scale[j]


@_jit(inline="always", error_model="numpy")
def tanh_from(e, x):
    """``tanh(x)`` given ``e = exp(2|x|)``: a polynomial near 0, 1 - 2/(e+1) elsewhere."""
    z = x * x
    small = ((((_T0 * z + _T1) * z + _T2) * z + _T3) * z + _T4) * z * x + x
    big = _F1 - _F2 / (e + _F1)
    big = big if x >= _F0 else -big
    return small if abs(x) < _TANH_SMALL else big


@_jit(fastmath={"contract"}, inline="always")
def _axpy4(o, a, w, k):
    """``o += a[k:k+4] @ w[k:k+4]`` (one stream, four rows of the weights)."""
    a0, a1, a2, a3 = a[k], a[k + 1], a[k + 2], a[k + 3]
    w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
    for j in range(o.shape[0]):
        o[j] = o[j] + a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]


@_jit(fastmath={"contract"}, error_model="numpy")
def _gemm_acc(out, off, src, w, s0, s1):
    """``out[s - off] += src[s] @ w`` for streams ``s0 <= s < s1``; ``w (K, N)``.

    Four streams at a time share every load of the weights (four rows per pass, so each
    output is loaded and stored once per four products)."""
    kk = w.shape[0]
    k4 = kk - kk % 4
    s = s0
    while s + 4 <= s1:
        o0, o1, o2, o3 = out[s - off], out[s + 1 - off], out[s + 2 - off], out[s + 3 - off]
        x0, x1, x2, x3 = src[s], src[s + 1], src[s + 2], src[s + 3]
        for k in range(0, k4, 4):
            w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
            a00, a01, a02, a03 = x0[k], x0[k + 1], x0[k + 2], x0[k + 3]
            a10, a11, a12, a13 = x1[k], x1[k + 1], x1[k + 2], x1[k + 3]
            a20, a21, a22, a23 = x2[k], x2[k + 1], x2[k + 2], x2[k + 3]
            a30, a31, a32, a33 = x3[k], x3[k + 1], x3[k + 2], x3[k + 3]
            for j in range(o0.shape[0]):
                v0, v1, v2, v3 = w0[j], w1[j], w2[j], w3[j]
                o0[j] = o0[j] + a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3
                o1[j] = o1[j] + a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3
                o2[j] = o2[j] + a20 * v0 + a21 * v1 + a22 * v2 + a23 * v3
                o3[j] = o3[j] + a30 * v0 + a31 * v1 + a32 * v2 + a33 * v3
        for k in range(k4, kk):
            wk = w[k]
            a0, a1, a2, a3 = x0[k], x1[k], x2[k], x3[k]
            for j in range(o0.shape[0]):
                o0[j] += a0 * wk[j]
                o1[j] += a1 * wk[j]
                o2[j] += a2 * wk[j]
                o3[j] += a3 * wk[j]
        s += 4
    while s < s1:
        o, x = out[s - off], src[s]
        for k in range(0, k4, 4):
            _axpy4(o, x, w, k)
        for k in range(k4, kk):
            a, wk = x[k], w[k]
            for j in range(o.shape[0]):
                o[j] += a * wk[j]
        s += 1


@_jit(fastmath={"contract"}, error_model="numpy")
def _lstm(g, h, c, arg, e, bits, tmp):
    """One LSTM cell update from the summed gate inputs ``g (4H,)`` (i, f, g, o)."""
    n = h.shape[0]
    for j in range(2 * n):
        arg[j] = -g[j]
    for j in range(2 * n, 3 * n):
        arg[j] = _F2 * abs(g[j])
    for j in range(3 * n, 4 * n):
        arg[j] = -g[j]
    exp_into(arg, e, bits, 4 * n)
    for k in range(n):
        i = _F1 / (_F1 + e[k])
        f = _F1 / (_F1 + e[n + k])
        cc = f * c[k] + i * tanh_from(e[2 * n + k], g[2 * n + k])
        c[k] = cc
        tmp[k] = _F1 / (_F1 + e[3 * n + k])
        arg[k] = _F2 * abs(cc)
    exp_into(arg, e, bits, n)
    for k in range(n):
        h[k] = tmp[k] * tanh_from(e[k], c[k])


@_jit(fastmath={"contract"}, error_model="numpy")
def _gru(gi, gh, h, arg, e, bits, tmp):
    """One GRU update from the input part ``gi (3H,)`` and recurrent part ``gh (3H,)``."""
    n = h.shape[0]
    for j in range(2 * n):
        arg[j] = -(gi[j] + gh[j])
    exp_into(arg, e, bits, 2 * n)
    for k in range(n):
        r = _F1 / (_F1 + e[k])
        pre = gi[2 * n + k] + r * gh[2 * n + k]
        tmp[k] = pre
        arg[k] = _F2 * abs(pre)
    exp_into(arg, e, bits, n)
    for k in range(n):
        z = _F1 / (_F1 + e[n + k])
        h[k] = (_F1 - z) * tanh_from(e[k], tmp[k]) + z * h[k]


@_jit(fastmath={"contract"}, error_model="numpy")
def _rnn(g, h, arg, e, bits):
    n = h.shape[0]
    for k in range(n):
        arg[k] = _F2 * abs(g[k])
    exp_into(arg, e, bits, n)
    for k in range(n):
        h[k] = tanh_from(e[k], g[k])


@_jit(error_model="numpy")
def _draw(logits, temperature, top_k, top_p, greedy, u, arg, e, bits, order):
    """Index drawn from ``logits (V,)``: the arithmetic of ``nextchar.pick``."""
    v = logits.shape[0]
    if greedy:
        return np.argmax(logits)
    top = np.max(logits)
    for j in range(v):
        arg[j] = (logits[j] - top) / temperature
    if top_k > 0 and top_k < v:
        kth = np.sort(arg[:v])[v - top_k]
        for j in range(v):
            if arg[j] < kth:
                arg[j] = -np.inf
    exp_into(arg, e, bits, v)
    if top_p < 1.0:
        total = np.float32(0.0)
        for j in range(v):
            total += e[j]
        for j in range(v):
            e[j] = e[j] / total
        # Keep a character if the mass of the likelier ones is below top_p.
        idx = np.argsort(-e[:v], kind="mergesort")
        before = np.float32(0.0)
        for r in range(v):
            j = idx[r]
            order[j] = 1 if before < top_p else 0
            before += e[j]
        for j in range(v):
            if order[j] == 0:
                e[j] = 0.0
    # Running sum in float32, in order, as torch.cumsum; the target scaled by the total
    # rather than the probabilities normalised (the same draw, one pass fewer).
    cdf = np.float32(0.0)
    for j in range(v):
        cdf += e[j]
        arg[j] = cdf
    target = np.float32(u) * cdf
    count = 0
    for j in range(v):
        count += arg[j] < target
    return min(count, v - 1)


@_jit(nogil=True, error_model="numpy")
def run_block(
    kind,
    s0,
    s1,
    table,
    w_ih,
    bias_in,
    w_hh,
    b_hh,
    head_w,
    head_b,
    h,
    c,
    logits,
    u,
    temperature,
    top_k,
    top_p,
    greedy,
    end,
    stopped,
    out,
):
    """Streams ``s0 <= s < s1``: draw ``out.shape[0]`` characters each, starting from
    ``logits[s]`` and the state ``h, c (L, B, H)`` (all updated in place).

    ``end >= 0`` (documents mode): a stream that draws ``end``, or has ``stopped[s]`` set,
    stops: its later ids are ``end`` and it draws nothing more; once every stream of the block
    has stopped, the block returns without stepping further (as ``TorchGenerator.run``)."""
    layers, _, hidden = h.shape
    gsize = table.shape[1]
    vocab = logits.shape[1]
    rows = s1 - s0
    gi = np.empty((rows, gsize), dtype=np.float32)
    gh = np.empty((rows if kind == 1 else 1, gsize), dtype=np.float32)
    width = max(gsize, vocab)
    arg = np.empty(width, dtype=np.float32)
    e = np.empty(width, dtype=np.float32)
    bits = np.empty(width, dtype=np.int32)
    tmp = np.empty(hidden, dtype=np.float32)
    order = np.empty(vocab, dtype=np.int8)
    steps = out.shape[0]
    for t in range(steps):
        alive = 0
        for s in range(s0, s1):
            if end >= 0 and stopped[s]:
                x = end
            else:
                x = _draw(
                    logits[s], temperature, top_k, top_p, greedy, u[t, s], arg, e, bits, order
                )
                if x == end:
                    stopped[s] = 1
                else:
                    alive += 1
            out[t, s] = x
            gi[s - s0, :] = table[x]
        if end >= 0 and alive == 0:
            for rest in range(t + 1, steps):
                for s in range(s0, s1):
                    out[rest, s] = end
            return
        for layer in range(layers):
            if layer > 0:
                for s in range(s0, s1):
                    gi[s - s0, :] = bias_in[layer]
                _gemm_acc(gi, s0, h[layer - 1], w_ih[layer - 1], s0, s1)
            if kind == 1:  # GRU: the recurrent part kept apart (r scales its n gate)
                for s in range(s0, s1):
                    gh[s - s0, :] = b_hh[layer]
                _gemm_acc(gh, s0, h[layer], w_hh[layer], s0, s1)
                for s in range(s0, s1):
                    _gru(gi[s - s0], gh[s - s0], h[layer, s], arg, e, bits, tmp)
            else:
                _gemm_acc(gi, s0, h[layer], w_hh[layer], s0, s1)
                for s in range(s0, s1):
                    if kind == 0:
                        _lstm(gi[s - s0], h[layer, s], c[layer, s], arg, e, bits, tmp)
                    else:
                        _rnn(gi[s - s0], h[layer, s], arg, e, bits)
        for s in range(s0, s1):
            logits[s, :] = head_b
        _gemm_acc(logits, 0, h[layers - 1], head_w, s0, s1)


# One stream block per thread; a single block runs ``run_block`` directly, without starting
# threads (a separate function: numba's on-disk cache does not tell two compilations of one
# function apart by their options).
@_jit(nogil=True, parallel=True, error_model="numpy")
def generate_parallel(
    blocks,
    kind,
    table,
    w_ih,
    bias_in,
    w_hh,
    b_hh,
    head_w,
    head_b,
    h,
    c,
    logits,
    u,
    temperature,
    top_k,
    top_p,
    greedy,
    end,
    stopped,
    out,
):
    # Streams are independent: a contiguous block of them per thread, no waiting between.
    streams = out.shape[1]
    for i in numba.prange(blocks):
        run_block(
            kind,
            i * streams // blocks,
            (i + 1) * streams // blocks,
            table,
            w_ih,
            bias_in,
            w_hh,
            b_hh,
            head_w,
            head_b,
            h,
            c,
            logits,
            u,
            temperature,
            top_k,
            top_p,
            greedy,
            end,
            stopped,
            out,
        )
